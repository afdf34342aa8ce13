"""Static KV cache: buffers preallocated for the whole request, the fill level kept on the host.

Keeping the offset as a Python int (not a tensor) means rolling back rejected draft tokens is
free (`trim` just moves it) and no device sync is needed to know where to write next.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer key/value buffers of shape (B, n_kv_heads, max_len, head_dim)."""

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_len: int,
        batch_size: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len
        self.length = 0  # slots [0, length) hold valid entries

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v (B, n_kv, T, hd) at [length, length+T); return the valid prefix incl. them."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} > {self.max_len} slots")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, num_tokens: int) -> None:
        """Called by the model once every layer has written its T new entries."""
        self.length += num_tokens

    def trim(self, length: int) -> None:
        """Forget everything from slot `length` on (rejected draft tokens)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot trim a cache of length {self.length} to {length}")
        self.length = length

    def keep(self, start: int, indices: torch.Tensor) -> None:
        """Compact slots `start + indices` to `start, start+1, ...` and forget the rest.

        The seam for token trees (DESIGN.md, cache.py): after a tree pass wrote every node from
        slot `start` on, keep the accepted root-to-leaf path. A chain's accepted prefix is
        indices 0..n-1, i.e. trim(start + n). indices: int64 (n,), each in [0, length - start).
        """
        n = indices.numel()
        if not 0 <= start <= self.length:
            raise ValueError(f"keep: start {start} is outside a cache of length {self.length}")
        on_host = indices.device.type == "cpu"  # checking device indices would cost a sync
        if n and on_host and not (0 <= int(indices.min()) and int(indices.max()) < self.length - start):
            raise ValueError(f"keep: indices must be in [0, {self.length - start}), got {indices.tolist()}")
        src = indices.to(device=self.keys[0].device, dtype=torch.long) + start
        for buf in (*self.keys, *self.values):
            buf[:, :, start : start + n] = buf.index_select(2, src)
        self.length = start + n
