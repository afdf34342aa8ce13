"""GGUF block formats as shipped, repacked for the skinny kernels (csrc/gguf.h has the layouts).

A GGUF tensor's blocks are read as they are in the file: every quantized value, 6-bit scale
and fp16 factor is kept, only moved so that 16 output columns sit side by side (SIMD lanes are
columns, as in the other skinny formats). `dequantize_packed` is the inverse view: the weights
the file describes, computed with ggml's own formulas (tests compare it with the `gguf`
package's de-quantization, bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pack import TILE, _pad_rows

SUPER = 256  # k per K-quant super-block
BLOCK = 32


@dataclass(frozen=True)
class GGUFFormat:
    name: str  # the GGML type's name
    ggml_type: int  # GGMLQuantizationType id
    code: int  # the kernels' format code (csrc/binding.cpp)
    block_k: int  # weights per file block (256 K-quants, 32 others)
    file_bytes: int  # bytes per file block
    tile_bytes: int  # bytes per packed block of 16 columns (csrc/gguf.h)

    @property
    def act_group(self) -> int:
        """Blocks of 32 that share one activation scale in the kernels: a K-quant's super-block, else 1."""
        return self.block_k // BLOCK

    def packed_shape(self, out_features: int, in_features: int) -> tuple[int, int]:
        return (-(-out_features // TILE), in_features // self.block_k * self.tile_bytes)


# GGML type ids: ggml.h (Q4_0 2, Q5_0 6, Q8_0 8, Q4_K 12, Q6_K 14).
FORMATS = {f.ggml_type: f for f in (
    GGUFFormat("Q4_K", 12, 4, SUPER, 144, 8 * 256 + 128 + 128 + 32 + 32),
    GGUFFormat("Q6_K", 14, 5, SUPER, 210, 8 * (256 + 128) + 256 + 32),
    GGUFFormat("Q5_0", 6, 6, BLOCK, 22, 256 + 64 + 32),
    GGUFFormat("Q4_0", 2, 7, BLOCK, 18, 256 + 32),
    GGUFFormat("Q8_0", 8, 8, BLOCK, 34, 512 + 32),
)}


def supported(ggml_type: int, in_features: int) -> bool:
    """Whether the kernels run this GGML type at this width as shipped."""
    f = FORMATS.get(int(ggml_type))
    return f is not None and in_features % f.block_k == 0


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(..., 2) uint8 -> (...) float32, reading little-endian halves."""
    return b.contiguous().view(torch.float16).squeeze(-1).float()


def _nibbles_lo_hi(qs: torch.Tensor) -> torch.Tensor:
    """(..., 16) uint8 of a 32-block (ggml order) -> (..., 32): low nibbles are values 0..15, high 16..31."""
    return torch.cat((qs & 15, qs >> 4), dim=-1)


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 12) packed bytes of a Q4_K super-block -> 8 six-bit scales and 8 mins, uint8."""
    d, m, md = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = torch.cat((d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)), dim=-1)
    mn = torch.cat((m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)), dim=-1)
    return sc, mn


def file_values(blocks: torch.Tensor, fmt: GGUFFormat) -> dict[str, torch.Tensor]:
    """(N, nb, file_bytes) uint8 -> the block's fields: "q" (N, nb, block_k) uint8 unsigned values,
    and per format "d", "dmin" (fp16 bytes (..., 2)), "sc", "m" (uint8) or "sc" (int8 as uint8)."""
    N, nb, _ = blocks.shape
    if fmt.name == "Q4_K":
        sc, mn = _scale_min_k4(blocks[..., 4:16])
        qs = blocks[..., 16:].reshape(N, nb, 4, 1, 32)  # sub-block 2c: low nibbles of chunk c, 2c+1: high
        q = torch.cat((qs & 15, qs >> 4), dim=3).reshape(N, nb, SUPER)
        return {"q": q, "d": blocks[..., 0:2], "dmin": blocks[..., 2:4], "sc": sc, "m": mn}
    if fmt.name == "Q6_K":
        ql = blocks[..., :128].reshape(N, nb, 2, 1, 64)
        ql = torch.cat((ql & 15, ql >> 4), dim=3).reshape(N, nb, 8, 32)
        qh = blocks[..., 128:192].reshape(N, nb, 2, 1, 32)
        qh = torch.cat([(qh >> s) & 3 for s in (0, 2, 4, 6)], dim=3).reshape(N, nb, 8, 32)
        return {"q": (ql | (qh << 4)).reshape(N, nb, SUPER), "sc": blocks[..., 192:208], "d": blocks[..., 208:210]}
    if fmt.name == "Q5_0":
        bits = torch.arange(8, dtype=torch.uint8)
        qh = ((blocks[..., 2:6].unsqueeze(-1) >> bits) & 1).reshape(N, nb, 32)  # bit i of the LE uint32
        return {"q": _nibbles_lo_hi(blocks[..., 6:]) | (qh << 4), "d": blocks[..., 0:2]}
    if fmt.name == "Q4_0":
        return {"q": _nibbles_lo_hi(blocks[..., 2:]), "d": blocks[..., 0:2]}
    if fmt.name == "Q8_0":
        return {"q": blocks[..., 2:].contiguous(), "d": blocks[..., 0:2]}
    raise ValueError(f"no kernel for GGML type {fmt.name}")


