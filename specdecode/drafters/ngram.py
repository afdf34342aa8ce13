"""NgramDrafter (prompt lookup decoding): copy what followed an earlier occurrence of the suffix.

No model and no probabilities: the draft is a point mass, which verification handles exactly.
Strong on code editing, summarisation and RAG, where the output repeats the input.
"""

from __future__ import annotations

import torch

from ..config import SamplingParams
from .base import Draft, empty_draft


class NgramDrafter:
    """Looks up the longest suffix n-gram (max_ngram down to min_ngram) seen earlier.

    An index from each n-gram to the position right after its latest occurrence is kept and
    extended incrementally, so a lookup costs O(max_ngram) instead of a scan of the context.
    """

    name = "ngram"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, branches: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        if branches < 1:
            raise ValueError("need branches >= 1")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        # branches > 1: a token tree of the continuations of several earlier occurrences (the
        # latest first), within the same k tokens; the engine verifies it in one pass.
        self.branches = branches
        self._index: dict[tuple[int, ...], int] = {}
        self._earlier: dict[tuple[int, ...], list[int]] = {}  # with branches > 1: older occurrences
        self._indexed_until = 0
        self._memo: tuple[tuple, int, int, list[int]] | None = None  # ((len, suffix), k, n, tokens)

    def begin(self, prompt: list[int], max_len: int, device: torch.device) -> None:
        self.device = device
        self._index = {}
        self._earlier = {}
        self._indexed_until = 0
        self._memo = None

    def _extend_index(self, context: list[int]) -> None:
        # Index continuations that start at positions e <= len-1 (so context[e] exists).
        for e in range(max(self._indexed_until, 1), len(context)):
            for n in range(self.min_ngram, min(self.max_ngram, e) + 1):
                key = tuple(context[e - n : e])
                if self.branches > 1 and key in self._index:
                    older = self._earlier.setdefault(key, [])
                    older.append(self._index[key])
                    del older[: -(self.branches - 1)]
                self._index[key] = e
        self._indexed_until = max(self._indexed_until, len(context))

    def match(self, context: list[int], k: int) -> tuple[int, list[int]]:
        """(length of the longest matched suffix n-gram, up to k tokens that followed it); (0, []) if none."""
        if k <= 0:
            return 0, []
        L = len(context)
        memo_key = (L, tuple(context[L - self.max_ngram :]))
        if self._memo is not None and self._memo[0] == memo_key and self._memo[1] >= k:
            return self._memo[2], self._memo[3][:k]
        self._extend_index(context)
        found: tuple[int, list[int]] = (0, [])
        for n in range(min(self.max_ngram, L - 1), self.min_ngram - 1, -1):
            start = self._index.get(tuple(context[L - n :]))
            if start is not None:
                found = (n, context[start : start + k])
                break
        # The policy looks before the drafter proposes: the same lookup serves both.
        self._memo = (memo_key, k, found[0], found[1])
        return found

    def evidence(self, context: list[int], k: int) -> tuple[str, int]:
        """The policy's view: ("ngram:<match length, 3 = 3 or more>", tokens available now)."""
        n, tokens = self.match(context, k)
        return f"ngram:{min(n, 3)}", len(tokens)

    def propose(
        self, context: list[int], k: int, params: SamplingParams, generator: torch.Generator | None,
        tree_nodes: int | None = None,
    ) -> Draft:
        """k tokens of the latest match; with branches > 1, a tree that adds alternatives of older
        matches (tree_nodes of them: the planner's free rows; None: max(1, k // 2))."""
        if k <= 0:
            return empty_draft(self.device)
        n, tokens = self.match(context, k)
        if not tokens:
            return empty_draft(self.device)
        extra = max(1, k // 2) if tree_nodes is None else tree_nodes
        if self.branches > 1 and extra > 0:
            return self._tree(context, n, tokens, k, extra)
        return Draft(tokens, torch.tensor(tokens, dtype=torch.long, device=self.device), None)

    def _tree(self, context: list[int], n: int, first: list[int], k: int, extra: int) -> Draft:
        """The continuations of up to `branches` occurrences of the suffix n-gram (the latest
        first, then older ones, then shorter n-grams'), merged into a trie: the latest keeps its
        k tokens (the chain's), the alternatives add at most `extra` nodes, each up to
        max(1, extra // (branches - 1)) (the engine falls back to the chain where the tree would
        not fit the caches)."""
        L = len(context)
        candidates = [first]
        for m in range(n, self.min_ngram - 1, -1):
            key = tuple(context[L - m :])
            starts = ([] if m == n else [self._index[key]] if key in self._index else []) + \
                self._earlier.get(key, [])[::-1]
            for start in starts:
                cont = context[start : start + k]
                if cont and cont not in candidates:
                    candidates.append(cont)
            if len(candidates) >= self.branches:
                break
        tokens: list[int] = []
        parents: list[int] = []
        children: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
        alt = max(1, extra // (self.branches - 1))
        for i, cont in enumerate(candidates[: self.branches]):
            node = -1
            for t in cont[: alt if i else k]:
                if (node, t) not in children:
                    if i and len(tokens) >= len(first) + extra:
                        break
                    children[node, t] = len(tokens)
                    tokens.append(t)
                    parents.append(node)
                node = children[node, t]
        tree = None if parents == list(range(-1, len(tokens) - 1)) else tuple(parents)
        return Draft(tokens, torch.tensor(tokens, dtype=torch.long, device=self.device), None, parents=tree)

    def on_verified(self, num_accepted: int) -> None:
        pass  # the index only ever holds verified context

    def end(self) -> None:
        self._index = {}
        self._earlier = {}
        self._indexed_until = 0
        self._memo = None
