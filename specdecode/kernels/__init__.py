"""Skinny CPU matmuls for decode and verification rows (m = 1..16): each weight block is read once
for all rows, and every row's result is bit-identical whatever the number of rows.

Built from C++ on first use (build.py); runtime dispatch by CPU features: AVX-512 with VNNI and
BF16, AVX2 + FMA, or portable scalar code. `SPECDECODE_KERNEL_ISA=avx2|scalar` forces a lower
path; `SPECDECODE_KERNELS=off` turns them off (plain PyTorch layers).
"""

from .build import ISA_NAMES, active_isa, best_isa, extension
from . import gguf_pack
from .linear import (
    GGUF_LINEARS,
    PACKED_LINEARS,
    PackedGGUFLinear,
    PackedFloatLinear,
    PackedInt4Linear,
    PackedInt8Linear,
    can_pack,
    kernels_available,
    pack_float_linears,
    project,
)
from .probe import RowInvariance, probe_row_invariance
from .tuning import tuned_prefetch_distance

__all__ = [
    "RowInvariance", "probe_row_invariance", "GGUF_LINEARS", "PackedGGUFLinear", "gguf_pack",
    "ISA_NAMES", "active_isa", "best_isa", "extension", "PACKED_LINEARS", "PackedFloatLinear",
    "PackedInt4Linear", "PackedInt8Linear", "can_pack", "kernels_available", "pack_float_linears", "project",
    "tuned_prefetch_distance",
]
