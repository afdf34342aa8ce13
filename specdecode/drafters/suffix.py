"""SuffixDrafter: continuations that earlier requests' outputs took after the current suffix.

SuffixDecoding (Oliaro et al. 2024) drafts from what the engine has already generated for other
requests: agents, coding assistants and chat clients repeat themselves across requests (the
same tool-call scaffolding, test boilerplate, import blocks, answers to recurring questions),
and the prompt lookup of the n-gram drafter cannot see any of that. This drafter keeps a bounded
store of finished requests' outputs, indexed by their n-grams, and proposes the continuation
that most of the earlier occurrences of the longest matching suffix agree on.

A proposal is a point mass (no q), verified like the n-gram drafter's: another request's text
can change how fast a request decodes, never what it decodes. With branches > 1 the drafter adds,
on the verify rows the planner grants, the other continuations those occurrences took, the most
frequent first (SuffixDecoding's tree, grown greedily by empirical frequency).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict

import torch

from ..config import SamplingParams
from ..errors import SpecdecodeError
from .base import Draft, empty_draft

DEFAULT_STORE_TOKENS = 65_536  # outputs kept (about 40 MB of index at 4 n-gram sizes)
MAX_OCCURRENCES = 16  # most recent occurrences of a suffix weighed per lookup


class SuffixStore:
    """Outputs of finished requests, with an index n-gram -> occurrences (sequence, end).

    Bounded by `max_tokens`: the oldest outputs go first. Shared by every request of an engine
    (and its forks); thread-safe.
    """

    def __init__(self, max_tokens: int = DEFAULT_STORE_TOKENS, max_ngram: int = 5, min_ngram: int = 2) -> None:
        if not isinstance(max_tokens, int) or max_tokens < 0:
            raise SpecdecodeError(f"the suffix store's size must be a number of tokens >= 0, got {max_tokens!r}")
        if not 1 <= min_ngram <= max_ngram:
            raise SpecdecodeError("need 1 <= min_ngram <= max_ngram")
        self.max_tokens, self.max_ngram, self.min_ngram = max_tokens, max_ngram, min_ngram
        self._seqs: OrderedDict[int, list[int]] = OrderedDict()
        self._index: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        self._next_id = 0
        self._stale = 0  # index entries of evicted outputs, dropped at the next rebuild
        self._lock = threading.Lock()
        self.tokens_held = 0
        self.outputs_added = 0

    def clear(self) -> None:
        with self._lock:
            self._seqs, self._index, self._stale, self.tokens_held = OrderedDict(), {}, 0, 0

    @property
    def index_entries(self) -> int:
        return sum(len(v) for v in self._index.values())

    def add(self, tokens: list[int]) -> None:
        """Keep one request's output (its generated tokens)."""
        if len(tokens) <= self.min_ngram or len(tokens) > self.max_tokens:
            return
        with self._lock:
            sid = self._next_id
            self._next_id += 1
            self._seqs[sid] = list(tokens)
            self.tokens_held += len(tokens)
            self.outputs_added += 1
            for end in range(self.min_ngram, len(tokens)):  # a continuation starts at `end`
                for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
                    self._index.setdefault(tuple(tokens[end - n : end]), []).append((sid, end))
            while self.tokens_held > self.max_tokens:
                _, old = self._seqs.popitem(last=False)
                self.tokens_held -= len(old)
                self._stale += len(old) * (self.max_ngram - self.min_ngram + 1)
            if self._stale > self.tokens_held * (self.max_ngram - self.min_ngram + 1):
                self._rebuild()

    def _rebuild(self) -> None:
        live = self._seqs
        self._index = {key: kept for key, occ in self._index.items() if (kept := [o for o in occ if o[0] in live])}
        self._stale = 0

    def _occurrences(self, context: list[int]) -> tuple[int, list[tuple[int, int]]]:
        """(n, the recent occurrences (sequence, end) of the longest suffix of `context` the store
        has seen, n tokens long); (0, []) if none. Call under the lock."""
        for n in range(min(self.max_ngram, len(context)), self.min_ngram - 1, -1):
            occ = [o for o in self._index.get(tuple(context[len(context) - n :]), ())
                   if o[0] in self._seqs and o[1] < len(self._seqs[o[0]])]
            if occ:
                return n, occ[-MAX_OCCURRENCES:]
        return 0, []

    def lookup(self, context: list[int], k: int) -> tuple[int, list[int], float]:
        """(length of the longest suffix of `context` seen in the store, up to k tokens that
        followed it, the share of its recent occurrences whose next token agrees); (0, [], 0)."""
        if k <= 0 or not self._seqs:
            return 0, [], 0.0
        with self._lock:
            n, occ = self._occurrences(context)
            if not occ:
                return 0, [], 0.0
            token, count = Counter(self._seqs[s][e] for s, e in occ).most_common(1)[0]
            sid, end = next(o for o in reversed(occ) if self._seqs[o[0]][o[1]] == token)  # the latest of them
            return n, self._seqs[sid][end : end + k], count / len(occ)

    def alternatives(self, context: list[int], chain: list[int], k: int, extra: int) -> list[tuple[int, int]]:
        """Up to `extra` tree nodes beside `chain` (lookup's continuation of `context`): the other
        continuations (up to k tokens) the recent occurrences of the same suffix took, merged into a
        trie and added greedily, the node most occurrences pass through first (ties: the more recent),
        each only once its parent is in. -> (parent, token) pairs in that order; parent -1 is the
        context, 0 .. len(chain) - 1 the chain's nodes, len(chain) + j the j-th pair's node."""
        if extra <= 0 or not chain:
            return []
        with self._lock:
            _, occ = self._occurrences(context)
            counts: Counter[tuple[int, ...]] = Counter()  # continuation prefix -> occurrences through it
            recent: dict[tuple[int, ...], int] = {}
            for rank, (sid, end) in enumerate(occ):
                cont = tuple(self._seqs[sid][end : end + k])
                for d in range(1, len(cont) + 1):
                    counts[cont[:d]] += 1
                    recent[cont[:d]] = rank
        node = {tuple(chain[:d]): d - 1 for d in range(len(chain) + 1)}  # () -> -1, the context
        out: list[tuple[int, int]] = []
        while len(out) < extra:
            best = max((p for p in counts if p not in node and p[:-1] in node),
                       key=lambda p: (counts[p], recent[p]), default=None)
            if best is None:
                break
            node[best] = len(chain) + len(out)
            out.append((node[best[:-1]], best[-1]))
        return out


