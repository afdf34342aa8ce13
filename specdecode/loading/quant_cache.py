"""Cache of quantized, packed models: a second ``load(..., quantize=...)`` skips quantization.

Quantizing and packing the 1.5B model's linear layers takes tens of seconds on a small CPU;
reading the packed bytes back takes about one. After a fresh quantization on the CPU
kernels, every packed layer's buffers (and bias), plus the model's other tensors (embedding,
norms), go into one safetensors file under ``$SPECDECODE_CACHE/quantized/``, keyed by the
converted source (its file identity and dtype), the quantization options, this format's
version and a hash of the code that defines the packed layouts. Nothing is pickled: the
layer kinds and shapes are JSON in the file's header, with a CRC-32 of every tensor that is
checked on each read. A damaged or mismatching file is rebuilt with a warning; a cache that
cannot be written only warns. Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import warnings
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import store

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when this file's layout changes: old files are never read
_META = "specdecode.quantized"
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


class DamagedEntryError(ValueError):
    """A cache file that cannot be (or must not be) used: it is rebuilt."""


def _packed_kinds() -> dict[str, type]:
    from specdecode.kernels import GGUF_LINEARS, PackedFloatLinear, PackedInt4Linear, PackedInt8Linear

    kinds = {"float": PackedFloatLinear, "int8": PackedInt8Linear, "int4": PackedInt4Linear}
    return {**kinds, **{cls.mode: cls for cls in GGUF_LINEARS.values()}}


@functools.cache
def code_version() -> str:
    """Hash of the code whose output is cached (quantization, packing, layer layouts) + torch's version."""
    import specdecode.kernels.gguf_pack as gguf_pack
    import specdecode.kernels.linear as linear
    import specdecode.kernels.pack as pack
    import specdecode.loading.gguf_native as gguf_native
    import specdecode.quant as quant

    h = hashlib.sha256(torch.__version__.encode())
    for mod in (pack, gguf_pack, linear, quant, gguf_native):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:16]


def cache_key(source_key: str, mode: str, group_size: int, head: str) -> str:
    """The file name (without suffix) of a quantized model derived from a converted source."""
    ident = {"source": source_key, "mode": mode, "group_size": group_size, "head": head,
             "format": FORMAT_VERSION, "code": code_version()}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return f"{source_key}-{mode}-g{group_size}-head-{head}-{digest}"


def entry_path(key: str) -> Path:
    return store.quantized_dir() / f"{key}.safetensors"


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))


def _dtype_name(dt: torch.dtype) -> str | None:
    name = str(dt).removeprefix("torch.")
    return name if name in _DTYPES else None


