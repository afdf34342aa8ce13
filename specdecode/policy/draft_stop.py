"""When a draft model stops drafting: its own confidence, weighed against one more token's cost.

A draft model says how sure it is of each token it drafts (its top probability), the best single
predictor of acceptance there is: on the Qwen 0.5B/1.5B pair, greedy, draft tokens drafted with
confidence >= 0.9 were accepted nearly always and those under 0.5 about 40% of the time
(docs/policy.md). So the planner decides *whether* to draft from its acceptance estimate, and
the draft decides, token by token, *how far*. Where drafting stops never changes the output.
"""

from __future__ import annotations

from collections.abc import Sequence

BUCKET_EDGES = (0.4, 0.7, 0.9)  # confidence buckets
PRIOR_WEIGHT = 2.0  # a bucket starts at acceptance = its confidence, worth this many tokens


class ConfidenceCalibration:
    """P(draft token accepted | the drafts before it were, its confidence c), per bucket of c;
    starts at c. Kept per planner and drafter: shared by requests (it changes speed only)."""

    def __init__(self) -> None:
        self.accepted = [0.0] * (len(BUCKET_EDGES) + 1)
        self.seen = [0.0] * (len(BUCKET_EDGES) + 1)

    @staticmethod
    def bucket(confidence: float) -> int:
        return sum(confidence >= e for e in BUCKET_EDGES)

    def acceptance(self, confidence: float) -> float:
        i = self.bucket(confidence)
        return (self.accepted[i] + PRIOR_WEIGHT * min(confidence, 0.99)) / (self.seen[i] + PRIOR_WEIGHT)

    def observe(self, confidences: Sequence[float], num_accepted: int) -> None:
        """A round's drafted tokens' confidences; those after the first rejection were never judged."""
        for j, c in enumerate(confidences[: num_accepted + 1]):
            i = self.bucket(c)
            self.seen[i] += 1.0
            self.accepted[i] += 1.0 if j < num_accepted else 0.0


class DraftStop:
    """One round's stop rule, called with each drafted token's confidence: draft another?

    After j tokens, all j are accepted with probability S (the product of their calibrated
    acceptances). Token j + 1 adds S * a_next expected tokens (a_next: the request's pooled
    acceptance; its own confidence is not known before it is drafted) and costs one draft step
    plus one more verified row, T(j + 2) - T(j + 1); it is drafted when that beats `rate` (the
    round's expected tokens per unit of cost) times that cost. Myopic on purpose.
    """

    def __init__(self, rate: float, step: float, table: Sequence[float], next_acceptance: float,
                 calibration: ConfidenceCalibration, bound: int) -> None:
        self.rate, self.step, self.table = rate, step, table
        self.next_acceptance, self.calibration, self.bound = next_acceptance, calibration, bound
        self.survival = 1.0
        self.confidences: list[float] = []

    def __call__(self, confidence: float) -> bool:
        self.confidences.append(confidence)
        self.survival *= self.calibration.acceptance(confidence)
        j = len(self.confidences)
        if j >= self.bound or j + 2 >= len(self.table):
            return False
        gain = self.survival * self.next_acceptance
        return gain > self.rate * (self.step + self.table[j + 2] - self.table[j + 1])
