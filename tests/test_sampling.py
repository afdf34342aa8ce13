"""logits_to_probs at the edges: every result is a valid distribution that keeps the most
likely token; temperature -> 0 is greedy, through the Python API (target-only and speculative)
and the CLI alike. The server's side is in test_server.py."""

from __future__ import annotations

import math

import pytest
import torch

import specdecode
from specdecode import Engine, NgramDrafter, SamplingParams
from specdecode.drafters import ModelDrafter
from specdecode.sampling import logits_to_probs, sample

TINY_TEMPERATURES = [1e-45, 5e-324, 1e-40, 1e-38, 1e-30, 1e-20]


def _logits(rows: int = 8, vocab: int = 50, scale: float = 30.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(rows, vocab, generator=g) * scale  # (rows, V), no exact ties


def _assert_valid(probs: torch.Tensor) -> None:
    assert torch.isfinite(probs).all() and (probs >= 0).all()
    assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5)


def _one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)


@pytest.mark.parametrize("temperature", TINY_TEMPERATURES)
def test_tiny_temperature_is_greedy(temperature):
    logits = _logits()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        probs = logits_to_probs(logits.to(dtype), SamplingParams(temperature=temperature))
        _assert_valid(probs)
        assert torch.equal(probs, _one_hot_argmax(logits.to(dtype).float()))


def test_tiny_temperature_splits_exact_ties_evenly():
    """The limit of softmax(x / T) as T -> 0 is uniform over the maxima (the greedy limit)."""
    logits = torch.tensor([[5.0, 1.0, 5.0, -3.0], [0.0, 0.0, 0.0, 0.0]])
    probs = logits_to_probs(logits, SamplingParams(temperature=1e-30))
    assert probs.tolist() == [[0.5, 0.0, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]]


def test_masked_logits_and_extreme_scales_stay_finite():
    logits = _logits(scale=1e30)
    logits[:, ::3] = float("-inf")  # already masked out by someone
    for temperature in (1e-45, 1e-30, 0.01, 1.0, 2.0, 1e30):
        for top_p in (1e-46, 0.5, 1.0):
            probs = logits_to_probs(logits, SamplingParams(temperature=temperature, top_p=top_p, top_k=7))
            _assert_valid(probs)
            assert (probs[:, ::3] == 0).all()
            assert (probs.argmax(-1) == logits.argmax(-1)).all()


@pytest.mark.parametrize("top_p", [1e-46, 5e-324, 1e-30, 1e-6])
def test_tiny_top_p_keeps_only_the_most_likely_token(top_p):
    logits = _logits(scale=1.0)
    probs = logits_to_probs(logits, SamplingParams(temperature=1.0, top_p=top_p))
    _assert_valid(probs)
    assert torch.equal(probs, _one_hot_argmax(logits))


def test_top_k_1_is_greedy():
    logits = _logits(scale=1.0)
    for temperature in (1e-45, 0.5, 2.0, 1e30):
        probs = logits_to_probs(logits, SamplingParams(temperature=temperature, top_k=1))
        assert torch.equal(probs, _one_hot_argmax(logits))


def test_huge_temperature_tends_to_uniform():
    logits = _logits()
    probs = logits_to_probs(logits, SamplingParams(temperature=1e30))
    _assert_valid(probs)
    assert torch.allclose(probs, torch.full_like(probs, 1 / logits.shape[-1]))
    # Top-k and top-p still keep the right tokens at a huge temperature.
    probs = logits_to_probs(logits, SamplingParams(temperature=1e30, top_k=5))
    assert torch.equal(probs > 0, logits >= logits.topk(5, -1).values[:, -1:])


def test_ordinary_temperatures_unchanged():
    """Subtracting the max first is the same softmax as before, up to rounding."""
    logits = _logits(scale=3.0)
    for temperature in (0.3, 0.7, 1.0, 1.7):
        want = (logits / temperature).softmax(-1)
        assert torch.allclose(logits_to_probs(logits, SamplingParams(temperature=temperature)), want, atol=1e-6)


@pytest.mark.parametrize("bad", [math.inf, math.nan, -1e-45])
def test_non_finite_or_negative_temperature_is_refused(bad):
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=bad)


def test_sample_of_one_hot_is_its_token():
    g = torch.Generator().manual_seed(0)
    probs = _one_hot_argmax(_logits())
    for _ in range(20):
        assert torch.equal(sample(probs, g), probs.argmax(-1))


# -- through the engine: target-only and speculative ----------------------------------------------

@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    # float32: bfloat16 logits of a tiny model tie often, and top_k=1 / tiny top_p keep all tied maxima.
    return specdecode.load("tiny-random", dtype="float32"), specdecode.load("tiny-random-draft", dtype="float32")


def _engines(models):
    target, draft = models
    # A fixed k, so that every round really drafts (the 'auto' default may choose not to).
    return {"target-only": Engine(target, None),
            "model-drafter": Engine(target, ModelDrafter(draft.lm), num_draft_tokens=3),
            "ngram": Engine(target, NgramDrafter(), num_draft_tokens=3)}


PROMPT = "def add(x, y):\n    return x + y\ndef add("


@pytest.mark.parametrize("edge", [dict(temperature=1e-45), dict(temperature=5e-324), dict(temperature=1e-38),
                                  dict(temperature=1.0, top_p=1e-46), dict(temperature=1.0, top_k=1),
                                  dict(temperature=1e-45, top_p=1e-46, top_k=1)],
                         ids=["t1e-45", "t5e-324", "t1e-38", "top_p1e-46", "top_k1", "all"])
def test_engine_edges_equal_greedy(models, edge):
    engines = _engines(models)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=24, ignore_eos=True)
    want = engines["target-only"].generate(PROMPT, greedy, chat=False).token_ids
    assert len(set(want)) > 1  # a NaN distribution samples token 0 over and over
    for name, engine in engines.items():
        params = SamplingParams(**edge, max_new_tokens=24, seed=7, ignore_eos=True)
        out = engine.generate(PROMPT, params, chat=False)
        assert out.token_ids == want, name
        assert name == "target-only" or out.stats.drafted_tokens > 0, name


def test_engine_huge_temperature_samples_widely(models):
    vocab = models[0].lm.vocab_size
    for name, engine in _engines(models).items():
        params = SamplingParams(temperature=1e30, max_new_tokens=40, seed=3, ignore_eos=True)
        ids = engine.generate(PROMPT, params, chat=False).token_ids
        assert len(ids) == 40 and all(0 <= t < vocab for t in ids), name
        assert len(set(ids)) > 20, name  # near-uniform over ~300 tokens, not a stuck token


def test_cli_tiny_temperature_equals_greedy(capsys):
    from specdecode.cli import main

    common = ["generate", PROMPT, "--model", "tiny-random", "--drafter", "ngram", "--raw", "-n", "16", "--threads", "1"]
    assert main(common) == 0
    want = capsys.readouterr().out
    assert main([*common, "--temperature", "1e-45", "--seed", "1"]) == 0
    assert capsys.readouterr().out == want
    assert main([*common, "--temperature", "nan"]) == 2
    assert "temperature" in capsys.readouterr().err
