"""Following the machine's speed as it runs: the engine's own passes against the cost model.

The cost model (cost_model.py) is timed at one moment and cached. On a shared VM the speed
changes within minutes, and not uniformly: on the AVX-512-BF16 EPYC, while neighbours load the
memory bus, one-token target passes slow by a fifth or more and multi-token passes and draft
steps much less. A round's choice depends on the *ratios* of costs (T(k+1) and k draft steps
against T(1)), so an entry timed at a slow moment makes speculation look cheaper than it is: in
one benchmark run the target's rounds ran at 0.84x the entry's T(1) while rounds with 1, 2, 4,
8 drafts ran at 0.96, 1.02, 1.04, 1.10x of their predicted time, and auto drafted every mt_bench
round where drafting lost (docs/policy.md).

CostPace keeps, for each kind of pass, an exponentially weighted mean of log(observed seconds /
the cost model's seconds) over the engine's recent rounds, and the policy multiplies its costs
by exp() of it:

    single   target passes over 1 token (the round without a draft)
    multi    target passes over m >= 2 tokens (verification), one estimate per m that leans on
             the pooled one until m has been seen a few times
    draft    a round's draft-model steps (and catch-up), including the engine's own overhead
             around them (propose_batch costs ~1.5-3.5 ms a step more than a bare pass)

Each kind starts as PRIOR_WEIGHT observations at ratio 1 (the cost model as measured), so one odd
pass cannot swing its factor; they fade like any observation. Each observation is clipped to
[1/CLIP, CLIP] (a pause of the whole process is not the machine's pace). Passes the cost model prices under MIN_PREDICTED_S are not observed: on tiny
test models the engine's bookkeeping dominates, and their decisions then stay reproducible.

One-token passes are only seen when the policy chooses k = 0; a request that drafts every round
would never learn that they got faster. So the policy asks `single_is_stale()` and, when the
round's decision is close (speculation expected within PROBE_WITHIN of the target alone), runs
one round without a draft to look (docs/policy.md, section 1).

Only timing-based choices change: never what is generated.
"""

from __future__ import annotations

import math

from .cost_drift import HIGH, MIN_PREDICTED_S

DECAY = 0.8  # each observation of a kind discounts the earlier ones: about the last five count
PRIOR_WEIGHT = 1.0  # a kind starts as this many observations of ratio 1 (the cost model as measured)
M_WEIGHT = 2.0  # a pass over m tokens leans on the pooled multi-token estimate, worth this many
# Observed / predicted beyond [1/CLIP, CLIP] is counted as 1/CLIP or CLIP: a pause of the whole
# process is not the machine's pace; a cost model off by more is measured again (cost_drift.py).
CLIP = HIGH
# A round without a draft, to time T(1), after this many observed rounds without one, when the
# decision is close: speculation expected to beat the target alone by less than PROBE_WITHIN.
# (A probe costs at most 1 - 1/PROBE_WITHIN of one round: under 2% of the rounds in between.)
PROBE_AFTER = 12
PROBE_WITHIN = 1.25


class _Mean:
    """Exponentially weighted mean of log ratios. It starts as `start_weight` observations of ratio
    1 (log 0), which fade like any observation: the mean settles on what the passes take."""

    __slots__ = ("total", "weight", "seen")

    def __init__(self, start_weight: float = PRIOR_WEIGHT) -> None:
        self.total, self.weight = 0.0, start_weight
        self.seen = 0

    def add(self, log_ratio: float) -> None:
        self.total = DECAY * self.total + log_ratio
        self.weight = DECAY * self.weight + 1.0
        self.seen += 1

    def mean(self, prior: float = 0.0, prior_weight: float = 0.0) -> float:
        """The mean, shrunk toward `prior` by `prior_weight` observations (0 when nothing was seen)."""
        w = self.weight + prior_weight
        return (self.total + prior_weight * prior) / w if w > 0 else prior


class CostPace:
    """Observed over predicted seconds of the engine's passes, by kind; factors for the policy."""

    def __init__(self, min_predicted: float = MIN_PREDICTED_S) -> None:
        self.min_predicted = min_predicted
        self._single, self._multi, self._draft = _Mean(), _Mean(), _Mean()
        self._by_m: dict[int, _Mean] = {}
        self.rounds_since_single = 0  # observed target passes since the last one over 1 token

    @staticmethod
    def _log_ratio(seconds: float, predicted: float) -> float:
        return math.log(min(max(seconds / predicted, 1.0 / CLIP), CLIP))

    def observe_target(self, m: int, seconds: float, predicted: float) -> None:
        """One single-request target pass over m tokens took `seconds`; the cost model said `predicted`."""
        if predicted < self.min_predicted or m < 1:
            return
        x = self._log_ratio(seconds, predicted)
        if m == 1:
            self._single.add(x)
            self.rounds_since_single = 0
            return
        self._multi.add(x)
        self._by_m.setdefault(m, _Mean(start_weight=0.0)).add(x)
        self.rounds_since_single += 1

    def observe_draft(self, seconds: float, predicted: float) -> None:
        """A round's drafting with a draft model took `seconds`; the cost model said `predicted`."""
        if predicted < self.min_predicted:
            return
        self._draft.add(self._log_ratio(seconds, predicted))

    def target(self, m: int) -> float:
        """The factor for a target pass over m tokens (1.0 until observed)."""
        if m <= 1:
            return math.exp(self._single.mean())
        pooled = self._multi.mean()
        own = self._by_m.get(m)
        return math.exp(own.mean(pooled, M_WEIGHT) if own is not None else pooled)

    @property
    def draft(self) -> float:
        """The factor for draft-model steps and catch-up passes."""
        return math.exp(self._draft.mean())

    def passes_seen(self) -> dict[str, int]:
        """How many passes of each kind were observed (for tests and --stats)."""
        return {"single": self._single.seen, "multi": self._multi.seen, "draft": self._draft.seen}

    def snapshot(self, m_max: int = 16) -> dict[str, object]:
        """The factors now, as data: {"T": [factor of T(1), ..., T(m_max)], "draft": factor, "seen": counts}
        (what a benchmark records after each run, to price its theory at the pace the policy saw)."""
        return {"T": [round(self.target(m), 4) for m in range(1, m_max + 1)], "draft": round(self.draft, 4),
                "seen": self.passes_seen()}

    def single_is_stale(self) -> bool:
        """Whether enough rounds have passed without a one-token pass that T(1) should be looked at."""
        return self.rounds_since_single >= PROBE_AFTER

    def format(self) -> str:
        """One line for --stats: the factors and how many passes set them."""
        seen = self.passes_seen()
        cells = [("T(1)", self.target(1), seen["single"]), ("T(2+)", math.exp(self._multi.mean()), seen["multi"]),
                 ("draft", self.draft, seen["draft"])]
        return "pace (observed / cost model, recent passes): " + ", ".join(
            f"{label} x{factor:.2f} ({n} passes)" for label, factor, n in cells)
