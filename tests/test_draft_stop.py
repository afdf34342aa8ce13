"""Stopping a draft by the draft model's confidence (drafters/confidence.py), its wiring through
CostPolicy, ModelDrafter and the engine, and the lossless contract with it on."""

import pytest
import torch

from specdecode import SamplingParams
from specdecode.drafters import CostPolicy, ModelDrafter
from specdecode.drafters.confidence import ConfidenceCalibration, DraftStop
from specdecode.drafters.model import propose_batch
from specdecode.engine import Engine
from test_engine_greedy import PROMPT, pair, reference  # noqa: F401 - pair is a fixture
from test_policy import FLAT, LINEAR, MIDDLE, T1, FakeModelDrafter, check_auto_distribution

GREEDY = SamplingParams()
CPU = torch.device("cpu")


class FakeConfidentDrafter:
    """A draft model as the policy sees it, reporting its confidence per token."""

    name = "model"
    reports_confidence = True


def test_calibration_starts_from_confidence_plus_a_little_and_learns_per_bucket():
    cal = ConfidenceCalibration(prior_weight=2.0)
    assert cal.acceptance(0.5) == pytest.approx(0.6)
    assert cal.acceptance(0.95) == pytest.approx(0.99)  # kept below 1
    cal.observe([0.95, 0.5, 0.2, 0.1], num_accepted=1)  # 0.95 accepted, 0.5 rejected, the rest unjudged
    assert cal.seen == [0.0, 1.0, 0.0, 1.0] and cal.accepted == [0.0, 0.0, 0.0, 1.0]
    assert cal.acceptance(0.5) == pytest.approx(2 * 0.6 / 3)  # bucket [0.4, 0.7): one rejection
    assert cal.acceptance(0.2) == pytest.approx(0.3)  # bucket [0, 0.4): nothing seen, the prior
    for _ in range(50):
        cal.observe([0.3], num_accepted=1)
    assert cal.acceptance(0.3) > 0.95  # an under-confident draft is learned


def stop_rule(T, rate, step=0.0, bound=15, next_acceptance=0.8):  # noqa: N803
    return DraftStop(rate, step, T, lambda j: next_acceptance, ConfidenceCalibration(), bound)


def test_draft_stop_drafts_on_while_confident_and_stops_when_not():
    flat = [0.0] + [T1] * 17  # T(m) = T1 for every m: rows are free, only draft steps cost
    rule = stop_rule(flat, rate=1.2 / T1, step=0.2 * T1)
    assert all(rule.keep_drafting(0.99) for _ in range(5))
    assert not rule.keep_drafting(0.05)  # a 7th token: 0.8 x P(all six accepted) ~ 0.1 < 1.2 x 0.2 (its step)
    assert len(rule.confidences) == 6


def test_draft_stop_respects_the_bound_and_dear_rows():
    flat = [0.0] + [T1] * 17
    rule = stop_rule(flat, rate=1.2 / T1, bound=3)
    assert rule.keep_drafting(0.99) and rule.keep_drafting(0.99) and not rule.keep_drafting(0.99)
    linear = [0.0] + [T1 * m for m in range(1, 18)]  # each row costs a whole pass
    assert not stop_rule(linear, rate=1.2 / T1).keep_drafting(0.99)  # one more token can never pay


def test_policy_alone_lets_a_confident_draft_run_to_k_max():
    policy = CostPolicy(FLAT, [FakeConfidentDrafter()])
    which, k = policy.choose([1, 2, 3], 100)
    assert (which, k) == (0, 15) and policy.draft_stop is not None
    assert policy.last.k <= k  # the plan from averages; the draft's confidence decides the rest
    for _ in range(3):
        assert policy.draft_stop.keep_drafting(0.97)
    assert not policy.draft_stop.keep_drafting(0.01)
    policy.update(4, 2)  # two accepted, the third rejected: three confidences judged
    assert policy.draft_stop is None
    cal = policy.calibrations[0]
    assert sum(cal.seen) == 3 and sum(cal.accepted) == 2
    which, k = policy.choose([1, 2, 3], 6)  # the room left caps it
    assert k == 6


