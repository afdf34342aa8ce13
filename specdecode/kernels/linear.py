"""Linear layers that run on the skinny CPU kernels (csrc/): float (bf16 / fp32), int8, int4.

Every output row is computed by the same operations whatever the number of rows, so a
verification pass over k+1 tokens gives each token exactly the bits a one-token step gives
(row-invariant by construction), and the weights are read once for all rows.

int8 and int4 layers quantize their activations per row in blocks of 32 (symmetric int8),
as llama.cpp and ONNX Runtime's int8-activation kernels do: the products then run on integer
dot-product instructions (AVX-512 VNNI, AVX2 vpmaddubsw) at about twice the bf16 rate.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from . import build, gguf_pack, pack


@functools.cache
def _isa() -> int:
    return build.active_isa()


def kernels_available() -> bool:
    return build.extension() is not None


# csrc/binding.cpp's Format; the GGUF block formats' codes are in gguf_pack.FORMATS.
FORMAT_CODES = {"f32": 0, "bf16": 1, "int8": 2, "int4": 3}


class PackedLinear(nn.Module):
    """Shared plumbing: flatten to (M, K); the kernel adds the bias and returns the input's dtype."""

    mode: str

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.act_dtype = dtype
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.act_dtype

    @property
    def format_code(self) -> int:
        raise NotImplementedError

    @property
    def activation_kind(self) -> str:
        """What the kernel feeds the layer: "int8" activations (every integer format, which can
        then share one call and one quantization of the input) or the float dtype's name."""
        return "int8"

    def spec(self) -> tuple:
        """What the C++ `linear` call takes: (format, packed weight, int8 scales, bias, N)."""
        # The bias goes as stored: the kernel adds it to its fp32 output (exact for bf16), so no
        # float copy is made on every call.
        return (self.format_code, self.packed, getattr(self, "scales", None), self.bias, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(x, self)[0]

    def dequantized_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001 - nn.Module hook
        # Checkpoints and the transformers twin see a plain (N, K) weight, whatever the layout.
        destination[prefix + "weight"] = self.dequantized_weight().to(self.act_dtype)
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias.detach()

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.buffers(), *self.parameters()))

    @staticmethod
    def buffer_layout(out_features: int, in_features: int, dtype: torch.dtype) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """name -> (shape, dtype) of each buffer this layer type holds for an (N, K) weight."""
        raise NotImplementedError

    @classmethod
    def from_buffers(cls, in_features: int, out_features: int, dtype: torch.dtype,
                     buffers: dict[str, torch.Tensor], bias: torch.Tensor | None = None) -> "PackedLinear":
        """A layer around buffers taken from one before (the loader's quantized-weights cache):
        nothing is quantized or packed again. Shapes and dtypes are checked first, because the
        kernels trust them. Raises ValueError on any mismatch."""
        if in_features % pack.BLOCK or in_features < 1 or out_features < 1:
            raise ValueError(f"{cls.__name__} cannot take a ({out_features}, {in_features}) weight")
        layout = cls.buffer_layout(out_features, in_features, dtype)
        if set(buffers) != set(layout):
            raise ValueError(f"{cls.__name__} holds buffers {sorted(layout)}, got {sorted(buffers)}")
        for name, (shape, dt) in layout.items():
            t = buffers[name]
            if tuple(t.shape) != shape or t.dtype != dt:
                raise ValueError(f"{cls.__name__}.{name}: expected {shape} {dt}, got {tuple(t.shape)} {t.dtype}")
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(f"{cls.__name__}.bias: expected ({out_features},), got {tuple(bias.shape)}")
        layer = cls.__new__(cls)
        PackedLinear.__init__(layer, in_features, out_features, bias, dtype)
        for name in layout:
            layer.register_buffer(name, buffers[name].contiguous())
        return layer

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, isa={build.ISA_NAMES[_isa()]}")


