"""load_sharded(): specdecode.load() for one rank of a tensor-parallel group.

What each rank reads: the config and tokenizer in full; of the weights, only its slices
(shard.shard_plan) wherever the weights are safetensors: a Hugging Face directory, or the
converted copy of a GGUF file in $SPECDECODE_CACHE/converted (safetensors' get_slice reads the
slice's bytes from the memory-mapped file, nothing else). A GGUF file not converted yet is
de-quantized whole once (and cached, so the next start reads slices); then each full tensor is
dropped as soon as its slice is taken, so no rank holds the whole model after loading.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .shard import Getter, build_sharded, dict_getter, take
from .tp import TPGroup


def load_sharded(source: str, group: TPGroup, *, dtype: str | torch.dtype | None = "auto",
                 threads: int | None = None, quantize: str | None = None, packed: bool = True):
    """This rank's shard of the target `source` as a specdecode Model (its lm is the sharded
    Transformer, whose forward runs the group's collectives: call it on every rank alike)."""
    from ..errors import SpecdecodeError
    from ..kernels import probe_row_invariance
    from ..loader import Model, apply_load_options, resolve_dtype, tune_kernels
    from ..loading.tiny import TINY_NAMES, tiny_args, tiny_state_dict, tiny_tokenizer
    from ..quant import quantize_model
    from ..tokenizer import Tokenizer

    quantize = apply_load_options(threads, quantize)
    if quantize == "gguf":
        raise SpecdecodeError("--quantize gguf does not shard yet (--tp N): use --quantize int4 or int8 with --tp")
    dev = group.device
    dt = resolve_dtype(dtype, dev)
    t0 = time.perf_counter()
    from_cache = False
    if source in TINY_NAMES:
        hf_tok = tiny_tokenizer()
        args = tiny_args(len(hf_tok))
        state = tiny_state_dict(args, noise=0.02 if source.endswith("draft") else 0.0)
        state = {k: v.to(dt) for k, v in state.items()}
        names, get = list(state), dict_getter(state)
        tokenizer = Tokenizer(hf_tok, [hf_tok.convert_tokens_to_ids("<|im_end|>")])
    else:
        from ..loading import load_checkpoint

        ckpt = load_checkpoint(source, dt, weights=False)
        args, from_cache = ckpt.args, ckpt.from_cache
        names, get = _sliced_reader(ckpt, source, dt)
        tokenizer = Tokenizer(ckpt.tokenizer, ckpt.eos_token_ids)
    lm = build_sharded(args, names, get, group, dt, dev, packed=packed)
    if quantize:
        tune_kernels(dev, measure_if_unknown=False)  # ranks measuring at once would time each other
        # Not cached on disk as a single process's quantized model is: that cache holds whole models.
        quantize_model(lm, quantize, progress=group.leader)
    return Model(lm, tokenizer, source, dt, time.perf_counter() - t0, from_cache, quantize, probe_row_invariance(lm))


def _sliced_reader(ckpt, source: str, dtype: torch.dtype) -> tuple[list[str], Getter]:  # noqa: ANN001
    """(tensor names, getter): slices read from safetensors files where the weights are in them,
    else from the full state dict (de-quantized GGUF, PyTorch .bin files)."""
    from ..loading import hf_checkpoint, resolve_source, store

    entry = store.entry_path(ckpt.key) if ckpt.key else None
    files: list[Path] = []
    if entry is not None and (entry / "model.safetensors").is_file():
        files = [entry / "model.safetensors"]
    else:
        kind, path = resolve_source(source)
        if kind == "hf":
            files = hf_checkpoint.weight_files(path)
    if files and all(f.suffix == ".safetensors" and f.is_file() for f in files):
        return _safetensors_getter(files, dtype)
    state = ckpt.weights()
    ckpt.state_dict = None  # the getter drops each full tensor once sliced: nothing else may hold them
    return list(state), dict_getter(state)


def _safetensors_getter(files: list[Path], dtype: torch.dtype) -> tuple[list[str], Getter]:
    """Read slices straight from safetensors files (names as hf_checkpoint.load_state_dict gives them)."""
    from safetensors import safe_open

    where: dict[str, tuple[object, str]] = {}
    for f in files:
        handle = safe_open(str(f), framework="pt")
        for k in handle.keys():
            if "rotary_emb" in k:
                continue
            where[k if k.startswith(("model.", "lm_head.")) else "model." + k] = (handle, k)

    def get(name: str, spec) -> torch.Tensor:  # noqa: ANN001
        handle, key = where[name]
        if spec is None:
            t = handle.get_tensor(key)
        else:
            dim, start, stop, rows = spec
            sl = handle.get_slice(key)
            t = sl[start:stop] if dim == 0 else sl[:, start:stop]
            t = take(t, (dim, 0, stop - start, rows))  # pads the last vocabulary slice
        return t.to(dtype) if t.is_floating_point() else t

    return list(where), get
