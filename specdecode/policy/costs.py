"""Pass costs as the planner sees them: ratios to one target pass over one token, T(1).

Every decision compares passes with passes (a round with k drafts against k + 1 tokens' worth
of the target alone), so a machine that slows down as a whole changes no choice. The figures
come from `specdecode.cost_model` (measured on first use, interleaved with T(1) so that a slow
moment cannot skew a ratio, checked for consistency, cached per machine and model); this module
divides them by T(1) and watches the engine's own passes: when the multi-token passes, relative
to the one-token passes, run far from what the cached entry says, the target's passes are timed
again (about a second, once no request waits: Engine.settle) and replace the entry's
(docs/policy.md). A draft model's steps are watched the same way: as the engine runs them (a
batched proposal, host copies, the stop rule after every token) they can cost more than the cost
model's bare pass, so once enough rounds are seen a step is priced as observed. Short of a
contradiction, the target's multi-token passes are likewise priced at what they were seen to cost
relative to one-token passes (multi_factor, within MULTI_FACTOR_LIMIT). An entry whose timings
disagreed with themselves (never cached) is timed again at the first settle.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from statistics import median

from ..cost_model import CostModel, measure_cost_model, remeasure_target

log = logging.getLogger(__name__)

CONTEXT_STEP = 64  # costs are looked up at the context rounded up to this (attention grows with it)
# The engine's own single-request passes contradict the entry when, over the last WINDOW passes
# of each kind (one token; several), their median ratios to the entry differ by more than this.
CONTRADICTION = 1.5
WINDOW = 16
MIN_PASSES = 8
MAX_REMEASURES = 2  # per engine: a machine that keeps changing is not re-timed forever
MIN_SECONDS = 0.005  # passes priced under this are not checked (bookkeeping dominates them)
# A draft step is priced at (its observed / measured time) / (the target passes' observed /
# measured time), the medians over the last WINDOW single-request rounds of each, once there are
# MIN_PASSES of both: relative to the target's passes, so a machine that slows as a whole changes
# nothing. Kept within this range (a factor outside it is a measurement gone wrong, not a cost).
DRAFT_FACTOR_RANGE = (0.5, 4.0)
# Short of a contradiction, the same windows steer the entry: its multi-token passes are priced at
# (observed T(m)/T(1)) / (the entry's), the ratio of the medians, kept within this factor either
# way (past it the entry is measured again instead). A first measurement is noisy (T(2)/T(1)
# timed 0.97-1.13 six times in one process on a Zen 4) and the planner's draft-model choices flip
# on 10% (a 0.33 T(1) draft step at acceptance ~0.7 is near break-even), so the entry's ratios are
# corrected by what the engine's own passes cost, as draft steps are (draft_factors). As the cost
# model times its ratios, it learns from pairs: a multi-token pass counts only beside a one-token
# pass at most PAIR_GAP passes before it, so a VM's slow minute (both kinds slow alike) is not
# taken for a gap between kinds (the cost pace that preceded the planner learned from windows of
# each kind apart, and a slow minute during one kind's passes left stale factors:
# docs/policy-history.md). Changes under MULTI_FACTOR_STEP are not applied (they would only churn
# the memoised tables).
MULTI_FACTOR_LIMIT = 1.25
MULTI_FACTOR_STEP = 0.03
PAIR_GAP = 3


class PassCostRatios:
    """The target's and the draft models' pass costs in units of the target's T(1).

    `given`: a cost model to use as it is (tests; tensor-parallel ranks, which must all decide
    alike, use rank 0's). Otherwise the engine's models are measured on first use.
    """

    def __init__(self, target, drafters: list, given: CostModel | None = None) -> None:
        self._target, self._drafters = target, drafters
        self._model = given
        self.checked = given is None  # a measured entry is checked against the engine's passes
        self.remeasures = 0
        self.pending = False  # contradicted: to be measured again at the next settle()
        self.version = 0  # bumped when the figures change (tables memoised under the old ones go)
        self._tables: dict[tuple[int, int], list[float]] = {}
        self._seen: dict[str, deque[float]] = {"1": deque(maxlen=WINDOW), "m": deque(maxlen=WINDOW)}
        self._draft_seen: dict[str, deque[float]] = {}
        self.draft_factors: dict[str, float] = {}  # drafter name -> observed / measured step cost
        self.multi_factor = 1.0  # the target's multi-token passes: observed / entry, relative to T(1)
        self._pairs: deque[float] = deque(maxlen=WINDOW)  # log(multi / entry) - log(one / entry), adjacent passes
        self._passes = 0
        self._last_one: tuple[int, float] | None = None  # (pass number, log(one-token pass / entry))

    @property
    def model(self) -> CostModel:
        if self._model is None:
            self._model = measure_cost_model(self._target, self._drafters)
            # An entry whose timings disagreed with themselves is timed again once no request
            # waits (settle): until the engine has run multi-token passes it cannot steer the
            # entry, and a bad one can keep it from ever running them (in a Zen 4 bench run under
            # such an entry the 0.5B draft drafted in 3 of 10 mt_bench and math prompts; on the
            # same prompts under a consistent entry, in 10 of 10).
            self.pending = self.pending or (self.checked and not self._model.target.consistent)
        return self._model

    def give(self, model: CostModel) -> None:
        """Use `model` from now on, unchecked (tensor parallelism: rank 0's figures)."""
        self._model, self.checked = model, False
        self._changed()

    @property
    def t1(self) -> float:
        """Seconds of T(1) after a short context: the unit."""
        return self.model.T(1)

    def table(self, context: int, k_max: int) -> list[float]:
        """[0, T(1), ..., T(k_max + 1)] after `context` tokens (rounded up to CONTEXT_STEP), in T(1) units."""
        bucket = -(-context // CONTEXT_STEP) * CONTEXT_STEP
        t = self._tables.get((bucket, k_max))
        if t is None:
            cm, unit = self.model, self.t1
            t = self._tables[bucket, k_max] = [0.0] + [cm.T(m, bucket) / unit * self._steered(m)
                                                       for m in range(1, k_max + 2)]
        return t

    def batch(self, m: int) -> float:
        """A target pass over m rows of a batch (short contexts), in T(1) units."""
        return self.model.T(m) / self.t1 * self._steered(m)

    def _steered(self, m: int) -> float:
        return self.multi_factor if m > 1 else 1.0

    def draft_step(self, name: str, context: int, rows: int = 1) -> float:
        """One pass of drafter `name`'s model over `rows` rows after `context` tokens (0: no model),
        as the engine's own draft rounds have been seen to cost (draft_factors)."""
        return self.measured_draft_step(name, context, rows) * self.draft_factors.get(name, 1.0)

    def measured_draft_step(self, name: str, context: int, rows: int = 1) -> float:
        """draft_step as the cost model measured it, before the engine's rounds corrected it."""
        return self.model.draft(name, rows, context) / self.t1

    def catch_up(self, name: str, tokens: int, context: int) -> float:
        """Drafter `name`'s model feeding `tokens` it has not seen after `context` cached ones
        (one pass, the last row's logits only), beyond what a plain draft step costs."""
        cm = self.model
        return max(cm.draft_prefill(name, tokens, context) - cm.draft(name, 1, context + tokens), 0.0) / self.t1

    def timed(self, m: int, context: int, seconds: float) -> None:
        """A single-request target pass: compare it with the entry; measure again if contradicted."""
        if not self.checked or self._model is None or self.remeasures >= MAX_REMEASURES or self.pending:
            return
        predicted = self._model.T(m, context)
        if predicted < MIN_SECONDS or seconds <= 0.0:
            return
        ratio = math.log(seconds / predicted)
        self._seen["1" if m == 1 else "m"].append(ratio)
        self._passes += 1
        if m == 1:
            self._last_one = (self._passes, ratio)
        elif self._last_one is not None and self._passes - self._last_one[0] <= PAIR_GAP:
            self._pairs.append(ratio - self._last_one[1])
            if len(self._pairs) >= MIN_PASSES:
                self._steer(math.exp(median(self._pairs)))
        one, multi = self._seen["1"], self._seen["m"]
        if len(one) < MIN_PASSES or len(multi) < MIN_PASSES:
            return
        off = math.exp(median(multi) - median(one))  # (observed T(m)/T(1)) / (the entry's T(m)/T(1))
        if 1.0 / CONTRADICTION <= off <= CONTRADICTION:
            return
        log.info("multi-token passes ran at %.2fx the cost entry's ratio to T(1): to be measured again", off)
        self.pending = True

    def _steer(self, off: float) -> None:
        """Price multi-token passes at `off` times the entry's ratio to T(1), within the limit."""
        factor = min(max(off, 1.0 / MULTI_FACTOR_LIMIT), MULTI_FACTOR_LIMIT)
        if abs(math.log(factor / self.multi_factor)) > math.log1p(MULTI_FACTOR_STEP):
            self.multi_factor = factor
            self.version += 1
            self._tables.clear()

    def settle(self) -> bool:
        """Time the target's passes again if the engine's passes contradicted the entry (timed):
        called where no request waits on the engine (Engine.settle), since it takes about a
        second and a request's stream would stall for it. -> whether it measured."""
        if not self.pending or not self.checked or self._model is None or self.remeasures >= MAX_REMEASURES:
            self.pending = False
            return False
        self.pending = False
        self._model = remeasure_target(self._target, self._model)
        self.remeasures += 1
        self._changed()
        self.pending = not self._model.target.consistent  # once more, within MAX_REMEASURES
        return True

    def timed_draft(self, name: str, steps: int, context: int, behind: int, seconds: float) -> None:
        """A single request's draft round: `steps` steps of drafter `name`'s model after `context`
        tokens, the first feeding the `behind` tokens it lacked; re-price its step if it ran far
        from the entry relative to the target's own passes."""
        if not self.checked or self._model is None or steps <= 0 or seconds <= 0.0:
            return
        cm = self._model
        one = cm.draft(name, 1, context)
        first = cm.draft_prefill(name, behind, context - behind) if behind > 1 else one
        predicted = first + (steps - 1) * one
        if predicted < MIN_SECONDS:
            return
        seen = self._draft_seen.setdefault(name, deque(maxlen=WINDOW))
        seen.append(math.log(seconds / predicted))
        target = list(self._seen["1"]) + list(self._seen["m"])
        if len(seen) < MIN_PASSES or len(target) < MIN_PASSES:
            return
        lo, hi = DRAFT_FACTOR_RANGE
        factor = min(max(math.exp(median(seen) - median(target)), lo), hi)
        old = self.draft_factors.get(name, 1.0)
        if abs(math.log(factor / old)) > math.log(1.25):
            log.info("%s's draft steps run at %.2fx the cost entry's ratio to T(1)", name, factor)
        self.draft_factors[name] = factor

    def _changed(self) -> None:
        self.version += 1
        self._tables.clear()
        self.draft_factors.clear()
        self.multi_factor = 1.0
        self._pairs.clear()
        self._last_one = None
        for d in [*self._seen.values(), *self._draft_seen.values()]:
            d.clear()
