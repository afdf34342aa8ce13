"""How many tokens to draft next round, and with which drafter.

Every policy answers `choose(context, k_cap) -> (drafter index, k)` before a round and hears
`update(num_drafted, num_accepted)` after it. FixedDraftLength and AdaptiveDraftLength use one
drafter; CostPolicy (the default, `num_draft_tokens="auto"`) weighs measured pass costs against
running acceptance estimates for each configured drafter (docs/policy.md).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from ..cost_model import CostModel
from ..cost_pace import PROBE_WITHIN, CostPace
from .confidence import ConfidenceCalibration, DraftStop


class FixedDraftLength:
    """Always k."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"num_draft_tokens must be >= 1, got {k}")
        self.k = k

    def next_k(self) -> int:
        return self.k

    @property
    def k_max(self) -> int:
        return self.k

    def choose(self, context: list[int], k_cap: int) -> tuple[int, int]:
        return 0, min(self.k, k_cap)

    def update(self, num_drafted: int, num_accepted: int) -> None:
        pass

    def __repr__(self) -> str:
        return f"fixed(k={self.k})"


class AdaptiveDraftLength:
    """Grow k by one after a fully accepted round, shrink it to just past the first rejection.

    The draft spends its effort where the target agrees, and stops wasting draft passes on
    stretches (translation, free prose) where it does not.
    """

    def __init__(self, k: int, k_min: int = 1, k_max: int = 16) -> None:
        if not 1 <= k_min <= k <= k_max:
            raise ValueError(f"need 1 <= k_min <= k <= k_max, got {k_min}, {k}, {k_max}")
        self.k, self.k_min, self.k_max = k, k_min, k_max
        self._k_init = k

    def next_k(self) -> int:
        return self.k

    def choose(self, context: list[int], k_cap: int) -> tuple[int, int]:
        return 0, min(self.k, k_cap)

    def update(self, num_drafted: int, num_accepted: int) -> None:
        if num_drafted == 0:
            return
        if num_accepted == num_drafted:
            self.k = min(self.k_max, self.k + 1)
        else:
            self.k = max(self.k_min, min(self.k - 1, num_accepted + 1))

    def reset(self) -> None:
        self.k = self._k_init

    def __repr__(self) -> str:
        return f"adaptive(k={self._k_init}, {self.k_min}..{self.k_max})"


# What a request's first rounds assume, before its own evidence: P(draft token accepted) per
# position, by drafter and, for the n-gram drafter, by the length of the matched suffix (a longer
# match is stronger evidence). Worth PRIOR_WEIGHT rounds: a request's own rounds soon dominate.
# n-gram: scripts/ngram_match_length.py on the recorded Qwen outputs found the first token
# accepted after 8% of 1-token matches, 54% of 2-token and 93% of 3-token ones (docs/policy.md).
# model: the first draft token of the Qwen 0.5B draft was accepted 72-80% of the time over
# Spec-Bench and HumanEval (fixed k runs); with a prior worth PRIOR_WEIGHT = 4 rounds, one early
# rejection no longer drags a request under break-even and out of drafting for good
# (scripts/policy_replay.py chose these on prompts the benchmark does not run; docs/policy.md).
PRIORS: dict[str, float] = {"model": 0.75, "self": 0.8, "ngram:1": 0.1, "ngram:2": 0.5, "ngram:3": 0.8}
DEFAULT_PRIOR = 0.5
PRIOR_WEIGHT = 4.0
# Optimism for a drafter (or n-gram bucket) not yet tried in this request: it is judged as if this
# were its acceptance, so a pessimistic prior cannot keep a good drafter out forever (it never
# drafts, so it never learns). One round tells: after it the request's own evidence decides. It
# cannot make speculation win where passes are dear (T(2) = 2 T(1) loses even at 100%). Not above
# the draft model's prior: more optimism made the first round of a short request draft long and lose.
UNTRIED_ACCEPTANCE = 0.75
# Pass costs are looked up at the context length rounded up to this (attention grows with it).
CONTEXT_STEP = 64
# A catch-up pass (the draft model feeding the prompt before its first draft, or the tokens it
# missed while the n-gram drafter or no drafter ran) is paid once and serves the rest of the
# request: a round is charged its share, expected tokens of the round / tokens still to come.
# (Charging it all to one round locked the draft model out after a long prompt for good;
# ignoring it made a 0.5B draft prefill a 1,000-token RAG prompt to save a few passes.)
# How long the answer will be is unknown (the budget is only an upper bound), so the catch-up is
# bought the way a ski-rental problem buys skis: not before the request has spent, on the target
# alone, 1 / CATCH_UP_RENT of what the catch-up would cost. A short answer after a long prompt
# then never pays for the draft's prefill; a long one loses a few rounds of speculation at most.
# Replayed (scripts/policy_replay.py), 2 lifted the worst category of auto against the best fixed
# k from 0.82-0.92 to 0.99 and cost code 1-3% (docs/policy.md, section 3).
CATCH_UP_RENT = 2.0


