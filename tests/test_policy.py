"""The cost policy (drafters/policy.py) on synthetic costs, DrafterSet bookkeeping, and the
lossless contract with `num_draft_tokens="auto"`: greedy identity and the sampled distribution."""

import random

import pytest

import test_engine_sampling
from conftest import native_from_hf, tiny_hf_model
from specdecode import SamplingParams
from specdecode.cli import main
from specdecode.cost_model import CostModel
from specdecode.drafters import CostPolicy, DrafterSet, ModelDrafter, NgramDrafter
from specdecode.drafters.policy import AcceptanceEstimate, AcceptanceHistory
from specdecode.engine import Engine
from specdecode.errors import SpecdecodeError
from test_engine_greedy import PROMPT, pair, reference  # noqa: F401 - pair is a fixture

T1 = 0.010
LINEAR = CostModel.from_function(lambda m: T1 * m, {"model": lambda m: 0.05 * T1 * m})  # T(2) = 2 T(1)
FLAT = CostModel.from_function(lambda m: T1, {"model": lambda m: 0.05 * T1})  # passes cost the same for any m
MIDDLE = CostModel.from_function(lambda m: T1 * (1 + 0.15 * (m - 1)), {"model": lambda m: 0.1 * T1 * m})


class FakeModelDrafter:
    """Stands in for a draft model in policy-only tests (the policy reads name and costs only)."""

    name = "model"


class FakeNgram:
    """An n-gram drafter whose match length and available tokens a test sets."""

    name = "ngram"

    def __init__(self, n: int = 3, available: int = 8) -> None:
        self.n, self.available = n, available

    def evidence(self, context, k):
        return f"ngram:{min(self.n, 3)}", min(self.available, k) if self.n else 0


def run_rounds(policy, a: float, rounds: int = 30, cap: int = 15, seed: int = 0) -> list[tuple[int, int]]:
    """Feed the policy rounds in which each draft token is accepted with probability a."""
    rng = random.Random(seed)
    picks = []
    for _ in range(rounds):
        which, k = policy.choose([1, 2, 3], cap)
        picks.append((which, k))
        accepted = 0
        while accepted < k and rng.random() < a:
            accepted += 1
        policy.update(k, accepted)
    return picks


def test_expected_tokens_formula():
    est = AcceptanceEstimate(prior=0.7, prior_weight=1e9)  # the prior alone
    a = 0.7
    for k, e in enumerate(est.expected_tokens(8)):
        assert e == pytest.approx((1 - a ** (k + 1)) / (1 - a))


def test_estimate_follows_acceptance_and_keeps_per_position_rates():
    est = AcceptanceEstimate(prior=0.5)
    for _ in range(30):
        est.observe(4, 2)  # positions 0, 1 accepted, 2 rejected, 3 never seen
    assert est.rate(0) > 0.9 and est.rate(1) > 0.9 and est.rate(2) < 0.15
    assert 0.0 < est.rate(3) < 1.0  # unobserved: the pooled estimate
    before = est.rate(2)
    est.age(0.5)
    assert before < est.rate(2) < 0.5  # evidence fades toward the prior


def test_picks_k0_when_two_tokens_cost_two_passes():
    for drafter in (FakeModelDrafter(), FakeNgram(n=3, available=15)):
        policy = CostPolicy(LINEAR, [drafter])
        # Even if everything were accepted, k drafts cost k+1 passes: never worth it.
        policy.estimate(0, "ngram:3" if drafter.name == "ngram" else "model").observe(15, 15)
        assert all(k == 0 for _, k in run_rounds(policy, 1.0))


def test_grows_k_when_passes_are_flat_and_acceptance_high():
    policy = CostPolicy(FLAT, [FakeModelDrafter()])
    picks = run_rounds(policy, 1.0, rounds=40)
    assert picks[-1][1] == 15  # the longest draft
    assert picks[0][1] < picks[-1][1]  # the prior alone asks for less
    low = CostPolicy(FLAT, [FakeModelDrafter()])
    assert run_rounds(low, 0.2, rounds=40)[-1][1] < 6  # a mostly rejected draft stays short


