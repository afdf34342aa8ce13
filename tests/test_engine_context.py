"""The context-fit rule, one function (engine.context_budget) for the engine and the benchmark,
and speculation that never feeds a position past the model's context."""

from __future__ import annotations

import pytest
import torch

from specdecode import Engine, NgramDrafter, SamplingParams
from specdecode.bench.harness import fits_context
from specdecode.drafters import ModelDrafter
from specdecode.engine import context_budget
from specdecode.errors import ContextLengthError, SpecdecodeError
from specdecode.model import build_transformer
from specdecode.loading.tiny import tiny_args, tiny_state_dict

CONTEXT = 40


@pytest.fixture(scope="module")
def short_models():
    """The tiny target and draft with a 40-position context (RoPE tables end there)."""
    torch.set_num_threads(1)
    args = tiny_args(300)
    args.max_position_embeddings = CONTEXT
    target = build_transformer(args, tiny_state_dict(args), dtype=torch.float32)
    draft = build_transformer(args, tiny_state_dict(args, noise=0.02), dtype=torch.float32)
    return target, draft


def test_context_budget():
    assert context_budget(10, 5, 100) == 5
    assert context_budget(95, 5, 100) == 5  # exactly fills the context
    assert context_budget(96, 5, 100) == 4  # cut to what fits
    assert context_budget(99, 5, 100) == 1
    for prompt in (100, 101):
        with pytest.raises(ContextLengthError, match="context is 100 tokens"):
            context_budget(prompt, 5, 100)
    assert issubclass(ContextLengthError, SpecdecodeError)  # a user's error: 400 in the server


def test_bench_skips_exactly_the_prompts_the_engine_would_cut():
    for prompt in range(90, 102):
        cut = prompt >= 100 or context_budget(prompt, 5, 100) < 5
        assert fits_context(prompt, 5, 100) is not cut
    assert fits_context(95, 5, 100) and not fits_context(96, 5, 100)


def test_engine_stops_at_the_context(short_models):
    target, _ = short_models
    prompt = [5, 6, 7, 8] * 9  # 36 tokens: 4 more fit
    ids, _ = Engine(target, None, eos_token_ids=[]).generate_ids(prompt, SamplingParams(max_new_tokens=20))
    assert len(ids) == context_budget(len(prompt), 20, CONTEXT) == 4
    with pytest.raises(ContextLengthError):
        Engine(target, None, eos_token_ids=[]).generate_ids([5] * CONTEXT, SamplingParams(max_new_tokens=2))


@pytest.mark.parametrize("k", [1, 2, 3, 6, 12])
@pytest.mark.parametrize("prompt_len", [30, 35, 36, 38, 39])
def test_drafts_near_the_context_end_stay_inside_it(short_models, k, prompt_len):
    """A round close to the end drafts fewer tokens instead of feeding positions past the
    context (this raised IndexError from the RoPE table for k >= 3), and stays lossless."""
    target, draft = short_models
    prompt = ([5, 6, 7, 8] * 10)[:prompt_len]
    params = SamplingParams(max_new_tokens=20)
    expected, _ = Engine(target, None, eos_token_ids=[]).generate_ids(prompt, params)
    assert len(expected) == CONTEXT - prompt_len
    for drafter in (ModelDrafter(draft), ModelDrafter(target), NgramDrafter()):
        ids, stats = Engine(target, drafter, num_draft_tokens=k, eos_token_ids=[]).generate_ids(prompt, params)
        assert ids == expected, (drafter.name, k)
