"""The trivial planners: a fixed k (gpt-fast, mlx-lm's num_draft_tokens) and an adaptive one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import SpecdecodeError
from .base import Plan, draft_room


class FixedK:
    """Always k drafts with the first drafter (fewer when the request's room runs out)."""

    def __init__(self, k: int) -> None:
        if not isinstance(k, int) or k < 1:
            raise SpecdecodeError(f"num_draft_tokens must be an integer >= 1, got {k!r}")
        self.k = self.k_max = k

    def begin(self, state: Any) -> None:
        state.plan_state = None

    def plan(self, states: Sequence[Any]) -> list[Plan]:
        return [Plan(0, min(self.k, draft_room(s))) for s in states]

    def observe(self, state: Any, drafted: int, accepted: int) -> None:
        pass

    def timed(self, m: int, context: int, seconds: float) -> None:
        pass

    def end(self, state: Any) -> None:
        pass

    def describe(self, state: Any) -> str:
        return f"fixed k = {self.k}"

    def __repr__(self) -> str:
        return f"FixedK({self.k})"


class AdaptiveK(FixedK):
    """Grow k by one after a fully accepted round, shrink it to just past the first rejection."""

    def __init__(self, k: int, k_min: int = 1, k_max: int = 16) -> None:
        super().__init__(k)
        if not 1 <= k_min <= k <= k_max:
            raise SpecdecodeError(f"need 1 <= k_min <= k <= k_max, got {k_min}, {k}, {k_max}")
        self.k_min, self.k_max = k_min, k_max

    def begin(self, state: Any) -> None:
        state.plan_state = self.k

    def plan(self, states: Sequence[Any]) -> list[Plan]:
        return [Plan(0, min(s.plan_state, draft_room(s))) for s in states]

    def observe(self, state: Any, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        k = state.plan_state
        state.plan_state = min(self.k_max, k + 1) if accepted == drafted else max(self.k_min, min(k - 1, accepted + 1))

    def describe(self, state: Any) -> str:
        return f"adaptive k (started at {self.k}, {self.k_min}..{self.k_max}; now {state.plan_state})"

    def __repr__(self) -> str:
        return f"AdaptiveK({self.k}, {self.k_min}..{self.k_max})"