def test_intermediate_costs_give_an_intermediate_k():
    policy = CostPolicy(MIDDLE, [FakeModelDrafter()])
    k = run_rounds(policy, 0.8, rounds=40)[-1][1]
    assert 1 < k < 15


def test_in_a_batch_a_draft_must_beat_the_batch_rate():
    """Passes flat up to 16 tokens, then 0.1 T1 per extra token (a CPU past its bandwidth bound).
    Alone, or in a small batch with free rows left, drafts are free: k > 0. In a batch of 32 that
    yields 32 tokens per T(32) = 2.6 T1, an extra token costs 0.1 T1 = 1.23 tokens' worth of
    batch time, more than any draft token can bring: k = 0. Same request, same acceptance."""
    knee = CostModel.from_function(lambda m: T1 * (1 + 0.1 * max(0, m - 16)), m_max=64)
    ngram = FakeNgram(n=3, available=15)
    policy = CostPolicy(knee, [ngram])
    policy.estimate(0, "ngram:3").observe(15, 14)  # about 93% accepted
    assert policy.choose([1, 2, 3], 15)[1] == 15  # alone
    assert policy.choose([1, 2, 3], 15, batch=(1, 1.0))[1] == 15  # a batch of one is alone
    assert 1 <= policy.choose([1, 2, 3], 15, batch=(8, 8.0))[1] <= 15  # rows to spare
    assert policy.choose([1, 2, 3], 15, batch=(32, 32.0))[1] == 0  # the batch's rows cost more
    # a low batch rate (the others expect few tokens per pass) makes the same draft worth it again
    assert policy.choose([1, 2, 3], 15, batch=(32, 2.0))[1] > 0


def test_in_a_batch_joining_planned_draft_passes_costs_a_row():
    """The draft model's step alone costs 0.3 T1, a row added to a planned draft pass 0.01 T1. In a
    batch of 8 (flat target rows) with 70% acceptance, paying for new draft passes does not beat
    the batch's rate; joining passes that four other requests already run does."""
    costs = CostModel.from_function(lambda m: T1, {"model": lambda m: T1 * (0.3 + 0.01 * (m - 1))})
    policy = CostPolicy(costs, [FakeModelDrafter()])
    policy.estimate(0, "model").observe(8, 5)
    policy.estimate(0, "model").observe(8, 6)
    assert policy.choose([1, 2, 3], 15, batch=(8, 8.0))[1] == 0  # alone in drafting: k steps of 0.3 T1
    assert policy.choose([1, 2, 3], 15, batch=(8, 8.0), drafting={"model": (4, 6)})[1] >= 1
    assert policy.choose([1, 2, 3], 15, batch=(8, 8.0), drafting={"ngram": (4, 6)})[1] == 0  # another drafter's passes


def test_acceptance_learned_on_finished_requests_replaces_the_probe():
    """A fresh request probes an untried n-gram bucket as if 90% accepted; once finished requests
    measured that bucket at ~5%, the next request starts from that and does not draft."""
    flat_ngram = CostModel.from_function(lambda m: T1 * (1 + 0.05 * (m - 1)))
    fresh = CostPolicy(flat_ngram, [FakeNgram(n=1, available=15)])
    assert fresh.choose([1, 2, 3], 15)[1] > 0  # the optimistic probe
    history = AcceptanceHistory()
    assert history.rate("ngram:1") is None  # nothing measured yet
    finished = CostPolicy(flat_ngram, [FakeNgram(n=1, available=15)])
    finished.estimate(0, "ngram:1").observe(4, 0)
    history.add(finished)
    assert history.rate("ngram:1") is None  # one observation is not enough to replace the prior
    for _ in range(6):
        history.add(finished)
    assert 0.0 < history.rate("ngram:1") < 0.1
    learned = CostPolicy(flat_ngram, [FakeNgram(n=1, available=15)], learned=history)
    assert learned.choose([1, 2, 3], 15)[1] == 0
    assert not learned.estimate(0, "ngram:1").untried


