"""The planner (specdecode/policy/) on synthetic costs, DrafterSet bookkeeping, and the lossless
contract with `num_draft_tokens="auto"`: greedy identity and the sampled distribution."""

import ast
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

import test_engine_sampling
from conftest import native_from_hf, tiny_hf_model
from specdecode import SamplingParams, SpecStats
from specdecode.cli import main
from specdecode.cost_model import CostModel
from specdecode.drafters import DrafterSet, ModelDrafter, NgramDrafter
from specdecode.engine import Engine
from specdecode.errors import SpecdecodeError
from specdecode.policy import AdaptiveK, CostPlanner, FixedK, PassCostRatios, Plan
from specdecode.policy.acceptance import AcceptanceBook, AcceptanceEstimate
from test_engine_greedy import PROMPT, pair, reference  # noqa: F401 - pair is a fixture

T1 = 0.010
LINEAR = CostModel.from_function(lambda m: T1 * m, {"model": lambda m: 0.05 * T1 * m})  # T(2) = 2 T(1)
FLAT = CostModel.from_function(lambda m: T1, {"model": lambda m: 0.05 * T1})  # passes cost the same for any m
MIDDLE = CostModel.from_function(lambda m: T1 * (1 + 0.15 * (m - 1)), {"model": lambda m: 0.1 * T1 * m})


class FakeModelDrafter:
    """Stands in for a draft model in planner-only tests (the planner reads name and costs only)."""

    name = "model"


class FakeNgram:
    """An n-gram drafter whose match length and available tokens a test sets."""

    name = "ngram"

    def __init__(self, n: int = 3, available: int = 8) -> None:
        self.n, self.available = n, available

    def evidence(self, context, k):
        return f"ngram:{min(self.n, 3)}", min(self.available, k) if self.n else 0


def planner(costs: CostModel, **kw) -> CostPlanner:
    return CostPlanner(PassCostRatios(None, [], given=costs), **kw)


def state(drafters, context=(1, 2, 3), budget: int = 200, k_max: int = 15):
    """What the planner reads of a RequestState: tokens, room, budget, drafters, plan_state."""
    s = SimpleNamespace(drafter=SimpleNamespace(drafters=list(drafters)), tokens=list(context), budget=budget,
                        max_len=len(context) + budget + k_max + 1, stats=SpecStats(), plan_state=None)
    return s


def choose(p, s, batch: int = 1) -> tuple[int, int]:
    """(which, k) the planner gives `s`, alone or beside batch - 1 other requests without drafters."""
    if s.plan_state is None:
        p.begin(s)
    plan = p.plan([s])[0] if batch == 1 else p.plan([s] + [others(p) for _ in range(batch - 1)])[0]
    return plan.which, plan.k


def others(p):
    s = state([])
    p.begin(s)
    return s


def run_rounds(p, a: float, rounds: int = 30, seed: int = 0, drafters=None) -> list[tuple[int, int]]:
    """Feed the planner rounds in which each draft token is accepted with probability a."""
    rng = random.Random(seed)
    s = state(drafters or [FakeModelDrafter()])
    picks = []
    for _ in range(rounds):
        which, k = choose(p, s)
        picks.append((which, k))
        accepted = 0
        while accepted < k and rng.random() < a:
            accepted += 1
        p.observe(s, k, accepted)
    return picks


def test_expected_tokens_formula():
    est = AcceptanceEstimate(0.7)  # the start alone
    a = 0.7
    for k, e in enumerate(est.expected_tokens(8)):
        assert e == pytest.approx((1 - a ** (k + 1)) / (1 - a))


def test_estimate_follows_acceptance_and_fades_back_to_its_start():
    est = AcceptanceEstimate(0.5)
    for _ in range(30):
        est.observe(4, 2)  # positions 0, 1 accepted, 2 rejected, 3 never seen
    e = est.expected_tokens(4)
    assert e[2] - e[1] > 0.85 and e[3] - e[2] < 0.15  # position 1 nearly always, position 2 rarely
    before = est.pooled()
    for _ in range(40):
        est.fade()
    assert 0.5 < est.pooled() < before  # evidence fades toward the start


