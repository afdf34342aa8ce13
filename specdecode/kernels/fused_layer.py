"""A whole decoder layer in one C++ call (csrc/decoder_layer.cpp), where the kernels run all of it,
and a model's whole stack of layers in one call (`forward_stack`).

At decode sizes model.py's DecoderLayer spends about as long dispatching its ~30 small calls as
its matmuls take on a small model (Qwen2.5-0.5B int4 on a Zen 3: 8 of 21 ms per step). The C++
layer calls the same functions in the same order, so it gives the very bits of the Python layer
(tests/test_fused_layer.py); the Python layer stays the reference and the path for everything
the C++ one does not take (GPUs, float16, other linear layers such as tensor parallelism's,
masks, a batch of several sequences in one cache).

The stack (csrc LayerStack) holds every layer's weights converted once: a pass then costs one
call instead of one per layer, each with its Python checks and argument conversions (~35 us a
layer, ~1 ms of a 1.5B model's step on a Zen 4). It is rebuilt when any layer's weights change.

SPECDECODE_FUSED_LAYER=0 turns both off (to compare with the Python layer).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn.modules import module as _module

from ..cache import KVCache
from ..ragged import RaggedBatch
from . import build
from .linear import _isa, share_one_call

enabled = os.environ.get("SPECDECODE_FUSED_LAYER", "1") != "0"

_DTYPES = (torch.float32, torch.bfloat16)


def _norm_weight(norm: nn.Module, dtype: torch.dtype) -> torch.Tensor | None:
    w = getattr(norm, "weight", None)
    fits = isinstance(w, torch.Tensor) and hasattr(norm, "eps") and w.dtype == dtype and w.device.type == "cpu"
    return w if fits else None


def _static_args(layer: nn.Module, dtype: torch.dtype) -> tuple | None:
    """The layer's weights as the C++ call takes them, or None where it does not apply; cached on
    the layer. Building them takes ~170 us of module attribute lookups per layer (as long as the
    layer's small ops), so they are kept, keyed by the identity of every module and tensor they
    come from: a replaced layer, buffer or norm weight (quantization, .to()) gives a new key, and
    the entry holds those objects, so no new one can take an old one's id."""
    attn, mlp = layer._modules["self_attn"], layer._modules["mlp"]
    am, mm = attn._modules, mlp._modules
    linears = (am["q_proj"], am["k_proj"], am["v_proj"], am["o_proj"], mm["gate_proj"], mm["up_proj"], mm["down_proj"])
    norms = (layer._modules["input_layernorm"], layer._modules["post_attention_layernorm"])
    sources: list = [*linears, *norms]
    for m in (*linears, *norms):
        sources.extend(m._buffers.values())
        sources.extend(m._parameters.values())
    key = (dtype, *map(id, sources), *(getattr(n, "eps", None) for n in norms))
    cached = layer.__dict__.get("_fused_layer_args")
    if cached is not None and cached[0] == key:
        return cached[2]
    layer.__dict__["_fused_layer_args"] = (key, sources, _build_static_args(attn, mlp, norms, dtype))
    return layer.__dict__["_fused_layer_args"][2]


def _build_static_args(attn: nn.Module, mlp: nn.Module, norms: tuple, dtype: torch.dtype) -> tuple | None:
    # The four calls of the layer: q/k/v, o_proj, gate/up, down_proj.
    calls = ((attn.q_proj, attn.k_proj, attn.v_proj), (attn.o_proj,), (mlp.gate_proj, mlp.up_proj), (mlp.down_proj,))
    if attn.head_dim % 16 or not all(share_one_call(*layers) for layers in calls):
        return None
    w_post = _norm_weight(norms[1], dtype)
    if isinstance(norms[0], nn.Identity):  # a draft head's layer (heads/model.py): no norm before attention
        w_in = torch.empty(0, dtype=dtype)
    else:
        w_in = _norm_weight(norms[0], dtype)
        if w_in is None or norms[0].eps != norms[1].eps:
            return None
    if w_post is None:
        return None
    return (w_in, w_post, norms[1].eps, *([m.spec() for m in layers] for layers in calls),
            attn.n_heads, attn.n_kv_heads, attn.head_dim**-0.5)


def _cache_fits(cache: object, dtype: torch.dtype) -> bool:
    # The exact class: a subclass may keep its entries elsewhere (its own update()).
    return type(cache) is KVCache and cache.keys[0].dtype == dtype and cache.keys[0].shape[0] == 1


def _extension_for(x: torch.Tensor, cos: torch.Tensor):  # noqa: ANN202 - the extension module
    """The kernels' extension where the C++ layer can take x (1, T, D), else None."""
    if not enabled or torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype not in _DTYPES:
        return None
    if x.dim() != 3 or x.shape[0] != 1 or not x.is_contiguous() or cos.dtype != x.dtype:
        return None
    return build.extension()


def _segments(cache: KVCache | RaggedBatch, x: torch.Tensor, layer: int | None = None) -> list | None:
    """The pass's requests as the C++ calls take them, (keys, values, length, start, end, tree):
    every layer's buffers (layer None: the stack) or layer `layer`'s; None where a cache does not fit."""
    parts = cache.segments if isinstance(cache, RaggedBatch) else [(cache, 0, x.shape[1], None)]
    if not all(_cache_fits(c, x.dtype) for c, _, _, _ in parts):
        return None
    if layer is None:
        return [(c.keys, c.values, c.length, a, b, tree) for c, a, b, tree in parts]
    return [(c.keys[layer], c.values[layer], c.length, a, b, tree) for c, a, b, tree in parts]


def _global_hooks() -> bool:
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks)