class SuffixDrafter:
    """Drafts from a SuffixStore of earlier requests' outputs; adds each request's output at its end.

    store: a SuffixStore to share (between engines too); None makes one of DEFAULT_STORE_TOKENS.
    branches > 1: token trees, the chain plus the store's other continuations
    (SuffixStore.alternatives) on the rows the planner grants (Plan.tree_nodes; max(1, k // 2)
    under a fixed k).
    """

    name = "suffix"

    def __init__(self, store: SuffixStore | None = None, branches: int = 1) -> None:
        if branches < 1:
            raise ValueError("need branches >= 1")
        self.branches = branches
        self.store = store if store is not None else SuffixStore()
        self._context: list[int] = []
        self._prompt_len = 0
        self._memo: tuple[tuple, int, tuple[int, list[int], float]] | None = None

    def begin(self, prompt: list[int], max_len: int, device: torch.device) -> None:
        self.device = device
        # The engine's token list itself: it grows with the output, which end() then keeps.
        self._context, self._prompt_len, self._memo = prompt, len(prompt), None

    def match(self, context: list[int], k: int) -> tuple[int, list[int], float]:
        self._context = context
        key = (len(context), tuple(context[-self.store.max_ngram :]))
        if self._memo is not None and self._memo[0] == key and self._memo[1] >= k:
            n, tokens, share = self._memo[2]
            return n, tokens[:k], share
        found = self.store.lookup(context, k)
        self._memo = (key, k, found)  # the planner looks before the drafter proposes: one lookup
        return found

    def evidence(self, context: list[int], k: int) -> tuple[str, int]:
        """The planner's view: ("suffix:<match length, 3 = 3 or more>", tokens available now)."""
        n, tokens, _ = self.match(context, k)
        return f"suffix:{min(n, 3)}", len(tokens)

    def propose(self, context: list[int], k: int, params: SamplingParams, generator,
                tree_nodes: int | None = None) -> Draft:
        if k <= 0:
            self._context = context
            return empty_draft(self.device)
        _, tokens, _ = self.match(context, k)
        if not tokens:
            return empty_draft(self.device)
        extra = max(1, k // 2) if tree_nodes is None else tree_nodes
        alts = self.store.alternatives(context, tokens, k, extra) if self.branches > 1 else []
        if not alts:
            return Draft(tokens, torch.tensor(tokens, dtype=torch.long, device=self.device), None)
        nodes = tokens + [t for _, t in alts]
        parents = tuple(range(-1, len(tokens) - 1)) + tuple(p for p, _ in alts)
        return Draft(nodes, torch.tensor(nodes, dtype=torch.long, device=self.device), None, parents=parents)

    def on_verified(self, num_accepted: int) -> None:
        pass  # the store holds finished outputs only

    def end(self) -> None:
        self.store.add(self._context[self._prompt_len :])
        self._context, self._memo = [], None