def _collect(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, layers) to save, or None if the model holds a linear layer not on the kernels."""
    from specdecode.kernels.linear import PackedLinear
    from specdecode.quant import _linear_types

    packed_types = tuple(_packed_kinds().values())
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    seen: set[int] = set()

    def put(name: str, t: torch.Tensor) -> bool:
        if id(t) in seen or t.device.type != "cpu" or t.dtype not in store._ST_DTYPES:
            return False  # shared (tied) tensors, another device or dtype: not this cache's case
        seen.add(id(t))
        tensors[name] = t.detach()
        return True

    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(mod, PackedLinear):
            dtype = _dtype_name(mod.act_dtype)
            if type(mod) not in packed_types or dtype is None:
                return None
            layers[mod_name] = {"kind": mod.mode, "in": mod.in_features, "out": mod.out_features,
                                "dtype": dtype, "bias": mod.bias is not None}
            for b, t in [*mod._buffers.items(), *mod._parameters.items()]:
                if t is not None and not put(prefix + b, t):
                    return None
            continue
        if isinstance(mod, _linear_types()):
            return None  # e.g. a layer whose width the kernels cannot take
        for p, t in mod._parameters.items():
            if t is not None and not put(prefix + p, t):
                return None
        for b, t in mod._buffers.items():
            if t is not None and b not in mod._non_persistent_buffers_set and not put(prefix + b, t):
                return None
    return tensors, layers


def save(key: str, model: nn.Module) -> bool:
    """Write ``model`` (quantized, on the CPU kernels) under ``key``; False if it is not cacheable
    or the write failed (warned: a full or read-only cache only costs speed next time)."""
    got = _collect(model)
    if got is None:
        log.info("not caching %s: it has layers that are not on the CPU kernels", key)
        return False
    tensors, layers = got
    meta = {"format": FORMAT_VERSION, "key": key, "layers": layers, "crc32": {n: _crc(t) for n, t in tensors.items()}}
    path = entry_path(key)
    try:
        store.atomic_write(path, lambda tmp: store.save_safetensors(tensors, tmp, {_META: json.dumps(meta)}))
    except OSError as e:
        warnings.warn(f"could not cache the quantized model in {path.parent}: {type(e).__name__}: {e}", stacklevel=3)
        return False
    return True


def _read(path: Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_META])
            tensors = {n: f.get_tensor(n) for n in f.keys()}
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise DamagedEntryError(f"unreadable: {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION or meta.get("key") != key:
        raise DamagedEntryError("written for another key or format")
    crcs = meta.get("crc32")
    if not isinstance(crcs, dict) or set(crcs) != set(tensors):
        raise DamagedEntryError("the tensor list does not match its checksums")
    for n, t in tensors.items():
        if _crc(t) != crcs[n]:
            raise DamagedEntryError(f"checksum mismatch in {n}")
    return tensors, meta["layers"]


def _build(args: Any, tensors: dict[str, torch.Tensor], layers: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    """The Transformer of ``args`` with the saved packed layers and tensors (CPU), as build_transformer
    + quantize_model would have left it."""
    from specdecode.model import RotaryEmbedding, Transformer

    kinds = _packed_kinds()
    with torch.device("meta"):
        model = Transformer(args)
    for name, spec in layers.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if type(getattr(parent, attr, None)) is not nn.Linear or spec["kind"] not in kinds:
            raise DamagedEntryError(f"{name} is not a linear layer of this model")
        cls = kinds[spec["kind"]]
        prefix = f"{name}."
        bufs = {b[len(prefix):]: tensors.pop(b) for b in [n for n in tensors if n.startswith(prefix) and n != prefix + "bias"]}
        bias = tensors.pop(prefix + "bias", None)
        if spec["bias"] != (bias is not None):
            raise DamagedEntryError(f"{name}: bias mismatch")
        setattr(parent, attr, cls.from_buffers(spec["in"], spec["out"], _DTYPES[spec["dtype"]], bufs, bias))
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    missing = [m for m in missing if m.rpartition(".")[0] not in layers]
    if missing or unexpected:
        raise DamagedEntryError(f"tensors do not match the model: missing={missing[:4]} unexpected={unexpected[:4]}")
    # RoPE tables are not saved: rebuilt exactly as build_transformer does (float32, then cast).
    model.rope = RotaryEmbedding(args.head_dim, args.max_position_embeddings, args.rope_theta).to(dtype=dtype)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise DamagedEntryError("some weights are missing")
    return model.eval()


def load(key: str, args: Any, dtype: torch.dtype) -> nn.Module | None:
    """The cached quantized model for ``key`` (CPU), or None if there is none. A damaged file is
    removed with a warning (and None returned, so the caller quantizes afresh and rewrites it)."""
    path = entry_path(key)
    if not path.is_file():
        return None
    try:
        tensors, layers = _read(path, key)
        return _build(args, tensors, layers, dtype)
    except (DamagedEntryError, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as e:
        warnings.warn(f"ignoring damaged quantized cache entry {path}: {type(e).__name__}: {e}", stacklevel=3)
    try:
        path.unlink()
    except OSError as e:
        log.warning("could not remove the damaged cache entry %s: %s", path, e)
    return None
