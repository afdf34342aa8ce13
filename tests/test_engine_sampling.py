"""End to end: speculative sampling yields exactly the target's distribution over sequences.

A tiny-vocabulary model lets us enumerate the exact probability of every 3-token continuation
(V^3 cells) and compare it with thousands of speculative generations: chi-square at
significance 1e-4 on cells with expected count >= 5 (rest pooled), and a total variation below
2.5x the value that sampling noise alone gives on average, E[TV] ~ 0.5 sum sqrt(2 p (1-p) / (pi N)).
"""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats as st

from conftest import native_from_hf, tiny_hf_model
from specdecode import SamplingParams
from specdecode.drafters import ModelDrafter, NgramDrafter
from specdecode.engine import Engine
from specdecode.sampling import logits_to_probs

V, LENGTH, N = 5, 3, 5000
PROMPT = [1, 3, 1, 3, 1]


def exact_sequence_probs(target, params):
    """P(t1, t2, t3) under target-only sampling, by enumerating every continuation."""
    seqs = list(itertools.product(range(V), repeat=LENGTH))
    probs = {}
    for seq in seqs:
        ids = torch.tensor([PROMPT + list(seq)])
        logits = target(ids, torch.arange(ids.shape[1])[None], target.new_cache(16))[0]
        dist = logits_to_probs(logits[len(PROMPT) - 1 : -1], params)  # (LENGTH, V)
        probs[seq] = float(torch.prod(dist[torch.arange(LENGTH), torch.tensor(seq)]))
    return probs


@pytest.fixture(scope="module")
def models():
    target = native_from_hf(tiny_hf_model("llama", seed=1, vocab=V))
    draft = native_from_hf(tiny_hf_model("llama", seed=2, vocab=V))  # unrelated: many rejections
    return target, draft


def check_distribution(engine, exact, params, seed=0):
    counts = dict.fromkeys(exact, 0)
    for i in range(N):
        p = SamplingParams(**{**params.__dict__, "seed": seed * N + i})
        out, _ = engine.generate_ids(PROMPT, p)
        counts[tuple(out)] += 1
    keys = sorted(exact)
    expected = np.array([exact[k] for k in keys]) * N
    observed = np.array([counts[k] for k in keys], dtype=float)
    assert abs(expected.sum() - N) < 1e-3 * N
    assert observed[expected == 0].sum() == 0, "generated a sequence of probability zero"
    big = expected >= 5
    small = ~big & (expected > 0)
    exp_cells, obs_cells = expected[big], observed[big]
    if small.any():
        exp_cells = np.append(exp_cells, expected[small].sum())
        obs_cells = np.append(obs_cells, observed[small].sum())
    _, pvalue = st.chisquare(obs_cells, exp_cells * obs_cells.sum() / exp_cells.sum())
    tv = 0.5 * np.abs(observed / N - expected / N).sum()
    p_cells = expected / N
    noise_tv = 0.5 * np.sqrt(2 * p_cells * (1 - p_cells) / (np.pi * N)).sum()
    assert pvalue > 1e-4 and tv < 2.5 * noise_tv, f"p={pvalue:.2e} tv={tv:.3f} noise tv={noise_tv:.3f}"


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=1.0, max_new_tokens=LENGTH, ignore_eos=True),
     SamplingParams(temperature=0.7, top_k=3, top_p=0.9, max_new_tokens=LENGTH, ignore_eos=True)],
    ids=["plain", "topk_topp"],
)
def test_model_drafter_sequence_distribution(models, params):
    target, draft = models
    engine = Engine(target, ModelDrafter(draft), num_draft_tokens=2)
    check_distribution(engine, exact_sequence_probs(target, params), params)


def test_cut_vocabulary_draft_sequence_distribution(models):
    """A draft that can never propose ids 3 and 4 (drafters/draft_vocab.py): q is zero there, and
    the rejected mass must come back through the residual distribution exactly."""
    target, draft = models
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH, ignore_eos=True)
    drafter = ModelDrafter(draft, vocab_rows=3)
    assert drafter.model is not draft  # the cut applies
    engine = Engine(target, drafter, num_draft_tokens=2)
    check_distribution(engine, exact_sequence_probs(target, params), params, seed=2)


def test_ngram_drafter_sequence_distribution(models):
    target, _ = models
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH, ignore_eos=True)
    engine = Engine(target, NgramDrafter(max_ngram=2), num_draft_tokens=3)
    check_distribution(engine, exact_sequence_probs(target, params), params, seed=1)


def test_seed_reproducible(models):
    target, draft = models
    engine = Engine(target, ModelDrafter(draft), num_draft_tokens=3)
    p = SamplingParams(temperature=1.0, max_new_tokens=20, seed=123, ignore_eos=True)
    assert engine.generate_ids(PROMPT, p)[0] == engine.generate_ids(PROMPT, p)[0]
