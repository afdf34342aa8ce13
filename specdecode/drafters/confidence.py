"""When to stop drafting: the draft model's own confidence, weighed against the cost of one more token.

A draft model says how sure it is of each token it drafts (its top probability), and that is the
best single predictor of acceptance there is: on the Qwen 0.5B/1.5B pair, greedy, a draft token
with confidence >= 0.9 was accepted 100% of the time and one under 0.5 about 40%
(scripts/policy_replay.py, docs/policy.md). So the cost policy decides *whether* to draft before
a round (from its running acceptance estimate), and the draft model decides, token by token,
*how far*: it drafts another token only while the chance that all of them are accepted, times
the chance of the next, pays for one more draft step and one more verified row at the rate the
round is expected to run at. The output never depends on where drafting stops, only the speed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

# Confidence buckets, and what a bucket's acceptance is assumed to be before a request has its
# own evidence: confidence + 0.1 (the measured pair was slightly under-confident, acceptance 0.64
# at 0.5-0.6, 0.94 at 0.8-0.9), kept below 1. Worth PRIOR_WEIGHT observations.
BUCKET_EDGES = (0.4, 0.7, 0.9)
PRIOR_LIFT = 0.1
PRIOR_WEIGHT = 2.0
MAX_ACCEPTANCE = 0.99


class ConfidenceCalibration:
    """P(draft token accepted | its drafts before were, its confidence c), learned per request.

    One count per confidence bucket, starting from a prior of min(c + 0.1, 0.99); a round observes
    every drafted token up to the first rejection (those after it were never judged).
    """

    def __init__(self, prior_weight: float = PRIOR_WEIGHT) -> None:
        self.prior_weight = prior_weight
        self.accepted = [0.0] * (len(BUCKET_EDGES) + 1)
        self.seen = [0.0] * (len(BUCKET_EDGES) + 1)

    @staticmethod
    def bucket(confidence: float) -> int:
        return sum(confidence >= e for e in BUCKET_EDGES)

    def acceptance(self, confidence: float) -> float:
        i, w = self.bucket(confidence), self.prior_weight
        prior = min(confidence + PRIOR_LIFT, MAX_ACCEPTANCE)
        return (self.accepted[i] + w * prior) / (self.seen[i] + w)

    def observe(self, confidences: Sequence[float], num_accepted: int) -> None:
        for j, c in enumerate(confidences[: num_accepted + 1]):
            i = self.bucket(c)
            self.seen[i] += 1.0
            self.accepted[i] += 1.0 if j < num_accepted else 0.0


class DraftStop:
    """One round's stopping rule: called with each drafted token's confidence, says whether to
    draft another.

    After j drafted tokens, all j are accepted with probability S (the product of their
    calibrated acceptances). Token j + 1 adds S * a_next expected tokens (a_next: the policy's
    running acceptance estimate, its confidence being unknown until it is drafted) and costs one draft step plus one more
    verified row, T(j + 2) - T(j + 1); it is drafted when that beats `rate` (tokens per second
    the round is expected to run at) times its cost. Myopic on purpose: it never counts on a
    later token to pay for this one.
    """

    def __init__(self, rate: float, step_seconds: float, T: Sequence[float],  # noqa: N803 - T(m) table, index m
                 next_acceptance: Callable[[int], float], calibration: ConfidenceCalibration, bound: int) -> None:
        self.rate, self.step_seconds, self.T = rate, step_seconds, T
        self.next_acceptance, self.calibration, self.bound = next_acceptance, calibration, bound
        self.survival = 1.0
        self.confidences: list[float] = []

    def keep_drafting(self, confidence: float) -> bool:
        """The draft just drafted a token with this confidence: draft one more?"""
        self.confidences.append(confidence)
        self.survival *= self.calibration.acceptance(confidence)
        j = len(self.confidences)
        if j >= self.bound or j + 2 >= len(self.T):
            return False
        gain = self.survival * self.next_acceptance(j)
        return gain > self.rate * (self.step_seconds + self.T[j + 2] - self.T[j + 1])