def test_engine_learns_acceptance_only_when_asked(pair):  # noqa: F811
    target, draft = pair
    engine = Engine(target, [ModelDrafter(draft), NgramDrafter()], cost_model=MIDDLE)
    assert not engine.learn_acceptance
    ref = reference(target)
    assert engine.generate_ids(PROMPT, SamplingParams(max_new_tokens=40))[0] == ref
    engine.learn_acceptance = True
    for _ in range(3):  # greedy output never depends on what was learned
        assert engine.generate_ids(PROMPT, SamplingParams(max_new_tokens=40))[0] == ref
    assert engine.acceptance_history.counts and any(c[1] > 0 for c in engine.acceptance_history.counts.values())
    engine.learn_acceptance = False
    assert engine.acceptance_history is None


def test_chooses_between_ngram_and_model():
    ngram = FakeNgram(n=3, available=10)
    policy = CostPolicy(MIDDLE, [FakeModelDrafter(), ngram])
    # The n-gram drafter is free and, here, always right: it wins while it has a match.
    for _ in range(20):
        which, k = policy.choose([1], 15)
        policy.update(k, k if which == 1 else 0)
    assert policy.choose([1], 15)[0] == 1
    ngram.n = 0  # no match: the draft model is the only one left
    assert policy.choose([1], 15)[0] == 0
    # A 1-token match that keeps failing loses to a draft model that keeps succeeding.
    ngram.n = 1
    for _ in range(20):
        which, k = policy.choose([1], 15)
        policy.update(k, 0 if which == 1 else k)
    assert policy.choose([1], 15)[0] == 0


def test_exploration_probes_again_after_a_bad_stretch():
    policy = CostPolicy(MIDDLE, [FakeModelDrafter()])
    picks = run_rounds(policy, 0.0, rounds=200)
    zeros = [i for i, (_, k) in enumerate(picks) if k == 0]
    assert len(zeros) > 150  # mostly the target alone ...
    probes = [i for i in range(50, 200) if picks[i][1] > 0]
    assert probes  # ... but it keeps checking whether the text has changed
    # and when it has, speculation comes back.
    run_rounds(policy, 1.0, rounds=100)
    assert policy.choose([1], 15)[1] > 2


def test_fixed_k_with_several_drafters_only_chooses_the_drafter():
    policy = CostPolicy(LINEAR, [FakeModelDrafter(), FakeNgram(n=2, available=2)], k_fixed=4)
    picks = run_rounds(policy, 0.5, rounds=10)
    assert all(k in (2, 4) for _, k in picks)  # the n-gram drafter can offer only 2
    assert CostPolicy(LINEAR, [FakeNgram(n=0)], k_fixed=4).choose([1], 15) == (0, 0)


def test_catch_up_cost_is_shared_by_the_tokens_still_to_come():
    class Behind(FakeModelDrafter):
        def catch_up_tokens(self, context):
            return 41

    policy = CostPolicy(MIDDLE, [Behind()])
    step, extra = MIDDLE.draft("model", 1), MIDDLE.draft("model", 41) - MIDDLE.draft("model", 1)
    assert policy.draft_seconds(Behind(), 3, [1], expected_tokens=2.0, remaining=100) == pytest.approx(
        3 * step + extra * 2.0 / 100)
    assert policy.draft_seconds(Behind(), 3, [1], expected_tokens=2.0, remaining=1) == pytest.approx(3 * step + extra)


# -- DrafterSet ------------------------------------------------------------------------------------


class Recorder:
    """Wraps a drafter and checks the protocol: every round it is shown the real context."""

    def __init__(self, inner, log):
        self.inner, self.name, self.log = inner, inner.name, log

    def __getattr__(self, attr):
        if attr == "inner":  # not set yet: copy.copy (the engine forks drafters per request)
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def begin(self, prompt, max_len, device):
        self.inner.begin(prompt, max_len, device)

    def propose(self, context, k, params, generator):
        self.log.append((self.name, "propose", len(context), k))
        return self.inner.propose(context, k, params, generator)

    def on_verified(self, n):
        self.log.append((self.name, "verified", n))
        self.inner.on_verified(n)

    def end(self):
        self.inner.end()


