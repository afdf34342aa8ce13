"""DrafterSet: several drafters behind one Drafter, the policy picking one per round.

`--drafter auto` is a DrafterSet of the n-gram drafter and, when given, the draft model:
the n-gram drafter is free and excellent where the output repeats the input (code edits,
summaries, RAG), the draft model helps everywhere else, and the cost policy weighs both
each round (specdecode/policy, CostPlanner).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import SamplingParams
from ..errors import SpecdecodeError
from .base import Draft


def drafter_members(drafter) -> list:
    """The drafters inside `drafter`: a DrafterSet's members, a single drafter itself, none for None."""
    if drafter is None:
        return []
    return list(drafter.drafters) if isinstance(drafter, DrafterSet) else [drafter]


def feature_takers(drafter) -> list:
    """The members of `drafter` that draft from the target's features (a head drafter)."""
    return [d for d in drafter_members(drafter) if getattr(d, "takes_features", False)]


def feature_request(drafter) -> bool | tuple[int, ...]:
    """What the target's pass should hand `drafter`'s head (ragged.Segment.want_features): False
    (no member takes features), True (the final-normed hidden states) or the indices of the
    layers whose inputs an EAGLE-3 head reads."""
    takers = feature_takers(drafter)
    if not takers:
        return False
    layers = getattr(takers[0], "feature_layers", None)
    return tuple(layers) if layers else True


def give_features(drafter, start: int, rows) -> None:
    """Hand the target's features (n, D) of positions start.. to every member that takes them."""
    if rows is not None:
        for d in feature_takers(drafter):
            d.add_features(start, rows)


class DrafterSet:
    """Drafters sharing one request; `propose(..., which=i)` drafts with drafter i.

    State stays consistent for every member, not only the one that drafted: after each
    proposing round, drafter `which` hears on_verified(num_accepted), and every other member is
    shown the same context with k = 0 and told that none of its (zero) drafts were accepted.
    For the built-in drafters that is free (the draft model catches up on skipped tokens at its
    next proposal, the n-gram index extends lazily); a drafter that needs to see every round
    gets to.
    """

    name = "auto"

    def __init__(self, drafters: Sequence) -> None:
        if not drafters:
            raise SpecdecodeError("a DrafterSet needs at least one drafter")
        names = [d.name for d in drafters]
        if len(set(names)) != len(names):
            raise SpecdecodeError(f"drafters in a set need distinct names, got {names}")
        self.drafters = list(drafters)
        self._which: int | None = None

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.drafters]

    def begin(self, prompt: list[int], max_len: int, device: torch.device) -> None:
        self._which = None
        for d in self.drafters:
            d.begin(prompt, max_len, device)

    def select(self, which: int, context: list[int], params: SamplingParams, generator: torch.Generator | None):
        """Make drafter `which` this round's drafter and show the others the context (k = 0); return
        it, for the caller to ask for the draft (the engine batches draft-model proposals)."""
        self._which = which
        for i, d in enumerate(self.drafters):
            if i != which:
                d.propose(context, 0, params, generator)
        return self.drafters[which]

    def propose(self, context: list[int], k: int, params: SamplingParams, generator: torch.Generator | None,
                which: int = 0) -> Draft:
        return self.select(which, context, params, generator).propose(context, k, params, generator)

    def fork(self) -> DrafterSet:
        """The same drafters with fresh per-request state (see drafters.base.fork_drafter)."""
        from .base import fork_drafter

        return DrafterSet([fork_drafter(d) for d in self.drafters])

    def on_verified(self, num_accepted: int) -> None:
        for i, d in enumerate(self.drafters):
            d.on_verified(num_accepted if i == self._which else 0)
        self._which = None

    def end(self) -> None:
        self._which = None
        for d in self.drafters:
            d.end()

    def __repr__(self) -> str:
        return f"DrafterSet({', '.join(self.names)})"