def test_picks_k0_when_two_tokens_cost_two_passes():
    for drafter in (FakeModelDrafter(), FakeNgram(n=3, available=15)):
        p = planner(LINEAR)
        # Even if everything were accepted, k drafts cost k+1 passes: never worth it.
        assert all(k == 0 for _, k in run_rounds(p, 1.0, drafters=[drafter]))


def test_grows_k_when_passes_are_flat_and_acceptance_high():
    p = planner(FLAT)
    picks = run_rounds(p, 1.0, rounds=40)
    assert picks[-1][1] == 15  # the longest draft
    assert picks[0][1] < picks[-1][1]  # the prior alone asks for less
    assert run_rounds(planner(FLAT), 0.2, rounds=40)[-1][1] < 6  # a mostly rejected draft stays short


def test_intermediate_costs_give_an_intermediate_k():
    k = run_rounds(planner(MIDDLE), 0.8, rounds=40)[-1][1]
    assert 1 < k < 15


def test_decisions_depend_on_ratios_only():
    """A machine that runs everything 3x slower makes the same choices."""
    slow = CostModel.from_function(lambda m: 3 * T1 * (1 + 0.15 * (m - 1)), {"model": lambda m: 0.3 * T1 * m})
    assert run_rounds(planner(MIDDLE), 0.7, rounds=60) == run_rounds(planner(slow), 0.7, rounds=60)


def test_in_a_batch_a_draft_must_beat_the_batch_rate():
    """Passes flat up to 16 tokens, then 0.1 T1 per extra token (a CPU past its bandwidth bound).
    Alone, drafts are free: k > 0. In a batch of 32 that yields 32 tokens per T(32) = 2.6 T1, an
    extra token costs 0.1 T1 = 1.23 tokens' worth of batch time, more than a draft token brings."""
    knee = CostModel.from_function(lambda m: T1 * (1 + 0.1 * max(0, m - 16)), m_max=64)
    p = planner(knee)
    s = state([FakeNgram(n=3, available=15)])
    p.begin(s)
    s.plan_state.estimates[0, "ngram:3"] = est = AcceptanceEstimate(0.8)
    est.observe(15, 14)
    assert choose(p, s)[1] == 15  # alone
    assert 1 <= choose(p, s, batch=8)[1] <= 15  # rows to spare
    assert choose(p, s, batch=32)[1] == 0  # the batch's rows cost more


def test_no_early_give_up():
    """Seen on a real AVX2 CPU: a few rejections in the first rounds switched the draft model off
    for a whole request (28 drafts, 14%). The estimate starts worth PRIOR_WEIGHT rounds, and
    rounds without a draft fade the evidence back toward it: after an unlucky start the drafter
    drafts again, and with a good drafter most of a long request is drafted."""
    p = planner(MIDDLE)
    s = state([FakeModelDrafter()], budget=400)
    p.begin(s)
    for _ in range(4):  # an unlucky start: everything rejected
        which, k = choose(p, s)
        p.observe(s, k, 0)
    picks = []
    rng = random.Random(1)
    for _ in range(150):  # then the draft is right 80% of the time
        which, k = choose(p, s)
        acc = 0
        while acc < k and rng.random() < 0.8:
            acc += 1
        p.observe(s, k, acc)
        picks.append(k)
    assert sum(k > 0 for k in picks[:30]) >= 5  # back within the first 30 rounds
    assert sum(k > 0 for k in picks) > 100


def test_history_of_finished_requests_sets_where_the_next_starts():
    book = AcceptanceBook()
    assert book.start("ngram:1", "ngram") == pytest.approx(0.1)  # the prior
    est = AcceptanceEstimate(0.1)
    for _ in range(20):
        est.observe(4, 4)
    book.add({"ngram:1": est})
    assert book.start("ngram:1", "ngram") > 0.8  # measured on this engine: all accepted
    p = planner(FLAT)
    p.book = book
    assert choose(p, state([FakeNgram(n=1, available=15)]))[1] > 0


def test_engine_history_never_changes_greedy_output(pair):  # noqa: F811
    target, draft = pair
    engine = Engine(target, [ModelDrafter(draft), NgramDrafter()], cost_model=MIDDLE)
    ref = reference(target)
    for _ in range(3):
        assert engine.generate_ids(PROMPT, SamplingParams(max_new_tokens=40))[0] == ref
    assert engine.planner.book.counts and any(c[1] > 0 for c in engine.planner.book.counts.values())


