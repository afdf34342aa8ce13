"""presence / frequency penalties and logit_bias: the adjusted target, exactly, with speculation.

The adjusted logits are checked against an independent target-only loop (a full forward per
token, the counts kept in numpy); every drafter gives that loop's output token for token
(greedy and seeded, in a batch too); sampled output follows the adjusted distribution (chi-square
against the distribution enumerated by hand).
"""

import numpy as np
import pytest
import torch

import specdecode
from conftest import pooled_chisquare_pvalue
from specdecode import SamplingParams
from specdecode.drafters import ModelDrafter, NgramDrafter, SuffixDrafter
from specdecode.engine import Engine
from specdecode.errors import InvalidParameterError
from specdecode.logit_adjust import adjust_logits
from specdecode.sampling import logits_to_probs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "def add(x, y):"


@pytest.fixture(scope="module")
def models():
    return specdecode.load("tiny-random", dtype="float32"), specdecode.load("tiny-random-draft", dtype="float32")


def reference_greedy(lm, prompt: list[int], n: int, presence: float, frequency: float, bias: dict) -> list[int]:
    """Target-only greedy decoding with OpenAI's formula, written out: no engine, no cache reuse."""
    out: list[int] = []
    for _ in range(n):
        seq = prompt + out
        logits = lm(torch.tensor([seq]), torch.arange(len(seq))[None], lm.new_cache(len(seq) + 1))[0, -1].double().numpy()
        counts = np.bincount(np.array(out, dtype=np.int64), minlength=logits.shape[0])[: logits.shape[0]]
        adjusted = logits - frequency * counts - presence * (counts > 0)
        for t, b in bias.items():
            adjusted[t] += b
        out.append(int(np.argmax(adjusted)))
    return out


def test_adjust_logits_counts_the_drafts_ahead_of_each_row():
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=1.0, logit_bias={3: 2.0})
    logits = torch.zeros(3, 6)
    out = adjust_logits(logits, params, output=[1, 1, 2], draft=[2, 4])
    assert out[0].tolist() == [0, -2.5, -1.5, 2, 0, 0]
    assert out[1].tolist() == [0, -2.5, -2.5, 2, 0, 0]  # the first draft (2) now counts
    assert out[2].tolist() == [0, -2.5, -2.5, 2, -1.5, 0]
    assert adjust_logits(logits, SamplingParams(), [1, 2]) .eq(0).all()  # nothing asked: unchanged


@pytest.mark.parametrize("presence,frequency", [(0.0, 1.5), (1.2, 0.0), (-0.5, 0.3)])
def test_greedy_with_penalties_is_the_reference_whatever_the_drafter(models, presence, frequency):
    target, draft = models
    bias = {100: 3.0, 101: -100.0}
    params = SamplingParams(max_new_tokens=40, presence_penalty=presence, frequency_penalty=frequency,
                            logit_bias=bias, ignore_eos=True)
    engines = [Engine(target), Engine(target, NgramDrafter(), num_draft_tokens=3),
               Engine(target, SuffixDrafter(), num_draft_tokens=2),
               Engine(target, ModelDrafter(draft.lm), num_draft_tokens=4),
               Engine(target, [NgramDrafter(), ModelDrafter(draft.lm)])]
    prompt = engines[0].encode(PROMPT, chat=False)
    ref = reference_greedy(target.lm, prompt, 40, presence, frequency, bias)
    plain = engines[0].generate_ids(prompt, SamplingParams(max_new_tokens=40, ignore_eos=True))[0]
    assert ref != plain  # the penalties do change this text
    runs = [e.generate_ids(prompt, params) for e in engines]
    for ids, _ in runs:
        assert ids == ref
    assert 101 not in ref
    assert any(stats.accepted_tokens for _, stats in runs[1:])  # speculation did happen


def test_a_positive_bias_wins_and_a_batch_matches_each_alone(models):
    target, draft = models
    engine = Engine(target, ModelDrafter(draft.lm), num_draft_tokens=3)
    prompt = engine.encode(PROMPT, chat=False)
    forced = SamplingParams(max_new_tokens=8, logit_bias={77: 100.0}, ignore_eos=True)
    assert engine.generate_ids(prompt, forced)[0] == [77] * 8
    params = [SamplingParams(max_new_tokens=30, frequency_penalty=1.0, ignore_eos=True),
              SamplingParams(max_new_tokens=30, ignore_eos=True),
              SamplingParams(max_new_tokens=30, presence_penalty=2.0, temperature=0.8, seed=5, ignore_eos=True)]
    alone = [engine.generate_ids(prompt, p)[0] for p in params]
    states = [engine.start(prompt, p) for p in params]
    while not all(s.finished for s in states):
        engine.step(states)
    assert [s.generated for s in states] == alone


def test_bad_penalties_are_clear_errors(models):
    target, _ = models
    for bad in [dict(presence_penalty=2.5), dict(frequency_penalty=float("nan")), dict(logit_bias={1: 101}),
                dict(logit_bias={-1: 1.0}), dict(logit_bias={"a": 1.0}), dict(presence_penalty=True)]:
        with pytest.raises(InvalidParameterError):
            SamplingParams(**bad)
    with pytest.raises(InvalidParameterError, match="vocabulary"):
        Engine(target).generate("hi", SamplingParams(logit_bias={10**7: 1.0}), chat=False)


# -- the sampled distribution ------------------------------------------------------------------

N = 2000


def exact_two_token_probs(lm, prompt, params):
    """P(t1, t2) of the adjusted, top-k'd target over two tokens, enumerated."""
    def dist(out):
        seq = prompt + out
        logits = lm(torch.tensor([seq]), torch.arange(len(seq))[None], lm.new_cache(len(seq) + 1))[0, -1:]
        return logits_to_probs(adjust_logits(logits, params, out), params)[0]

    probs = {}
    p1 = dist([])
    for t1 in p1.nonzero().flatten().tolist():
        p2 = dist([t1])
        for t2 in p2.nonzero().flatten().tolist():
            probs[(t1, t2)] = float(p1[t1] * p2[t2])
    return probs


@pytest.mark.parametrize("seeded", [True, False], ids=["shared-noise", "rejection-sampling"])
def test_sampling_with_penalties_follows_the_adjusted_distribution(models, seeded):
    target, draft = models
    engine = Engine(target, ModelDrafter(draft.lm), num_draft_tokens=2)
    prompt = engine.encode(PROMPT, chat=False)
    # top_k keeps the support small enough to enumerate; the bias and the penalty reshape it
    params = dict(temperature=1.0, top_k=4, max_new_tokens=2, ignore_eos=True, frequency_penalty=2.0,
                  presence_penalty=1.0)
    base = SamplingParams(**params)
    first = int(logits_to_probs(target.lm(torch.tensor([prompt]), torch.arange(len(prompt))[None],
                                          target.lm.new_cache(len(prompt) + 1))[0, -1:], base)[0].argmax())
    base = SamplingParams(**params, logit_bias={first: 1.5})
    exact = exact_two_token_probs(target.lm, prompt, base)
    assert abs(sum(exact.values()) - 1.0) < 1e-4 and len(exact) >= 10
    counts = dict.fromkeys(exact, 0)
    for i in range(N):
        out, _ = engine.generate_ids(prompt, SamplingParams(**params, logit_bias={first: 1.5},
                                                            seed=2000 + i if seeded else None))
        counts[tuple(out)] += 1
    pvalue = pooled_chisquare_pvalue(exact, counts)
    assert pvalue > 1e-4, f"p={pvalue:.2e}"