def test_drafter_set_keeps_every_member_in_step(pair):  # noqa: F811
    target, draft = pair
    log = []
    drafters = [Recorder(ModelDrafter(draft), log), Recorder(NgramDrafter(), log)]
    engine = Engine(target, drafters, cost_model=FLAT)
    out, stats = engine.generate_ids(PROMPT, SamplingParams(max_new_tokens=40))
    assert out == reference(target)
    used = {e[0] for e in log if e[1] == "propose" and e[3] > 0}
    assert used == {"model", "ngram"}  # both drafted at some point
    # Each proposing round: both members see the same context, then both hear on_verified.
    proposes = [e for e in log if e[1] == "propose"]
    assert len(proposes) % 2 == 0
    for a, b in zip(proposes[::2], proposes[1::2]):
        assert a[2] == b[2] and (a[3] == 0) != (b[3] == 0)
    assert sum(e[1] == "verified" for e in log) == len(proposes)
    with pytest.raises(SpecdecodeError, match="distinct"):
        DrafterSet([NgramDrafter(), NgramDrafter()])


# -- lossless with the policy on --------------------------------------------------------------------


@pytest.mark.parametrize("costs", [FLAT, MIDDLE, LINEAR], ids=["flat", "middle", "linear"])
@pytest.mark.parametrize("drafters", ["model", "ngram", "both"])
def test_auto_greedy_equals_target_only(pair, costs, drafters):  # noqa: F811
    target, draft = pair
    drafter = {"model": ModelDrafter(draft), "ngram": NgramDrafter(), "both": [ModelDrafter(draft), NgramDrafter()]}[drafters]
    engine = Engine(target, drafter, cost_model=costs)
    assert engine.auto and engine.num_draft_tokens == 15
    for n in (1, 7, 60):
        out, stats = engine.generate_ids(PROMPT, SamplingParams(max_new_tokens=n))
        assert out == reference(target, n=n)
        assert len(out) == n == stats.generated_tokens
    if costs is LINEAR:
        assert stats.drafted_tokens == 0  # nothing to gain: the target alone
    elif costs is FLAT:
        assert stats.drafted_tokens > 0


def test_auto_with_measured_costs_and_draft_equal_to_target(pair, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    target, _ = pair
    engine = Engine(target, ModelDrafter(target))  # the default is auto; costs measured here
    out, stats = engine.generate_ids(PROMPT, SamplingParams(max_new_tokens=40))
    assert out == reference(target)
    assert stats.accepted_tokens == stats.drafted_tokens  # whatever it chose to draft
    assert engine.cost_model.T(1) > 0 and engine.draft_policy == "auto"


def check_auto_distribution(monkeypatch, costs: CostModel, seed: int, pace=None) -> None:
    """The distribution check of test_engine_sampling.py with the policy choosing drafter and k
    under `costs` (1,500 samples instead of 5,000; same chi-square and total-variation bounds);
    pace: a cost_pace.CostPace the policies scale those costs by."""
    from test_engine_sampling import LENGTH, V, check_distribution, exact_sequence_probs

    monkeypatch.setattr(test_engine_sampling, "N", 1500)
    target = native_from_hf(tiny_hf_model("llama", seed=1, vocab=V))
    draft = native_from_hf(tiny_hf_model("llama", seed=2, vocab=V))
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH, ignore_eos=True)
    engine = Engine(target, [ModelDrafter(draft), NgramDrafter(max_ngram=2)], cost_model=costs)
    engine.cost_pace = pace
    check_distribution(engine, exact_sequence_probs(target, params), params, seed=seed)


def test_auto_sampling_follows_the_target_distribution(monkeypatch):
    check_auto_distribution(monkeypatch, FLAT, seed=2)


def test_seeded_sampling_replays_with_auto(pair):  # noqa: F811
    target, draft = pair
    engine = Engine(target, [ModelDrafter(draft), NgramDrafter()], cost_model=MIDDLE)
    p = SamplingParams(temperature=1.0, max_new_tokens=30, seed=7, ignore_eos=True)
    assert engine.generate_ids(PROMPT, p)[0] == engine.generate_ids(PROMPT, p)[0]


