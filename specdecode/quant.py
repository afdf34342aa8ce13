"""Quantization of the native Transformer's linear layers.

On CPU with specdecode.kernels built, int8 and int4 (groups of 32) become the kernels' packed
layers (int8 activations per block of 32, row-invariant; see quantize_linear and
docs/kernels.md). Otherwise, and what this docstring describes: weight-only quantization on
PyTorch's own kernels.

Decoding reads every weight once per step, so its speed is bytes of weights read per token:
int8 halves them and int4 (plus group scales) cuts them to about 0.28x of bf16. Activations
stay in the model's float dtype; only the stored weights change.

- int8: per-output-channel symmetric, w ~ q * scale[n], q in [-127, 127].
  CPU: torch._weight_int8pack_mm(x, q, scales). Elsewhere: F.linear(x, q.to(dtype)) * scales
  (the stock CUDA int8pack kernel is a naive one-thread-per-output loop; the plain formula is
  what torch.compile fuses into one kernel).
- int4: group-wise asymmetric along the input dimension, w ~ (q - 8) * scale + zero with
  q in [0, 15], one (scale, zero) per `group_size` inputs and output row (the tinygemm layout
  used by gpt-fast and torchao). CPU: torch._convert_weight_to_int4pack_for_cpu +
  torch._weight_int4pack_mm_for_cpu; CUDA: torch._convert_weight_to_int4pack +
  torch._weight_int4pack_mm (bf16 only, sm80+).

The packed int4 layout is device specific: quantize after moving the model to its device.
A layer whose shape an int4 kernel cannot take falls back to int8 (see `int4_group_size`).
The token embedding stays in float: a lookup reads one row per token, so quantizing it would
save memory but no time. A tied lm_head gets its own quantized copy and the embedding keeps
the float original.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("int8", "int4")
HEAD_CHOICES = ("same", "int8", "int4", "float")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # the only group sizes the int4 kernels take
INT4_INNER_K_TILES = 8  # CUDA tinygemm layout: 8 k-tiles of 16 per packed int32 group


# -- quantize / dequantize (pure tensor functions; used by the modules and the tests) ----------


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) float -> q (N, K) int8 in [-127, 127], scales (N,) float32, with w ~ q * scales[:, None]."""
    w = w.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # (N,)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)  # (N, K)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return q.float() * scales.float()[:, None]  # (N, K) float32


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) float -> q (N, K) int32 in [0, 15], scales_and_zeros (K/G, N, 2) float32.

    Asymmetric per group: q = round((w - min) / scale), scale = (max - min) / 15, and the stored
    zero is the value of the middle code 8, so w ~ (q - 8) * scale + zero, as the kernels compute.
    """
    N, K = w.shape
    if K % group_size:
        raise ValueError(f"in_features {K} is not a multiple of group_size {group_size}")
    wg = w.float().reshape(N, K // group_size, group_size)  # (N, K/G, G)
    lo, hi = wg.amin(dim=-1, keepdim=True), wg.amax(dim=-1, keepdim=True)  # (N, K/G, 1)
    scales = (hi - lo).clamp(min=1e-6) / 15.0
    q = torch.round((wg - lo) / scales).clamp(0, 15).to(torch.int32).reshape(N, K)
    zeros = lo + 8.0 * scales
    sz = torch.cat([scales, zeros], dim=-1).transpose(0, 1).contiguous()  # (K/G, N, 2)
    return q, sz


def dequantize_int4(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    N, K = q.shape
    sz = scales_and_zeros.float().transpose(0, 1)  # (N, K/G, 2)
    qg = q.float().reshape(N, K // group_size, group_size)
    return ((qg - 8.0) * sz[..., :1] + sz[..., 1:]).reshape(N, K)  # (N, K) float32


def int4_group_size(out_features: int, in_features: int, group_size: int, device: torch.device) -> int | None:
    """The group size an int4 kernel can use for this shape (the largest allowed one <= group_size
    dividing in_features, else the smallest dividing it), or None if int4 cannot take it."""
    n_mult, k_mult = (8, INT4_INNER_K_TILES * 16) if device.type == "cuda" else (16, 1)
    if out_features % n_mult or in_features % k_mult:
        return None
    fits = [g for g in INT4_GROUP_SIZES if in_features % g == 0]
    if not fits:
        return None
    below = [g for g in fits if g <= group_size]
    return max(below) if below else min(fits)


# -- modules --------------------------------------------------------------------------------


class _QuantLinear(nn.Module):
    """Shared plumbing: flatten to 2-D, cast to the kernel's dtype, add the float bias."""

    mode: str

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype the kernel runs in: that of the stored scales."""
        raise NotImplementedError

    def _mm(self, x: torch.Tensor) -> torch.Tensor:  # (M, K) in self.dtype -> (M, N)
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(self.dtype).contiguous()  # (M, K)
        y = self._mm(x2)  # (M, N)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def weight_bytes(self) -> int:
        """Bytes read per forward pass for the weights (packed values, scales, bias)."""
        return sum(t.numel() * t.element_size() for t in (*self.buffers(), *self.parameters()))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(_QuantLinear):
    """Per-output-channel symmetric int8 weights; y = (x @ q.T) * scales (+ bias)."""

    mode = "int8"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> None:
        N, K = weight.shape
        dtype = dtype or (weight.dtype if weight.is_floating_point() else torch.float32)
        super().__init__(K, N, bias)
        q, scales = quantize_int8(weight.detach())
        self.register_buffer("weight", q.to(weight.device))  # (N, K) int8
        self.register_buffer("scales", scales.to(device=weight.device, dtype=dtype))  # (N,)

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return torch._weight_int8pack_mm(x, self.weight, self.scales)
        return F.linear(x, self.weight.to(x.dtype)) * self.scales

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_int8(self.weight, self.scales)


class Int4Linear(_QuantLinear):
    """Group-wise asymmetric int4 weights in the kernel's packed layout (CPU or CUDA)."""

    mode = "int4"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, group_size: int = 128,
                 dtype: torch.dtype | None = None) -> None:
        N, K = weight.shape
        dev = weight.device
        dtype = dtype or (weight.dtype if weight.is_floating_point() else torch.float32)
        if dev.type == "cuda":
            dtype = torch.bfloat16  # the CUDA kernel only takes bf16 activations
        elif dev.type != "cpu":
            raise ValueError(f"int4 weights need a CPU or CUDA device, not {dev.type}")
        if int4_group_size(N, K, group_size, dev) != group_size:
            raise ValueError(f"int4 kernels cannot take a ({N}, {K}) weight with group_size {group_size} on {dev.type}")
        super().__init__(K, N, bias)
        self.group_size = group_size
        self.device_type = dev.type
        q, sz = quantize_int4(weight.detach(), group_size)
        if dev.type == "cpu":
            packed = torch._convert_weight_to_int4pack_for_cpu(q, INT4_INNER_K_TILES)  # (N, K/2) uint8
        else:
            q_u8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # (N, K/2), even k in the high nibble
            packed = torch._convert_weight_to_int4pack(q_u8, INT4_INNER_K_TILES)  # (N/8, K/128, 32, 4) int32
        self.register_buffer("weight", packed)
        self.register_buffer("scales_and_zeros", sz.to(device=dev, dtype=dtype))  # (K/G, N, 2)

    @property
    def dtype(self) -> torch.dtype:
        return self.scales_and_zeros.dtype

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != self.device_type:
            raise RuntimeError(f"int4 weights were packed for {self.device_type}; quantize after moving the model")
        if self.device_type == "cpu":
            return torch._weight_int4pack_mm_for_cpu(x, self.weight, self.group_size, self.scales_and_zeros)
        return torch._weight_int4pack_mm(x, self.weight, self.group_size, self.scales_and_zeros)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the kernel multiplies by, (N, K) float32: the identity fed through it.

        Exact on CPU (run in float32); on CUDA the kernel is bf16-only, so rounded to bf16.
        """
        dev = self.weight.device
        if self.device_type == "cpu":
            eye = torch.eye(self.in_features, dtype=torch.float32, device=dev)
            w_t = torch._weight_int4pack_mm_for_cpu(eye, self.weight, self.group_size, self.scales_and_zeros.float())
        else:
            eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=dev)
            w_t = self._mm(eye)
        return w_t.float().T.contiguous()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


QUANT_LINEARS = (Int8Linear, Int4Linear)


def _linear_types() -> tuple[type, ...]:
    """Every linear layer type this module can quantize or re-quantize."""
    from .kernels import PACKED_LINEARS

    return (nn.Linear, *QUANT_LINEARS, *PACKED_LINEARS)


def quantize_linear(linear: nn.Module, mode: str, group_size: int = 32) -> nn.Module:
    """A quantized replacement for an nn.Linear (or a re-quantized one for a quantized linear).

    On CPU, with the kernels built (specdecode.kernels), int8 and int4 in groups of 32 become
    packed layers that also quantize activations per block of 32 (integer dot products, one
    weight read for all rows of a verify pass, row-invariant). Otherwise PyTorch's weight-only
    kernels (Int8Linear, Int4Linear). int4 falls back to int8 when no int4 kernel takes the shape.
    """
    from .kernels import PACKED_LINEARS, PackedFloatLinear, PackedInt4Linear, PackedInt8Linear, can_pack

    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose from {', '.join(MODES)}")
    if isinstance(linear, (*QUANT_LINEARS, PackedInt8Linear, PackedInt4Linear)):
        if linear.mode == mode and (mode == "int8" or linear.group_size == group_size):
            return linear  # already in this format: share it
        weight, bias, dtype = linear.dequantized_weight(), linear.bias, linear.dtype
    elif isinstance(linear, PACKED_LINEARS):  # float weights in the kernels' layout
        weight, bias, dtype = linear.dequantized_weight().to(linear.dtype), linear.bias, linear.dtype
    elif isinstance(linear, nn.Linear):
        weight, bias, dtype = linear.weight.detach(), linear.bias, linear.weight.dtype
    else:
        raise TypeError(f"cannot quantize {type(linear).__name__}")
    if can_pack(weight) and (mode == "int8" or group_size == PackedInt4Linear.group_size):
        return PackedInt8Linear(weight, bias, dtype) if mode == "int8" else PackedInt4Linear(weight, bias, dtype)
    if mode == "int4":
        g = int4_group_size(weight.shape[0], weight.shape[1], group_size, weight.device)
        if g is not None:
            return Int4Linear(weight, bias, g, dtype)
    return Int8Linear(weight, bias, dtype)


def head_storage(mode: str, head: str) -> str:
    """What `head` means for a model quantized to `mode`: "int8", "int4" or "float" (the name a
    cache of quantized models keys it by: "same" with int4 and "int4" are one model)."""
    return _head_mode(mode, head) or "float"


def _head_mode(mode: str, head: str) -> str | None:
    if head not in HEAD_CHOICES:
        raise ValueError(f"unknown head option {head!r}; choose from {', '.join(HEAD_CHOICES)}")
    return None if head == "float" else mode if head == "same" else head


def quantize_model(model: nn.Module, mode: str, group_size: int = 32, head: str = "int8",
                   progress: bool = False) -> nn.Module:
    """Replace the linear layers of `model` in place with quantized ones; returns the model.

    mode: "int8" or "int4". group_size: int4 inputs per (scale, zero) pair (32, 64, 128 or 256;
    a layer whose width it does not divide uses the largest allowed size that does). 32 by
    default: GGUF checkpoints store weights in blocks of 32 (Q4_0/Q4_1/Q5_0/Q8_0, Q4_K sub-blocks),
    so int4 groups of 32 land on the source's own grid (measured on SmolLM2 Q4_1: top-1
    agreement with bf16 0.976 at g32 vs 0.713 at g64; docs/quantization.md).
    head: how to store lm_head: "int8" (default), "same" as the body, "int4" or "float". The
    head is the most sensitive layer (SmolLM2: int4 body + int4 head 0.84 agreement, + int8
    head 0.976), and int8 costs little extra. The embedding is never quantized (see above).
    progress: a progress bar on stderr (a terminal only) once quantizing has taken 2 s.
    """
    from tqdm.auto import tqdm

    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose from {', '.join(MODES)}")
    head_mode = _head_mode(mode, head)
    linear_types = _linear_types()
    todo = [(parent, name, child) for parent in list(model.modules())
            for name, child in list(parent.named_children()) if isinstance(child, linear_types)]
    for parent, name, child in tqdm(todo, desc=f"quantizing to {mode}", unit="layer", leave=False, delay=2.0,
                                    disable=None if progress else True):
        m = head_mode if name == "lm_head" else mode
        if m is not None:
            setattr(parent, name, quantize_linear(child, m, group_size))
    return model


def shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object with `module`'s parameters, buffers, children and attributes, whose own
    tables of parameters, buffers and children can be changed without touching `module`'s: the
    base of every twin that shares all but a few layers (quantized_copy, the GGUF-native load,
    a draft's cut vocabulary)."""
    new = copy.copy(module)  # shallow: the same tensors and attributes
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    return new