def test_chooses_between_ngram_and_model():
    ngram = FakeNgram(n=3, available=10)
    p = planner(MIDDLE)
    s = state([FakeModelDrafter(), ngram])
    # The n-gram drafter is free and, here, always right: it wins while it has a match.
    for _ in range(20):
        which, k = choose(p, s)
        p.observe(s, k, k if which == 1 else 0)
    assert choose(p, s)[0] == 1
    p.observe(s, 0, 0)
    ngram.n = 0  # no match: the draft model is the only one left
    assert choose(p, s)[0] == 0


def test_exploration_probes_again_after_a_bad_stretch():
    p = planner(MIDDLE)
    s = state([FakeModelDrafter()], budget=400)
    picks = []
    rng = random.Random(0)
    for i in range(300):
        which, k = choose(p, s)
        picks.append(k)
        a = 0.0 if i < 200 else 1.0
        acc = 0
        while acc < k and rng.random() < a:
            acc += 1
        p.observe(s, k, acc)
    assert sum(k == 0 for k in picks[:200]) > 120  # mostly the target alone ...
    assert any(k > 0 for k in picks[50:200])  # ... but it keeps checking whether the text has changed
    assert picks[-1] > 2  # and when it has, speculation comes back


def test_fixed_k_with_several_drafters_only_chooses_the_drafter():
    p = planner(LINEAR, k_fixed=4)
    picks = run_rounds(p, 0.5, rounds=10, drafters=[FakeModelDrafter(), FakeNgram(n=2, available=2)])
    assert all(k in (2, 4) for _, k in picks)  # the n-gram drafter can offer only 2
    assert choose(planner(LINEAR, k_fixed=4), state([FakeNgram(n=0)])) == (0, 0)


def test_draft_prefill_of_a_long_prompt_pays_only_for_a_long_answer():
    """The draft model must feed the prompt before its first draft. Charged to one round it kept
    `auto` from ever drafting (0 drafts in 160 tokens on a second chat turn); not charged, a 0.5B
    draft prefilled 1,000-token RAG prompts to save a few passes. The prefill is bought once what
    the request forwent without the draft (1 - 1/r of each token's T(1), r its expected speed-up)
    adds up to its cost (CATCH_UP_RENT = 1), and its cost is shared by the tokens still to come:
    a short answer never pays for it."""
    class LongPrompt(FakeModelDrafter):
        def catch_up_tokens(self, context):
            return 1000

    # target 30 ms a pass, flat; the draft 10 ms a step and 1 ms per token of catch-up: 1 s extra
    costs = CostModel.from_function(lambda m: 0.030, {"model": lambda m: 0.009 + 0.001 * m})
    prompt = list(range(50))

    def first_draft(budget: int) -> int | None:
        p = planner(costs)
        s = state([LongPrompt()], context=prompt, budget=budget)
        p.begin(s)
        for n in range(1, budget):
            s.tokens, s.stats.generated_tokens = prompt + [7] * n, n
            if choose(p, s)[1] > 0:
                return n
            p.observe(s, 0, 0)
        return None

    # 1 s of catch-up = 33.3 T(1); at acceptance 0.75 the best k (2) is 1.39x the target alone, so
    # each token without it forgoes 0.28 T(1): bought after 33.3 / 0.28 = 120 tokens
    assert 118 <= first_draft(5000) <= 122
    assert first_draft(16) is None
    assert first_draft(150) is None  # bought at 120 tokens, the 30 left could not pay 1 s back


