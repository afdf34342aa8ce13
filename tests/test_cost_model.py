"""The cost model: T(m) interpolation, timing a real (tiny) model, the on-disk cache and its key."""

import json

import pytest
import torch

from conftest import native_from_hf, tiny_hf_model
from specdecode import cost_model as cm
from specdecode.cost_model import CostModel, PassCosts, measure_cost_model, measure_pass_costs, time_passes
from specdecode.drafters import ModelDrafter, NgramDrafter
from specdecode.hf_adapter import HFCausalLM
from specdecode.policy import CostPlanner
from specdecode.policy import costs as policy_costs
from specdecode.quant import quantized_copy


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    monkeypatch.setattr(cm, "_MEMO", {})
    return tmp_path


@pytest.fixture(scope="module")
def tiny():
    return native_from_hf(tiny_hf_model("llama", seed=0))


def test_interpolation_fills_1_to_16_and_never_decreases():
    costs = PassCosts.from_points({1: 1.0, 2: 1.5, 4: 1.4, 8: 3.0})
    assert len(costs.seconds) == 16 and costs.measured == [1, 2, 4, 8]
    assert costs(1) == 1.0 and costs(2) == 1.5
    assert costs(3) == costs(4) == 1.5  # the dip at 4 is noise: T never decreases
    assert costs(6) == pytest.approx(1.4 + (3.0 - 1.4) * 2 / 4)
    assert costs(16) == pytest.approx(1.4 + (3.0 - 1.4) * 12 / 4)  # last slope continues
    # past 16: the mean slope of 8..16, not the last segment's
    assert costs(20) == pytest.approx(costs(16) + 4 * (costs(16) - costs(8)) / 8)
    stairs = PassCosts([1.0] * 8 + [2.0] * 8)  # row blocks of 8: flat inside a block, a step between
    assert stairs(16) - stairs(15) == 0.0 and stairs(24) == pytest.approx(2.0 + 8 * (2.0 - 1.0) / 8)
    assert costs(0) == 0.0
    with pytest.raises(ValueError):
        PassCosts.from_points({2: 1.0, 4: 2.0})


def test_a_timed_prefill_sized_pass_sets_the_cost_past_the_table():
    """With T(32) timed, T(m) past it is proportional to m at T(32)'s cost per row (compute-bound
    prefill), and 17..31 interpolate; without it, the 8..16 slope rule stays."""
    pts = {1: 1.0, 2: 1.1, 4: 1.2, 8: 1.6, 16: 2.0, cm.BIG_M: 3.2}
    costs = PassCosts.from_points(pts)
    assert len(costs.seconds) == cm.BIG_M and costs.measured[-1] == cm.BIG_M
    assert costs(24) == pytest.approx(2.0 + (3.2 - 2.0) * 8 / 16)
    assert costs(cm.BIG_M) == 3.2 and costs(700) == pytest.approx(3.2 * 700 / cm.BIG_M)
    without = PassCosts.from_points({m: t for m, t in pts.items() if m != cm.BIG_M})
    assert without(700) == pytest.approx(2.0 + (700 - 16) * (2.0 - 1.6) / 8)
    assert PassCosts.from_dict(costs.to_dict())(700) == costs(700)  # survives the disk cache


def test_prefill_shaped_passes_drop_the_other_rows_vocabulary_projection():
    """A prompt chunk or a draft's catch-up keeps only the last row's logits: priced from the timed
    prefill-shaped BIG_M pass, not from T(m), whose every row is projected to the vocabulary."""
    pts = {1: 1.0, 2: 1.1, 4: 1.2, 8: 1.6, 16: 2.0, cm.BIG_M: 3.2}
    costs = PassCosts.from_points(pts, prefill_big=1.65, per_key=0.001)
    head_row = (3.2 - 1.65) / (cm.BIG_M - 1)
    assert costs.prefill(cm.BIG_M) == pytest.approx(1.65)
    assert costs.prefill(16) == pytest.approx(2.0 - 15 * head_row)
    assert costs.prefill(1) == costs(1)  # one row: nothing to drop
    assert costs.prefill(700) == pytest.approx(1.65 * 700 / cm.BIG_M)
    assert costs.prefill(700, 104) == pytest.approx(1.65 * 700 / cm.BIG_M + 700 * 100 * 0.001)
    assert PassCosts.from_dict(costs.to_dict()).prefill(700) == costs.prefill(700)
    untimed = PassCosts.from_points({m: t for m, t in pts.items() if m != cm.BIG_M})
    assert untimed.prefill(700, 104) == untimed.at(700, 104)  # no prefill-shaped pass: T(m)
    model = CostModel(costs, {"model": costs})
    assert model.draft_prefill("model", 700) == costs.prefill(700) and model.draft_prefill("ngram", 700) == 0.0


