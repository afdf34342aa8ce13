"""One C++ call each for the small steps of a decoder layer around its matmuls (csrc/layer_ops.cpp):
RMSNorm, the residual add fused with the next RMSNorm, and rotary embedding in place.

At decode sizes the Python versions' eight to twelve PyTorch ops cost microseconds of dispatch
each, milliseconds per step over a model's layers, while their arithmetic costs nanoseconds. The
C++ versions round as the Python ones do (RoPE gives the same bits; RMSNorm sums its squares in
float64 in a fixed order), give each row a result that depends on that row alone, and are the
same code on every kernel path. They have no autograd: callers use them only with gradients off.
"""

from __future__ import annotations

import torch

from . import build

_DTYPES = (torch.float32, torch.bfloat16)


def applies(*tensors: torch.Tensor) -> bool:
    """Whether the fused ops take these tensors: CPU, one dtype (float32 or bf16), no gradients,
    kernels built."""
    first = tensors[0]
    return (first.device.type == "cpu" and first.dtype in _DTYPES and not torch.is_grad_enabled()
            and all(t.device.type == "cpu" and t.dtype == first.dtype for t in tensors[1:])
            and build.extension() is not None)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., D), weight (D,) -> weight * norm(x) in x's dtype."""
    return build.extension().rms_norm(x.contiguous(), weight.contiguous(), eps)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + delta, rms_norm(x + delta)), the sum rounded to x's dtype first as `x + delta` is."""
    s, out = build.extension().add_rms_norm(x.contiguous(), delta.contiguous(), weight.contiguous(), eps)
    return s, out


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> None:
    """Rotary embedding in place: x (B, T, heads * hd) contiguous, cos/sin (B, 1, T, hd) in x's dtype."""
    hd = cos.shape[-1]
    build.extension().rope_(x, cos.reshape(-1, hd).contiguous(), sin.reshape(-1, hd).contiguous(), heads)