def test_a_catch_up_over_the_requests_own_tokens_is_charged_to_its_round():
    """A draft model behind by tokens the request produced without it (a grammar's forced rounds,
    another drafter's) catches up again every time that happens: the round pays all of it, not
    the share a one-time prompt catch-up is spread over (which priced a 6-token catch-up after
    every forced round of a JSON answer at about nothing)."""
    class Behind(FakeModelDrafter):
        behind = 6

        def catch_up_tokens(self, context):
            return self.behind

    # target 30 ms a pass, flat; the draft 9 ms a step and 3 ms per extra token fed
    costs = CostModel.from_function(lambda m: 0.030, {"model": lambda m: 0.006 + 0.003 * m})
    prompt = list(range(50))

    def best_cost(behind: int, produced: int) -> float:
        p = planner(costs)
        d = Behind()
        d.behind = behind
        s = state([d], context=prompt, budget=1000)
        p.begin(s)
        s.tokens, s.stats.generated_tokens = prompt + [7] * produced, produced
        s.plan_state.start = len(prompt)
        table = p.costs.table(len(s.tokens), p.k_max)
        options, _ = p._options(s, table, 4, 0.0)
        return next(c.cost for c in options if c.k == 4)

    plain = best_cost(1, 20)
    recurring = best_cost(6, 20)  # behind by 6 of the 20 tokens it produced: charged in full
    catch_up = (0.006 + 0.003 * 6 - 0.009) / 0.030  # 0.5 T(1)
    assert recurring - plain == pytest.approx(catch_up, rel=0.05)
    assert best_cost(60, 20) - plain < 0.05  # the prompt's catch-up (60 > 20 produced): a small share only


def test_a_drafter_held_back_by_its_growing_catch_up_is_bought_back_by_what_it_forgoes():
    """A drafter that sits out falls behind by a token a round, and a catch-up over the request's
    own tokens is charged in full to the round that needs it: after a few rejections a draft head
    (a cheap step, 0.02 T(1) of catch-up per token) never drafted again, its price outgrowing any
    one round's gain. Each round it was expected faster without the catch-up now adds what the
    round forgoes; once that reaches the price the catch-up is bought and shared like a prompt's."""
    class Head(FakeModelDrafter):
        name = "head"
        fed = 50  # context tokens its cache holds

        def catch_up_tokens(self, context):
            return max(len(context) - self.fed, 1)

    # target 30 ms a pass and 13% more per extra row (T(2) = 1.13 T(1), as on a Zen 3); the head
    # 1.5 ms a step (0.05 T(1)) and 0.7 ms per extra token fed
    costs = CostModel.from_function(lambda m: 0.030 * (1 + 0.13 * (m - 1)), {"head": lambda m: 0.0008 + 0.0007 * m})
    prompt = list(range(50))

    def drafted_rounds(regret: bool) -> list[int]:
        p = planner(costs)
        if not regret:  # the rule before: no regret is ever counted
            p._count_regret = lambda rp, best: None
        d = Head()
        s = state([d], context=prompt, budget=400)
        p.begin(s)
        s.plan_state.start = len(prompt)
        out = []
        for n in range(1, 120):
            s.tokens, s.stats.generated_tokens = prompt + [7] * n, n
            which, k = choose(p, s)
            if k > 0:
                out.append(n)
                d.fed = len(s.tokens)
            # its first three drafts are rejected, every later one accepted
            p.observe(s, k, 0 if len(out) <= 3 else k)
        return out

    before, now = drafted_rounds(False), drafted_rounds(True)
    assert len(before) == 3  # three rejections, then never again
    assert len(now) > 60 and now[3] < 40  # bought back within a few dozen tokens, then drafting on


def test_a_tree_drafter_gets_the_rows_a_pass_gives_for_free():
    """Alternative nodes of a token tree cost rows: the planner grants a tree drafter the rows past
    its k whose pass costs at most `margin` more than T(k + 1) (none for a chain drafter, none in
    a shared pass)."""
    class FakeTreeNgram(FakeNgram):
        branches = 3

    knee = CostModel.from_function(lambda m: T1 * (1.0 if m <= 6 else 1.0 + 0.2 * (m - 6)))  # flat to 6 rows
    p = planner(knee)
    s = state([FakeTreeNgram(n=3, available=3)])
    p.begin(s)
    plan = p.plan([s])[0]
    assert plan.k == 3 and plan.tree_nodes == 2  # 4 rows for the chain, 2 more up to the knee
    chain = state([FakeNgram(n=3, available=3)])
    p.begin(chain)
    assert p.plan([chain])[0].tree_nodes == 0
    other = state([FakeTreeNgram(n=3, available=3)])
    p.begin(other)
    assert all(q.tree_nodes == 0 for q in p.plan([s, other]))


