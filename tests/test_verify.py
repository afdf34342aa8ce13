"""Verification is exact: the emitted token follows p, whatever q is (statistical tests).

Each test draws N samples with a fixed seed and applies a chi-square goodness-of-fit test at
significance 1e-4 (so a correct implementation fails once in 10,000 seeds; the seeds are fixed,
so the outcome is reproducible), plus a total-variation bound of 0.02.
"""

import numpy as np
import pytest
import torch
from scipy import stats as st

from specdecode.config import SamplingParams
from specdecode.sampling import logits_to_probs, sample
from specdecode.verify import greedy_accept, rejection_sample

N = 20000
ALPHA = 1e-4
TV_BOUND = 0.02


def first_token_samples(p, q, n=N, point_mass_from=None, seed=0):
    """Run one round with k = q.shape[0] drafts; return the first emitted token and accept flags."""
    g = torch.Generator().manual_seed(seed)
    k = q.shape[0] if q is not None else point_mass_from.shape[0]
    firsts, accepted_first = [], []
    for _ in range(n):
        source = q if q is not None else point_mass_from
        draft = sample(source, g)  # (k,) one draft token per position
        num_accepted, nxt = rejection_sample(draft, q, p, g)
        firsts.append(int(draft[0]) if num_accepted > 0 else nxt)
        accepted_first.append(num_accepted > 0)
    return np.array(firsts), np.array(accepted_first)


def assert_follows(samples, probs):
    probs = probs.double().numpy()
    counts = np.bincount(samples, minlength=len(probs))
    assert counts[probs == 0].sum() == 0, "sampled a token of probability zero"
    support = probs > 0
    if support.sum() > 1:
        _, pvalue = st.chisquare(counts[support], probs[support] / probs[support].sum() * counts.sum())
        assert pvalue > ALPHA, f"chi-square p-value {pvalue:.2e}"
    tv = 0.5 * np.abs(counts / counts.sum() - probs).sum()
    assert tv < TV_BOUND, f"total variation {tv:.4f}"


def dist(*xs):
    t = torch.tensor(xs, dtype=torch.float32)
    return t / t.sum()


CASES = {
    "generic": (dist(0.5, 0.2, 0.2, 0.1), dist(0.1, 0.3, 0.3, 0.3)),
    "p_equals_q": (dist(0.4, 0.3, 0.2, 0.1), dist(0.4, 0.3, 0.2, 0.1)),
    "disjoint_supports": (dist(0.7, 0.3, 0.0, 0.0), dist(0.0, 0.0, 0.5, 0.5)),
    "one_hot_q": (dist(0.25, 0.25, 0.25, 0.25), dist(0.0, 1.0, 0.0, 0.0)),
    "one_hot_p": (dist(0.0, 0.0, 1.0, 0.0), dist(0.3, 0.3, 0.2, 0.2)),
}


@pytest.mark.parametrize("case", CASES)
def test_rejection_sampling_preserves_target_distribution(case):
    p0, q0 = CASES[case]
    p = torch.stack([p0, dist(1, 2, 3, 4)])  # (k+1, V): row k gives the bonus token
    q = q0[None]  # (k=1, V)
    samples, accepted = first_token_samples(p, q)
    assert_follows(samples, p0)
    # Acceptance rate of the first draft is sum_x min(p(x), q(x)) (Leviathan et al., Thm 3.5).
    expected = torch.minimum(p0, q0).sum().item()
    se = max(np.sqrt(expected * (1 - expected) / N), 1e-9)
    assert abs(accepted.mean() - expected) <= 4.5 * se + 1e-9


def test_point_mass_draft_without_q_is_exact():
    p0 = dist(0.1, 0.6, 0.2, 0.1)
    p = torch.stack([p0, p0])
    proposer = dist(0.2, 0.2, 0.3, 0.3)[None]  # an n-gram drafter's guesses, no probabilities
    samples, accepted = first_token_samples(p, None, point_mass_from=proposer)
    assert_follows(samples, p0)
    # A point mass at x is accepted with probability p(x): expected acceptance sum_x r(x) p(x).
    expected = float((proposer[0] * p0).sum())
    assert abs(accepted.mean() - expected) <= 4.5 * np.sqrt(expected * (1 - expected) / N)


@pytest.mark.parametrize("top_k,top_p", [(2, 1.0), (0, 0.7), (3, 0.8)])
def test_exact_with_top_k_top_p_applied_to_both(top_k, top_p):
    params = SamplingParams(temperature=0.8, top_k=top_k, top_p=top_p)
    g = torch.Generator().manual_seed(3)
    target_logits, draft_logits = torch.randn(2, 6, generator=g), torch.randn(1, 6, generator=g)
    p, q = logits_to_probs(target_logits, params), logits_to_probs(draft_logits, params)
    samples, _ = first_token_samples(p, q)
    assert_follows(samples, p[0])


def test_bonus_token_follows_last_target_row():
    p = torch.stack([dist(0, 1, 0, 0), dist(0, 0, 1, 0), dist(0.1, 0.2, 0.3, 0.4)])
    q = torch.stack([dist(0, 1, 0, 0), dist(0, 0, 1, 0)])
    g = torch.Generator().manual_seed(1)
    bonus = []
    for _ in range(N // 2):
        n, nxt = rejection_sample(torch.tensor([1, 2]), q, p, g)
        assert n == 2
        bonus.append(nxt)
    assert_follows(np.array(bonus), p[2])


def test_greedy_accept():
    target = [1, 2, 0, 1]  # the target's token at each position
    assert greedy_accept([1, 2, 0], target) == (3, 1)
    assert greedy_accept([1, 0, 0], target) == (1, 2)
    assert greedy_accept([2, 2, 0], target) == (0, 1)
    assert greedy_accept([1, 2, 1], target) == (2, 0)
    assert greedy_accept([], target[:1]) == (0, 1)


def test_logits_to_probs_filters():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert (logits_to_probs(logits, SamplingParams(temperature=1.0, top_k=2)) > 0).tolist() == [True, True, False, False]
    probs = logits.softmax(-1)  # 0.64, 0.24, 0.09, 0.03
    kept = logits_to_probs(logits, SamplingParams(temperature=1.0, top_p=0.8)) > 0
    assert kept.tolist() == [True, True, False, False]
    assert torch.allclose(logits_to_probs(logits, SamplingParams(temperature=1.0)), probs)
    assert logits_to_probs(logits, SamplingParams()).tolist() == [1.0, 0.0, 0.0, 0.0]