def test_time_passes_on_a_tiny_model_is_quick_and_covers_the_range(tiny):
    points, consistent = time_passes(tiny, budget_s=0.5)
    assert consistent  # passes this quick are not judged
    assert set(points) == {*cm.MEASURE_ORDER, cm.BIG_M}  # a tiny model is quick: the big pass too
    assert cm.BIG_M not in time_passes(tiny, budget_s=0.5, m_max=8)[0]  # not past a short table
    assert 0.0 < cm.time_prefill(tiny, points[cm.BIG_M]) < 10 * points[cm.BIG_M]
    assert measure_pass_costs(tiny).prefill_big > 0.0
    assert all(t > 0 for t in points.values())
    # A zero budget still times m = 1, 2 and 4: they decide whether speculation can pay at all.
    assert set(time_passes(tiny, budget_s=0.0)[0]) == {1, *cm.ALWAYS_TIMED}


def test_a_measurement_must_agree_with_itself():
    t1 = 0.05  # long enough to be judged
    assert cm._consistent(t1, {2: [1.07, 1.08, 1.9], 4: [1.3, 1.31, 1.29]})  # one outlier: the median stands
    assert not cm._consistent(t1, {2: [1.07, 1.84, 1.5], 4: [1.3, 1.31, 1.29]})  # no two pairs agree
    assert not cm._consistent(t1, {2: [1.8, 1.8], 4: [1.3, 1.3]})  # T(2) > 1.1 T(4)
    assert not cm._consistent(t1, {2: [0.7, 0.7]})  # T(2) well under T(1)
    assert cm._consistent(0.0005, {2: [1.07, 1.84, 1.5]})  # a tiny model's passes: not judged


def test_an_inconsistent_measurement_is_retaken_and_never_cached(tiny, isolated_cache, monkeypatch):
    calls = []

    def noisy(model, **kw):
        calls.append(1)
        return {1: 0.01, 2: 0.02, 4: 0.015}, False

    monkeypatch.setattr(cm, "time_passes", noisy)
    costs = measure_pass_costs(tiny)
    assert costs(1) == 0.01 and len(calls) == 1 + cm.RETAKES
    assert not list((isolated_cache / "costs").glob("*.json"))  # used for this process only
    monkeypatch.setattr(cm, "time_passes", lambda model, **kw: ({1: 0.01, 2: 0.011, 4: 0.012}, True))
    cm._MEMO.clear()
    measure_pass_costs(tiny)
    assert len(list((isolated_cache / "costs").glob("*.json"))) == 1


def test_measurement_is_cached_on_disk_and_reused(tiny, isolated_cache):
    first = measure_pass_costs(tiny)
    assert not first.from_cache and first.measure_seconds < 2.0
    files = list((isolated_cache / "costs").glob("*.json"))
    assert len(files) == 1
    cm._MEMO.clear()
    again = measure_pass_costs(tiny)
    assert again.from_cache and again.seconds == first.seconds
    # A damaged entry is measured again and overwritten, never an error.
    files[0].write_text("{not json")
    cm._MEMO.clear()
    redone = measure_pass_costs(tiny)
    assert not redone.from_cache and json.loads(files[0].read_text())["seconds"] == redone.seconds


def test_key_changes_with_what_changes_the_timings(tiny, monkeypatch):
    key = cm.cost_key(tiny)
    assert key["cpu"] == cm.cpu_signature() and key["threads"] == torch.get_num_threads()
    assert cm.cost_key(native_from_hf(tiny_hf_model("llama", seed=5))) == key  # same shape, other weights
    assert cm.cost_key(tiny.to(torch.bfloat16).float()) == key
    assert cm.cost_key(native_from_hf(tiny_hf_model("llama", seed=0), dtype=torch.bfloat16)) != key
    assert cm.cost_key(quantized_copy(tiny, "int8")) != key
    assert cm.cost_key(native_from_hf(tiny_hf_model("llama", seed=0, layers=3))) != key
    monkeypatch.setattr(cm, "cpu_signature", lambda: "another CPU; avx512_bf16")
    assert cm.cost_key(tiny) != key  # new CPU flags: measured afresh
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    assert cm.cost_key(tiny)["threads"] == 64