def test_a_tree_drafter_gets_the_rows_its_alternatives_have_shown_they_pay_for():
    """Past the free rows, a row is granted when the tokens an alternative node of that drafter's
    trees has added pay for the row's cost at the round's rate (at most k of them): none on the
    prior, some after trees whose alternatives were taken, none again after trees whose were not."""
    class FakeTreeNgram(FakeNgram):
        branches = 3

    p = planner(MIDDLE)  # no row is free: each costs 0.15 T(1)
    s = state([FakeTreeNgram(n=3, available=3)])
    p.begin(s)
    assert p.plan([s])[0].tree_nodes == 0
    for _ in range(40):
        p.observe_tree(s, 2, 2)  # every alternative node was worth a token
    plan = p.plan([s])[0]
    assert plan.k == 3 and 0 < plan.tree_nodes <= plan.k
    assert "a tree node adds" in p.describe(s)
    for _ in range(300):
        p.observe_tree(s, 2, 0)
    assert p.plan([s])[0].tree_nodes == 0
    other = state([FakeTreeNgram(n=3, available=3)])  # the value is the drafter's, not the request's
    p.begin(other)
    p.plan([other])
    for _ in range(40):
        p.observe_tree(other, 2, 2)
    p.begin(s)
    assert p.plan([s])[0].tree_nodes > 0


def test_describe_says_why_a_request_did_not_draft():
    p = planner(LINEAR)
    s = state([FakeModelDrafter()])
    run = [choose(p, s) for _ in range(3)]
    assert all(k == 0 for _, k in run)
    text = p.describe(s)
    assert "drafted in 0 of 3 rounds" in text and "a draft step costs 0.05 T(1)" in text
    assert "T(2) = 2.00 T(1)" in text and "model: the target alone was expected faster" in text


def test_trivial_planners():
    s = state([FakeModelDrafter()], budget=3, k_max=4)
    fixed = FixedK(4)
    fixed.begin(s)
    assert fixed.plan([s]) == [Plan(0, 4)]
    s.tokens += [1, 1, 1, 1]  # the room runs out
    assert fixed.plan([s])[0].k == 3
    a = AdaptiveK(2, 1, 8)
    s = state([FakeModelDrafter()])
    a.begin(s)
    a.observe(s, 2, 2)
    assert a.plan([s])[0].k == 3
    a.observe(s, 3, 0)
    assert a.plan([s])[0].k == 1
    with pytest.raises(SpecdecodeError):
        FixedK(0)


def test_a_custom_planner_drives_the_engine(pair):  # noqa: F811
    target, draft = pair

    class EveryOtherRound(FixedK):
        def begin(self, state):
            state.plan_state = 0

        def plan(self, states):
            for s in states:
                s.plan_state += 1
            return [Plan(0, self.k if s.plan_state % 2 else 0) for s in states]

    engine = Engine(target, ModelDrafter(draft), policy=EveryOtherRound(3))
    out, stats = engine.generate_ids(PROMPT, SamplingParams(max_new_tokens=40))
    assert out == reference(target)
    assert 0 < stats.draft_rounds < stats.target_passes and engine.draft_policy == "custom"
    with pytest.raises(SpecdecodeError, match="Planner"):
        Engine(target, ModelDrafter(draft), policy=object())
    with pytest.raises(SpecdecodeError, match="either"):
        Engine(target, ModelDrafter(draft), policy=FixedK(2), num_draft_tokens=3)


def test_the_engine_has_no_isinstance_checks_on_policy_or_drafter_classes():
    import specdecode.drafters as drafters
    import specdecode.policy as policy

    names = set(drafters.__all__) | set(policy.__all__) | {"DrafterSet"}
    tree = ast.parse((Path(__file__).parents[1] / "specdecode" / "engine.py").read_text())
    step_code = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Engine"][0]
    for node in ast.walk(step_code):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            assert not ({n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} & names), ast.unparse(node)


# -- DrafterSet ------------------------------------------------------------------------------------


