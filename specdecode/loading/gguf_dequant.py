"""De-quantization of the common GGML block formats in torch (multi-threaded, few temporaries).

``gguf.quants.dequantize`` is the reference, but its numpy code is single-threaded and makes
several full-size temporaries: it takes ~45 s for the 1.5B Qwen file on a 2-core CPU. These
are the same formulas (ggml-quants.c, dequantize_row_*), written over uint8 block tensors
so torch parallelises them; tests check them bit-for-bit against ``gguf.quants``. Any type
not listed here falls back to ``gguf.quants.dequantize``.
"""

from __future__ import annotations

from typing import Callable

import torch

QK_K = 256
_CHUNK_BLOCKS = 1 << 12  # blocks per slice: temporaries of ~4 MB stay in cache (2x faster than 32 MB)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(n, 2) uint8 -> (n, 1) float32, reading little-endian IEEE half floats."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, m) uint8 -> (n, 2, m): low nibbles first, then high nibbles (ggml's order)."""
    return torch.stack((qs & 0x0F, qs >> 4), dim=1)


def _q8_0(b: torch.Tensor) -> torch.Tensor:  # 2 + 32 bytes: d, int8 q
    return _f16(b[:, :2]) * b[:, 2:].view(torch.int8).float()


def _q4_0(b: torch.Tensor) -> torch.Tensor:  # 2 + 16 bytes: d, 4-bit q (offset 8)
    q = _nibbles(b[:, 2:]).reshape(b.shape[0], 32).to(torch.int8) - 8
    return _f16(b[:, :2]) * q.float()


def _q4_1(b: torch.Tensor) -> torch.Tensor:  # 2 + 2 + 16 bytes: d, m, 4-bit q
    q = _nibbles(b[:, 4:]).reshape(b.shape[0], 32).float()
    return _f16(b[:, :2]) * q + _f16(b[:, 2:4])


def _q5_0(b: torch.Tensor) -> torch.Tensor:  # 2 + 4 + 16 bytes: d, high bits, low nibbles (offset 16)
    n = b.shape[0]
    bits = torch.arange(8, dtype=torch.uint8)
    qh = ((b[:, 2:6].unsqueeze(-1) >> bits) & 1).reshape(n, 32)  # bit i of the little-endian uint32
    q = (_nibbles(b[:, 6:]).reshape(n, 32) | (qh << 4)).to(torch.int8) - 16
    return _f16(b[:, :2]) * q.float()


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 12 packed bytes of a Q4_K/Q5_K super-block -> 8 six-bit scales and 8 mins."""
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat((d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)), dim=1)
    mn = torch.cat((m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)), dim=1)
    return sc.float(), mn.float()


def _q4_k(b: torch.Tensor) -> torch.Tensor:  # 2 + 2 + 12 + 128 bytes per 256 weights
    n = b.shape[0]
    sc, mn = _scale_min_k4(b[:, 4:16])
    d = (_f16(b[:, 0:2]) * sc).unsqueeze(-1)  # (n, 8, 1)
    dm = (_f16(b[:, 2:4]) * mn).unsqueeze(-1)
    qs = b[:, 16:].reshape(n, 4, 1, 32)  # sub-block 2c = low nibbles of chunk c, 2c+1 = high
    q = torch.cat((qs & 0x0F, qs >> 4), dim=2).reshape(n, 8, 32)
    return (d * q.float() - dm).reshape(n, QK_K)


def _q6_k(b: torch.Tensor) -> torch.Tensor:  # 128 ql + 64 qh + 16 int8 scales + 2 d, per 256 weights
    n = b.shape[0]
    ql = b[:, :128].reshape(n, 2, 1, 64)
    ql = torch.cat((ql & 0x0F, ql >> 4), dim=2).reshape(n, 8, 32)
    qh = b[:, 128:192].reshape(n, 2, 1, 32)
    qh = torch.cat([(qh >> s) & 3 for s in (0, 2, 4, 6)], dim=2).reshape(n, 8, 32)
    q = (ql | (qh << 4)).to(torch.int8) - 32
    scales = b[:, 192:208].view(torch.int8).float()
    d = (_f16(b[:, 208:210]) * scales).unsqueeze(-1)  # (n, 16, 1)
    return (d * q.reshape(n, 16, 16).float()).reshape(n, QK_K)


def _kernels() -> dict[int, tuple[int, int, Callable[[torch.Tensor], torch.Tensor]]]:
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as Q

    fns = {Q.Q8_0: _q8_0, Q.Q4_0: _q4_0, Q.Q4_1: _q4_1, Q.Q5_0: _q5_0, Q.Q4_K: _q4_k, Q.Q6_K: _q6_k}
    return {int(q): (GGML_QUANT_SIZES[q][1], GGML_QUANT_SIZES[q][0], fn) for q, fn in fns.items()}


# GGMLQuantizationType id -> (bytes per block, weights per block, kernel)
KERNELS = _kernels()


def dequantize_blocks(raw: torch.Tensor, qtype: int, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Flat uint8 bytes of ``qtype`` blocks -> flat weights in ``out_dtype``.

    Works in slices so that the float32 intermediates never exceed a few MB, and the
    result is written straight into the output dtype (bf16 halves the peak memory).
    """
    type_size, block, kernel = KERNELS[qtype]
    blocks = raw.reshape(-1, type_size)
    out = torch.empty(blocks.shape[0] * block, dtype=out_dtype)
    for i in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        part = blocks[i : i + _CHUNK_BLOCKS]
        out[i * block : (i + part.shape[0]) * block] = kernel(part).reshape(-1)
    return out