class PackedFloatLinear(PackedLinear):
    """bf16 or fp32 weights, activations in the same dtype, fp32 accumulation."""

    mode = "float"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        N, K = weight.shape
        if weight.dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"packed float weights must be bf16 or fp32, not {weight.dtype}")
        super().__init__(K, N, bias, weight.dtype)
        self.register_buffer("packed", pack.pack_float(weight.detach()))

    @property
    def format_code(self) -> int:
        return FORMAT_CODES["bf16" if self.act_dtype == torch.bfloat16 else "f32"]

    @property
    def activation_kind(self) -> str:
        return str(self.act_dtype)

    @staticmethod
    def buffer_layout(out_features: int, in_features: int, dtype: torch.dtype) -> dict:
        T = -(-out_features // pack.TILE)
        if dtype == torch.bfloat16:
            return {"packed": ((T, in_features // 2, pack.TILE, 2), dtype)}
        if dtype == torch.float32:
            return {"packed": ((T, in_features, pack.TILE), dtype)}
        raise ValueError(f"packed float weights must be bf16 or fp32, not {dtype}")

    def dequantized_weight(self) -> torch.Tensor:
        return pack.unpack_float(self.packed, self.out_features).float()


class PackedInt8Linear(PackedLinear):
    """int8 weights per output channel (w ~ q * scale[n]) x int8 activations per block of 32."""

    mode = "int8"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> None:
        N, K = weight.shape
        super().__init__(K, N, bias, dtype or weight.dtype)
        q, scales = pack.quantize_int8_rows(weight.detach())
        packed, padded_scales = pack.pack_int8(q, scales)
        self.register_buffer("packed", packed)
        self.register_buffer("scales", padded_scales)  # (N16,) float32

    format_code = FORMAT_CODES["int8"]

    @staticmethod
    def buffer_layout(out_features: int, in_features: int, dtype: torch.dtype) -> dict:
        T = -(-out_features // pack.TILE)
        return {"packed": ((T, in_features // pack.BLOCK, 8, pack.TILE, 4), torch.int8),
                "scales": ((T * pack.TILE,), torch.float32)}

    def dequantized_weight(self) -> torch.Tensor:
        q = pack.unpack_int8(self.packed, self.out_features)
        return q.float() * self.scales[: self.out_features, None]


class PackedInt4Linear(PackedLinear):
    """int4 weights in blocks of 32 (w ~ q * s + d, bf16 s and d) x int8 activations per block."""

    mode = "int4"
    group_size = pack.BLOCK

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> None:
        N, K = weight.shape
        super().__init__(K, N, bias, dtype or weight.dtype)
        self.register_buffer("packed", pack.pack_int4(*pack.quantize_int4_blocks(weight.detach())))

    format_code = FORMAT_CODES["int4"]

    @staticmethod
    def buffer_layout(out_features: int, in_features: int, dtype: torch.dtype) -> dict:
        T = -(-out_features // pack.TILE)
        return {"packed": ((T, in_features // pack.BLOCK, 320), torch.uint8)}

    def dequantized_weight(self) -> torch.Tensor:
        return pack.dequantize_int4_blocks(*pack.unpack_int4(self.packed, self.out_features)).float()


class PackedGGUFLinear(PackedLinear):
    """A GGUF tensor's own blocks (Q4_K, Q6_K, Q5_0, Q4_0, Q8_0) x int8 activations (a scale per block
    of 32, per super-block of 256 for the K-quants as in llama.cpp): the file's quantized values and
    scales, bit for bit, repacked into tiles (gguf_pack.py).

    One subclass per block format (GGUF_LINEARS), so that the quantized-model cache can name a
    layer's layout by its `mode` alone.
    """

    gguf: gguf_pack.GGUFFormat

    def __init__(self, raw: torch.Tensor, out_features: int, in_features: int, bias: torch.Tensor | None,
                 dtype: torch.dtype) -> None:
        """raw: the tensor's bytes as stored in the file ((N, row bytes) or flat uint8, rows in order)."""
        if in_features % self.gguf.block_k:
            raise ValueError(f"{self.gguf.name} needs in_features a multiple of {self.gguf.block_k}, got {in_features}")
        expected = out_features * in_features // self.gguf.block_k * self.gguf.file_bytes
        if raw.dtype != torch.uint8 or raw.numel() != expected:
            raise ValueError(f"{self.gguf.name} ({out_features}, {in_features}) weight: expected {expected} bytes, "
                             f"got {raw.numel()} {raw.dtype}")
        super().__init__(in_features, out_features, bias, dtype)
        self.register_buffer("packed", gguf_pack.pack_blocks(raw, self.gguf.ggml_type, out_features, in_features))

    @property
    def format_code(self) -> int:
        return self.gguf.code

    @classmethod
    def buffer_layout(cls, out_features: int, in_features: int, dtype: torch.dtype) -> dict:
        if in_features % cls.gguf.block_k:
            raise ValueError(f"{cls.gguf.name} needs in_features a multiple of {cls.gguf.block_k}")
        return {"packed": (cls.gguf.packed_shape(out_features, in_features), torch.uint8)}

    def dequantized_weight(self) -> torch.Tensor:
        return gguf_pack.dequantize_packed(self.packed, self.gguf.ggml_type, self.out_features, self.in_features)


# GGML type id -> its layer class, e.g. GGUF_LINEARS[12] is PackedQ4_KLinear with mode "gguf-q4_k".
GGUF_LINEARS: dict[int, type[PackedGGUFLinear]] = {
    t: type(f"Packed{f.name}Linear", (PackedGGUFLinear,), {"gguf": f, "mode": f"gguf-{f.name.lower()}",
                                                          "__module__": __name__})
    for t, f in gguf_pack.FORMATS.items()
}

PACKED_LINEARS = (PackedFloatLinear, PackedInt8Linear, PackedInt4Linear, PackedGGUFLinear)


def share_one_call(*layers: nn.Module) -> bool:
    """Whether the kernels take these layers in one call: packed layers fed the same activations
    (integer formats may differ, as Q4_K and Q6_K do in a GGUF file)."""
    first = layers[0]
    return all(isinstance(m, PackedLinear) and m.activation_kind == first.activation_kind for m in layers)


def project(x: torch.Tensor, *layers: nn.Module) -> list[torch.Tensor]:
    """[layer(x) for layer in layers], in one kernel call when they share one (share_one_call:
    q/k/v, gate/up): the input is converted or quantized once and one parallel region streams all
    their weights. Any other mix is called layer by layer."""
    first = layers[0]
    if not share_one_call(*layers):
        return [m(x) for m in layers]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, first.in_features)  # (M, K)
    ys = build.extension().linear(x2, [m.spec() for m in layers], _isa(), x.dtype)
    return [y.view(*lead, m.out_features) for y, m in zip(ys, layers)]


def can_pack(weight: torch.Tensor) -> bool:
    """Whether the kernels take this (N, K) weight here: CPU, kernels built, K a multiple of 32."""
    return weight.device.type == "cpu" and weight.shape[1] % pack.BLOCK == 0 and kernels_available()


def pack_float_linears(model: nn.Module) -> nn.Module:
    """Replace the model's float nn.Linear layers (bf16 / fp32, on CPU) with PackedFloatLinear.

    A tied lm_head gets its own packed copy; the embedding keeps the original.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.dtype in (torch.bfloat16, torch.float32) and can_pack(child.weight):
                setattr(parent, name, PackedFloatLinear(child.weight, child.bias))
    return model