def test_cost_model_for_target_and_draft_model_only(tiny):
    draft = native_from_hf(tiny_hf_model("llama", seed=1, layers=1))
    model = measure_cost_model(tiny, [ModelDrafter(draft), NgramDrafter()])
    assert set(model.drafts) == {"model"}  # the n-gram drafter costs nothing measurable
    assert model.T(1) > 0 and model.draft("model", 1) > 0 and model.draft("ngram", 3) == 0.0
    text = model.format()
    assert "cost T(m) target" in text and "cost T(m) model" in text


def test_a_transformers_target_is_measured_too():
    hf = HFCausalLM(tiny_hf_model("qwen2", seed=0))
    costs = measure_pass_costs(hf, budget_s=0.2)
    assert costs(1) > 0 and costs.key["model"]["kind"] == "transformers"


def test_synthetic_cost_model():
    model = CostModel.from_function(lambda m: 0.01 * m, {"model": lambda m: 0.002})
    assert model.T(4) == pytest.approx(0.04) and model.draft("model", 7) == pytest.approx(0.002)
    assert model.to_dict()["target"]["seconds"][0] == pytest.approx(0.01)


def test_attention_cost_grows_with_the_context(tiny):
    """T(m) after L context tokens = T(m) + m (L - 4) per_key; measured on the model: per_key >= 0,
    and a one-token pass after 1,024 positions is indeed no cheaper than after 4."""
    costs = PassCosts([1.0, 1.1], [1, 2], per_key=1e-3)
    assert costs.at(2, 4) == costs(2) == 1.1
    assert costs.at(2, 104) == pytest.approx(1.1 + 2 * 100 * 1e-3)
    model = CostModel(costs)
    assert model.T(1, 1004) == pytest.approx(2.0) and model.T(1) == 1.0
    from specdecode.cost_model import time_per_key

    per_key = time_per_key(tiny)  # a long-context pass less a short one, taken in turn
    assert 0.0 <= per_key < 1e-5
    measured = measure_pass_costs(tiny, use_cache=False)
    assert measured.per_key >= 0.0 and PassCosts.from_dict(measured.to_dict()).per_key == measured.per_key



class _Ngram:
    name = "ngram"

    def evidence(self, context, k):
        return "ngram:3", k


def test_a_long_context_shortens_the_draft():
    """Flat passes but dear attention: 15 drafts after 64 tokens, fewer after 4,000."""
    from test_policy import choose, planner, state

    flat = CostModel.from_function(lambda m: 0.010, per_key=0.010 / 2000)
    ks = []
    for n in (64, 4000):
        p = planner(flat)
        s = state([_Ngram()], context=[1] * n)
        p.begin(s)
        from specdecode.policy.acceptance import AcceptanceEstimate

        s.plan_state.estimates[0, "ngram:3"] = est = AcceptanceEstimate(0.8)
        est.observe(15, 12)
        ks.append(choose(p, s)[1])
    assert ks[0] >= 12 and ks[1] < ks[0]


# -- the engine's own passes contradict the cached entry ----------------------------------------


def test_costs_are_measured_again_when_the_engines_passes_contradict_their_ratios(monkeypatch):
    """Multi-token passes run 2x dearer, relative to one-token passes, than the entry says: after
    MIN_PASSES of each kind the entry is measured again (once here) and replaced. A machine that is
    slower as a whole (every pass 3x) contradicts no ratio and changes nothing."""
    entry = CostModel.from_function(lambda m: 0.010 * (1 + 0.05 * (m - 1)))
    fresh = CostModel.from_function(lambda m: 0.010 * (1 + 0.5 * (m - 1)))
    calls = []

    def measure(target, drafters, refresh=False):
        calls.append(refresh)
        return entry

    def remeasure(target, old):
        assert old is entry
        calls.append(True)
        return fresh

    monkeypatch.setattr(policy_costs, "measure_cost_model", measure)
    monkeypatch.setattr(policy_costs, "remeasure_target", remeasure)
    costs = policy_costs.PassCostRatios(None, [])
    assert costs.model is entry and calls == [False]
    for _ in range(20):  # 3x slower as a whole: ratios hold
        costs.timed(1, 4, 3 * entry.T(1, 4))
        costs.timed(4, 4, 3 * entry.T(4, 4))
    assert calls == [False] and costs.model is entry
    for _ in range(policy_costs.WINDOW):  # now the multi-token passes run 2x the entry's ratio
        costs.timed(1, 4, entry.T(1, 4))
        costs.timed(4, 4, 2 * entry.T(4, 4))
    # noted, not measured in the middle of a request: that waits for settle() (between requests)
    assert calls == [False] and costs.pending and costs.model is entry
    assert costs.settle() and not costs.pending and not costs.settle()
    assert calls == [False, True] and costs.model is fresh and costs.remeasures == 1
    assert costs.table(4, 4)[4] == pytest.approx(fresh.T(4, 64) / fresh.T(1))