def test_engine_options():
    target = native_from_hf(tiny_hf_model("llama", seed=0))
    assert Engine(target, NgramDrafter(), num_draft_tokens=3).draft_policy == "fixed"
    assert Engine(target, NgramDrafter(), adaptive=True).draft_policy == "adaptive"
    assert Engine(target).draft_policy == "none" and not Engine(target).needs_cost_model
    for bad in (0, "fast", 2.5):
        with pytest.raises(SpecdecodeError, match="num_draft_tokens"):
            Engine(target, NgramDrafter(), num_draft_tokens=bad)
    with pytest.raises(SpecdecodeError, match="adaptive"):
        Engine(target, NgramDrafter(), num_draft_tokens="auto", adaptive=True)
    with pytest.raises(SpecdecodeError, match="max_draft_tokens"):
        Engine(target, NgramDrafter(), max_draft_tokens=40)


# -- command line -------------------------------------------------------------------------------------

TINY = ["--model", "tiny-random", "--dtype", "float32", "--threads", "1", "--raw", "-n", "12"]


def test_cli_defaults_to_auto_and_prints_the_cost_model(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    assert main(["generate", "def add(x, y):", *TINY, "--draft", "tiny-random-draft", "--stats"]) == 0
    err = capsys.readouterr().err
    assert "drafter: model+ngram, k=auto" in err and "cost T(m) target" in err and "cost T(m) model" in err
    assert "pace (observed / cost model" in err
    assert main(["generate", "def add(x, y):", *TINY, "--stats", "-k", "3"]) == 0
    err = capsys.readouterr().err
    assert "drafter: ngram, k=3" in err and "cost model from cache" not in err


def test_cli_bad_draft_length_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "hi", *TINY, "-k", "many"])
    assert "expected 'auto' or an integer" in capsys.readouterr().err


# -- bench methods and the theory table (specdecode/bench/methods_policy.py) ---------------------------


