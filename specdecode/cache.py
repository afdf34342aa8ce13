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
        """Compact slots `start + indices` to `start, start+1, ...` (an accepted path of a token tree)."""
        n = indices.numel()
        src = indices + start
        for buf in (*self.keys, *self.values):
            buf[:, :, start : start + n] = buf.index_select(2, src)
        self.length = start + n
