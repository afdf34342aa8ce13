"""Attention of a chain of queries (a decode step or a verification pass) over the KV cache, on
the CPU kernel: query t of T attends keys [0, L - T + t], each query alone in a fixed order, so
its result does not depend on T (csrc/attention.h). A tree of queries (a token tree's verify
pass) attends each node's path the same way."""

from __future__ import annotations

import torch

from . import build
from .linear import _isa


def chain_attention_applies(k: torch.Tensor, head_dim: int) -> bool:
    """Whether the kernel takes this cache: CPU, bf16 / fp32, head_dim a multiple of 16, kernels built."""
    return (k.device.type == "cpu" and k.dtype in (torch.float32, torch.bfloat16) and head_dim % 16 == 0
            and build.extension() is not None)


def chain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q (B, H, T, hd), k/v (B, Hkv, L, hd) cache views -> (B, H, T, hd) float32."""
    return build.extension().attend_chain(q.float().contiguous(), k, v, scale, _isa())


def tree_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, parents: torch.Tensor) -> torch.Tensor:
    """q (B, H, T, hd) for T tree nodes (parents (T,) int64, -1 = child of the context's last token,
    parents listed before children), k/v (B, Hkv, L, hd) with the nodes in the last T slots ->
    (B, H, T, hd) float32: each node attends the context and its root-to-node path, with the bits a
    chain along that path gives it."""
    return build.extension().attend_tree(q.float().contiguous(), k, v, scale, parents.contiguous(), _isa())