def test_the_engines_passes_steer_the_entrys_multi_token_ratios_short_of_a_contradiction(monkeypatch):
    """Multi-token passes 1.1x dearer, relative to one-token passes, than the entry says: once
    MIN_PASSES of each kind are seen, the table prices them so (one-token passes unchanged), no
    remeasure; 1.4x is priced at the limit; a machine slower as a whole changes nothing; a
    remeasure starts again from the new entry."""
    entry = CostModel.from_function(lambda m: 0.010 * (1 + 0.05 * (m - 1)))
    monkeypatch.setattr(policy_costs, "measure_cost_model", lambda target, drafters, refresh=False: entry)
    monkeypatch.setattr(policy_costs, "remeasure_target", lambda target, old: entry)
    costs = policy_costs.PassCostRatios(None, [])
    plain = costs.table(4, 4)
    for _ in range(policy_costs.WINDOW):  # 2x slower as a whole
        costs.timed(1, 4, 2 * entry.T(1, 4))
        costs.timed(3, 4, 2 * entry.T(3, 4))
    assert costs.multi_factor == 1.0 and costs.table(4, 4) == plain
    version = costs.version
    for _ in range(policy_costs.WINDOW):
        costs.timed(1, 4, entry.T(1, 4))
        costs.timed(3, 4, 1.1 * entry.T(3, 4))
    f = costs.multi_factor  # moved in steps of at least MULTI_FACTOR_STEP: near 1.1, not at it
    assert f == pytest.approx(1.1, rel=policy_costs.MULTI_FACTOR_STEP) and f > 1.05
    assert costs.version > version and not costs.pending
    steered = costs.table(4, 4)
    assert steered[1] == plain[1] == pytest.approx(1.0)
    assert steered[2:] == pytest.approx([f * t for t in plain[2:]])
    assert costs.batch(4) == pytest.approx(f * entry.T(4) / entry.T(1))
    for _ in range(policy_costs.WINDOW):  # a fast minute of one-token passes only, then a slow one
        costs.timed(1, 4, 0.9 * entry.T(1, 4))  # of multi-token passes only: learned from adjacent
    for _ in range(policy_costs.WINDOW):  # pairs, not from the two windows (which would read
        costs.timed(3, 4, 1.15 * 1.1 * entry.T(3, 4))  # 1.4x, no contradiction yet)
    assert costs.multi_factor == f and not costs.pending
    for _ in range(policy_costs.WINDOW):
        costs.timed(1, 4, entry.T(1, 4))
        costs.timed(3, 4, 1.4 * entry.T(3, 4))
    assert costs.multi_factor == pytest.approx(policy_costs.MULTI_FACTOR_LIMIT, rel=policy_costs.MULTI_FACTOR_STEP)
    assert costs.multi_factor <= policy_costs.MULTI_FACTOR_LIMIT and not costs.pending

    for _ in range(policy_costs.WINDOW):  # past CONTRADICTION: measured again, then the new entry as it is
        costs.timed(1, 4, entry.T(1, 4))
        costs.timed(3, 4, 2.0 * entry.T(3, 4))
    assert costs.pending and costs.settle()
    assert costs.multi_factor == 1.0 and costs.table(4, 4) == pytest.approx(plain)


