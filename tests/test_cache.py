"""KVCache: static buffers, a host-side fill level; trim rolls back drafts, keep compacts a tree path."""

from __future__ import annotations

import pytest
import torch

from specdecode.cache import KVCache
from specdecode.loading.tiny import tiny_args, tiny_state_dict
from specdecode.model import build_transformer

L, H, D = 2, 2, 4  # layers, kv heads, head dim


def _kv(T: int, fill: float, B: int = 1) -> torch.Tensor:
    """(B, H, T, D) whose slot t holds fill + t everywhere."""
    return (fill + torch.arange(T, dtype=torch.float32)).view(1, 1, T, 1).expand(B, H, T, D).clone()


def _write(cache: KVCache, T: int, fill: float) -> None:
    for layer in range(L):
        cache.update(layer, _kv(T, fill + layer), -_kv(T, fill + layer))
    cache.advance(T)


def _slots(cache: KVCache, layer: int = 0) -> list[float]:
    return cache.keys[layer][0, 0, : cache.length, 0].tolist()


def test_preallocated_buffers():
    cache = KVCache(L, H, D, max_len=16, batch_size=3, dtype=torch.bfloat16)
    assert len(cache.keys) == len(cache.values) == L
    assert cache.keys[0].shape == (3, H, 16, D) and cache.keys[0].dtype == torch.bfloat16
    assert cache.length == 0 and cache.max_len == 16


def test_update_appends_and_returns_the_valid_prefix():
    cache = KVCache(L, H, D, max_len=10)
    k, v = cache.update(0, _kv(3, 0.0), _kv(3, 100.0))
    assert k.shape == (1, H, 3, D) and cache.length == 0  # advance is the model's call, after all layers
    cache.update(1, _kv(3, 1.0), _kv(3, 101.0))
    cache.advance(3)
    k, v = cache.update(0, _kv(2, 10.0), _kv(2, 110.0))
    assert k.shape == v.shape == (1, H, 5, D)
    assert k[0, 0, :, 0].tolist() == [0, 1, 2, 10, 11]
    assert v[0, 0, :, 0].tolist() == [100, 101, 102, 110, 111]


def test_overflow_raises():
    cache = KVCache(L, H, D, max_len=4)
    _write(cache, 3, 0.0)
    with pytest.raises(RuntimeError, match="overflow"):
        cache.update(0, _kv(2, 0.0), _kv(2, 0.0))


def test_trim_rolls_back_and_the_next_write_overwrites():
    cache = KVCache(L, H, D, max_len=10)
    _write(cache, 6, 0.0)
    cache.trim(4)
    assert cache.length == 4
    _write(cache, 2, 50.0)
    assert _slots(cache) == [0, 1, 2, 3, 50, 51]
    cache.trim(6)  # a no-op
    cache.trim(0)
    assert cache.length == 0
    for bad in (-1, 1):  # only backwards, never below 0
        with pytest.raises(ValueError):
            cache.trim(bad)


def test_keep_compacts_a_path_and_forgets_the_rest():
    cache = KVCache(L, H, D, max_len=12)
    _write(cache, 3, 0.0)  # the verified context: slots 0..2
    _write(cache, 5, 10.0)  # five tree nodes: slots 3..7 hold 10..14
    cache.keep(3, torch.tensor([0, 2, 4]))
    assert cache.length == 6
    for layer in range(L):
        assert _slots(cache, layer) == [0 + layer, 1 + layer, 2 + layer, 10 + layer, 12 + layer, 14 + layer]
        assert cache.values[layer][0, 0, :6, 0].tolist() == [-(x + layer) for x in (0, 1, 2, 10, 12, 14)]
    _write(cache, 1, 90.0)  # decoding goes on right after the kept path
    assert _slots(cache) == [0, 1, 2, 10, 12, 14, 90]


def test_keep_of_a_chain_prefix_is_trim_and_empty_keep_drops_the_tree():
    a, b = KVCache(L, H, D, max_len=12), KVCache(L, H, D, max_len=12)
    for c in (a, b):
        _write(c, 2, 0.0)
        _write(c, 4, 10.0)
    a.keep(2, torch.tensor([0, 1]))
    b.trim(4)
    assert a.length == b.length and all(torch.equal(x, y) for x, y in zip(a.keys, b.keys))
    a.keep(2, torch.tensor([], dtype=torch.long))
    assert a.length == 2


def test_keep_checks_its_arguments():
    cache = KVCache(L, H, D, max_len=8)
    _write(cache, 5, 0.0)
    with pytest.raises(ValueError):
        cache.keep(6, torch.tensor([0]))
    with pytest.raises(ValueError):
        cache.keep(3, torch.tensor([0, 2]))  # slot 5 was never written
    with pytest.raises(ValueError):
        cache.keep(3, torch.tensor([-1]))
    assert cache.length == 5


def test_keep_after_a_tree_pass_equals_feeding_the_path():
    """The use keep exists for: score two branches in one pass with a tree mask, keep one, and
    the cache (and the next logits) match feeding that branch alone."""
    torch.manual_seed(0)
    args = tiny_args(300)
    model = build_transformer(args, tiny_state_dict(args), dtype=torch.float32)
    prompt = torch.tensor([[5, 6, 7, 8, 9]])
    n = prompt.shape[1]

    def prefilled():
        cache = model.new_cache(32)
        model(prompt, torch.arange(n)[None], cache)
        return cache

    # Tree: x at n; y1 and y2 both children of x at n+1; z under y2 at n+2. Nodes in slots n..n+3.
    tree = torch.tensor([[11, 12, 13, 14]])  # x, y1, y2, z
    positions = torch.tensor([[n, n + 1, n + 1, n + 2]])
    parent = [-1, 0, 0, 2]
    mask = torch.zeros(1, 4, n + 4, dtype=torch.bool)
    mask[:, :, :n] = True
    for i in range(4):
        j = i
        while j >= 0:
            mask[0, i, n + j] = True
            j = parent[j]
    cache = prefilled()
    model(tree, positions, cache, mask=mask)
    cache.keep(n, torch.tensor([0, 2, 3]))  # accept x, y2, z

    path = prefilled()
    model(torch.tensor([[11, 13, 14]]), torch.arange(n, n + 3)[None], path)
    assert cache.length == path.length == n + 3
    for a, b in zip(cache.keys + cache.values, path.keys + path.values):
        torch.testing.assert_close(a[:, :, : n + 3], b[:, :, : n + 3], rtol=1e-4, atol=1e-5)
    nxt = torch.tensor([[21]])
    torch.testing.assert_close(model(nxt, torch.tensor([[n + 3]]), cache), model(nxt, torch.tensor([[n + 3]]), path),
                               rtol=1e-4, atol=1e-4)
