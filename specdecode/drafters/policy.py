"""How many tokens to draft next round."""

from __future__ import annotations


class FixedDraftLength:
    """Always k."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"num_draft_tokens must be >= 1, got {k}")
        self.k = k

    def next_k(self) -> int:
        return self.k

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