def _columns(t: torch.Tensor, T: int) -> torch.Tensor:
    """(N, nb, ...) per-column fields -> (T, nb, ..., 16): 16 columns innermost."""
    t = _pad_rows(t.contiguous())
    return t.view(T, TILE, *t.shape[1:]).movedim(1, -1)


def _nibble_blocks(q: torch.Tensor, T: int) -> torch.Tensor:
    """(N, G, 32) values 0..15 -> (T, G, 256) nibble blocks (byte j*64 + c*4 + r: k 4j+r low, 16+4j+r high)."""
    qb = _columns(q, T).reshape(T, q.shape[1], 2, 4, 4, TILE)  # (tile, block, half, j, r, column)
    return (qb[:, :, 0] | (qb[:, :, 1] << 4)).permute(0, 1, 2, 4, 3).reshape(T, q.shape[1], 256)


def _register_bytes(v: torch.Tensor, T: int) -> torch.Tensor:
    """(N, G, 32) -> (T, G, 8, 64): the gguf.h registers, R_i[c*4 + r] = value 4i + r of column c."""
    vb = _columns(v, T).reshape(T, v.shape[1], 8, 4, TILE)  # (tile, block, i, r, column)
    return vb.permute(0, 1, 2, 4, 3).reshape(T, v.shape[1], 8, 64)


