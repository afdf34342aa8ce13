"""`--quantize gguf`: a GGUF file's linear layers run as shipped, on the skinny CPU kernels.

The other quantizations de-quantize the file to bf16 and quantize it again to our int4 / int8:
two roundings, and a model that is neither the file's nor llama.cpp's. Here each linear layer
keeps the file's own blocks (Q4_K, Q6_K, Q5_0, Q4_0, Q8_0: every value and scale, repacked into
tiles; kernels/gguf_pack.py), so a mixed file runs each tensor in its own format. A tensor in
another block format (Q5_K, Q4_1, IQ...) falls back to int8 from its de-quantized weights, the
closest format we have, and is reported; float tensors stay float. Embeddings, norms and biases
are the converted checkpoint's, as for every other mode.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from specdecode.config import ModelArgs
from specdecode.errors import SpecdecodeError

from .gguf import PERMUTED_ARCHS, hf_name, open_gguf, unpermute_qk
from .gguf_file import GGUFFile, TensorInfo

log = logging.getLogger(__name__)

MODE = "gguf"


@dataclass
class NativeReport:
    """What ran as shipped: layer count per GGML type, and the layers that fell back."""

    native: Counter = field(default_factory=Counter)
    fallback: dict[str, str] = field(default_factory=dict)  # layer name -> "Q5_K -> int8"

    def describe(self) -> str:
        parts = [f"{n} {t}" for t, n in sorted(self.native.items())]
        text = "GGUF as shipped: " + ", ".join(parts) if parts else "no layer in a GGUF block format we run"
        if self.fallback:
            kinds = Counter(self.fallback.values())
            text += "; re-quantized: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        return text


def _linear_tensors(reader: GGUFFile, args: ModelArgs) -> dict[str, TensorInfo]:
    """HF layer name (without .weight) -> the file's tensor; a tied lm_head reads the embedding."""
    out = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is not None and name.endswith(".weight"):
            out[name.removesuffix(".weight")] = t
    if args.tie_word_embeddings and "lm_head" not in out and "model.embed_tokens" in out:
        out["lm_head"] = out["model.embed_tokens"]
    return out


def _native_layer(linear: nn.Module, qualified: str, tensor: TensorInfo | None, args: ModelArgs,
                  report: NativeReport) -> nn.Module:
    """The replacement of one linear layer: the file's blocks, float as it is, or int8 (reported)."""
    from gguf import GGMLQuantizationType as Q

    from specdecode.kernels import GGUF_LINEARS, PackedFloatLinear, gguf_pack
    from specdecode.quant import quantize_linear

    weight = linear.weight if isinstance(linear, nn.Linear) else None
    N, K = linear.out_features, linear.in_features
    dtype = weight.dtype if weight is not None else linear.dtype
    qtype = None if tensor is None else int(tensor.tensor_type)
    if qtype is not None and tuple(reversed(tensor.shape)) == (N, K) and gguf_pack.supported(qtype, K):
        raw = torch.from_numpy(tensor.data.reshape(-1)).view(torch.uint8)  # the file's bytes (copy-on-write map)
        if args.arch in PERMUTED_ARCHS and qualified.endswith(("q_proj", "k_proj")):
            heads = args.num_attention_heads if qualified.endswith("q_proj") else args.num_key_value_heads
            raw = unpermute_qk(raw.view(N, -1), heads)  # whole rows move: blocks stay intact
        report.native[Q(qtype).name] += 1
        return GGUF_LINEARS[qtype](raw, N, K, linear.bias, dtype)
    if qtype in (Q.F32, Q.F16, Q.BF16) and weight is not None:
        return PackedFloatLinear(weight.detach(), linear.bias)
    kind = Q(qtype).name if qtype is not None else "no tensor"
    report.fallback[qualified] = f"{kind} -> int8"
    return quantize_linear(linear, "int8")


def native_copy(model: nn.Module, path: str | Path, args: ModelArgs) -> tuple[nn.Module, NativeReport]:
    """A twin of `model` whose linear layers run the GGUF file's own blocks; embeddings, norms and
    RoPE tables are the very same objects (no extra memory). The original is not changed."""
    return _replace_linears(model, path, args, in_place=False)


def make_native(model: nn.Module, path: str | Path, args: ModelArgs) -> NativeReport:
    """Replace `model`'s linear layers in place with the GGUF file's own blocks."""
    return _replace_linears(model, path, args, in_place=True)[1]


def _replace_linears(model: nn.Module, path: str | Path, args: ModelArgs, in_place: bool) -> tuple[nn.Module, NativeReport]:
    from specdecode.kernels import kernels_available
    from specdecode.quant import _linear_types, shallow_copy

    if not kernels_available():
        raise SpecdecodeError("--quantize gguf runs on specdecode's CPU kernels, which are not built here "
                              "(no C++ compiler, or SPECDECODE_KERNELS=off): use --quantize int8 or int4")
    if any(t.device.type != "cpu" for t in model.parameters()):
        raise SpecdecodeError("--quantize gguf runs on the CPU kernels: load the model with --device cpu")
    reader = open_gguf(path)
    tensors = _linear_tensors(reader, args)
    report = NativeReport()
    linear_types = _linear_types()

    def walk(module: nn.Module, prefix: str) -> nn.Module:
        if isinstance(module, linear_types):
            return _native_layer(module, prefix, tensors.get(prefix), args, report)
        if not any(isinstance(m, linear_types) for m in module.modules()):
            return module  # embedding, norms, RoPE: the very same module
        new = module if in_place else shallow_copy(module)
        for name, child in list(module._modules.items()):
            if child is not None:
                new._modules[name] = walk(child, f"{prefix}.{name}" if prefix else name)
        return new

    twin = walk(model, "")
    if report.fallback:
        log.warning("%s", report.describe())
    return twin, report
