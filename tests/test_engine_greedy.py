"""Greedy speculative output == target-only output, token for token (float32)."""

import pytest
import torch

from conftest import native_from_hf, tiny_hf_model
from specdecode import SamplingParams
from specdecode.drafters import ModelDrafter, NgramDrafter
from specdecode.engine import Engine

PROMPT = [5, 17, 33, 5, 17, 40, 8, 9, 5, 17]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def pair(request):
    target = native_from_hf(tiny_hf_model(request.param, seed=0))
    # A noisy copy of the target: agrees often but not always, like a real draft model.
    draft_hf = tiny_hf_model(request.param, seed=0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        for p in draft_hf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.15 * p.std())
    return target, native_from_hf(draft_hf)


def reference(target, n=40, eos=None):
    params = SamplingParams(max_new_tokens=n)
    return Engine(target, eos_token_ids=eos).generate_ids(PROMPT, params)[0]


@pytest.mark.parametrize("k", range(1, 9))
def test_model_drafter_equals_target_only(pair, k):
    target, draft = pair
    ref = reference(target)
    out, stats = Engine(target, ModelDrafter(draft), num_draft_tokens=k).generate_ids(PROMPT, SamplingParams(max_new_tokens=40))
    assert out == ref
    assert stats.drafted_tokens > 0
    assert 0 < stats.accepted_tokens < stats.drafted_tokens  # a real mix of accept and reject


@pytest.mark.parametrize("k", range(1, 9))
def test_ngram_drafter_equals_target_only(pair, k):
    target, _ = pair
    ref = reference(target, n=60)
    out, stats = Engine(target, NgramDrafter(), num_draft_tokens=k).generate_ids(PROMPT, SamplingParams(max_new_tokens=60))
    assert out == ref
    assert stats.drafted_tokens > 0


@pytest.mark.parametrize("adaptive", [False, True])
def test_draft_equal_to_target_accepts_everything(pair, adaptive):
    target, _ = pair
    out, stats = Engine(target, ModelDrafter(target), num_draft_tokens=4, adaptive=adaptive).generate_ids(
        PROMPT, SamplingParams(max_new_tokens=33)
    )
    assert out == reference(target, n=33)
    assert stats.accepted_tokens == stats.drafted_tokens > 0
    assert all(r == 1.0 for r in stats.acceptance_by_position)


def test_adaptive_and_confidence_policies_are_lossless(pair):
    target, draft = pair
    ref = reference(target)
    for engine in (
        Engine(target, ModelDrafter(draft), num_draft_tokens=3, adaptive=True),
        Engine(target, ModelDrafter(draft), num_draft_tokens=8),
    ):
        assert engine.generate_ids(PROMPT, SamplingParams(max_new_tokens=40))[0] == ref


@pytest.mark.parametrize("n", [1, 2, 7, 13])
def test_max_new_tokens_hit_exactly(pair, n):
    target, draft = pair
    out, stats = Engine(target, ModelDrafter(draft), num_draft_tokens=8).generate_ids(PROMPT, SamplingParams(max_new_tokens=n))
    assert out == reference(target, n=n)
    assert len(out) == n == stats.generated_tokens


def test_eos_inside_accepted_draft(pair):
    target, _ = pair
    ref = reference(target, n=40)
    # Choose as EOS a token that appears deep in the output: with the target drafting for itself
    # every draft is accepted, so EOS falls inside an accepted draft, not at a round boundary.
    eos = ref[21]
    expected = ref[: ref.index(eos)]
    engine = Engine(target, ModelDrafter(target), num_draft_tokens=8, eos_token_ids=[eos])
    out, _ = engine.generate_ids(PROMPT, SamplingParams(max_new_tokens=40))
    assert out == expected == reference(target, n=40, eos=[eos])


def test_cancelled_stream_leaves_engine_reusable(pair):
    target, draft = pair
    engine = Engine(target, ModelDrafter(draft), num_draft_tokens=4)
    it = engine.stream_tokens(PROMPT, SamplingParams(max_new_tokens=40))
    next(it), next(it)
    it.close()
    assert engine.generate_ids(PROMPT, SamplingParams(max_new_tokens=40))[0] == reference(target)


def test_transformers_models_give_the_same_result(arch):
    hf_target, hf_draft = tiny_hf_model(arch, seed=0), tiny_hf_model(arch, seed=0)
    with torch.no_grad():
        for p in hf_draft.parameters():
            p.add_(torch.randn_like(p) * 0.1 * p.std())
    native_target, native_draft = native_from_hf(hf_target), native_from_hf(hf_draft)
    params = SamplingParams(max_new_tokens=30)
    ref = Engine(native_target).generate_ids(PROMPT, params)[0]
    hf_ref = hf_target.generate(torch.tensor([PROMPT]), max_new_tokens=30, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, len(PROMPT):].tolist()
    assert ref == hf_ref  # the native target-only loop equals transformers' greedy generate
    for target in (native_target, hf_target):
        for draft in (native_draft, hf_draft):
            out, stats = Engine(target, draft, num_draft_tokens=4).generate_ids(PROMPT, params)
            assert out == ref
            assert stats.drafted_tokens > 0


@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_bfloat16_speculative_equals_target_only(k):
    """bf16 rounds differently for different pass shapes unless verification keeps them equal."""
    hf = tiny_hf_model("qwen2", seed=3, vocab=300, layers=3)
    target = native_from_hf(hf, dtype=torch.bfloat16)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05 * p.std())
    draft = native_from_hf(hf, dtype=torch.bfloat16)
    params = SamplingParams(max_new_tokens=60)
    ref = Engine(target).generate_ids(PROMPT, params)[0]
    out, stats = Engine(target, ModelDrafter(draft), num_draft_tokens=k).generate_ids(PROMPT, params)
    assert out == ref
    assert stats.accepted_tokens > 0
