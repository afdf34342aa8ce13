"""How often a drafter's tokens are accepted: per request, from a prior that history sets.

A request's estimate starts from what the engine has seen of the drafter on earlier requests
(`AcceptanceBook`), or from a prior before there is any, worth PRIOR_WEIGHT rounds: a few early
rejections lower it but cannot switch the drafter off for good. Rounds the drafter sits out fade
its evidence back toward that start, so it is tried again.

Sharing history between requests is safe: no output depends on the plan (greedy and seeded
outputs are the target's; unseeded sampling keeps its distribution), only speed does.
"""

from __future__ import annotations

from collections.abc import Hashable

# P(draft token accepted) before any evidence, by drafter and, for the n-gram drafter, by the
# length of the matched suffix (a longer match is stronger evidence). n-gram: the first token
# was accepted after 8% of 1-token matches, 54% of 2-token and 93% of 3-token ones on the
# recorded Qwen outputs (scripts/ngram_match_length.py); the 0.5B Qwen draft's first token was
# accepted 72-80% of the time over Spec-Bench and HumanEval (docs/policy.md).
# A cross-request match (suffix) is weaker evidence than one inside the request (ngram).
PRIORS: dict[str, float] = {"model": 0.75, "self": 0.8, "ngram:1": 0.1, "ngram:2": 0.5, "ngram:3": 0.8,
                            "suffix:2": 0.3, "suffix:3": 0.6}
DEFAULT_PRIOR = 0.5
PRIOR_WEIGHT = 8.0  # rounds the start is worth against a request's own
DECAY = 0.9  # each round of evidence discounts the earlier ones: about the last ten count
IDLE_FADE = 0.95  # a round the drafter sits out keeps this much of its evidence


class AcceptanceEstimate:
    """Running P(draft token i accepted | the drafts before it were), per draft position i.

    Exponentially weighted (DECAY); positions seen rarely lean on the rate pooled over all
    positions, and the pooled rate on `start` (worth PRIOR_WEIGHT observations).
    """

    def __init__(self, start: float) -> None:
        if not 0.0 < start < 1.0:
            raise ValueError(f"an acceptance prior must be in (0, 1), got {start}")
        self.start = start
        self.accepted: list[float] = []  # discounted accepts at position i
        self.seen: list[float] = []  # discounted observations of position i
        self.pooled_accepted = self.pooled_seen = 0.0
        self.rounds = 0  # rounds observed (undiscounted): for --stats

    def observe(self, num_drafted: int, num_accepted: int) -> None:
        """A round drafted num_drafted tokens; the first num_accepted were accepted."""
        known = min(num_accepted + 1, num_drafted)  # positions past the first rejection are unobserved
        while len(self.seen) < known:
            self.accepted.append(0.0)
            self.seen.append(0.0)
        self.pooled_accepted *= DECAY
        self.pooled_seen *= DECAY
        for i in range(known):
            x = 1.0 if i < num_accepted else 0.0
            self.accepted[i] = DECAY * self.accepted[i] + x
            self.seen[i] = DECAY * self.seen[i] + 1.0
            self.pooled_accepted += x
            self.pooled_seen += 1.0
        self.rounds += 1

    def fade(self) -> None:
        """A round without this drafter: its evidence fades toward the start."""
        self.accepted = [a * IDLE_FADE for a in self.accepted]
        self.seen = [n * IDLE_FADE for n in self.seen]
        self.pooled_accepted *= IDLE_FADE
        self.pooled_seen *= IDLE_FADE

    def pooled(self) -> float:
        return (self.pooled_accepted + PRIOR_WEIGHT * self.start) / (self.pooled_seen + PRIOR_WEIGHT)

    def expected_tokens(self, k_max: int) -> list[float]:
        """E[k] = tokens a round with k drafts yields (accepted + the target's own), k = 0..k_max:
        1 + sum_{i<k} prod_{j<=i} a_j."""
        pooled = self.pooled()
        out, alive = [1.0], 1.0
        for i in range(k_max):
            if i < len(self.seen):
                alive *= (self.accepted[i] + 2.0 * pooled) / (self.seen[i] + 2.0)
            else:
                alive *= pooled
            out.append(out[-1] + alive)
        return out


class AcceptanceBook:
    """Acceptance pooled over the engine's finished requests, by drafter key ("model", "ngram:2"):
    where the next request's estimates start. Only counts, never tokens; older requests fade."""

    def __init__(self, decay: float = 0.9) -> None:
        self.decay = decay
        self.counts: dict[str, list[float]] = {}  # key -> [accepted, seen]

    def start(self, key: Hashable, drafter_name: str) -> float:
        """Where a new request's estimate for `key` starts: the prior updated by the history
        (the prior worth PRIOR_WEIGHT tokens, as within a request), kept inside (0.02, 0.98)."""
        prior = PRIORS.get(str(key), PRIORS.get(drafter_name, DEFAULT_PRIOR))
        accepted, seen = self.counts.get(str(key), (0.0, 0.0))
        return min(max((accepted + PRIOR_WEIGHT * prior) / (seen + PRIOR_WEIGHT), 0.02), 0.98)

    def add(self, estimates: dict[Hashable, AcceptanceEstimate]) -> None:
        """A finished request's estimates (by key)."""
        if not any(e.pooled_seen for e in estimates.values()):
            return
        for c in self.counts.values():
            c[0] *= self.decay
            c[1] *= self.decay
        for key, est in estimates.items():
            c = self.counts.setdefault(str(key), [0.0, 0.0])
            c[0] += est.pooled_accepted
            c[1] += est.pooled_seen