def pack_blocks(raw: torch.Tensor, ggml_type: int, out_features: int, in_features: int) -> torch.Tensor:
    """A GGUF tensor's bytes ((N, K) weight, rows in file order) -> the kernels' tiles (T, tile bytes)."""
    fmt = FORMATS[int(ggml_type)]
    N, K = out_features, in_features
    nb = K // fmt.block_k
    blocks = raw.reshape(N, nb, fmt.file_bytes)
    v = file_values(blocks, fmt)
    T = -(-N // TILE)
    G = K // BLOCK
    q = v["q"].reshape(N, G, BLOCK)
    if fmt.name == "Q8_0":
        body = _register_bytes(q, T).reshape(T, G, 512)
        parts = [body, _f16_columns(v["d"], T)]
        return torch.cat(parts, dim=-1).reshape(T, -1).contiguous()
    nib = _nibble_blocks(q & 15, T)  # (T, G, 256)
    if fmt.name in ("Q4_0", "Q5_0"):
        parts = [nib]
        if fmt.name == "Q5_0":
            reg = _register_bytes(q >> 4, T)  # (T, G, 8, 64) of 0/1
            parts.append(sum(reg[:, :, i] << i for i in range(8)).to(torch.uint8))  # (T, G, 64)
        parts.append(_f16_columns(v["d"], T))
        return torch.cat(parts, dim=-1).reshape(T, -1).contiguous()
    if fmt.name == "Q4_K":
        nsb = nb
        per_sb = [nib.reshape(T, nsb, 8 * 256),
                  _columns(v["sc"], T).reshape(T, nsb, 128), _columns(v["m"], T).reshape(T, nsb, 128),
                  _f16_columns(v["d"], T), _f16_columns(_negated_f16(v["dmin"]), T)]
        return torch.cat(per_sb, dim=-1).reshape(T, -1).contiguous()
    # Q6_K
    reg = _register_bytes(q >> 4, T)  # (T, G, 8, 64) high 2 bits per register
    highs = torch.stack([reg[:, :, 4 * a] | (reg[:, :, 4 * a + 1] << 2) | (reg[:, :, 4 * a + 2] << 4)
                         | (reg[:, :, 4 * a + 3] << 6) for a in (0, 1)], dim=2).reshape(T, G, 128)
    nsb = nb
    per_sb = [torch.cat((nib, highs), dim=-1).reshape(T, nsb, 8 * 384),
              _columns(v["sc"], T).reshape(T, nsb, 256), _f16_columns(v["d"], T)]
    return torch.cat(per_sb, dim=-1).reshape(T, -1).contiguous()


def _negated_f16(b: torch.Tensor) -> torch.Tensor:
    """(..., 2) little-endian fp16 bytes with the sign bit flipped: -x, exactly."""
    out = b.clone()
    out[..., 1] ^= 0x80
    return out


def _f16_columns(d: torch.Tensor, T: int) -> torch.Tensor:
    """(N, nb, 2) fp16 bytes -> (T, nb, 32): 16 halves, column-major."""
    return _columns(d, T).transpose(-1, -2).reshape(T, d.shape[1], 2 * TILE)


def dequantize_packed(packed: torch.Tensor, ggml_type: int, out_features: int, in_features: int) -> torch.Tensor:
    """The (N, K) float32 weights packed tiles hold, by ggml's formulas (dequantize_row_*)."""
    fmt = FORMATS[int(ggml_type)]
    T = packed.shape[0]
    N, K = out_features, in_features
    nb, G = K // fmt.block_k, K // BLOCK
    blocks = packed.reshape(T, nb, fmt.tile_bytes)

    def from_registers(r: torch.Tensor) -> torch.Tensor:  # (T, G, 8, 64) -> (T*16, G, 32)
        return r.reshape(T, G, 8, TILE, 4).permute(0, 3, 1, 2, 4).reshape(T * TILE, G, BLOCK)

    def f16(b: torch.Tensor) -> torch.Tensor:  # (T, nb, 32) bytes -> (T*16, nb) float32
        return b.reshape(T, nb, TILE, 2).contiguous().view(torch.float16).squeeze(-1).float().permute(0, 2, 1).reshape(T * TILE, nb)

    def per_column(b: torch.Tensor, groups: int) -> torch.Tensor:  # (T, nb, groups*16) -> (T*16, nb, groups)
        return b.reshape(T, nb, groups, TILE).permute(0, 3, 1, 2).reshape(T * TILE, nb, groups)

    if fmt.name == "Q8_0":
        q = from_registers(blocks[..., :512].reshape(T, G, 8, 64)).view(torch.int8).float()
        w = f16(blocks[..., 512:])[..., None] * q
        return w.reshape(T * TILE, K)[:N].contiguous()
    if fmt.name == "Q6_K":
        body = blocks[..., : 8 * 384].reshape(T, G, 384)
        nib, highs = body[..., :256], body[..., 256:]
        lo = _unnibble(nib, T, G)
        h = highs.reshape(T, G, 2, 64)
        reg = torch.stack([(h[:, :, i // 4] >> (2 * (i % 4))) & 3 for i in range(8)], dim=2)  # (T, G, 8, 64)
        q = (lo | (from_registers(reg) << 4)).to(torch.int8) - 32  # (T*16, G, 32)
        sc = per_column(blocks[..., 3072:3328], 16).view(torch.int8).float()  # (T*16, nb, 16)
        d = f16(blocks[..., 3328:3360])
        scale = (d[..., None] * sc).reshape(T * TILE, G, 2, 1)
        return (scale * q.reshape(T * TILE, G, 2, 16).float()).reshape(T * TILE, K)[:N].contiguous()
    if fmt.name == "Q4_K":
        lo = _unnibble(blocks[..., :2048].reshape(T, G, 256), T, G).float()  # (T*16, G, 32)
        sc = per_column(blocks[..., 2048:2176], 8).float()
        mn = per_column(blocks[..., 2176:2304], 8).float()
        d, dmin = f16(blocks[..., 2304:2336]), -f16(blocks[..., 2336:2368])  # stored negated
        d1 = (d[..., None] * sc).reshape(T * TILE, G, 1)
        m1 = (dmin[..., None] * mn).reshape(T * TILE, G, 1)
        return (d1 * lo - m1).reshape(T * TILE, K)[:N].contiguous()
    nib = blocks[..., :256]
    q = _unnibble(nib, T, G).to(torch.int8)
    if fmt.name == "Q5_0":
        hb = blocks[..., 256:320].reshape(T, G, 64)
        reg = torch.stack([(hb >> i) & 1 for i in range(8)], dim=2)
        q = (q | (from_registers(reg) << 4).to(torch.int8)) - 16
        d = f16(blocks[..., 320:352])
    else:
        q = q - 8
        d = f16(blocks[..., 256:288])
    return (d[..., None] * q.float()).reshape(T * TILE, K)[:N].contiguous()


def _unnibble(nib: torch.Tensor, T: int, G: int) -> torch.Tensor:
    """(T, G, 256) nibble blocks -> (T*16, G, 32) values 0..15 (the inverse of _nibble_blocks)."""
    n = nib.reshape(T, G, 4, TILE, 4)  # (tile, block, j, column, r)
    q = torch.stack((n & 15, n >> 4), dim=2)  # (tile, block, half, j, column, r)
    return q.permute(0, 4, 1, 2, 3, 5).reshape(T * TILE, G, BLOCK)
