"""A quick check, at load, that a model's linear layers are row-invariant on this machine: the
same input row gives the same bits alone and inside a 5-row pass (what makes speculative and
batched output bit-identical to target-only output).

The packed kernels are row-invariant by construction; PyTorch's own GEMMs are on some CPUs
(AVX2 bf16, int8/int4 packs) and not on others (oneDNN bf16 on AVX-512-BF16), so the probe
runs the layers actually in use rather than trusting either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .build import ISA_NAMES, active_isa
from .linear import PACKED_LINEARS

PROBE_ROWS = 5


@dataclass(frozen=True)
class RowInvariance:
    row_invariant: bool
    kernel_path: str  # "avx512" | "avx2" | "scalar" | "PyTorch"
    layers_checked: int

    def describe(self) -> str:
        return f"kernels {self.kernel_path}; verify pass row-invariant: {'yes' if self.row_invariant else 'NO'}"


def _is_linear(m: nn.Module) -> bool:
    """nn.Linear, a packed layer, or a quantized one (specdecode.quant's: they carry `mode`; not
    imported here, so kernels and quant do not import each other)."""
    return type(m) is nn.Linear or isinstance(m, PACKED_LINEARS) or (
        getattr(m, "mode", None) in ("int8", "int4") and hasattr(m, "in_features"))


def _linear_layers(model: nn.Module) -> list[nn.Module]:
    """One layer of each (type, shape, dtype) kind: the first block's projections and the head."""
    seen, out = set(), []
    for m in model.modules():
        if _is_linear(m):
            dtype = m.weight.dtype if type(m) is nn.Linear else m.dtype
            key = (type(m), m.in_features, m.out_features, dtype)
            if key not in seen:
                seen.add(key)
                out.append(m)
    return out


@torch.inference_mode()
def probe_row_invariance(model: nn.Module) -> RowInvariance:
    layers = _linear_layers(model)
    g = torch.Generator().manual_seed(0)
    ok = True
    for layer in layers:
        dev = next(iter(layer.buffers()), None)
        dev = dev.device if dev is not None else next(layer.parameters()).device
        dtype = layer.weight.dtype if type(layer) is nn.Linear else layer.dtype
        x = torch.randn(PROBE_ROWS, layer.in_features, generator=g).to(device=dev, dtype=dtype)
        full = layer(x)
        ok = ok and all(torch.equal(layer(x[i : i + 1])[0], full[i]) for i in range(PROBE_ROWS))
    packed = bool(layers) and all(isinstance(m, PACKED_LINEARS) for m in layers)
    path = ISA_NAMES[active_isa()] if packed else "PyTorch" if not any(isinstance(m, PACKED_LINEARS) for m in layers) else "mixed"
    return RowInvariance(ok, path, len(layers))
