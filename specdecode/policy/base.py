"""The planner interface: before a round, what each request drafts; after it, what was accepted.

A planner is one object per engine. `begin` gives a request its own planning state (kept on the
RequestState, so nothing of one request's plan is reachable from another's), `plan` decides a
whole round at once (a request's draft is weighed against the pass it shares with the others),
`observe` hears each request's outcome, `timed` hears how long a single-request pass took
(and, where a planner defines it, `timed_draft` how long a single request's draft took).
Plans change only speed, never output: greedy and seeded outputs are the target's whatever the
plan, and unseeded sampling keeps the target's distribution (docs/policy.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass
class Plan:
    """One request's draft for one round."""

    which: int = 0  # which of the request's drafters (index into DrafterSet.drafters)
    k: int = 0  # tokens to ask it for; 0 = the target alone this round
    # Asked after each drafted token with the draft's confidence: draft another? None = exactly k.
    stop: Callable[[float], bool] | None = None
    expected_tokens: float = 1.0  # tokens the round is expected to yield (the target's own counts one)
    # A drafter of token trees may add this many alternative nodes beyond the k of its main branch
    # (the cost planner: rows the pass gets about for free, and rows the value the drafter's
    # alternatives have shown pays for; None: the drafter's default; docs/trees.md).
    tree_nodes: int | None = None


NO_DRAFT = Plan()


def draft_room(state: Any) -> int:
    """Drafts that still fit a request's caches (its last token and the target's own next one take
    one position): what any draft of this round may hold, a planner's or a grammar's forced one."""
    return max(state.max_len - len(state.tokens) - 1, 0)


@runtime_checkable
class Planner(Protocol):
    """What the engine asks; FixedK, AdaptiveK and CostPlanner implement it."""

    k_max: int  # the longest draft it may ask for (the KV caches are sized for it)

    def begin(self, state: Any) -> None:
        """A new request: set `state.plan_state`."""

    def plan(self, states: Sequence[Any]) -> list[Plan]:
        """This round's plan for each decoding state, in order."""

    def observe(self, state: Any, drafted: int, accepted: int) -> None:
        """After verification: the state's draft had `drafted` tokens, the first `accepted` were kept."""

    def timed(self, m: int, context: int, seconds: float) -> None:
        """A target pass over m tokens after `context`, for one request alone, took `seconds`."""

    def end(self, state: Any) -> None:
        """The request is released."""

    # Optional: def timed_draft(self, state, steps: int, seconds: float) -> None, called after a
    # round in which one request alone drafted `steps` tokens with the drafter its plan chose;
    # def settle(self) -> bool, deferred work run when no request waits (Engine.settle);
    # def observe_tree(self, state, nodes: int, gained: int) -> None, after a token tree with
    # `nodes` alternative nodes beside its main branch gave `gained` tokens more than that branch.

    def describe(self, state: Any) -> str:
        """One line for --stats: how the request drafted, and why it drafted little if it did."""