class AcceptanceHistory:
    """Acceptance pooled over finished requests, by drafter key ("model", "ngram:2", ...): the
    priors of the next requests. The server turns it on (Engine.learn_acceptance): with many short
    requests, every request probing every drafter from a guessed prior wastes passes that a batch
    pays for. Only counts are kept, never tokens; older requests fade by `decay` per request."""

    def __init__(self, decay: float = 0.9, min_seen: float = 4.0) -> None:
        self.decay, self.min_seen = decay, min_seen
        self.counts: dict[str, list[float]] = {}  # key -> [accepted, seen]

    def add(self, policy: CostPolicy) -> None:
        for c in self.counts.values():
            c[0] *= self.decay
            c[1] *= self.decay
        for (_, key), est in policy.estimates.items():
            c = self.counts.setdefault(str(key), [0.0, 0.0])
            c[0] += est.pooled_accepted
            c[1] += est.pooled_seen

    def rate(self, key: str) -> float | None:
        """The pooled acceptance of `key`, kept inside (0.02, 0.98); None while too few were seen."""
        c = self.counts.get(key)
        if c is None or c[1] < self.min_seen:
            return None
        return min(max(c[0] / c[1], 0.02), 0.98)


class AcceptanceEstimate:
    """Running P(draft token i is accepted | drafts before i were), per draft position i.

    Exponentially weighted: each observation of a position discounts its earlier ones by
    `decay` (0.9: about the last ten rounds count), so the estimate follows the text as it
    turns from prose to code and back. A prior worth `prior_weight` observations keeps it off
    0 and 1; positions seen rarely lean on the estimate pooled over all positions.
    `age(f)` discounts everything by f: applied on rounds the drafter sat out, so its evidence
    fades back to the prior and the drafter is tried again (the exploration safeguard).
    """

    def __init__(self, prior: float, prior_weight: float = PRIOR_WEIGHT, decay: float = 0.9,
                 position_weight: float = 2.0) -> None:
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior must be in (0, 1), got {prior}")
        self.prior, self.prior_weight, self.decay, self.position_weight = prior, prior_weight, decay, position_weight
        self.accepted: list[float] = []  # discounted accepts at position i
        self.seen: list[float] = []  # discounted observations of position i
        self.pooled_accepted = self.pooled_seen = 0.0
        self.learned_prior = False  # the prior was measured on earlier requests: no optimistic probe

    def observe(self, num_drafted: int, num_accepted: int) -> None:
        """A round drafted num_drafted tokens; the first num_accepted were accepted."""
        known = min(num_accepted + 1, num_drafted)  # positions past the first rejection are unobserved
        while len(self.seen) < known:
            self.accepted.append(0.0)
            self.seen.append(0.0)
        self.pooled_accepted *= self.decay
        self.pooled_seen *= self.decay
        for i in range(known):
            x = 1.0 if i < num_accepted else 0.0
            self.accepted[i] = self.decay * self.accepted[i] + x
            self.seen[i] = self.decay * self.seen[i] + 1.0
            self.pooled_accepted += x
            self.pooled_seen += 1.0

    def age(self, factor: float) -> None:
        self.accepted = [a * factor for a in self.accepted]
        self.seen = [n * factor for n in self.seen]
        self.pooled_accepted *= factor
        self.pooled_seen *= factor

    def pooled(self) -> float:
        w = self.prior_weight
        return (self.pooled_accepted + w * self.prior) / (self.pooled_seen + w)

    def rate(self, i: int, pooled: float | None = None) -> float:
        pooled = self.pooled() if pooled is None else pooled
        if i >= len(self.seen):
            return pooled
        w = self.position_weight
        return (self.accepted[i] + w * pooled) / (self.seen[i] + w)

    @property
    def untried(self) -> bool:
        """No round of this request has drafted with it yet and its prior is a guess, not a measurement."""
        return self.pooled_seen == 0.0 and not self.learned_prior

    def expected_tokens(self, k_max: int, rate: float | None = None) -> list[float]:
        """E[k] = expected tokens a round with k drafts yields (accepted + the target's own), k = 0..k_max.

        E[k] = 1 + sum_{i<k} prod_{j<=i} a_j; with one rate a everywhere, (1 - a^(k+1)) / (1 - a).
        rate: use this one rate at every position instead of the estimates.
        """
        pooled = self.pooled()
        out, alive = [1.0], 1.0
        for i in range(k_max):
            alive *= rate if rate is not None else self.rate(i, pooled)
            out.append(out[-1] + alive)
        return out


