"""Following the machine's speed as it runs: the engine's own passes against the cost model.

The cost model (cost_model.py) is timed at one moment and cached. On a shared VM the speed
changes within minutes (on the AVX-512-BF16 EPYC T(1) read 55 ms, then 72 ms five minutes
later), and one moment's timing of each kind of pass carries its own error. A round's choice
depends on the *ratios* of costs (T(k+1) and k draft steps against T(1)), so an entry whose
T(1) was timed high makes speculation look cheaper than it is: in one benchmark run the
target's rounds ran at 0.84x the entry's T(1) while rounds with 1, 2, 4, 8 drafts ran at 0.96,
1.02, 1.04, 1.10x of their predicted time, and auto drafted every mt_bench round where drafting
lost (docs/policy.md).

CostPace keeps, for each kind of pass, a running mean of log(observed seconds / the cost
model's seconds) over the engine's recent rounds (each pass of a kind discounts its earlier ones
by DECAY: about the last five count), and the policy multiplies its costs by exp() of it:

    single   target passes over 1 token (a round without a draft)
    multi    target passes over m >= 2 tokens (verification), one factor for every m: the
             entry's shape of T(m) is kept. (A factor per m made a kink: in the second benchmark
             with the pace, passes over 4 tokens, seen in most HumanEval rounds, read 0.90x while
             unseen m took the pooled 0.94-1.04x, so T(5) - T(4) looked 40% dearer than timed,
             the confidence stop ended rounds at 3 drafts, and m = 5 was never seen to correct
             it: auto 1.56x on code against 1.91x the run before.)
    draft    a round's draft-model steps (and catch-up) with the engine's overhead around them
             (propose_batch costs ~1.5-3.5 ms a step more than a bare pass)

A kind not seen in a round fades (its evidence by IDLE_DECAY a round) toward what the kinds
that are seen say about it: multi-token passes toward the one-token figure plus the gap between
the two (GAP_DECAY, slow; measured only from passes in adjacent rounds), one-token
passes the other way, draft steps toward the multi-token figure plus theirs. So a slow minute seen on one kind reaches the
others, while what the entry got wrong about each kind's proportions is kept. Without this, in
the first benchmark with the pace, a slow minute during RAG prompts left multi-token passes at
1.18x and draft steps at 1.21x while one-token passes were back at 0.9x; no round drafted after
that, so nothing corrected them, and the draft model sat out all of HumanEval (1.07x the target
where it had been 1.9x).

Each observation is clipped to [1/CLIP, CLIP] (a pause of the whole process is not the
machine's pace). Passes the cost model prices under MIN_PREDICTED_S are not observed: on tiny
test models the engine's bookkeeping dominates, and their decisions then stay reproducible.

One-token passes are only seen when the policy chooses k = 0; a request that drafts every round
would never learn how they run. So the policy asks `single_is_stale()` and, when the round's
decision is close (speculation expected within PROBE_WITHIN of the target alone), runs one round
without a draft to look (docs/policy.md, section 1).

Only timing-based choices change: never what is generated.
"""

from __future__ import annotations

import math

from .cost_drift import HIGH, MIN_PREDICTED_S

DECAY = 0.8  # each pass of a kind discounts its earlier ones: about the last five count
IDLE_DECAY = 0.9  # a kind's evidence fades by this each round it is not seen (half-life ~7 rounds) ...
FALLBACK_WEIGHT = 1.0  # ... toward what the seen kinds say about it, worth this many passes
GAP_DECAY = 0.95  # the gaps between kinds are slow: about the last twenty count
GAP_PRIOR = 2.0  # gaps start at 0 (the cost model's proportions), worth this many
FRESH = 0.5  # a kind counts as seen lately while its faded evidence weighs this much
RECENT = 1  # passes of two kinds at most this many rounds apart (adjacent) measure the gap between them
# Observed / predicted beyond [1/CLIP, CLIP] is counted as 1/CLIP or CLIP: a pause of the whole
# process is not the machine's pace; a cost model off by more is measured again (cost_drift.py).
CLIP = HIGH
# A round without a draft, to time T(1), after this many observed rounds without one, when the
# decision is close: speculation expected to beat the target alone by less than PROBE_WITHIN.
# (A probe costs at most 1 - 1/PROBE_WITHIN of one round: under 2% of the rounds in between.)
PROBE_AFTER = 12
PROBE_WITHIN = 1.25


