"""The Drafter protocol: propose k tokens, then hear how many the target accepted."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ..config import SamplingParams


@dataclass
class Draft:
    """Proposed tokens and, for drafters that sample, the distributions they came from."""

    tokens: list[int]  # host copy (k,)
    token_tensor: torch.Tensor  # (k,) int64 on the target's device
    q: torch.Tensor | None = None  # (k, V) draft probabilities; None = point mass at each token
    forced_at: tuple[int, ...] = ()  # positions a grammar forced (joined for free, not drafted)
    # A token tree instead of a chain: each token's parent among the draft's (-1: a child of the
    # context's last token), parents first; None: a chain.
    parents: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def main_path(self) -> list[int]:
        """The nodes of a tree's first root-to-leaf path (first children all the way); a chain's all."""
        if self.parents is None:
            return list(range(len(self.tokens)))
        path, node = [], -1
        while True:
            child = next((i for i, p in enumerate(self.parents) if p == node), None)
            if child is None:
                return path
            path.append(child)
            node = child

    def main_branch(self) -> Draft:
        """A tree's main path (main_path) as a chain; a chain itself."""
        if self.parents is None:
            return self
        path = self.main_path()
        index = torch.tensor(path, dtype=torch.long, device=self.token_tensor.device)
        return Draft([self.tokens[i] for i in path], self.token_tensor[index],
                     None if self.q is None else self.q[index])

    def cut(self, n: int) -> Draft:
        """The first n tokens of this draft (a chain's; a tree is first made its main branch)."""
        if self.parents is not None:
            return self.main_branch().cut(n)
        if n >= len(self.tokens):
            return self
        return Draft(self.tokens[:n], self.token_tensor[:n], None if self.q is None else self.q[:n],
                     tuple(p for p in self.forced_at if p < n))

    def forced_before(self, n: int) -> int:
        """How many of the first n tokens a grammar forced."""
        return sum(1 for p in self.forced_at if p < n)


@runtime_checkable
class Drafter(Protocol):
    """A cheap guesser. Losslessness never depends on its quality, only speed does.

    A drafter may sit out rounds (the planner chose k = 0): it is then not called, and its next
    `propose` gets the whole context so far, which it must catch up on. Inside a DrafterSet it is
    called every round that anyone drafts, with k = 0 when another drafter was chosen.
    Optional, for the planner: `evidence(context, k) -> (bucket, tokens available)`,
    `catch_up_tokens(context) -> int` and `reports_confidence` (see specdecode/policy); for batched
    proposals, `batch_key` and `propose_many(drafters, contexts, ks, params, rngs, stops,
    constraints=, forced_drafts=)` (the draft model: one draft pass per step for every request
    sharing its model; under a grammar it drafts with the grammar's mask and its forced tokens).
    """

    name: str

    def begin(self, prompt: list[int], max_len: int, device: torch.device) -> None:
        """Start a request whose context will not exceed max_len tokens."""

    def propose(
        self, context: list[int], k: int, params: SamplingParams, generator: torch.Generator | None
    ) -> Draft:
        """Up to k tokens likely to follow `context` (prompt + accepted output so far)."""

    def on_verified(self, num_accepted: int) -> None:
        """The target kept the first num_accepted drafts (and appended its own next token)."""

    def end(self) -> None:
        """Release per-request state (also after a cancelled generation)."""


def empty_draft(device: torch.device) -> Draft:
    return Draft([], torch.empty(0, dtype=torch.long, device=device), None)


def with_leaves(chain: Draft, leaves: list[tuple[int, int]]) -> Draft:
    """The chain plus extra nodes (parent, token), in order, parents before children: a parent is
    -1 (the context), 0 .. len(chain) - 1 a chain token, len(chain) + j the j-th extra node. The
    chain stays the main path; a greedy chain only (its q is dropped)."""
    if not leaves:
        return chain
    k = len(chain.tokens)
    tokens = chain.tokens + [tok for _, tok in leaves]
    parents = tuple(range(-1, k - 1)) + tuple(parent for parent, _ in leaves)
    return Draft(tokens, torch.tensor(tokens, dtype=torch.long, device=chain.token_tensor.device), None,
                 chain.forced_at, parents)


def fork_drafter(drafter):
    """A drafter for one more request: the same models and settings, its own per-request state.

    `begin` creates a drafter's per-request state (the draft model's KV cache, the n-gram index)
    afresh, so a shallow copy is enough for the built-in drafters; a drafter with a `fork()`
    method (DrafterSet) is asked instead. No request can see another's state.
    """
    fork = getattr(drafter, "fork", None)
    return fork() if callable(fork) else copy.copy(drafter)
