"""CostPlanner: each round, the drafter and draft length expected to give the most tokens per unit
of time, from measured pass costs (in T(1) units, costs.py) and acceptance estimates
(acceptance.py); a draft model's confidence decides how far a round goes (draft_stop.py).

A round with drafter d and k drafts yields E_d[k] tokens (the accepted drafts and the target's
own) and costs k draft steps + T(k + 1), plus its share of a draft model's catch-up pass over
the context it has not seen. k = 0 (one token for T(1) = 1) is always a candidate and wins unless
speculation is expected to be `margin` faster: never a bet it does not expect to win.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecdecodeError
from .acceptance import AcceptanceBook, AcceptanceEstimate
from .base import Plan, draft_room
from .costs import PassCostRatios
from .draft_stop import ConfidenceCalibration, DraftStop

# A draft model's catch-up pass (the prompt before its first draft, or what it missed while
# another drafter ran) is paid once and serves the rest of the request: a round is charged its
# share, expected tokens / tokens still to come. How long the answer will be is unknown (the
# budget is an upper bound), so it is bought as a ski rental: the rent is what the request
# forgoes by decoding without it (per token, 1 - 1/r of a T(1), r the drafter's best expected
# speed-up without the catch-up), and it is bought once the rent paid reaches CATCH_UP_RENT times
# its price (1: the classic rule, never worse than twice the best choice in hindsight). A short
# answer after a long prompt then never pays for the draft's prefill; a long one forgoes at most
# the price. (It was bought once the request had spent half the price on the target alone: on a
# Zen 3 the 0.5B draft's catch-up of a 56-token prompt, about 5 T(1), was bought after three
# tokens, and Spec-Bench's 8- to 32-token qa and translation answers decoded 0.88x and 0.94x the
# target alone: docs/trees.md.)
CATCH_UP_RENT = 1.0
# A catch-up over tokens the request produced while the drafter sat out recurs whenever it sits
# out again, so the round that needs it pays all of it (see _options). But a drafter that sits
# out because of that charge falls further behind every round, and its price grows with it: a
# draft head whose first three drafts of an answer were rejected never drafted again (its
# catch-up, 0.02 T(1) a token, outgrew what one round can gain within 10 tokens; 87 of 95 rounds
# without a draft on a story, its acceptance estimate back at 0.50). So the same ski rental applies: each
# round the drafter, free of its catch-up, was expected faster than the round's choice adds what
# that choice forgoes (its tokens x (1 / its rate - 1 / the drafter's)); once that regret
# reaches CATCH_UP_RENT times the price, the catch-up is bought and shared like the prompt's.

# What one alternative node of a token tree adds to a round, in tokens, before a drafter's trees
# have shown it: a node pays only where the chain breaks at its depth and the target takes it.
# Measured: the 0.5B draft model's second choices added 8% tokens per pass over Spec-Bench with
# about k // 2 of them (docs/trees.md: 1.43 -> 1.54 with k near 2: ~0.1 per node); n-gram
# alternatives added nothing there. Worth NODE_PRIOR_WEIGHT nodes of a drafter's own evidence.
NODE_PRIOR = 0.05
NODE_PRIOR_WEIGHT = 16.0
NODE_DECAY = 0.98  # per tree round: about the last fifty rounds count


@dataclass
class NodeValue:
    """Tokens an alternative node of a drafter's trees has added, per node (decayed sums)."""

    gained: float = 0.0
    nodes: float = 0.0
    rounds: int = 0  # tree rounds observed (undiscounted): for --stats

    def observe(self, nodes: int, gained: int) -> None:
        self.gained = NODE_DECAY * self.gained + gained
        self.nodes = NODE_DECAY * self.nodes + nodes
        self.rounds += 1

    def per_node(self) -> float:
        return (self.gained + NODE_PRIOR_WEIGHT * NODE_PRIOR) / (self.nodes + NODE_PRIOR_WEIGHT)


@dataclass
class Choice:
    """One candidate (drafter, k) of a round with what it is expected to yield and cost (T(1) units)."""

    which: int
    k: int
    key: Hashable | None
    expected_tokens: float
    cost: float
    step: float = 0.0  # one draft step of this drafter (0: no draft model)
    behind: int = 0  # context tokens its model lacks: the first step feeds them (the catch-up)

    @property
    def rate(self) -> float:
        return self.expected_tokens / self.cost if self.cost > 0 else 0.0