def quantized_copy(model: nn.Module, mode: str, group_size: int = 32, head: str = "int8") -> nn.Module:
    """A quantized twin of `model` that shares everything but the linear layers with it.

    The embedding, norms, RoPE tables and config are the same objects (no extra memory); only
    the linear weights are new (about 0.28x of bf16 for int4). The original is not changed.
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose from {', '.join(MODES)}")
    head_mode = _head_mode(mode, head)
    linear_types = _linear_types()

    def clone(module: nn.Module, name: str) -> nn.Module:
        if isinstance(module, linear_types):
            m = head_mode if name == "lm_head" else mode
            return module if m is None else quantize_linear(module, m, group_size)
        if not any(isinstance(m, linear_types) for m in module.modules()):
            return module  # embedding, norms, RoPE: the very same module
        new = shallow_copy(module)
        new._modules = {n: (None if c is None else clone(c, n)) for n, c in module._modules.items()}
        return new

    return clone(model, "")


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: linear layers (packed values, scales, biases) and
    norms. The embedding table counts only where it doubles as a float lm_head (a lookup reads one
    row); RoPE tables (one row per token) are left out."""
    skip = {id(t) for t in getattr(model, "rope", nn.Module()).buffers()}
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    head = getattr(model, "lm_head", None)
    if embed is not None and not (isinstance(head, nn.Linear) and head.weight is embed.weight):
        skip.add(id(embed.weight))
    total, seen = 0, set()
    for t in (*model.parameters(), *model.buffers()):
        if id(t) not in seen and id(t) not in skip:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
