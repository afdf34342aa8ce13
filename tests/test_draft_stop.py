"""Stopping a draft by the draft model's confidence (specdecode/policy/draft_stop.py), its wiring
through CostPlanner, ModelDrafter and the engine, and the lossless contract with it on."""

import pytest
import torch

from specdecode import SamplingParams
from specdecode.drafters import ModelDrafter
from specdecode.drafters.model import propose_batch
from specdecode.engine import Engine
from specdecode.policy.draft_stop import ConfidenceCalibration, DraftStop
from test_engine_greedy import PROMPT, pair, reference  # noqa: F401 - pair is a fixture
from test_policy import FLAT, LINEAR, MIDDLE, FakeModelDrafter, check_auto_distribution, planner, state

GREEDY = SamplingParams()
CPU = torch.device("cpu")


class FakeConfidentDrafter:
    """A draft model as the planner sees it, reporting its confidence per token."""

    name = "model"
    reports_confidence = True


def test_calibration_starts_from_confidence_and_learns_per_bucket():
    cal = ConfidenceCalibration()
    assert cal.acceptance(0.5) == pytest.approx(0.5)
    assert cal.acceptance(0.999) == pytest.approx(0.99)  # kept below 1
    cal.observe([0.95, 0.5, 0.2, 0.1], num_accepted=1)  # 0.95 accepted, 0.5 rejected, the rest unjudged
    assert cal.acceptance(0.95) > 0.95 and cal.acceptance(0.5) < 0.5
    assert cal.acceptance(0.1) == pytest.approx(0.1)  # never judged


def stop_rule(table, rate, step=0.0, bound=15, next_acceptance=0.8):
    return DraftStop(rate, step, table, next_acceptance, ConfidenceCalibration(), bound)


def test_draft_stop_drafts_on_while_confident_and_stops_when_not():
    flat = [0.0] + [1.0] * 16  # T(m) = T(1): verified rows are free
    rule = stop_rule(flat, rate=1.2, step=0.2)
    assert all(rule(0.99) for _ in range(5))
    assert not rule(0.05)  # a 7th token: 0.8 x P(all six accepted) ~ 0.04 < 1.2 x 0.2 (its step)


def test_draft_stop_respects_the_bound_and_dear_rows():
    flat = [0.0] + [1.0] * 16
    rule = stop_rule(flat, rate=1.0, bound=3)
    assert rule(0.99) and rule(0.99) and not rule(0.99)
    linear = [0.0] + [float(m) for m in range(1, 17)]  # T(m) = m T(1)
    assert not stop_rule(linear, rate=1.2)(0.99)  # one more token can never pay


def test_planner_alone_lets_a_confident_draft_run_to_k_max():
    p = planner(FLAT)
    s = state([FakeConfidentDrafter()])
    p.begin(s)
    plan = p.plan([s])[0]
    assert (plan.which, plan.k) == (0, 15) and plan.stop is not None
    assert s.plan_state.last.k <= plan.k  # the plan from averages; the draft's confidence decides the rest
    for _ in range(3):
        assert plan.stop(0.97)
    assert not plan.stop(0.01)
    p.observe(s, 4, 2)  # two accepted, the third rejected: three confidences judged
    assert s.plan_state.stop is None
    assert sum(p.calibrations["model"].seen) == 3


def test_planner_without_confidence_fixed_k_or_dear_passes_drafts_exactly_k():
    for p, d in ((planner(FLAT), FakeModelDrafter()), (planner(FLAT, k_fixed=3), FakeConfidentDrafter())):
        s = state([d])
        p.begin(s)
        plan = p.plan([s])[0]
        assert plan.stop is None and plan.k == s.plan_state.last.k > 0
    s = state([FakeConfidentDrafter()])
    p = planner(LINEAR)
    p.begin(s)
    assert p.plan([s])[0].k == 0


def test_in_a_batch_the_planned_k_is_the_most():
    p = planner(MIDDLE)
    s = state([FakeConfidentDrafter()])
    others = [state([]) for _ in range(3)]
    for x in [s, *others]:
        p.begin(x)
    plan = p.plan([s, *others])[0]
    assert plan.stop is not None and plan.k == s.plan_state.last.k == plan.stop.bound and 1 <= plan.k < 15


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


@pytest.fixture
def count_stops(monkeypatch):
    """Counts the rounds a DraftStop ended before its bound."""
    counts = {"stopped": 0}
    original = DraftStop.__call__

    def counting(self, confidence):
        go = original(self, confidence)
        counts["stopped"] += not go and len(self.confidences) < self.bound
        return go

    monkeypatch.setattr(DraftStop, "__call__", counting)
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
