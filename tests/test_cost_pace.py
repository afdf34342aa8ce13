"""The policy's costs follow the engine's own passes (specdecode/cost_pace.py)."""

import pytest

from conftest import native_from_hf, tiny_hf_model
from specdecode import SamplingParams
from specdecode.cost_drift import MIN_PREDICTED_S
from specdecode.cost_model import CostModel
from specdecode.cost_pace import CLIP, PROBE_AFTER, CostPace
from specdecode.drafters import CostPolicy, ModelDrafter, NgramDrafter
from specdecode.engine import Engine
from test_engine_greedy import PROMPT, pair, reference  # noqa: F401 - pair is a fixture
from test_policy import MIDDLE, FakeModelDrafter, check_auto_distribution

# A close call at the measured costs: T(m) = 50 ms + 10 ms a row, a draft step 15 ms. At the
# draft model's prior (0.75) one draft token is worth it (1.75 tokens in 75 ms against 1 in 50).
CLOSE = CostModel.from_function(lambda m: 0.050 + 0.010 * (m - 1), {"model": lambda m: 0.015 * m})


def observe_single(pace: CostPace, ratio: float, times: int = 20) -> None:
    for _ in range(times):
        pace.observe_target(1, 0.050 * ratio, 0.050)


def observe_both(pace: CostPace, single: float, multi: float, times: int = 20) -> None:
    """Rounds alternating between no draft (T(1)) and a draft (T(3)), as a close call runs."""
    for _ in range(times):
        pace.observe_target(1, 0.050 * single, 0.050)
        pace.observe_target(3, 0.070 * multi, 0.070)


def test_pace_starts_at_the_cost_model_and_follows_each_kind_of_pass():
    pace = CostPace()
    assert pace.target(1) == pace.target(4) == pace.draft == 1.0
    observe_both(pace, 0.8, 1.0, times=10)
    assert 0.8 < pace.target(1) < 0.85 and 0.95 < pace.target(3) < 1.0
    assert pace.draft == pytest.approx(pace.target(3))  # not seen: the multi-token passes' figure
    for _ in range(10):
        pace.observe_draft(0.024, 0.020)
    assert 1.1 < pace.draft < 1.2
    assert pace.passes_seen() == {"single": 10, "multi": 10, "draft": 10}


def test_a_kind_not_seen_drifts_back_to_the_machine_s_pace():
    """The first benchmark with the pace: a slow minute (every kind of pass ~1.15-1.2x) left
    multi-token passes and draft steps at ~1.2x; afterwards only one-token passes ran (at 0.9x).
    Without fading, the draft model never came back (it never drafted, so it was never timed again)."""
    pace = CostPace()
    for _ in range(10):
        pace.observe_target(1, 0.050 * 1.15, 0.050)
        pace.observe_target(2, 0.060 * 1.2, 0.060)
        pace.observe_draft(0.020 * 1.2, 0.020)
    assert pace.target(2) > 1.15 and pace.draft > 1.15
    observe_single(pace, 0.9, times=40)
    assert pace.target(1) < 0.92 and pace.target(2) < 0.97 and pace.draft < 0.97
    # Even when the slow minute ends exactly as drafting stops, the gap is learned from one pair
    # of adjacent passes only, so the unseen kinds still come most of the way back.
    abrupt = CostPace()
    for _ in range(10):
        abrupt.observe_target(2, 0.060 * 1.2, 0.060)
        abrupt.observe_draft(0.020 * 1.2, 0.020)
    observe_single(abrupt, 0.9, times=40)
    assert abrupt.target(2) < 1.05 and abrupt.draft < 1.05


def test_recent_passes_outweigh_old_ones():
    pace = CostPace()
    observe_single(pace, 1.3)
    observe_single(pace, 0.8, times=8)
    assert pace.target(1) < 0.9


def test_one_factor_for_every_multi_token_pass_keeps_the_entry_s_shape():
    """A factor per m made a kink (the m seen most read low, the others took the pooled figure),
    so the step past the usual draft length looked dear and was never taken to be timed."""
    pace = CostPace()
    for _ in range(10):
        pace.observe_target(4, 0.045, 0.050)  # T(4) 0.9x
        pace.observe_target(2, 0.055, 0.050)  # T(2) 1.1x
    assert 0.95 < pace.target(4) < 1.05
    assert pace.target(2) == pace.target(4) == pace.target(5) == pace.target(16)


def test_outliers_are_clipped_and_tiny_passes_ignored():
    pace = CostPace()
    for _ in range(50):
        pace.observe_target(1, 1.0, 0.010)  # 100x: a paused process, not the machine's pace
    assert pace.target(1) == pytest.approx(CLIP) and pace.target(1) <= CLIP * (1 + 1e-9)
    tiny = CostPace()
    tiny.observe_target(1, 0.0001, MIN_PREDICTED_S / 2)
    tiny.observe_draft(0.0001, MIN_PREDICTED_S / 2)
    assert tiny.passes_seen() == {"single": 0, "multi": 0, "draft": 0} and tiny.target(1) == 1.0


def test_one_token_passes_go_stale_while_every_round_drafts():
    pace = CostPace()
    for _ in range(PROBE_AFTER - 1):
        pace.observe_target(3, 0.05, 0.05)
    assert not pace.single_is_stale()
    pace.observe_target(3, 0.05, 0.05)
    assert pace.single_is_stale()
    pace.observe_target(1, 0.05, 0.05)
    assert not pace.single_is_stale()


