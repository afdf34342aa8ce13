"""Noticing when the cached cost model is wrong for this machine, so it is measured again.

The cost model is timed once per machine and setting and cached (cost_model.py). The engine's
own passes are compared with it: single-request passes whose tokens were read back (greedy
verification's host copy, the same sync the measurement times), grouped by m. When WINDOW of
them for one m have a median outside [LOW, HIGH] times the prediction, the engine measures again
(about two seconds with a draft model, at most MAX_REMEASURES times) and replaces the cached entry.

The band is wide on purpose (0.5-2x). Moment-to-moment swings of a shared VM (T(1) 55 ms, then
72 ms minutes later, on the AVX-512-BF16 EPYC) are followed by cost_pace.py, which scales the
figures by what recent passes took, for free. Re-measuring for those swings (the band was
0.85-1.18 before the pace existed) spent two seconds inside a user's generation, often twice a
run, and sampled exactly the slow moment that set it off. What is left for a re-measure is a
cache entry that is plainly wrong (a different machine state, a misleading first timing),
beyond what the pace follows (its observations are clipped to the same 0.5-2x). Decisions never
affect what is generated (verification is unchanged); a re-measurement only changes which k
later requests choose.
"""

from __future__ import annotations

import statistics
from collections import defaultdict, deque

WINDOW = 16  # passes of one m before the median is trusted
# Median observed / predicted outside this band: measure again. Inside it cost_pace.CostPace
# follows the machine (its observations are clipped to the same band: cost_pace.CLIP).
LOW, HIGH = 0.5, 2.0
MAX_REMEASURES = 2  # per engine: a machine whose speed swings all the time is not chased forever
# Passes the cost model says are shorter than this are not judged: the engine's own bookkeeping
# per round (~0.3-1 ms of Python, not in the measurement) would alone put them outside the band,
# and tiny models would then be re-measured for nothing (which also made two engines on one
# test model decide differently). Real targets take tens of milliseconds a pass.
MIN_PREDICTED_S = 0.005


class CostDrift:
    """Observed over predicted seconds of target passes, by m; says when to measure again."""

    def __init__(self, window: int = WINDOW, low: float = LOW, high: float = HIGH,
                 max_remeasures: int = MAX_REMEASURES) -> None:
        self.window, self.low, self.high = window, low, high
        self.remeasures_left = max_remeasures
        self.ratios: dict[int, deque[float]] = defaultdict(lambda: deque(maxlen=window))
        self.last_drift: tuple[int, float] | None = None  # (m, median ratio) that set off the last re-measure

    def observe(self, m: int, seconds: float, predicted: float) -> bool:
        """Record one pass over m tokens; True when the cost model should be measured again."""
        if predicted < MIN_PREDICTED_S or self.remeasures_left <= 0:
            return False
        ratios = self.ratios[m]
        ratios.append(seconds / predicted)
        if len(ratios) < self.window:
            return False
        median = statistics.median(ratios)
        if self.low <= median <= self.high:
            return False
        self.last_drift = (m, median)
        self.remeasures_left -= 1
        self.ratios.clear()  # judge the new measurement on new passes only
        return True