def test_bench_policy_methods_and_theory_table(tmp_path, monkeypatch):
    import json

    import specdecode
    from specdecode.bench import METHODS, BenchConfig, run_bench
    from specdecode.bench.methods_policy import round_mix, write_theory

    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path / "cache"))
    names = ["spec-model-k1", "spec-model-k8", "spec-model-auto", "spec-auto"]
    assert all(n in METHODS and not METHODS[n].default for n in names + ["spec-model-k2", "spec-model-k4"])
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "def add(x, y):\n    return x + y\ndef add(x, y):", "category": "code"},
            {"prompt": "hello there, the weather", "category": "chat"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = specdecode.load("tiny-random", dtype="float32")
    draft = specdecode.load("tiny-random-draft", dtype="float32")
    results = run_bench(BenchConfig(target="tiny-random", draft="tiny-random-draft", methods=names, dataset=str(prompts),
                                    max_new_tokens=16, warmup=0, progress=False, dtype="float32", out=str(tmp_path / "b")),
                        target=target, draft=draft)
    for p in results["prompts"]:
        assert all(p["results"][n]["equal_to_target"] for n in names)
    t = write_theory(tmp_path / "b", CostModel.from_function(lambda m: 0.01 * (1 + 0.1 * m), {"model": lambda m: 0.001}))
    row = t["methods"]["spec-model-k8"]["all"]
    assert row["predicted_speedup"] > 0 and row["measured_speedup"] > 0 and 0 <= row["acceptance"] <= 1
    assert set(t["methods"]) == set(names)
    assert "| spec-auto | code |" in (tmp_path / "b" / "theory.md").read_text()
    assert round_mix([5, 3, 3, 1], 9) == {0: 4, 1: 2, 3: 2, 4: 1}
    # The run recorded the cost model its policy decided by; with no cost model given, the
    # theory prices the run with that one (not with what a later process would measure).
    assert CostModel.from_dict(results["cost_model"]).T(1) > 0
    # (a tiny model's passes are dominated by the engine's Python, so they may "drift" and the
    # engine measure again: then the figures at the end are the ones to price with)
    recorded = CostModel.from_dict(results.get("cost_model_end") or results["cost_model"])
    assert recorded.T(1) > 0 and "model" in recorded.drafts
    again = write_theory(tmp_path / "b")
    assert again["T_ms"][1] == pytest.approx(recorded.T(1) * 1e3)
    assert row["catch_up_ms_per_request"] > 0  # the draft model fed each prompt before drafting
    # The auto methods' engines recorded their cost pace after each run (tiny passes are not
    # observed: every factor 1), and every method's row is priced at it too.
    auto_runs = results["prompts"][0]["results"]["spec-model-auto"]["runs"]
    assert auto_runs[0]["pace"]["T"] == [1.0] * 16 and auto_runs[0]["pace"]["draft"] == 1.0
    assert "pace" not in results["prompts"][0]["results"]["spec-model-k1"]["runs"][0]  # a fixed k keeps none
    assert row["predicted_speedup_at_pace"] == pytest.approx(row["predicted_speedup"])


def test_theory_prices_at_the_observed_pace():
    from specdecode.bench.methods_policy import observed_pace, predict

    cost = CostModel.from_function(lambda m: 0.05 * (1 + 0.1 * (m - 1)), {"model": lambda m: 0.01})
    record = {"decode_tokens": 40, "decode_s": 1.0, "drafted_by_position": [20, 10], "accepted_by_position": [15, 5],
              "target_passes": 25, "prompt_tokens": 0}
    slow_single = {"T": [1.25] + [1.0] * 15, "draft": 1.0}
    assert observed_pace([{"runs": [{"pace": slow_single}, {"pace": slow_single}, {}]}])["T"][0] == pytest.approx(1.25)
    assert observed_pace([{"runs": [{"decode_s": 1.0}]}]) is None
    plain = predict([record], cost, 0.01, "model")["predicted_speedup"]
    paced = predict([record], cost, 0.01, "model", slow_single)["predicted_speedup"]
    # Rounds by k: 5 without a draft, 10 with 1, 10 with 2: 1.7 s at the cost model, 1.7625 s with
    # T(1) 1.25x dearer; T(1), the yardstick, is 1.25x dearer too: speculation pays more.
    assert paced == pytest.approx(plain * 1.25 * 1.7 / 1.7625)


def test_draft_prefill_of_a_long_prompt_pays_only_for_a_long_answer():
    """The draft model must feed the prompt before its first draft. Seen on the real pair: charged
    to every round it kept `auto` from ever drafting; not charged at all, a 0.5B draft prefilled
    1,000-token RAG prompts to save a few passes of a 96-token answer (0.74x the target). And since
    the answer's length is unknown, the prefill is bought only once the request has spent half its
    cost on the target alone (CATCH_UP_RENT = 2): a 16-token answer never pays for it."""
    class LongPrompt(FakeModelDrafter):
        def catch_up_tokens(self, context):
            return 1000

    # target 30 ms a pass, flat; the draft 10 ms a step and 1 ms per token of catch-up: 1 s extra
    costs = CostModel.from_function(lambda m: 0.030, {"model": lambda m: 0.009 + 0.001 * m})
    k_max, prompt = 15, list(range(50))

    def first_draft(budget: int) -> int | None:
        """The token (1 = the prefill's) after which the policy first drafts, within `budget` tokens."""
        policy = CostPolicy(costs, [LongPrompt()], k_max=k_max)
        for n in range(1, budget):
            if policy.choose(prompt + [7] * n, budget - n + k_max)[1] > 0:
                return n
            policy.update(0, 0)
        return None

    assert 16 <= first_draft(5000) <= 18  # 1 s of catch-up / 2 = 0.5 s = 17 passes of 30 ms
    assert first_draft(16) is None
    assert first_draft(40) is None  # bought at 17 tokens, the rest could not pay 1 s back


def test_an_untried_drafter_is_probed_then_judged_by_its_own_evidence():
    """A pessimistic prior must not keep a drafter out for good (it never drafts, so it never
    learns): seen with an int4 0.5B draft for an int4 1.5B target, 0 drafts in 128 tokens."""
    costs = CostModel.from_function(lambda m: 0.0226 + 0.0015 * (m - 1), {"model": lambda m: 0.0107 + 0.0003 * m})
    policy = CostPolicy(costs, [FakeModelDrafter()], priors={"model": 0.3})
    which, k = policy.choose([1], 200)
    assert k > 0  # probed as if 90% were accepted
    policy.update(k, 0)  # every draft rejected
    for _ in range(3):
        if policy.choose([1], 200)[1] > 0:
            policy.update(policy.last.k, 0)
    assert policy.choose([1], 200) == (0, 0)  # its own evidence now says no
