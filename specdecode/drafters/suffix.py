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
from dataclasses import dataclass

import torch

from ..config import SamplingParams
from ..errors import SpecdecodeError
from .base import Draft, empty_draft, with_leaves

DEFAULT_STORE_TOKENS = 65_536  # outputs kept (about 40 MB of index at 4 n-gram sizes)
MAX_OCCURRENCES = 16  # most recent occurrences of a suffix weighed per lookup


@dataclass(frozen=True)
class SuffixMatch:
    """What the store holds after a context: the longest suffix seen (length), the continuation to
    draft (tokens), the share of the recent occurrences whose next token agrees with it, and every
    recent occurrence's continuation, oldest first (for trees)."""

    length: int = 0
    tokens: tuple[int, ...] = ()
    share: float = 0.0
    continuations: tuple[tuple[int, ...], ...] = ()


NO_MATCH = SuffixMatch()


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

    def match(self, context: list[int], k: int) -> SuffixMatch:
        """The longest suffix of `context` the store has seen and up to k tokens of what followed
        its recent occurrences: the continuation most of them agree on (the latest of those), the
        rest for trees; NO_MATCH if none."""
        if k <= 0 or not self._seqs:
            return NO_MATCH
        with self._lock:
            n, occ = self._occurrences(context)
            if not occ:
                return NO_MATCH
            continuations = tuple(tuple(self._seqs[s][e : e + k]) for s, e in occ)
        token, count = Counter(c[0] for c in continuations).most_common(1)[0]
        latest = next(c for c in reversed(continuations) if c[0] == token)
        return SuffixMatch(n, latest, count / len(occ), continuations)

    def lookup(self, context: list[int], k: int) -> tuple[int, list[int], float]:
        """(length of the longest suffix of `context` seen in the store, up to k tokens that
        followed it, the share of its recent occurrences whose next token agrees); (0, [], 0)."""
        m = self.match(context, k)
        return m.length, list(m.tokens), m.share

    def alternatives(self, context: list[int], chain: list[int], k: int, extra: int) -> list[tuple[int, int]]:
        """tree_alternatives of this context's match (k tokens deep) beside `chain`."""
        if extra <= 0 or not chain:
            return []
        return tree_alternatives(self.match(context, k).continuations, chain, extra)


def tree_alternatives(continuations, chain: list[int], extra: int) -> list[tuple[int, int]]:
    """Up to `extra` tree nodes beside `chain`: the other continuations (SuffixMatch.continuations,
    oldest first) merged into a trie and added greedily, the node most occurrences pass through
    first (ties: the more recent), each only once its parent is in. -> (parent, token) pairs in
    that order; parent -1 is the context, 0 .. len(chain) - 1 the chain's nodes, len(chain) + j the
    j-th pair's node (base.with_leaves)."""
    if extra <= 0 or not chain:
        return []
    counts: Counter[tuple[int, ...]] = Counter()  # continuation prefix -> occurrences through it
    recent: dict[tuple[int, ...], int] = {}
    for rank, cont in enumerate(continuations):
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
        self._memo: tuple[tuple, int, SuffixMatch] | None = None

    def begin(self, prompt: list[int], max_len: int, device: torch.device) -> None:
        self.device = device
        # The engine's token list itself: it grows with the output, which end() then keeps.
        self._context, self._prompt_len, self._memo = prompt, len(prompt), None

    def match(self, context: list[int], k: int) -> SuffixMatch:
        """The store's match for `context`, k tokens deep (a deeper memo of the same context serves:
        the planner looks before the drafter proposes, and both get one lookup)."""
        self._context = context
        key = (len(context), tuple(context[-self.store.max_ngram :]))
        if self._memo is not None and self._memo[0] == key and self._memo[1] >= k:
            return self._memo[2]
        found = self.store.match(context, k)
        self._memo = (key, k, found)
        return found

    def evidence(self, context: list[int], k: int) -> tuple[str, int]:
        """The planner's view: ("suffix:<match length, 3 = 3 or more>", tokens available now)."""
        m = self.match(context, k)
        return f"suffix:{min(m.length, 3)}", min(len(m.tokens), k)

    def propose(self, context: list[int], k: int, params: SamplingParams, generator,
                tree_nodes: int | None = None) -> Draft:
        if k <= 0:
            self._context = context
            return empty_draft(self.device)
        m = self.match(context, k)
        tokens = list(m.tokens[:k])
        if not tokens:
            return empty_draft(self.device)
        chain = Draft(tokens, torch.tensor(tokens, dtype=torch.long, device=self.device), None)
        if self.branches == 1:
            return chain
        extra = max(1, k // 2) if tree_nodes is None else tree_nodes
        return with_leaves(chain, tree_alternatives([c[:k] for c in m.continuations], tokens, extra))

    def on_verified(self, num_accepted: int) -> None:
        pass  # the store holds finished outputs only

    def end(self) -> None:
        self.store.add(self._context[self._prompt_len :])
        self._context, self._memo = [], None