@dataclass
class RequestPlan:
    """One request's planning state (RequestState.plan_state)."""

    estimates: dict[tuple[int, Hashable], AcceptanceEstimate] = field(default_factory=dict)
    last: Choice | None = None
    stop: DraftStop | None = None
    start: int | None = None  # context length at the first round
    rounds: int = 0
    drafted: int = 0  # rounds with a draft
    idle: Counter = field(default_factory=Counter)  # why rounds ran without a draft
    idle_figures: dict[str, str] = field(default_factory=dict)  # the figures behind each reason, last seen
    # drafter index -> T(1)s forgone since it last drafted, in rounds where it (free of its
    # recurring catch-up) was expected faster than the round's choice (see CATCH_UP_RENT)
    regret: dict[int, float] = field(default_factory=dict)
    free_rates: dict[int, float] = field(default_factory=dict)  # this round's: drafter -> rate without its catch-up


def drafter_evidence(drafter, context: list[int], k: int) -> tuple[Hashable, int | None]:
    """(acceptance bucket, tokens it can draft now: None = any number, 0 = none). Drafters may
    define `evidence(context, k)`: the n-gram drafter's bucket is its matched suffix's length."""
    ev = getattr(drafter, "evidence", None)
    return ev(context, k) if ev is not None else (drafter.name, None)