def drafter_evidence(drafter, context: list[int], k: int) -> tuple[Hashable, int | None]:
    """(acceptance bucket, tokens it can draft now: None = any number, 0 = none) for one drafter.

    Drafters may define `evidence(context, k)`; the n-gram drafter does (its bucket is the
    length of the matched suffix, and without a match it has nothing to offer).
    """
    ev = getattr(drafter, "evidence", None)
    return ev(context, k) if ev is not None else (drafter.name, None)


@dataclass
class Choice:
    """One candidate of a round (drafter index, k) with what CostPolicy expects of it."""

    which: int
    k: int
    key: Hashable | None
    expected_tokens: float
    seconds: float
    step: float = 0.0  # seconds of one draft step of this drafter at this context (0: no draft model)

    @property
    def tokens_per_second(self) -> float:
        return self.expected_tokens / self.seconds if self.seconds > 0 else 0.0


class CostPolicy:
    """Each round, the drafter and draft length that maximise expected tokens per second.

    For drafter d with acceptance estimates a_i and k drafts, a round yields E_d[k] tokens
    (AcceptanceEstimate.expected_tokens) in draft_d(k) + T(k+1) seconds, T from the measured
    CostModel. k = 0 (the target alone, 1 token in T(1)) is always a candidate and wins unless
    speculation is expected to be `margin` faster: speculation is never chosen on a bet it is
    not expected to win, which is what keeps `auto` from being slower than the target alone.

    How far to draft: with a drafter that reports its confidence per token (the draft model,
    `reports_confidence`), the k chosen here only decides *whether* to draft; the round may run
    up to k_max (alone) or the chosen k (in a batch), and `draft_stop` (confidence.DraftStop)
    stops it at the first token whose successor is not worth its cost.

    k_fixed: always draft exactly k (capped by what a drafter can offer), choosing only the
    drafter; k = 0 only when no drafter has anything to propose.
    pace: the engine's CostPace (cost_pace.py): every cost is scaled by what the engine's own
    passes of that kind took against the cost model lately, and a close round runs without a
    draft now and then to time T(1) again. None: the cost model as it is (tests, tensor parallel).
    Per request: the engine makes one per generation, so one request's text never steers another's.
    """

    def __init__(self, cost_model: CostModel, drafters: Sequence, *, k_max: int = 15, k_fixed: int | None = None,
                 margin: float = 0.02, idle_decay: float = 0.95, priors: dict[str, float] | None = None,
                 learned: AcceptanceHistory | None = None, pace: CostPace | None = None) -> None:
        if k_fixed is not None and k_fixed < 1:
            raise ValueError(f"num_draft_tokens must be >= 1, got {k_fixed}")
        if not drafters:
            raise ValueError("CostPolicy needs at least one drafter")
        self.cost_model, self.drafters = cost_model, list(drafters)
        self.k_fixed = k_fixed
        self.k_max = k_fixed if k_fixed is not None else k_max
        self.margin, self.idle_decay = margin, idle_decay
        self.priors = {**PRIORS, **(priors or {})}
        self.learned = learned
        self.pace = pace
        self.probes = 0  # rounds run without a draft to time T(1) (pace), in this request
        self._draft_plan = (0.0, 0.0)  # this round's draft (step, catch-up) seconds as the cost model prices them
        self.estimates: dict[tuple[int, Hashable], AcceptanceEstimate] = {}
        self.last: Choice | None = None
        # This round's stopping rule (None: draft exactly the k returned), and per drafter index
        # what its confidence has meant in this request.
        self.draft_stop: DraftStop | None = None
        self.calibrations: dict[int, ConfidenceCalibration] = {}
        # T(m) at the context length, looked up again only when the context grew by CONTEXT_STEP
        # tokens, since choose() runs every round. Index m; 0 unused.
        self._tables: dict[int, list[float]] = {}
        self._start: int | None = None  # context length at the first round: generated = len(context) - _start

    def _generated(self, context: list[int]) -> int:
        """Tokens this request has generated so far (1 at its first round: the prefill's)."""
        if self._start is None:
            self._start = len(context) - 1
        return max(len(context) - self._start, 1)

    def _table(self, context_len: int) -> list[float]:
        """[0, T(1), ..., T(k_max + 1)] after `context_len` tokens (rounded up to CONTEXT_STEP), at
        the pace the engine's passes have run lately (kept non-decreasing)."""
        bucket = -(-context_len // CONTEXT_STEP) * CONTEXT_STEP
        table = self._tables.get(bucket)
        if table is None:
            table = self._tables[bucket] = [0.0] + [self.cost_model.T(m, bucket) for m in range(1, self.k_max + 2)]
        if self.pace is None:
            return table
        single, multi = self.pace.target(1), self.pace.target(2)  # one factor serves every m >= 2
        paced = [0.0, table[1] * single]
        for m in range(2, len(table)):
            paced.append(max(table[m] * multi, paced[-1]))
        return paced

    def _T(self, m: int) -> float:  # noqa: N802 - the papers' name
        """T(m) after a short context, at the engine's pace (batches: the pass of all requests)."""
        t = self.cost_model.T(m)
        return t if self.pace is None or m <= 0 else t * self.pace.target(m)

    def _draft_pass(self, name: str, m: int) -> float:
        """One pass of drafter `name`'s model over m rows (a batched draft step), at the engine's pace."""
        return self.cost_model.draft(name, m) * (1.0 if self.pace is None else self.pace.draft)

    def estimate(self, which: int, key: Hashable) -> AcceptanceEstimate:
        est = self.estimates.get((which, key))
        if est is None:
            prior = self.priors.get(str(key), self.priors.get(self.drafters[which].name, DEFAULT_PRIOR))
            measured = self.learned.rate(str(key)) if self.learned is not None else None
            est = self.estimates[which, key] = AcceptanceEstimate(measured if measured is not None else prior)
            est.learned_prior = measured is not None
        return est

    def draft_seconds(self, drafter, k: int, context: list[int], expected_tokens: float = 1.0,
                      remaining: int = 1) -> float:
        """Time charged for drafting k tokens: k steps, plus this round's share of a catch-up
        pass over the tokens the draft has not seen (expected_tokens / remaining of it)."""
        if k <= 0:
            return 0.0
        step, catch_up = self._draft_costs(drafter, context)
        return k * step + catch_up * min(1.0, expected_tokens / max(remaining, 1))

    def _draft_costs(self, drafter, context: list[int], paced: bool = True) -> tuple[float, float]:
        """(seconds of one draft step, extra seconds of the one-time catch-up pass), at this context;
        paced: scaled by what the engine's draft rounds took lately against the cost model."""
        cm, name, n = self.cost_model, drafter.name, len(context)
        step = cm.draft(name, 1, n)
        if step <= 0.0:
            return 0.0, 0.0
        behind = getattr(drafter, "catch_up_tokens", None)
        p = max(behind(context), 1) if behind is not None else 1
        # One pass, the last row's logits only; its rows attend to the n - p tokens already cached
        # (per_key, timed on one-row passes); among themselves as a matrix product, a few percent.
        catch_up = max(cm.draft_prefill(name, p, n - p) - step, 0.0)
        f = self.pace.draft if paced and self.pace is not None else 1.0
        return step * f, catch_up * f

    def predicted_draft_seconds(self, num_drafted: int) -> float:
        """What the cost model (unpaced) says this round's drafting of num_drafted tokens costs:
        the engine compares it with the time it took (cost_pace.CostPace.observe_draft)."""
        step, catch_up = self._draft_plan
        return num_drafted * step + catch_up if num_drafted > 0 and step > 0.0 else 0.0

    def options(self, context: list[int], k_cap: int, bar: float = 0.0) -> list[Choice]:
        """Candidate (drafter, k) of this round with expected tokens and seconds; k = 0 first.

        bar: skip a drafter none of whose k can exceed this many tokens per second (a cheap
        bound: E[k] <= E[k_top], and every k costs at least T(2) + the first draft step).
        """
        T = self._table(len(context))
        out = [Choice(0, 0, None, 1.0, T[1])]
        limit = min(self.k_max, k_cap, len(T) - 2)
        remaining = max(k_cap - self.k_max, 1)  # tokens still to come (the engine sizes k_cap so)
        if limit <= 0:
            return out
        spent = self._generated(context) * T[1]  # seconds this request has run on the target, about
        for which, drafter in enumerate(self.drafters):
            key, available = drafter_evidence(drafter, context, limit)
            k_top = limit if available is None else min(limit, available)
            if k_top <= 0:
                continue
            step, catch_up = self._draft_costs(drafter, context)
            if catch_up > 0.0 and catch_up > CATCH_UP_RENT * spent:
                continue  # not yet worth buying (CATCH_UP_RENT)
            est = self.estimate(which, key)
            expected = est.expected_tokens(k_top, rate=max(est.pooled(), UNTRIED_ACCEPTANCE) if est.untried else None)
            if expected[k_top] / (T[2] + step + catch_up * min(1.0, 1.0 / remaining)) <= bar:
                continue
            ks = [k_top] if self.k_fixed is not None else range(1, k_top + 1)
            out += [Choice(which, k, key, expected[k],
                           k * step + catch_up * min(1.0, expected[k] / remaining) + T[k + 1], step) for k in ks]
        return out

    def choose(self, context: list[int], k_cap: int, batch: tuple[int, float] | None = None,
               drafting: dict[str, tuple[int, int]] | None = None) -> tuple[int, int]:
        """(drafter index, k) for this round.

        batch: (N, E) when this request shares the target pass with others: N tokens are already
        in the pass and E tokens are expected from it. Then a draft is worth its place when what it
        adds beats what the same time yields at the batch's rate: E(k) - 1 > (E / T(N)) * (T(N + k)
        - T(N) + drafting), which is exactly when it raises the whole batch's tokens per second.
        With batch None or N <= 1 (alone), the round that maximises this request's tokens per second.
        drafting: per draft model name, (requests already drafting with it this round, their
        longest k): those draft passes run anyway, so joining them costs a row, not a pass.
        """
        fixed = self.k_fixed is not None
        self.draft_stop = None
        if batch is not None and batch[0] > 1:
            return self._choose_in_batch(context, k_cap, *batch, drafting or {})
        T = self._table(len(context))
        bar = 0.0 if fixed else (1.0 + self.margin) / T[1]
        options = self.options(context, k_cap, bar)
        best = options[0]
        if fixed and len(options) > 1:
            best = max(options[1:], key=lambda c: c.tokens_per_second)
        else:
            for c in options[1:]:  # ties go to the shorter draft (listed first)
                if c.tokens_per_second > bar:
                    best, bar = c, c.tokens_per_second
        if (best.k > 0 and not fixed and self.pace is not None and self.pace.single_is_stale()
                and best.tokens_per_second * T[1] < PROBE_WITHIN):
            best = options[0]  # a close call on a T(1) not timed lately: time it (cost_pace.py)
            self.probes += 1
        self._plan(best, context)
        # Alone, a confident draft may run past the k planned from averages, up to k_max.
        bound = min(self.k_max, k_cap, len(T) - 2)
        return best.which, self._stop_by_confidence(best, bound, best.tokens_per_second, T)

    def _plan(self, best: Choice, context: list[int]) -> None:
        """Remember this round's choice, and the draft's unpaced cost for predicted_draft_seconds."""
        self.last = best
        self._draft_plan = self._draft_costs(self.drafters[best.which], context, paced=False) if best.k > 0 else (0.0, 0.0)

    def _stop_by_confidence(self, best: Choice, bound: int, rate: float, T: list[float]) -> int:  # noqa: N803
        """The k to ask the drafter for; sets draft_stop when its confidence decides how far to go."""
        drafter = self.drafters[best.which]
        if best.k <= 0 or self.k_fixed is not None or not getattr(drafter, "reports_confidence", False):
            return best.k
        # The next token's confidence is not known yet: it is expected to be accepted at the
        # drafter's rate pooled over positions. (The per-position rate locked a request at k = 1:
        # one early rejection at position 1, then no round went past 1 to correct it.)
        pooled = self.estimate(best.which, best.key).pooled()
        calibration = self.calibrations.setdefault(best.which, ConfidenceCalibration())
        bound = max(bound, best.k)
        self.draft_stop = DraftStop(rate, best.step, T, lambda j: pooled, calibration, bound)
        return bound

    def _choose_in_batch(self, context: list[int], k_cap: int, n: int, expected: float,
                         drafting: dict[str, tuple[int, int]]) -> tuple[int, int]:
        T = self._table(len(context))
        t_n = self._T(n)
        rate = expected / t_n if t_n > 0 else 0.0
        options = self.options(context, k_cap)

        def draft_cost(c: Choice) -> float:
            name = self.drafters[c.which].name
            step = self._draft_pass(name, 1)
            own = c.seconds - T[c.k + 1]  # k steps alone + this round's share of a catch-up
            if c.k == 0 or step <= 0.0 or name not in drafting:
                return own
            rows, k_others = drafting[name]
            joined = min(c.k, k_others)  # steps whose passes run anyway: one more row each
            row = max(self._draft_pass(name, rows + 1) - self._draft_pass(name, rows), 0.0)
            return own - joined * (step - row)

        def gain(c: Choice) -> float:  # tokens gained minus the tokens the extra time would give at `rate`
            # the pass grows by k rows, each also attending to this request's context
            rows = self._T(n + c.k) - t_n + (T[c.k + 1] - T[1]) - (self._T(c.k + 1) - self._T(1))
            return c.expected_tokens - 1.0 - rate * (rows + draft_cost(c))

        best = options[0]
        if self.k_fixed is not None and len(options) > 1:
            best = max(options[1:], key=gain)
        else:
            bar = self.margin  # as alone: speculation only on a bet it is expected to win
            for c in options[1:]:  # ties go to the shorter draft (listed first)
                if gain(c) > bar:
                    best, bar = c, gain(c)
        self._plan(best, context)
        # In a batch the planned k is the most: the rows were weighed against the others' (gain).
        return best.which, self._stop_by_confidence(best, best.k, rate, T)

    def update(self, num_drafted: int, num_accepted: int) -> None:
        used = (self.last.which, self.last.key) if self.last is not None and self.last.k > 0 else None
        for key, est in self.estimates.items():
            if key != used:
                est.age(self.idle_decay)
        if used is not None and num_drafted > 0:
            self.estimates[used].observe(num_drafted, num_accepted)
            if self.draft_stop is not None:
                self.calibrations[used[0]].observe(self.draft_stop.confidences, num_accepted)
        self.draft_stop = None

    def __repr__(self) -> str:
        names = "+".join(d.name for d in self.drafters)
        return f"auto({names}, k<={self.k_max})" if self.k_fixed is None else f"cost({names}, k={self.k_fixed})"