def test_faster_one_token_passes_turn_a_close_draft_into_the_target_alone():
    """The case of the benchmark run in docs/policy.md: T(1) runs at 0.7x the entry, the rest as
    measured; drafting that the entry favoured loses at the real costs."""
    assert CostPolicy(CLOSE, [FakeModelDrafter()]).choose(list(range(10)), 15)[1] > 0
    pace = CostPace()
    observe_both(pace, 0.7, 1.0)
    policy = CostPolicy(CLOSE, [FakeModelDrafter()], pace=pace)
    assert policy.choose(list(range(10)), 15)[1] == 0
    # and the other way: dearer one-token passes make the same draft clearly worth it
    slow = CostPace()
    observe_both(slow, 1.5, 1.0)
    assert CostPolicy(CLOSE, [FakeModelDrafter()], pace=slow).choose(list(range(10)), 15)[1] > 0
    # the whole machine slower or faster alike changes nothing
    for ratio in (0.7, 1.5):
        alike = CostPace()
        observe_both(alike, ratio, ratio)
        assert CostPolicy(CLOSE, [FakeModelDrafter()], pace=alike).choose(list(range(10)), 15)[1] > 0


def test_a_close_round_times_a_stale_one_token_pass_a_clear_one_does_not():
    pace = CostPace()
    for _ in range(PROBE_AFTER):
        pace.observe_target(2, 0.060, 0.060)
    close = CostPolicy(CLOSE, [FakeModelDrafter()], pace=pace)
    assert close.choose(list(range(10)), 15)[1] == 0 and close.probes == 1
    flat = CostModel.from_function(lambda m: 0.050, {"model": lambda m: 0.002})
    clear = CostPolicy(flat, [FakeModelDrafter()], pace=pace)  # expected far more than 1.25x the target
    assert clear.choose(list(range(10)), 15)[1] > 0 and clear.probes == 0
    fixed = CostPolicy(CLOSE, [FakeModelDrafter()], pace=pace, k_fixed=2)
    assert fixed.choose(list(range(10)), 15)[1] == 2 and fixed.probes == 0
    pace.observe_target(1, 0.050, 0.050)  # timed: no more probing
    assert CostPolicy(CLOSE, [FakeModelDrafter()], pace=pace).choose(list(range(10)), 15)[1] > 0


def test_the_policy_predicts_its_draft_at_the_cost_model_s_figures():
    pace = CostPace()
    for _ in range(20):
        pace.observe_draft(0.030, 0.015)  # drafting runs at 2x: the choice sees it ...
    flat = CostModel.from_function(lambda m: 0.050, {"model": lambda m: 0.002})
    policy = CostPolicy(flat, [FakeModelDrafter()], pace=pace)
    assert policy.choose(list(range(10)), 15)[1] > 0
    assert 1.7 < pace.draft <= 2.0 + 1e-9 and policy.last.step == pytest.approx(0.002 * pace.draft)
    # ... but what the engine compares its draft time with stays the unpaced figure
    assert policy.predicted_draft_seconds(3) == pytest.approx(3 * 0.002)
    assert policy.predicted_draft_seconds(0) == 0.0


@pytest.mark.parametrize("drafters", ["model", "both"])
def test_engine_feeds_the_pace_and_output_stays_the_target_s(pair, drafters):  # noqa: F811
    """With costs the tiny models' passes are far below (10 ms predicted, under 1 ms taken), every
    observation is clipped to 1/CLIP: the pace moves, decisions change, the output does not."""
    target, draft = pair
    drafter = ModelDrafter(draft) if drafters == "model" else [ModelDrafter(draft), NgramDrafter()]
    engine = Engine(target, drafter, cost_model=MIDDLE)
    assert engine.cost_pace is None  # a given cost model is taken as it is ...
    engine.cost_pace = CostPace()  # ... unless a pace is set
    for n in (7, 60):
        out, _ = engine.generate_ids(PROMPT, SamplingParams(max_new_tokens=n))
        assert out == reference(target, n=n)
    seen = engine.cost_pace.passes_seen()
    assert seen["multi"] > 0 and seen["draft"] > 0
    assert engine.cost_pace.target(2) < 0.8 and engine.cost_pace.draft < 0.8


def test_engine_that_measures_its_costs_keeps_a_pace(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    target = native_from_hf(tiny_hf_model("llama", seed=0))
    engine = Engine(target, NgramDrafter())
    assert engine.cost_model.T(1) > 0 and isinstance(engine.cost_pace, CostPace)


class FlickeringPace(CostPace):
    """One-token passes look stale on every other round: close rounds alternate between a probe
    (no draft) and a draft."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def single_is_stale(self) -> bool:
        self.asked += 1
        return self.asked % 2 == 0


def test_sampling_follows_the_target_distribution_with_a_moved_pace(monkeypatch):
    """A pace that moves the choices (one-token passes at 0.75x: close rounds, half of them probes)
    leaves the sampled distribution exactly the target's."""
    pace = FlickeringPace()
    observe_single(pace, 0.75)
    check_auto_distribution(monkeypatch, MIDDLE, seed=5, pace=pace)
    assert pace.asked > 100  # the policies consulted it: rounds were close calls