class CostPlanner:
    """The default planner (`num_draft_tokens="auto"`).

    costs: the engine's PassCostRatios. k_max: the longest draft. k_fixed: always exactly that
    many drafts (choosing only the drafter among several). margin: how much faster than the
    target alone speculation must be expected to be.
    """

    def __init__(self, costs: PassCostRatios, *, k_max: int = 15, k_fixed: int | None = None,
                 margin: float = 0.02) -> None:
        if k_fixed is not None and (not isinstance(k_fixed, int) or k_fixed < 1):
            raise SpecdecodeError(f"num_draft_tokens must be an integer >= 1, got {k_fixed!r}")
        self.costs = costs
        self.k_fixed = k_fixed
        self.k_max = k_fixed if k_fixed is not None else k_max
        self.margin = margin
        self.book = AcceptanceBook()
        self.calibrations: dict[str, ConfidenceCalibration] = {}
        # by drafter name, pooled over requests like the book (a plan changes speed, never output)
        self.node_values: dict[str, NodeValue] = {}

    # -- the Planner interface -------------------------------------------------------------------

    def begin(self, state: Any) -> None:
        state.plan_state = RequestPlan()

    def plan(self, states: Sequence[Any]) -> list[Plan]:
        # Requests sharing the pass: n tokens are in it so far, e expected from it (each brings
        # its last token); draft passes already planned, by drafter name: (rows, longest k).
        n = e = len(states)
        drafting: dict[str, tuple[int, int]] = {}
        plans = []
        for s in states:
            c = self._choose(s, (n, e) if len(states) > 1 else None, drafting)
            rp = s.plan_state
            rp.rounds += 1
            if c.k > 0:
                rp.drafted += 1
                n, e = n + c.k, e + c.expected_tokens - 1.0
                name = s.drafter.drafters[c.which].name
                if c.step > 0.0:
                    rows, longest = drafting.get(name, (0, 0))
                    drafting[name] = (rows + 1, max(longest, c.k))
            k = c.k
            if rp.stop is not None:
                k = rp.stop.bound
            plans.append(Plan(c.which, k, rp.stop, c.expected_tokens, self._tree_nodes(s, c, len(states))))
        return plans

    def _tree_nodes(self, s: Any, c: Choice, batch: int) -> int:
        """Alternative nodes a tree drafter may add to a lone request's k-token draft: the rows a
        pass gets for at most `margin` more than T(k + 1) (free: they also keep the drafter's node
        value measured), then, up to k more, each row whose own cost the value its drafter's
        alternatives have shown per node pays for at the round's rate (tokens per T(1)): a row
        costing d T(1) takes a node worth more than rate x d tokens."""
        if c.k <= 0 or batch > 1:
            return 0
        d = s.drafter.drafters[c.which]
        if getattr(d, "branches", 1) <= 1:
            return 0
        table = self.costs.table(len(s.tokens), self.k_max)
        room = min(draft_room(s), len(table) - 2) - c.k
        value = self.node_values.get(d.name, NodeValue()).per_node()
        extra = paid = 0
        while extra < room:
            rows = c.k + 2 + extra  # the pass with this node
            if table[rows] > table[c.k + 1] * (1.0 + self.margin):
                if paid >= c.k or value <= c.rate * (table[rows] - table[rows - 1]):
                    break
                paid += 1
            extra += 1
        return extra

    def observe_tree(self, state: Any, nodes: int, gained: int) -> None:
        """A round's tree had `nodes` alternative nodes beside its main branch, and the accepted
        path gave `gained` tokens more than the main branch alone would have."""
        c = state.plan_state.last
        if c is None or c.k <= 0 or nodes <= 0:
            return
        name = state.drafter.drafters[c.which].name
        self.node_values.setdefault(name, NodeValue()).observe(nodes, gained)

    def observe(self, state: Any, drafted: int, accepted: int) -> None:
        rp: RequestPlan = state.plan_state
        last = rp.last
        used = (last.which, last.key) if last is not None and last.k > 0 else None
        for key, est in rp.estimates.items():
            if key != used:
                est.fade()
        if used is not None and drafted > 0:
            rp.estimates[used].observe(drafted, accepted)
            if rp.stop is not None:
                name = state.drafter.drafters[used[0]].name
                self.calibrations.setdefault(name, ConfidenceCalibration()).observe(rp.stop.confidences, accepted)
        rp.stop = None

    def timed(self, m: int, context: int, seconds: float) -> None:
        self.costs.timed(m, context, seconds)

    def settle(self) -> bool:
        """Deferred work no request should wait on (PassCostRatios.settle)."""
        return self.costs.settle()

    def timed_draft(self, state: Any, steps: int, seconds: float) -> None:
        c = state.plan_state.last
        if c is not None and c.k > 0 and c.step > 0.0:
            name = state.drafter.drafters[c.which].name
            self.costs.timed_draft(name, steps, len(state.tokens), c.behind, seconds)

    def end(self, state: Any) -> None:
        rp = getattr(state, "plan_state", None)
        if isinstance(rp, RequestPlan):
            self.book.add({key: est for (_, key), est in rp.estimates.items()})

    def describe(self, state: Any) -> str:
        rp: RequestPlan = state.plan_state
        if not rp.rounds:
            return "no decode rounds"
        names = [d.name for d in state.drafter.drafters]
        parts = [f"drafted in {rp.drafted} of {rp.rounds} rounds"]
        by_name: dict[str, list[AcceptanceEstimate]] = {}
        for (which, _), est in rp.estimates.items():
            by_name.setdefault(names[which], []).append(est)
        context = len(state.tokens)
        t = self.costs.table(context, self.k_max)
        steered = self.costs.multi_factor
        parts.append(f"T(2) = {t[2]:.2f} T(1), T(4) = {t[min(4, len(t) - 1)]:.2f} T(1)"
                     + (f" as run ({steered:.2f}x the measured ratios)" if steered != 1.0 else ""))
        for name in names:
            step = self.costs.draft_step(name, context)
            cost = f"a draft step costs {step:.2f} T(1)" if step > 0 else "drafting is free"
            if name in self.costs.draft_factors:
                cost += f" as run ({self.costs.measured_draft_step(name, context):.2f} measured)"
            if name in self.node_values:
                v = self.node_values[name]
                cost += f", a tree node adds {v.per_node():.2f} tokens ({v.rounds} tree rounds)"
            ests = by_name.get(name, [])
            if ests:
                best = max(ests, key=lambda x: x.pooled_seen)
                parts.append(f"{name}: {cost}, acceptance {best.pooled():.2f} (started at {best.start:.2f})")
            else:
                parts.append(f"{name}: {cost}, never estimated")
        if rp.idle:
            parts.append("rounds without a draft: " + ", ".join(
                f"{n} {why}" + (f" ({rp.idle_figures[why]})" if why in rp.idle_figures else "")
                for why, n in rp.idle.most_common()))
        return "; ".join(parts)

    # -- choosing --------------------------------------------------------------------------------

    def _estimate(self, rp: RequestPlan, which: int, key: Hashable, name: str) -> AcceptanceEstimate:
        est = rp.estimates.get((which, key))
        if est is None:
            est = rp.estimates[which, key] = AcceptanceEstimate(self.book.start(key, name))
        return est

    def _options(self, s: Any, table: list[float], limit: int, bar: float) -> tuple[list[Choice], tuple[str, str]]:
        """Candidates of this round, k = 0 first, and why the round would run without a draft
        (reason, the figures behind it) should k = 0 win; a drafter none of whose k can beat `bar`
        (tokens per unit) is skipped (E[k] <= E[k_top], every k costs at least T(2) + one step)."""
        rp: RequestPlan = s.plan_state
        context = s.tokens
        n = len(context)
        out = [Choice(0, 0, None, 1.0, 1.0)]
        rp.free_rates.clear()
        remaining = max(s.budget - s.stats.generated_tokens, 1)
        spent = max(n - rp.start, 1)  # tokens, each about one T(1), this request has run
        reason = None  # (why no draft, the figures behind it) of the first drafter left out
        for which, d in enumerate(s.drafter.drafters):
            key, available = drafter_evidence(d, context, limit)
            k_top = limit if available is None else min(limit, available)
            if k_top <= 0:
                reason = reason or (f"{d.name} had nothing to propose", "")
                continue
            step = self.costs.draft_step(d.name, n)
            behind_f = getattr(d, "catch_up_tokens", None)
            behind = max(behind_f(context), 1) if behind_f is not None else 1
            attended_f = getattr(d, "catch_up_context", None)  # a head past its window starts a fresh cache
            attended = attended_f(context) if attended_f is not None else n - behind
            catch_up = self.costs.catch_up(d.name, behind, attended) if step > 0.0 and behind > 1 else 0.0
            # The prompt's catch-up is paid once and serves the rest of the request; one over tokens
            # this request produced without the model (other drafters' rounds, a grammar's forced
            # tokens) recurs whenever they run again, so the round that needs it pays all of it.
            once = behind > spent
            est = self._estimate(rp, which, key, d.name)
            expected = est.expected_tokens(k_top)
            bought = False  # a recurring catch-up the regret of rounds without it has paid for
            if catch_up > 0.0 and self.k_fixed is None:  # a fixed k drafts whatever it costs
                # the drafter's best expected speed-up without its catch-up
                free = max(expected[k] / (k * step + table[k + 1]) for k in range(1, k_top + 1))
                if once:
                    rent = max(0.0, 1.0 - 1.0 / free) * spent  # T(1)s forgone so far without it
                    if catch_up > CATCH_UP_RENT * rent:
                        reason = reason or (f"{d.name}'s catch-up pass not yet worth it",
                                            f"{behind} tokens, {catch_up:.1f} T(1), forgone so far {rent:.1f} T(1)")
                        continue
                else:
                    rp.free_rates[which] = free
                    bought = rp.regret.get(which, 0.0) >= CATCH_UP_RENT * catch_up

            def share(tokens: float) -> float:
                return min(1.0, tokens / remaining) if once or bought else 1.0

            # why no draft, should none of this drafter's rounds win (or should it be skipped)
            reason = reason or (f"{d.name}: the target alone was expected faster",
                                f"a draft step costs {step:.2f} T(1), T(2) = {table[2]:.2f} T(1), "
                                f"acceptance {est.pooled():.2f}")
            if expected[k_top] / (table[2] + step + catch_up * share(1.0)) <= bar:
                continue
            ks = [k_top] if self.k_fixed is not None else range(1, k_top + 1)
            out += [Choice(which, k, key, expected[k], k * step + catch_up * share(expected[k]) + table[k + 1],
                           step, behind) for k in ks]
        return out, reason or ("the target alone was expected faster", "")

    def _choose(self, s: Any, batch: tuple[int, float] | None, drafting: dict[str, tuple[int, int]]) -> Choice:
        rp: RequestPlan = s.plan_state
        rp.stop = None
        n_ctx = len(s.tokens)
        if rp.start is None:
            rp.start = n_ctx - 1
        room = draft_room(s)
        table = self.costs.table(n_ctx, self.k_max)
        limit = min(self.k_max, room, len(table) - 2)
        if limit <= 0:
            rp.last = Choice(0, 0, None, 1.0, 1.0)
            return rp.last
        fixed = self.k_fixed is not None
        if batch is not None and batch[0] > 1:
            best, rate, idle = self._best_in_batch(s, table, limit, *batch, drafting)
            bound = best.k  # in a batch the planned k is the most: its rows were weighed against the others'
        else:
            options, idle = self._options(s, table, limit, 0.0 if fixed else 1.0 + self.margin)
            best = options[0]
            if fixed and len(options) > 1:
                best = max(options[1:], key=lambda c: c.rate)
            else:
                bar = 1.0 + self.margin
                for c in options[1:]:  # ties go to the shorter draft (listed first)
                    if c.rate > bar:
                        best, bar = c, c.rate
            rate, bound = best.rate, limit  # alone, a confident draft may run past the planned k
            self._count_regret(rp, best)
        rp.last = best
        if best.k == 0:
            why, figures = idle
            rp.idle[why] += 1
            if figures:
                rp.idle_figures[why] = figures
            return best
        d = s.drafter.drafters[best.which]
        if not fixed and getattr(d, "reports_confidence", False):
            pooled = rp.estimates[best.which, best.key].pooled()
            calibration = self.calibrations.setdefault(d.name, ConfidenceCalibration())
            rp.stop = DraftStop(rate, best.step, table, pooled, calibration, max(bound, best.k))
        return best

    @staticmethod
    def _count_regret(rp: RequestPlan, best: Choice) -> None:
        """After a lone request's choice: each drafter held back by a recurring catch-up that was
        expected faster without it adds what the choice forgoes; the one that drafts starts over."""
        for which, free in rp.free_rates.items():
            if best.k > 0 and best.which == which:
                continue
            if best.rate > 0.0 and free > best.rate:
                rp.regret[which] = rp.regret.get(which, 0.0) + best.expected_tokens * (1.0 / best.rate - 1.0 / free)
        if best.k > 0:
            rp.regret.pop(best.which, None)

    def _best_in_batch(self, s: Any, table: list[float], limit: int, n: int, expected: float,
                       drafting: dict[str, tuple[int, int]]) -> tuple[Choice, float, tuple[str, str]]:
        """In a shared pass a draft is worth its place when what it adds beats what the same time
        yields at the batch's rate: E(k) - 1 > (E / T(N)) (T(N + k) - T(N) + its drafting),
        exactly when it raises the whole batch's tokens per second."""
        costs = self.costs
        t_n = costs.batch(n)
        rate = expected / t_n if t_n > 0 else 0.0
        options, idle = self._options(s, table, limit, 0.0)

        def draft_cost(c: Choice) -> float:
            own = c.cost - table[c.k + 1]  # k steps alone + this round's share of a catch-up
            name = s.drafter.drafters[c.which].name
            if c.k == 0 or c.step <= 0.0 or name not in drafting:
                return own
            rows, k_others = drafting[name]
            joined = min(c.k, k_others)  # steps whose passes run anyway: one more row each
            step = costs.draft_step(name, 0)
            row = max(costs.draft_step(name, 0, rows + 1) - costs.draft_step(name, 0, rows), 0.0)
            return own - joined * (step - row)

        def gain(c: Choice) -> float:
            # the pass grows by k rows, each also attending to this request's context
            rows = costs.batch(n + c.k) - t_n + (table[c.k + 1] - 1.0) - (costs.batch(c.k + 1) - costs.batch(1))
            return c.expected_tokens - 1.0 - rate * (rows + draft_cost(c))

        best = options[0]
        if self.k_fixed is not None and len(options) > 1:
            best = max(options[1:], key=gain)
        else:
            bar = self.margin
            for c in options[1:]:
                if gain(c) > bar:
                    best, bar = c, gain(c)
        return best, rate, idle

    def __repr__(self) -> str:
        return f"CostPlanner(k<={self.k_max})" if self.k_fixed is None else f"CostPlanner(k={self.k_fixed})"
