"""`--quantize gguf` (specdecode.loading.gguf_native): a GGUF file's linear layers run its own
blocks. On tiny files written as llama.cpp's converter writes them (q/k rows permuted for llama,
biases for qwen2), in a mix of block formats: each layer keeps its tensor's format, a format
without a kernel falls back to int8 and is reported, the model computes what the de-quantized
file computes (up to int8 activations), speculative output equals target-only output, and the
quantized-model cache gives back the same layers.
"""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as Q

import specdecode
from conftest import float_weight, tiny_hf_model
from specdecode.config import SamplingParams
from specdecode.drafters import ModelDrafter, NgramDrafter
from specdecode.errors import SpecdecodeError
from specdecode.kernels import GGUF_LINEARS, PackedInt8Linear
from specdecode.loading.gguf_native import native_copy
from test_loading_checkpoint import tokenizer_meta
from test_loading_gguf import _write_model_gguf

pytestmark = pytest.mark.usefixtures("kernels")

# Per tensor kind, the block format the tiny file stores it in (Q4_1 has no kernel: int8 fallback).
MIX = {"attn_q": Q.Q4_0, "attn_k": Q.Q5_0, "attn_v": Q.Q8_0, "attn_output": Q.Q4_1, "ffn_gate": Q.Q5_0,
       "ffn_up": Q.Q4_0, "ffn_down": Q.Q8_0, "output": Q.Q8_0}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(params=["llama", "qwen2"])
def mixed_gguf(request, tmp_path):
    arch = request.param
    path = tmp_path / f"tiny-{arch}.gguf"
    _write_model_gguf(path, tiny_hf_model(arch), arch, qtype=MIX, extra_meta=tokenizer_meta())
    return arch, path


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    lm = model.lm if hasattr(model, "lm") else model
    cache = lm.new_cache(ids.shape[1] + 1)
    with torch.inference_mode():
        return lm(ids, torch.arange(ids.shape[1])[None], cache).float()


def test_each_layer_runs_its_own_format_and_computes_the_files_model(mixed_gguf):
    arch, path = mixed_gguf
    native = specdecode.load(str(path), dtype="float32", quantize="gguf")
    plain = specdecode.load(str(path), dtype="float32")  # the file de-quantized
    layer0 = native.lm.model.layers[0]
    assert type(layer0.self_attn.q_proj) is GGUF_LINEARS[Q.Q4_0]
    assert type(layer0.self_attn.k_proj) is GGUF_LINEARS[Q.Q5_0]
    assert type(layer0.mlp.down_proj) is GGUF_LINEARS[Q.Q8_0] and type(native.lm.lm_head) is GGUF_LINEARS[Q.Q8_0]
    assert type(layer0.self_attn.o_proj) is PackedInt8Linear  # Q4_1: no kernel, re-quantized
    # The layers hold exactly the file's weights (q/k rows unpermuted for llama, as the converter's are).
    for name in ("self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj"):
        w_native = layer0.get_submodule(name).dequantized_weight()
        assert torch.equal(w_native, float_weight(plain.lm.model.layers[0].get_submodule(name)).float()), name
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38]])
    a, b = logits(native, ids), logits(plain, ids)
    assert float((a - b).abs().max() / b.abs().max()) < 0.05  # int8 activations (and one int8 layer)
    assert native.row_invariance.row_invariant and native.quantize == "gguf"


def test_speculative_output_equals_target_only_output(mixed_gguf):
    _, path = mixed_gguf
    target = specdecode.load(str(path), dtype="float32", quantize="gguf")
    params = SamplingParams(max_new_tokens=24)
    prompt = [3, 14, 15, 92, 65, 35, 89, 79]
    alone, _ = specdecode.Engine(target, prefix_cache=0).generate_ids(prompt, params)
    draft = native_copy(target.lm, path, target.lm.args)[0]
    for drafter in (ModelDrafter(draft), NgramDrafter()):
        for k in (1, 3):
            out, _ = specdecode.Engine(target, drafter, num_draft_tokens=k, prefix_cache=0).generate_ids(prompt, params)
            assert out == alone
    seeded = SamplingParams(max_new_tokens=16, temperature=0.8, seed=7)
    first, _ = specdecode.Engine(target, prefix_cache=0).generate_ids(prompt, seeded)
    again, _ = specdecode.Engine(target, ModelDrafter(draft), num_draft_tokens=2, prefix_cache=0).generate_ids(prompt, seeded)
    assert first == again


def test_second_load_reads_the_cache_and_gives_the_same_model(mixed_gguf):
    _, path = mixed_gguf
    first = specdecode.load(str(path), dtype="bfloat16", quantize="gguf")
    second = specdecode.load(str(path), dtype="bfloat16", quantize="gguf")
    assert not first.quantized_from_cache and second.quantized_from_cache
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    assert torch.equal(logits(first, ids), logits(second, ids))
    assert type(second.lm.model.layers[1].mlp.gate_proj) is GGUF_LINEARS[Q.Q5_0]


def test_twin_shares_everything_but_the_linear_layers(mixed_gguf):
    _, path = mixed_gguf
    plain = specdecode.load(str(path), dtype="bfloat16")
    twin, report = native_copy(plain.lm, path, plain.lm.args)
    assert twin.model.embed_tokens is plain.lm.model.embed_tokens
    assert twin.model.layers[0].input_layernorm is plain.lm.model.layers[0].input_layernorm
    assert type(plain.lm.model.layers[0].self_attn.q_proj) is not GGUF_LINEARS[Q.Q4_0]  # the original is unchanged
    assert report.native["Q8_0"] == 2 * 2 + 1 and report.native["Q4_0"] == 2 * 2  # v, down (x2 layers), lm_head; q, up
    assert set(report.fallback.values()) == {"Q4_1 -> int8"} and "Q4_1 -> int8" in report.describe()


def test_refused_where_there_is_no_gguf_file(tmp_path):
    with pytest.raises(SpecdecodeError, match="not a GGUF file"):
        specdecode.load("tiny-random", quantize="gguf")
    with pytest.raises(SpecdecodeError, match="choose from"):
        specdecode.load("tiny-random", quantize="q4_k")
