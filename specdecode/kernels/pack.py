"""Weight layouts of the skinny kernels (csrc/skinny.h): packing, unpacking and quantization.

Pure tensor functions, so the tests can check every layout against a float64 reference.
Tiles of 16 output columns; N is padded with zero rows to a multiple of 16.
"""

from __future__ import annotations

import torch

TILE = 16  # output columns per tile
BLOCK = 32  # k per quantization block (int8 activations, int4 weights)


def _pad_rows(w: torch.Tensor) -> torch.Tensor:
    N = w.shape[0]
    pad = -N % TILE
    return torch.cat([w, w.new_zeros(pad, *w.shape[1:])]) if pad else w


def pack_float(w: torch.Tensor) -> torch.Tensor:
    """(N, K) float32 -> (T, K, 16); bfloat16 -> (T, K/2, 16, 2) (a k-pair of 16 columns together)."""
    N, K = w.shape
    w16 = _pad_rows(w.contiguous())
    T = w16.shape[0] // TILE
    if w.dtype == torch.bfloat16:
        return w16.view(T, TILE, K // 2, 2).permute(0, 2, 1, 3).contiguous()
    return w16.view(T, TILE, K).permute(0, 2, 1).contiguous()


def unpack_float(packed: torch.Tensor, N: int) -> torch.Tensor:
    if packed.dtype == torch.bfloat16:
        T, P, _, _ = packed.shape
        return packed.permute(0, 2, 1, 3).reshape(T * TILE, P * 2)[:N].contiguous()
    T, K, _ = packed.shape
    return packed.permute(0, 2, 1).reshape(T * TILE, K)[:N].contiguous()


def quantize_int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> q (N, K) int8 in [-127, 127] and scales (N,) float32: w ~ q * scales[:, None]."""
    w = w.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # (N,)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def pack_int8(q: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q (N, K) int8 -> (T, K/32, 8, 16, 4): chunk j of a block holds k = 4j..4j+3 of 16 columns."""
    N, K = q.shape
    q16 = _pad_rows(q.contiguous())
    T = q16.shape[0] // TILE
    packed = q16.view(T, TILE, K // BLOCK, 8, 4).permute(0, 2, 3, 1, 4).contiguous()
    return packed, _pad_rows(scales.float().contiguous())


def unpack_int8(packed: torch.Tensor, N: int) -> torch.Tensor:
    T, B = packed.shape[:2]
    return packed.permute(0, 3, 1, 2, 4).reshape(T * TILE, B * BLOCK)[:N].contiguous()


def quantize_int4_blocks(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) float -> q (N, K) uint8 in [0, 15], s and d (N, K/32) bfloat16: w ~ q * s + d.

    Asymmetric per block of 32 (d = the block's minimum, s = its range / 15), both rounded to
    bf16 first and q chosen against the rounded values, so the stored block is as close as
    the format allows.
    """
    N, K = w.shape
    wb = w.float().reshape(N, K // BLOCK, BLOCK)
    lo, hi = wb.amin(-1), wb.amax(-1)  # (N, K/32)
    d = lo.to(torch.bfloat16)
    s = ((hi - d.float()) / 15.0).clamp(min=1e-8).to(torch.bfloat16)
    q = torch.round((wb - d.float()[..., None]) / s.float()[..., None]).clamp(0, 15).to(torch.uint8)
    return q.reshape(N, K), s, d


def pack_int4(q: torch.Tensor, s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """q (N, K) in [0, 15], s/d (N, K/32) bf16 -> (T, K/32, 320) uint8 (layout in csrc/skinny.h)."""
    N, K = q.shape
    G = K // BLOCK
    q16 = _pad_rows(q.to(torch.uint8).contiguous())
    T = q16.shape[0] // TILE
    qb = q16.view(T, TILE, G, 2, 4, 4)  # (tile, column, block, half, j, r): k = 16 half + 4 j + r
    nibbles = (qb[:, :, :, 0] | (qb[:, :, :, 1] << 4)).permute(0, 2, 3, 1, 4).reshape(T, G, 256)
    s16 = _pad_rows(s.contiguous()).view(T, TILE, G).permute(0, 2, 1).contiguous().view(torch.uint8)  # (T, G, 32)
    d16 = _pad_rows(d.contiguous()).view(T, TILE, G).permute(0, 2, 1).contiguous().view(torch.uint8)
    return torch.cat([nibbles, s16, d16], dim=-1).contiguous()  # (T, G, 320)


def unpack_int4(packed: torch.Tensor, N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of pack_int4: q (N, K) uint8, s and d (N, K/32) bfloat16."""
    T, G, _ = packed.shape
    nib = packed[..., :256].reshape(T, G, 4, TILE, 4)  # (tile, block, j, column, r)
    lo, hi = nib & 15, nib >> 4
    q = torch.stack([lo, hi], dim=3)  # (T, G, j, half, column, r)
    q = q.permute(0, 4, 1, 3, 2, 5).reshape(T * TILE, G * BLOCK)[:N]
    s = packed[..., 256:288].contiguous().view(torch.bfloat16).permute(0, 2, 1).reshape(T * TILE, G)[:N]
    d = packed[..., 288:320].contiguous().view(torch.bfloat16).permute(0, 2, 1).reshape(T * TILE, G)[:N]
    return q.contiguous(), s.contiguous(), d.contiguous()


def dequantize_int4_blocks(q: torch.Tensor, s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    N, K = q.shape
    qb = q.double().reshape(N, K // BLOCK, BLOCK)
    return (qb * s.double()[..., None] + d.double()[..., None]).reshape(N, K)  # (N, K) float64


def act_rows(xq: torch.Tensor, sx: torch.Tensor, sxs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernels' block-major activations (K/32, m, 32), (K/32, m) -> row-major (m, K), (m, K/32)."""
    nb, m, _ = xq.shape
    return xq.permute(1, 0, 2).reshape(m, nb * BLOCK), sx.T.contiguous(), sxs.T.contiguous()


def dequantized_act(xq: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
    """Block-major quantized activations -> (m, K) float64: the x the integer kernels multiply by."""
    nb, m, _ = xq.shape
    return (xq.double() * sx.double()[..., None]).permute(1, 0, 2).reshape(m, nb * BLOCK)


def quantize_act_reference(x: torch.Tensor, group: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the C++ quantize_act computes, in PyTorch, row-major: x (m, K) float32 -> xq int8, sx, sxs (m, K/32),
    one scale per `group` consecutive blocks of 32 (8: the K-quants' super-blocks of 256)."""
    m, K = x.shape
    xb = x.float().reshape(m, K // BLOCK, BLOCK)
    amax = xb.reshape(m, K // (BLOCK * group), BLOCK * group).abs().amax(-1)  # (m, K/(32 group))
    amax = amax.repeat_interleave(group, dim=1)  # (m, K/32)
    sx = amax / 127.0
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    xq = torch.round(xb * inv[..., None]).clamp(-127, 127)
    sxs = sx * xq.sum(-1)
    return xq.to(torch.int8).reshape(m, K), sx, sxs