def _stack(model: nn.Module, layers: nn.ModuleList, dtype: torch.dtype, ext):  # noqa: ANN001, ANN202
    """The model's LayerStack for `dtype`, or None where some layer does not fit the C++ layer or
    has hooks (their callers expect the layer's module to run).
    Cached on the model, keyed by the identity of each layer's cached arguments: a layer whose
    weights changed gets new arguments (_static_args), and so the model a new stack."""
    args = []
    for layer in layers:
        if layer._forward_hooks or layer._forward_pre_hooks:  # a layer someone watches runs as a module
            return None
        a = _static_args(layer, dtype)
        if a is None:
            return None
        args.append(a)
    key = (dtype, *map(id, args))
    cached = model.__dict__.get("_fused_stack")
    if cached is not None and cached[0] == key:
        return cached[2]
    stack = ext.LayerStack(args)
    model.__dict__["_fused_stack"] = (key, args, stack)  # args kept: no new tuple can take an old id
    return stack


def forward_stack(model: nn.Module, layers: nn.ModuleList, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  cache: KVCache | RaggedBatch, capture: tuple[int, ...] = ()
                  ) -> tuple[torch.Tensor, dict[int, torch.Tensor]] | None:
    """Every layer of `layers` on x (1, T, D) in one call: (the output (1, T, D), {i: the hidden
    states entering layer i (T, D)} for i in capture), or None where the C++ stack does not apply
    (the caller then runs the layers one by one)."""
    ext = _extension_for(x, cos)
    if ext is None or _global_hooks():
        return None
    segments = _segments(cache, x)
    if segments is None:
        return None
    stack = _stack(model, layers, x.dtype, ext)
    if stack is None:
        return None
    out = stack.forward(x[0], cos, sin, segments, _isa(), list(capture))
    return out[0][None], dict(zip(capture, out[1:]))


def forward(layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            cache: KVCache | RaggedBatch) -> torch.Tensor | None:
    """layer(x, cos, sin, cache, mask=None) in one call, or None where the C++ layer does not
    apply (the caller then runs the Python layer). x (1, T, D)."""
    ext = _extension_for(x, cos)
    args = _static_args(layer, x.dtype) if ext is not None else None
    if args is None:
        return None
    w_in, w_post, eps, qkv, o, gate_up, down, heads, kv_heads, scale = args
    segments = _segments(cache, x, layer._modules["self_attn"].layer_idx)
    if segments is None:
        return None
    y = ext.decoder_layer(x[0], w_in, w_post, eps, qkv, o, gate_up, down, cos, sin, segments, heads, kv_heads, scale,
                          _isa())  # (T, D)
    return y[None]