class Recorder:
    """Wraps a drafter and checks the protocol: every round it is shown the real context."""

    def __init__(self, inner, log):
        self.inner, self.name, self.log = inner, inner.name, log

    def __getattr__(self, attr):
        # "inner": not set yet during copy.copy (the engine forks drafters per request); the
        # batched path and the confidence stop would bypass propose: this drafter offers neither.
        if attr in ("inner", "propose_many", "batch_key", "reports_confidence"):
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


def check_auto_distribution(monkeypatch, costs: CostModel, seed: int) -> None:
    """The distribution check of test_engine_sampling.py with the planner choosing drafter and k
    under `costs` (1,500 samples instead of 5,000; same chi-square and total-variation bounds)."""
    from test_engine_sampling import LENGTH, V, check_distribution, exact_sequence_probs

    monkeypatch.setattr(test_engine_sampling, "N", 1500)
    target = native_from_hf(tiny_hf_model("llama", seed=1, vocab=V))
    draft = native_from_hf(tiny_hf_model("llama", seed=2, vocab=V))
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH, ignore_eos=True)
    engine = Engine(target, [ModelDrafter(draft), NgramDrafter(max_ngram=2)], cost_model=costs)
    check_distribution(engine, exact_sequence_probs(target, params), params, seed=seed)


def test_auto_sampling_follows_the_target_distribution(monkeypatch):
    check_auto_distribution(monkeypatch, FLAT, seed=2)


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
    assert "drafter: model+ngram+suffix, k=auto" in err and "cost T(m) target" in err and "cost T(m) model" in err
    assert "planner            drafted in" in err
    assert main(["generate", "def add(x, y):", *TINY, "--stats", "--drafter", "ngram", "-k", "3"]) == 0
    err = capsys.readouterr().err
    assert "drafter: ngram, k=3" in err and "cost model from cache" not in err  # one drafter, fixed k: no costs


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
    # (had the engine's passes contradicted the entry, it would have measured again: then the
    # figures at the end are the ones to price with)
    recorded = CostModel.from_dict(results.get("cost_model_end") or results["cost_model"])
    assert recorded.T(1) > 0 and "model" in recorded.drafts
    again = write_theory(tmp_path / "b")
    assert again["T_ms"][1] == pytest.approx(recorded.T(1) * 1e3)
    assert row["catch_up_ms_per_request"] > 0  # the draft model fed each prompt before drafting


def test_policy_replay_drives_the_real_planner():
    """scripts/policy_replay.py replays recorded outcomes through CostPlanner: with passes flat and
    a draft that is always right, auto is far faster than the target; with T(2) = 2 T(1) it never
    drafts and runs at the target's speed."""
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "policy_replay.py"
    spec = importlib.util.spec_from_file_location("policy_replay", path)
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)
    out = [random.Random(i).randrange(50) for i in range(80)]
    trace = {"prompt_ids": list(range(20)), "output_ids": out, "draft_guesses": out, "draft_confidence": [0.95] * 80,
             "category": "code", "max_new_tokens": 80}
    base, tokens, _ = replay.simulate(trace, FLAT, "target")
    fast, tokens2, ks = replay.simulate(trace, FLAT, "auto")
    assert tokens == tokens2 == 79 and base / fast > 3 and max(ks) > 4
    slow, _, ks = replay.simulate(trace, LINEAR, "auto")
    assert set(ks) == {0} and slow == pytest.approx(replay.simulate(trace, LINEAR, "target")[0])


def test_a_draft_table_is_put_in_units_of_the_targets_t1():
    """The draft's and the target's tables are timed at different moments; the draft step in T(1)
    units comes from passes of the two taken in turn (cost_model.draft_to_target_ratio)."""
    from specdecode.cost_model import PassCosts, _in_target_units

    target = PassCosts([0.080, 0.090], [1, 2])
    draft = PassCosts([0.300, 0.310], [1, 2], per_key=1e-6, prefill_big=0.5)  # timed while the machine was slow
    fixed = _in_target_units(draft, target, ratio=0.5)
    assert fixed(1) == pytest.approx(0.040) and fixed(2) / fixed(1) == pytest.approx(0.310 / 0.300)
    assert fixed.per_key == pytest.approx(1e-6 * 0.040 / 0.300) and fixed.prefill_big == pytest.approx(0.5 * 0.040 / 0.300)