def test_policy_without_confidence_fixed_k_or_dear_passes_drafts_exactly_k():
    which, k = (p := CostPolicy(FLAT, [FakeModelDrafter()])).choose([1, 2, 3], 100)
    assert p.draft_stop is None and k == p.last.k
    which, k = (p := CostPolicy(FLAT, [FakeConfidentDrafter()], k_fixed=3)).choose([1, 2, 3], 100)
    assert p.draft_stop is None and k == 3
    which, k = (p := CostPolicy(LINEAR, [FakeConfidentDrafter()])).choose([1, 2, 3], 100)
    assert p.draft_stop is None and k == 0


def test_in_a_batch_the_planned_k_is_the_most():
    policy = CostPolicy(MIDDLE, [FakeConfidentDrafter()])
    which, k = policy.choose([1, 2, 3], 100, batch=(4, 4.0))
    assert policy.draft_stop is not None
    assert k == policy.last.k == policy.draft_stop.bound and 1 <= k < 15


def test_propose_batch_reports_each_tokens_confidence_and_stops_where_told(pair):  # noqa: F811
    _, draft = pair
    heard: list[float] = []

    def two_then_stop(c: float) -> bool:
        heard.append(c)
        return len(heard) < 2

    d = ModelDrafter(draft)
    d.begin(PROMPT, 64, CPU)
    out = propose_batch([d], [PROMPT], [6], [GREEDY], [None], [two_then_stop])[0]
    assert len(out.tokens) == 2 and len(heard) == 2
    # The confidences are the draft's untempered top probabilities after PROMPT and PROMPT + token 0.
    ids = PROMPT + out.tokens[:1]
    cache = draft.new_cache(len(ids) + 1)
    logits = draft(torch.tensor([ids]), torch.arange(len(ids)).view(1, -1), cache, num_logits=2)[0]  # (2, V)
    expected = torch.softmax(logits.float(), -1).amax(-1).tolist()
    assert heard == pytest.approx(expected, rel=1e-4)
    assert 0.0 < min(heard) and max(heard) < 1.0  # a real distribution, not a one-hot


def test_greedy_min_confidence_uses_the_real_top_probability(pair):  # noqa: F811
    """Greedy used to judge min_confidence on a one-hot q (always 1), so it never stopped."""
    _, draft = pair
    d = ModelDrafter(draft, min_confidence=0.999)
    d.begin(PROMPT, 64, CPU)
    assert len(d.propose(PROMPT, 5, GREEDY, None)) == 1


@pytest.fixture
def count_stops(monkeypatch):
    """Counts the rounds a DraftStop ended before its bound."""
    counts = {"stopped": 0}
    original = DraftStop.keep_drafting

    def counting(self, confidence):
        go = original(self, confidence)
        counts["stopped"] += not go and len(self.confidences) < self.bound
        return go

    monkeypatch.setattr(DraftStop, "keep_drafting", counting)
    return counts


def test_auto_greedy_equals_target_only_while_confidence_stops_drafts(pair, count_stops):  # noqa: F811
    target, draft = pair
    engine = Engine(target, ModelDrafter(draft), cost_model=MIDDLE)
    for n in (7, 60):
        out, stats = engine.generate_ids(PROMPT, SamplingParams(max_new_tokens=n))
        assert out == reference(target, n=n)
    assert count_stops["stopped"] > 0 and stats.drafted_tokens > 0


def test_auto_sampling_follows_the_target_distribution_while_confidence_stops_drafts(monkeypatch, count_stops):
    """The distribution check of test_engine_sampling.py (1,500 samples) with draft lengths set by the
    draft's confidence: stopping depends on the draft alone, so the output distribution is the target's."""
    check_auto_distribution(monkeypatch, MIDDLE, seed=3)
    assert count_stops["stopped"] > 0