def test_an_entry_that_disagreed_with_itself_is_timed_again_at_the_first_settle(monkeypatch):
    """A measurement still inconsistent after its retakes (a busy moment) is used, and timed again
    once no request waits; a consistent retake ends it, an inconsistent one is retried within
    MAX_REMEASURES. A consistent entry is left alone."""
    def entry(consistent: bool) -> CostModel:
        c = CostModel.from_function(lambda m: 0.010 * (1 + 0.05 * (m - 1)))
        c.target.consistent = consistent
        return c

    retakes = [entry(False), entry(True)]
    monkeypatch.setattr(policy_costs, "remeasure_target", lambda target, old: retakes.pop(0))
    monkeypatch.setattr(policy_costs, "measure_cost_model", lambda target, drafters, refresh=False: entry(True))
    good = policy_costs.PassCostRatios(None, [])
    assert good.model.target.consistent and not good.pending and not good.settle()
    monkeypatch.setattr(policy_costs, "measure_cost_model", lambda target, drafters, refresh=False: entry(False))
    costs = policy_costs.PassCostRatios(None, [])
    assert not costs.model.target.consistent and costs.pending
    assert costs.settle() and costs.remeasures == 1 and costs.pending  # the retake disagreed too
    assert costs.settle() and costs.remeasures == 2 and not costs.pending and costs.model.target.consistent
    assert not costs.settle() and retakes == []
    given = policy_costs.PassCostRatios(None, [], given=entry(False))  # tensor parallelism: rank 0's, unchecked
    assert not given.pending and not given.settle()