class _Mean:
    """Exponentially weighted mean of log ratios, shrunk toward a prior when asked."""

    __slots__ = ("decay", "total", "weight", "seen")

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.total = self.weight = 0.0
        self.seen = 0

    def add(self, x: float) -> None:
        self.total = self.decay * self.total + x
        self.weight = self.decay * self.weight + 1.0
        self.seen += 1

    def age(self, factor: float) -> None:
        """Fade the evidence, not the mean: the prior it is shrunk toward weighs more."""
        self.total *= factor
        self.weight *= factor

    def mean(self, prior: float = 0.0, prior_weight: float = 0.0) -> float:
        """The mean, shrunk toward `prior` by `prior_weight` observations (`prior` when nothing was seen)."""
        w = self.weight + prior_weight
        return (self.total + prior_weight * prior) / w if w > 0 else prior

    @property
    def own(self) -> float:
        """The mean of what was observed (0 before anything was)."""
        return self.total / self.weight if self.weight > 0 else 0.0


class CostPace:
    """Observed over predicted seconds of the engine's passes, by kind; factors for the policy."""

    def __init__(self, min_predicted: float = MIN_PREDICTED_S) -> None:
        self.min_predicted = min_predicted
        self._single, self._multi, self._draft = (_Mean(DECAY) for _ in range(3))
        self._gap_multi = _Mean(GAP_DECAY)  # multi - single, while both are seen
        self._gap_draft = _Mean(GAP_DECAY)  # draft - multi, on every drafting round
        self.rounds_since_single = 0  # observed target passes since the last one over 1 token
        self._rounds = 0  # observed target passes
        self._last_single = self._last_multi = -RECENT - 1  # the pass at which each kind was last seen

    @staticmethod
    def _log_ratio(seconds: float, predicted: float) -> float:
        return math.log(min(max(seconds / predicted, 1.0 / CLIP), CLIP))

    def observe_target(self, m: int, seconds: float, predicted: float) -> None:
        """One single-request target pass over m tokens took `seconds`; the cost model said `predicted`."""
        if predicted < self.min_predicted or m < 1:
            return
        x = self._log_ratio(seconds, predicted)
        self._rounds += 1
        self._draft.age(IDLE_DECAY)  # observe_draft renews it when this round drafted
        # The gap between the kinds is learned only from passes in adjacent rounds: means from
        # different minutes would take a change of the machine's speed for a gap between kinds.
        if m == 1:
            if self._rounds - self._last_multi <= RECENT:
                self._gap_multi.add(self._multi.own - x)
            self._single.add(x)
            self._multi.age(IDLE_DECAY)
            self.rounds_since_single, self._last_single = 0, self._rounds
        else:
            if self._rounds - self._last_single <= RECENT:
                self._gap_multi.add(x - self._single.own)
            self._multi.add(x)
            self._single.age(IDLE_DECAY)
            self.rounds_since_single += 1
            self._last_multi = self._rounds

    def observe_draft(self, seconds: float, predicted: float) -> None:
        """A round's drafting with a draft model took `seconds`; the cost model said `predicted`."""
        if predicted < self.min_predicted:
            return
        self._draft.add(self._log_ratio(seconds, predicted))
        self._gap_draft.add(self._draft.own - self._multi.own)

    @staticmethod
    def _blend(own: _Mean, other: _Mean, gap: float) -> float:
        """A kind's log factor: its own passes, shrunk toward the other kind's plus the gap between
        them while that other kind is seen lately (else its own alone; 0 before either was seen)."""
        if other.weight <= FRESH:
            return own.own
        return own.mean(other.own + gap, FALLBACK_WEIGHT)

    def _single_log(self) -> float:
        return self._blend(self._single, self._multi, -self._gap_multi.mean(0.0, GAP_PRIOR))

    def _multi_log(self) -> float:
        return self._blend(self._multi, self._single, self._gap_multi.mean(0.0, GAP_PRIOR))

    def target(self, m: int) -> float:
        """The factor for a target pass over m tokens (1.0 until observed)."""
        if m <= 1:
            return math.exp(self._single_log())
        return math.exp(self._multi_log())

    @property
    def draft(self) -> float:
        """The factor for draft-model steps and catch-up passes."""
        if self._draft.weight > 0 and self._multi.weight <= FRESH and self._single.weight <= FRESH:
            return math.exp(self._draft.own)
        return math.exp(self._draft.mean(self._multi_log() + self._gap_draft.mean(0.0, GAP_PRIOR), FALLBACK_WEIGHT))

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
        multi = math.exp(self._multi_log())
        cells = [("T(1)", self.target(1), seen["single"]), ("T(2+)", multi, seen["multi"]),
                 ("draft", self.draft, seen["draft"])]
        return "pace (observed / cost model, recent passes): " + ", ".join(
            f"{label} x{factor:.2f} ({n} passes)" for label, factor, n in cells)
