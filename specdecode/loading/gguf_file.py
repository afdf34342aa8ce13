"""A fast GGUF header parser: metadata + tensor table, tensors as zero-copy numpy views.

``gguf.GGUFReader`` builds a numpy array for every element of every metadata array, which
takes 16 s on a 2-core CPU for Qwen's 151k-token vocabulary before a single weight is read.
The model loader needs only the scalar metadata and the tensor table, so this parser skips
long string arrays (keeping their length) and returns in well under a second. The layout
follows the GGUF spec (v2/v3, little-endian); the test suite checks it against GGUFReader.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# GGUFValueType ids -> struct format of a scalar
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_SKIP_STRINGS_OVER = 1024  # string arrays longer than this (vocab, merges) are counted, not decoded


class SkippedArray(int):
    """Stands in for a long string array (tokens, merges): its length, contents not decoded."""


class GGUFFormatError(ValueError):
    """The bytes do not follow the GGUF layout (truncated or corrupt)."""


@dataclass
class TensorInfo:
    """One entry of the tensor table. ``shape`` is in GGUF order (fastest dimension first)."""

    name: str
    tensor_type: int
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int
    data_offset: int  # absolute offset in the file
    data: np.ndarray  # view into the memory map, in the layout gguf.quants.dequantize expects


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    file_size: int


class _Cursor:
    def __init__(self, buf: Any) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error:
            raise GGUFFormatError(f"header ends early at byte {self.pos}") from None
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.pos + n > len(self.buf):
            raise GGUFFormatError(f"string of {n} bytes runs past the end of the file at byte {self.pos}")
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def skip_strings(self, count: int) -> None:
        buf, pos, end = self.buf, self.pos, len(self.buf)
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > end:
                raise GGUFFormatError("string array runs past the end of the file")
            pos += 8 + unpack(buf, pos)[0]
        if pos > end:
            raise GGUFFormatError("string array runs past the end of the file")
        self.pos = pos

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype == _STRING and count > _SKIP_STRINGS_OVER:
                self.skip_strings(count)
                return SkippedArray(count)
            if etype in _SCALARS and etype != 7:
                dt = np.dtype(_SCALARS[etype])
                end = self.pos + dt.itemsize * count
                if end > len(self.buf):
                    raise GGUFFormatError("array runs past the end of the file")
                arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
                self.pos = end
                return arr.tolist() if count <= _SKIP_STRINGS_OVER else arr
            return [self.value(etype) for _ in range(count)]
        raise GGUFFormatError(f"unknown metadata value type {vtype}")


def _tensor_view(mm: np.ndarray, ttype: int, shape: tuple[int, ...], offset: int, n_bytes: int) -> np.ndarray:
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quant_shape_to_byte_shape

    np_shape = tuple(reversed(shape))  # torch order: slowest dimension first
    raw = mm[offset : offset + n_bytes]
    plain = {Q.F32: np.float32, Q.F16: np.float16, Q.F64: np.float64, Q.I8: np.int8, Q.I16: np.int16, Q.I32: np.int32, Q.I64: np.int64}
    if ttype in plain:
        return raw.view(plain[Q(ttype)]).reshape(np_shape)
    return raw.reshape(quant_shape_to_byte_shape(np_shape, Q(ttype)))


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse a GGUF file's header. Raises GGUFFormatError on any malformed or missing byte."""

    p = Path(path)
    size = p.stat().st_size
    if size < 24:  # magic + version + two counts
        raise GGUFFormatError(f"file is too short to be GGUF ({size} bytes)")
    with open(p, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse(p, buf, size)
    finally:
        buf.close()


def _parse(p: Path, buf: Any, size: int) -> GGUFFile:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    cur = _Cursor(buf)
    if cur.unpack("<I") != 0x46554747:  # b"GGUF" little-endian
        raise GGUFFormatError("bad magic")
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise GGUFFormatError(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.unpack("<I"))
    table = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        if n_dims > 8:
            raise GGUFFormatError(f"tensor {name} has {n_dims} dimensions")
        shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
        table.append((name, cur.unpack("<I"), shape, cur.unpack("<Q")))
    align = int(metadata.get("general.alignment", 32))
    start = cur.pos + (-cur.pos) % align
    # Copy-on-write, not read-only: torch.from_numpy warns on a read-only array, and silencing
    # that per tensor with warnings.catch_warnings() in the conversion threads raced on the
    # process-wide warning filters (it could leave "ignore" behind for everyone). Nothing
    # writes to these pages; if anything did, the file would still not change.
    mm = np.memmap(p, mode="c", dtype=np.uint8) if size else np.zeros(0, np.uint8)
    tensors = []
    for name, ttype, shape, rel in table:
        try:
            qtype = GGMLQuantizationType(ttype)
        except ValueError:
            raise GGUFFormatError(f"tensor {name} has unknown type id {ttype}") from None
        block, type_size = GGML_QUANT_SIZES[qtype]
        n_elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
        n_bytes = n_elements * type_size // block
        offset = start + rel
        if offset + n_bytes > size:
            raise GGUFFormatError(f"file is truncated: tensor {name} needs bytes up to {offset + n_bytes}, file has {size}")
        tensors.append(TensorInfo(name, int(qtype), shape, n_elements, n_bytes, offset, _tensor_view(mm, qtype, shape, offset, n_bytes)))
    return GGUFFile(p, version, metadata, tensors, size)
