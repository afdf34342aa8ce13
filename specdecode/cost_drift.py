"""Noticing when the cached cost model no longer describes the machine, so it is measured again.

The cost model is timed once per machine and setting and cached (cost_model.py). On a shared VM
that one moment can be unrepresentative: on the AVX-512-BF16 EPYC a measurement taken while
neighbours loaded the memory bus recorded T(1) = 70 ms against 50 ms an hour earlier and during
the run after it (T(16) unchanged: only the bandwidth-bound passes slowed), and with T(2) / T(1)
= 1.04 instead of 1.09 the policy drafted on RAG prompts where that loses (0.76x the target).

So the engine compares the target passes it runs anyway with what the cost model said they
would cost: single-request passes whose tokens were read back (greedy verification's host copy,
the same sync the measurement times), grouped by m. When WINDOW of them for one m have a median
outside [LOW, HIGH] times the prediction (0.85-1.18), the engine measures again (about a second, once)
and replaces the cached entry. Decisions never affect what is generated (verification is
unchanged); a re-measurement only changes which k later requests choose.
"""

from __future__ import annotations

import statistics
from collections import defaultdict, deque

WINDOW = 16  # passes of one m before the median is trusted
# Median observed / predicted outside this band: measure again. The median of 16 shrugs off
# single slow passes; 20% was too wide to catch the T(1) = 70 ms entry against passes of 56-60 ms.
LOW, HIGH = 0.85, 1.18
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