def test_measure_pass_costs_marks_an_entry_that_disagreed_with_itself(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    model = native_from_hf(tiny_hf_model("llama"), dtype=torch.float32)
    monkeypatch.setattr(cm, "time_passes", lambda model, **kw: ({1: 0.01, 2: 0.011, 4: 0.012}, False))
    monkeypatch.setattr(cm, "time_per_key", lambda model: 0.0)
    cm._MEMO.clear()
    costs = measure_pass_costs(model)
    assert not costs.consistent and not list((tmp_path / "costs").glob("*.json"))  # not cached
    monkeypatch.setattr(cm, "time_passes", lambda model, **kw: ({1: 0.01, 2: 0.011, 4: 0.012}, True))
    cm._MEMO.clear()
    assert measure_pass_costs(model).consistent and list((tmp_path / "costs").glob("*.json"))
    cm._MEMO.clear()
    cached = measure_pass_costs(model)
    assert cached.from_cache and cached.consistent


def test_a_remeasure_times_the_targets_ratios_again_and_keeps_the_rest_in_proportion(tiny, monkeypatch, tmp_path):
    """On the engine's word only the target's T(m)/T(1) are timed again (once, quickly): each draft
    model keeps its cost relative to the target's T(1), the attention figure its ratio too, and the
    memo serves the new figures to the next engine."""
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    old = CostModel.from_function(lambda m: 0.5 * (1 + 0.05 * (m - 1)), {"model": lambda m: 0.2 * m}, per_key=1e-4)
    timed = []
    real = cm.time_passes
    monkeypatch.setattr(cm, "time_passes", lambda model, **kw: timed.append(kw) or real(model, **kw))
    new = cm.remeasure_target(tiny, old)
    assert len(timed) == 1 and timed[0]["budget_s"] == cm.REMEASURE_BUDGET_S  # one short measurement
    assert new.T(1) != old.T(1)  # the tiny model's own timings, not the synthetic ones
    assert new.draft("model", 1) / new.T(1) == pytest.approx(old.draft("model", 1) / old.T(1))
    assert new.draft("model", 4) / new.draft("model", 1) == pytest.approx(4.0)
    assert new.target.per_key / new.T(1) == pytest.approx(old.target.per_key / old.T(1))
    assert measure_pass_costs(tiny) is new.target


def test_a_given_cost_model_is_never_replaced(tiny):
    import specdecode

    given = CostModel.from_function(lambda m: 1.0 * m)  # absurdly dear and steep: the passes will disagree
    engine = specdecode.Engine(tiny, NgramDrafter(), cost_model=given)
    for m in (1, 4) * 20:
        engine.planner.timed(m, 4, 0.001)
    engine.generate_ids([3, 5, 7], specdecode.SamplingParams(max_new_tokens=48))
    assert engine.cost_model is given and engine.cost_model_refreshes == 0



def test_a_contradicted_cost_model_is_timed_again_after_the_request_not_during_it(monkeypatch):
    """The re-timing takes about a second: a stream must not stall for it. It runs once the
    request's last tokens are out (Engine.settle from stream_tokens)."""
    import specdecode
    import specdecode.policy.costs as policy_costs

    entry = CostModel.from_function(lambda m: 0.010 * (1 + 0.1 * (m - 1)))
    calls = []
    monkeypatch.setattr(policy_costs, "measure_cost_model", lambda target, drafters, refresh=False: entry)
    monkeypatch.setattr(policy_costs, "remeasure_target", lambda target, old: calls.append(old) or entry)
    model = specdecode.load("tiny-random", dtype="float32")  # with a tokenizer: stream() yields text
    engine = specdecode.Engine(model, NgramDrafter())
    params = specdecode.SamplingParams(max_new_tokens=12, ignore_eos=True)
    for n, stream in enumerate([engine.stream_tokens([3, 5, 7], params), engine.stream("hi there", params)]):
        next(stream)
        engine.planner.costs.pending = True  # as timed() leaves it when the passes contradict the entry
        for _ in stream:
            assert len(calls) == n  # never while the request still streams
        assert len(calls) == n + 1 and engine.cost_model_refreshes == n + 1 and not engine.planner.costs.pending


def test_a_draft_step_is_priced_as_the_engines_draft_rounds_run(monkeypatch):
    """Draft rounds that take 1.6x the entry's step, while the target's passes run as the entry
    says, price a step at 1.6x after MIN_PASSES rounds; the same rounds on a machine 3x slower as a
    whole (target passes 3x too) leave the factor at 1.6x, not 4.8x. A remeasure forgets it."""
    entry = CostModel.from_function(lambda m: 0.010 * (1 + 0.05 * (m - 1)),
                                    {"model": lambda m: 0.005 * (1 + 0.05 * (m - 1))})
    monkeypatch.setattr(policy_costs, "measure_cost_model", lambda target, drafters, refresh=False: entry)
    costs = policy_costs.PassCostRatios(None, [])
    measured = costs.draft_step("model", 64)
    assert measured == pytest.approx(0.5, rel=0.01)
    for i in range(policy_costs.MIN_PASSES):
        costs.timed_draft("model", 3, 64, 1, 1.6 * 3 * entry.draft("model", 1, 64))
        assert costs.draft_step("model", 64) == measured  # no target passes seen yet: unchanged
    for _ in range(policy_costs.MIN_PASSES):
        costs.timed(4, 64, entry.T(4, 64))
    costs.timed_draft("model", 3, 64, 1, 1.6 * 3 * entry.draft("model", 1, 64))
    assert costs.draft_step("model", 64) == pytest.approx(1.6 * measured, rel=1e-6)
    assert costs.measured_draft_step("model", 64) == measured
    for _ in range(policy_costs.WINDOW):  # everything 3x slower: the ratio to the target's passes holds
        costs.timed(4, 64, 3 * entry.T(4, 64))
        costs.timed_draft("model", 2, 64, 1, 3 * 1.6 * 2 * entry.draft("model", 1, 64))
    assert costs.draft_step("model", 64) == pytest.approx(1.6 * measured, rel=1e-6)
    # a round that fed a catch-up of 40 tokens first is priced with that pass, not as a plain step
    for _ in range(policy_costs.WINDOW):
        first = entry.draft_prefill("model", 40, 24)
        costs.timed_draft("model", 2, 64, 40, 3 * (first + entry.draft("model", 1, 64)))
    assert costs.draft_step("model", 64) == pytest.approx(measured, rel=1e-6)
    costs._changed()
    assert costs.draft_factors == {}


def test_the_engine_times_a_lone_requests_draft_rounds(tiny):
    """The engine tells the planner how long each single-request draft round took, with the
    tokens it drafted; a batch's rounds are not timed (their passes are shared)."""
    import specdecode
    from specdecode.drafters import ModelDrafter

    heard = []

    class Spy(CostPlanner):
        def timed_draft(self, state, steps, seconds):
            heard.append((steps, seconds))
            super().timed_draft(state, steps, seconds)

    given = CostModel.from_function(lambda m: 0.01 * m, {"model": lambda m: 0.0001 * m})
    engine = specdecode.Engine(tiny, ModelDrafter(tiny))
    engine.costs.give(given)
    engine.planner = Spy(engine.costs, k_fixed=3)
    _, stats = engine.generate_ids([3, 5, 7], specdecode.SamplingParams(max_new_tokens=12))
    assert heard and all(1 <= steps <= 3 and seconds > 0 for steps, seconds in heard)
    assert sum(steps for steps, _ in heard) == stats.drafted_tokens
    heard.clear()
    states = [engine.start(ids, specdecode.SamplingParams(max_new_tokens=12)) for ids in ([3, 5, 7], [4, 6, 8])]
    while any(not s.finished for s in states):
        engine.step([s for s in states if not s.finished])
    assert not heard
