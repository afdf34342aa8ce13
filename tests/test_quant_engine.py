"""Losslessness with quantized weights: speculative output == the SAME quantized target alone.

Quantization changes what the target says, never whether speculation reproduces it: greedy
output is equal token for token for every draft length, float32 and bf16, with quantized
targets, quantized drafts, and the target drafting for itself from an int4 copy (SelfDrafter).
"""

import copy

import pytest
import torch

from conftest import layer_mode, native_from_hf, tiny_hf_model
from specdecode import SamplingParams
from specdecode.drafters import ModelDrafter, SelfDrafter
from specdecode.engine import Engine
from specdecode.quant import Int4Linear, Int8Linear, quantize_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = [5, 17, 33, 5, 17, 40, 8, 9, 5, 17]
N_NEW = 40


def noisy(hf, scale, seed=7):
    hf = copy.deepcopy(hf)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    return hf


# vocab 128: every layer, lm_head included, takes int4; vocab 97: lm_head falls back to int8.
CASES = [("llama", 128, torch.float32, "int8"), ("qwen2", 128, torch.float32, "int4"),
         ("qwen2", 97, torch.bfloat16, "int8"), ("llama", 128, torch.bfloat16, "int4")]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-v{c[1]}-{str(c[2])[6:]}-{c[3]}")
def quantized_pair(request):
    arch, vocab, dtype, mode = request.param
    hf = tiny_hf_model(arch, seed=0, vocab=vocab)
    target = quantize_model(native_from_hf(hf, dtype), mode, group_size=32, head="same")
    draft = quantize_model(native_from_hf(noisy(hf, 0.05), dtype), "int4", group_size=32)
    return target, draft


def reference(target, n=N_NEW):
    return Engine(target).generate_ids(PROMPT, SamplingParams(max_new_tokens=n))[0]


@pytest.mark.parametrize("k", range(1, 9))
def test_quantized_target_and_draft_equal_target_only(quantized_pair, k):
    target, draft = quantized_pair
    out, stats = Engine(target, ModelDrafter(draft), num_draft_tokens=k).generate_ids(
        PROMPT, SamplingParams(max_new_tokens=N_NEW))
    assert out == reference(target)
    assert 0 < stats.accepted_tokens < stats.drafted_tokens  # a real mix of accept and reject


@pytest.mark.parametrize("k", range(1, 9))
def test_self_draft_from_the_quantized_target_equals_target_only(quantized_pair, k):
    target, _ = quantized_pair
    out, stats = Engine(target, SelfDrafter(target, "int4", group_size=32), num_draft_tokens=k).generate_ids(
        PROMPT, SamplingParams(max_new_tokens=N_NEW))
    assert out == reference(target)
    assert stats.accepted_tokens > 0


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def float_target(request):
    return native_from_hf(tiny_hf_model("qwen2", seed=3, vocab=128, layers=3), request.param)


@pytest.mark.parametrize("k", range(1, 9))
@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_self_draft_equals_float_target_only(float_target, mode, k):
    drafter = SelfDrafter(float_target, mode, group_size=32)
    assert layer_mode(drafter.model.model.layers[0].mlp.up_proj) == mode
    assert layer_mode(float_target.model.layers[0].mlp.up_proj) == "float"  # target untouched
    out, stats = Engine(float_target, drafter, num_draft_tokens=k).generate_ids(
        PROMPT, SamplingParams(max_new_tokens=N_NEW))
    assert out == reference(float_target)
    assert stats.accepted_tokens > 0
    if mode == "int8":  # int8 agrees with the float target nearly always, even on random weights
        assert stats.accepted_tokens >= 0.8 * stats.drafted_tokens


def test_self_drafter_engine_defaults_and_errors(float_target):
    engine = Engine(float_target, SelfDrafter(float_target))
    assert engine.drafter.name == "self" and engine.num_draft_tokens >= 1
    with pytest.raises(Exception, match="native"):
        SelfDrafter(object())


def test_sampling_with_quantized_target_and_self_draft_follows_the_target(monkeypatch):
    """One short distribution check (the full statistics live in test_engine_sampling.py): the
    same chi-square and total-variation bounds on 1,500 samples instead of 5,000."""
    import test_engine_sampling
    from test_engine_sampling import LENGTH, V, check_distribution, exact_sequence_probs

    monkeypatch.setattr(test_engine_sampling, "N", 1500)

    target = quantize_model(native_from_hf(tiny_hf_model("llama", seed=1, vocab=V)), "int8")
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH, ignore_eos=True)
    engine = Engine(target, SelfDrafter(target, "int4", group_size=32), num_draft_tokens=2)
    check_distribution(engine, exact_sequence_probs(target, params), params)
