"""Prefix cache: the KV rows of the token sequences the engine has computed, so that a new request
starts from its longest cached prefix and prefills only the rest (a chat client resending its
conversation, an agent resending its tools and history, many requests sharing a system prompt).

Exact by construction, not by tolerance: on the CPU kernels a KV row's bits depend only on the
tokens before it, never on how the row was computed (prefill chunk, decode step, verify pass,
batch; model.py, kernels/), so copying a cached row into a request's cache gives it the bits its
own prefill would have. Where that does not hold (a model off the row-invariant kernels, CUDA,
tensor parallelism) `applies` says why and the engine does not reuse rows.

Layout: a radix tree per model over token ids (as SGLang's RadixAttention), each edge holding the
rows of its tokens, so turns of one conversation share their common part and a prefix matches
to the token (a re-tokenized answer that differs in its last tokens still reuses the rest).
Rows are copied in and out (copy-in, not shared pages): a request owns its static cache
(cache.py), eviction never waits for a request, and cancellation, batching and the server's KV
budget are untouched. Copying costs a memcpy of the rows, far below computing them. Least
recently used leaves go first when the bytes held pass the budget.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import torch

from .errors import SpecdecodeError

DEFAULT_PREFIX_CACHE_GB = 1.0  # ~37k positions of a 1.5B Qwen2.5 in bf16; the server's and CLI's default


@dataclass(eq=False)
class _Node:
    """An edge of the radix tree and the node it leads to: its tokens and their rows."""

    tokens: list[int]
    keys: torch.Tensor | None  # (layers, n_kv_heads, len(tokens), head_dim); None at the root
    values: torch.Tensor | None
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)  # by first token
    last_used: int = 0

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return 2 * self.keys.numel() * self.keys.element_size()


@dataclass
class PrefixCacheStats:
    """Counters since the cache was made (the server's /metrics, `--stats`)."""

    lookups: int = 0
    hits: int = 0  # lookups that reused at least one row
    tokens_looked_up: int = 0
    tokens_reused: int = 0
    tokens_stored: int = 0
    evicted_tokens: int = 0


def _common_prefix(a: list[int], b: list[int], start: int, end: int) -> int:
    """How many of a's tokens equal b[start:end] from the start."""
    n = min(len(a), end - start)
    i = 0
    while i < n and a[i] == b[start + i]:
        i += 1
    return i


def _rows(cache, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of a KVCache's rows [start, end) of batch row 0: (layers, n_kv, end - start, hd) each."""
    keys = torch.stack([k[0, :, start:end] for k in cache.keys])
    values = torch.stack([v[0, :, start:end] for v in cache.values])
    return keys, values


class PrefixCache:
    """KV rows of computed prefixes for one or more models, under one byte budget.

    `fill(model, tokens, cache, limit)` copies the rows of the longest cached prefix of
    tokens[:limit] into an empty cache and returns its length; `store(model, tokens, cache, n)`
    keeps the cache's rows of tokens[:n]. Thread-safe (one lock); the engine calls both from the
    thread that steps it.
    """

    def __init__(self, budget_bytes: int) -> None:
        if not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise SpecdecodeError(f"the prefix cache budget must be a number of bytes >= 0, got {budget_bytes!r}")
        self.budget_bytes = budget_bytes
        self.bytes_held = 0
        self.stats = PrefixCacheStats()
        self._roots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> root _Node
        self._exact: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> reason or ""
        self._lock = threading.Lock()
        self._tick = 0

    @classmethod
    def of_gb(cls, gb: float) -> PrefixCache:
        if not isinstance(gb, (int, float)) or isinstance(gb, bool) or not 0 <= gb < float("inf"):
            raise SpecdecodeError(f"--prefix-cache-gb must be a number >= 0, got {gb!r}")
        return cls(int(gb * 2**30))

    # -- whether rows of a model can be reused exactly -------------------------------------------

    def why_not(self, model) -> str:
        """"" when this model's rows can be reused bit for bit, else the reason they are not."""
        reason = self._exact.get(model) if _weakrefable(model) else None
        if reason is None:
            reason = _why_rows_are_not_exact(model) if self.budget_bytes > 0 else "off (budget 0)"
            if _weakrefable(model):
                self._exact[model] = reason
        return reason

    def applies(self, model) -> bool:
        return self.why_not(model) == ""

    # -- lookups and stores ----------------------------------------------------------------------

    def fill(self, model, tokens: list[int], cache, limit: int) -> int:
        """Copy the rows of the longest cached prefix of tokens[:limit] into `cache` (empty, rows
        from 0); returns how many (cache.length is set to it). 0 when the model does not apply."""
        if limit <= 0 or not self.applies(model):
            return 0
        if cache.length != 0:
            raise ValueError("fill needs an empty cache")
        with self._lock:
            self._tick += 1
            self.stats.lookups += 1
            self.stats.tokens_looked_up += limit
            node, pos = self._roots.get(model), 0
            while node is not None and pos < limit:
                child = node.children.get(tokens[pos])
                if child is None:
                    break
                m = _common_prefix(child.tokens, tokens, pos, limit)
                for layer, (k, v) in enumerate(zip(child.keys, child.values)):  # (n_kv, len, hd) each
                    cache.keys[layer][0, :, pos : pos + m] = k[:, :m]
                    cache.values[layer][0, :, pos : pos + m] = v[:, :m]
                child.last_used = self._tick
                pos += m
                node = child if m == len(child.tokens) else None
            # a partial edge was used too: its ancestors were touched on the way down
            cache.length = pos
            if pos:
                self.stats.hits += 1
                self.stats.tokens_reused += pos
            return pos

    def store(self, model, tokens: list[int], cache, n: int) -> None:
        """Keep the rows [0, n) of `cache`, which hold tokens[:n]; the least recently used rows
        of any model go when the budget is passed."""
        n = min(n, cache.length, len(tokens))
        if n <= 0 or not self.applies(model):
            return
        with self._lock:
            self._tick += 1
            node = self._roots.get(model)
            if node is None:
                node = self._roots[model] = _Node([], None, None, None)
            pos = 0
            while pos < n:
                node.last_used = self._tick
                child = node.children.get(tokens[pos])
                if child is None:
                    break
                m = _common_prefix(child.tokens, tokens, pos, n)
                if m < len(child.tokens):
                    child = self._split(child, m)
                pos += m
                node = child
            node.last_used = self._tick
            if pos < n:
                keys, values = _rows(cache, pos, n)
                leaf = _Node(list(tokens[pos:n]), keys, values, node, last_used=self._tick)
                node.children[leaf.tokens[0]] = leaf
                self.bytes_held += leaf.nbytes
                self.stats.tokens_stored += n - pos
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._roots = weakref.WeakKeyDictionary()
            self.bytes_held = 0

    def tokens_held(self) -> int:
        with self._lock:
            return sum(len(node.tokens) for root in self._roots.values() for node in _walk(root))

    # -- the tree --------------------------------------------------------------------------------

    def _split(self, node: _Node, m: int) -> _Node:
        """Cut node's edge after m tokens; returns the new upper node (node becomes its child)."""
        upper = _Node(node.tokens[:m], node.keys[:, :, :m].clone(), node.values[:, :, :m].clone(),
                      node.parent, last_used=node.last_used)
        before = node.nbytes
        node.tokens = node.tokens[m:]
        node.keys, node.values = node.keys[:, :, m:].clone(), node.values[:, :, m:].clone()
        node.parent.children[upper.tokens[0]] = upper
        upper.children[node.tokens[0]] = node
        node.parent = upper
        self.bytes_held += upper.nbytes + node.nbytes - before
        return upper

    def _evict(self) -> None:
        """Drop least recently used leaves until the bytes held fit the budget."""
        while self.bytes_held > self.budget_bytes:
            leaves = [n for root in self._roots.values() for n in _walk(root) if not n.children and n.parent is not None]
            if not leaves:
                break
            leaf = min(leaves, key=lambda n: n.last_used)
            del leaf.parent.children[leaf.tokens[0]]
            self.bytes_held -= leaf.nbytes
            self.stats.evicted_tokens += len(leaf.tokens)


def _walk(root: _Node):
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children.values())


def _weakrefable(model) -> bool:
    try:
        weakref.ref(model)
    except TypeError:
        return False
    return True


def _why_rows_are_not_exact(model) -> str:
    """"" when the model's KV rows depend only on the tokens before them (native model, CPU
    kernels for every linear layer and for attention, no tensor parallelism), else why not."""
    from .cache import KVCache
    from .kernels import probe_row_invariance
    from .kernels.attention import chain_attention_applies

    if not _weakrefable(model) or not hasattr(model, "forward_ragged"):
        return "off (only the native models' caches can be reused)"
    if getattr(model, "tp", None) is not None:
        return "off (tensor parallelism: the ranks would have to evict alike)"
    probe = model.new_cache(1)
    if not isinstance(probe, KVCache) or not chain_attention_applies(probe.keys[0], probe.keys[0].shape[-1]):
        return f"off (the row-invariant attention kernel does not run on {model.device.type} here)"
    if not probe_row_invariance(model).row_invariant:
        return "off (the linear layers are not row-invariant here)"
    return ""
