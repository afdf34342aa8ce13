"""load_checkpoint(): a short name, .gguf file, HF directory or hub id -> weights + tokenizer.

The one entry point the rest of specdecode uses to get a model's shape (ModelArgs), its
weights under Hugging Face names in the dtype asked for, a transformers tokenizer, and the
ids that end a generation. GGUF conversions are cached (store.py), so only the first load
of a file pays for de-quantization and tokenizer construction.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from specdecode.config import ModelArgs
from specdecode.errors import ModelLoadError, ModelNotFoundError, SpecdecodeError

from . import hf, registry, store
from .gguf import ModelFileMissingError, load_gguf, open_gguf

__all__ = ["Checkpoint", "load_checkpoint", "resolve_source", "end_token_ids"]

# Tokens that end an assistant turn or a document in the model families we run: a chat
# model must stop at its turn end even when its metadata names another EOS.
_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "<end_of_turn>")


@dataclass
class Checkpoint:
    """Everything needed to build and drive a model; weights are already in the asked dtype."""

    args: ModelArgs
    state_dict: dict[str, torch.Tensor]
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    eos_token_ids: list[int]
    source: str
    load_seconds: float = 0.0
    from_cache: bool = False


def end_token_ids(tokenizer: Any, declared: list[int], vocab_size: int | None = None) -> list[int]:
    """Declared EOS ids, then the tokenizer's EOS, then known turn-end tokens it contains."""
    ids = list(declared)
    eos = getattr(tokenizer, "eos_token_id", None)
    ids += [eos] if isinstance(eos, int) else list(eos or [])
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in _END_TOKENS if t in vocab]
    out: list[int] = []
    for i in ids:
        if isinstance(i, int) and i >= 0 and i not in out and (vocab_size is None or i < vocab_size):
            out.append(i)
    return out


def resolve_source(source: str) -> tuple[str, Path]:
    """Classify a source: ("gguf", file) or ("hf", directory). Downloads hub ids.

    Order: an existing path wins, then a short name, then a hub id, so a local directory
    called ``org/name`` is never shadowed by the hub.
    """
    if not isinstance(source, str) or not source.strip():
        raise ModelNotFoundError("no model given: pass a short name, a .gguf file, an HF directory or a hub id")
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".safetensors":
            raise ModelNotFoundError(f"{source} is a weights file; pass the directory that holds it and its config.json")
        return "gguf", path
    if path.is_dir():
        if hf.is_hf_dir(path):
            return "hf", path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        if ggufs:
            raise ModelNotFoundError(f"{source} holds several .gguf files; pass one of them: {', '.join(g.name for g in ggufs)}")
        raise ModelNotFoundError(f"{source} is a directory without config.json or a .gguf file")
    if source in registry.MODELS:
        return "gguf", registry.resolve(source)
    if hf.looks_like_hub_id(source):
        return "hf", hf.hub_snapshot(source)
    known = ", ".join(sorted(registry.MODELS))
    if source.endswith(".gguf") or "/" in source or source.startswith((".", "~")):
        raise ModelFileMissingError(f"no such file or directory: {source}")
    raise ModelNotFoundError(f"unknown model {source!r}; known models: {known} (or pass a .gguf path, HF directory or hub id)")


def _gguf_tokenizer(path: Path, arch: str) -> Any:
    """The tokenizer described by a GGUF file's metadata.

    ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` first builds a model config with
    ``gguf.GGUFReader`` (30 s for Qwen's vocabulary on 2 cores); naming the tokenizer type
    skips that step and yields the same tokenizer (same ids, template, specials) in ~4 s.
    The documented route stays as the fallback.
    """
    from transformers import AutoTokenizer

    d, name = str(path.parent), path.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES
            from transformers.tokenization_utils_tokenizers import TokenizersBackend

            if arch in TOKENIZER_MAPPING_NAMES:
                return AutoTokenizer.from_pretrained(d, gguf_file=name, tokenizer_type=arch)
            return TokenizersBackend.from_pretrained(d, gguf_file=name)
        except Exception:
            pass
        try:
            return AutoTokenizer.from_pretrained(d, gguf_file=name)
        except Exception as e:  # transformers raises many kinds for tokenizers it cannot build
            msg = (str(e).strip().splitlines() or [""])[0]
            raise ModelLoadError(f"cannot build a tokenizer from {path}: {type(e).__name__}: {msg}") from None


def _save_entry(key: str, args: ModelArgs, sd: dict[str, torch.Tensor], tok: Any, eos: list[int], source: Path) -> None:
    def write(d: Path) -> None:
        store.save_safetensors(sd, d / "model.safetensors")
        (d / "config.json").write_text(json.dumps({**args.to_hf_config(), "eos_token_id": eos}, indent=1))
        tok.save_pretrained(str(d))
        marker = {"format": store.FORMAT_VERSION, "args": asdict(args), "eos_token_ids": eos, "source": store.file_identity(source)}
        (d / "specdecode.json").write_text(json.dumps(marker, indent=1))  # written last: marks the entry complete

    try:
        store.save_entry(key, write)
    except Exception as e:  # a full or read-only cache only costs speed next time
        warnings.warn(f"could not cache the converted model in {store.converted_dir()}: {type(e).__name__}: {e}", stacklevel=3)


def _load_entry(entry: Path) -> tuple[ModelArgs, dict[str, torch.Tensor], Any, list[int]]:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    marker = json.loads((entry / "specdecode.json").read_text())
    args = ModelArgs(**marker["args"])
    return args, load_file(str(entry / "model.safetensors")), AutoTokenizer.from_pretrained(str(entry)), marker["eos_token_ids"]


def _load_gguf_file(path: Path, dtype: torch.dtype) -> tuple[ModelArgs, dict[str, torch.Tensor], Any, list[int], bool]:
    key = store.converted_key(path, dtype)
    entry = store.entry_path(key)
    if entry is not None:
        try:
            return (*_load_entry(entry), True)
        except Exception as e:  # a damaged entry is rebuilt, not fatal
            warnings.warn(f"ignoring damaged cache entry {entry}: {type(e).__name__}", stacklevel=3)
            store.remove_entry(key)
    # Sequential on purpose: building the tokenizer in a thread next to the de-quantization
    # made the de-quantization 3x slower (its thousands of small torch ops queue for the GIL).
    header = open_gguf(path)
    ck = load_gguf(header, dtype)
    tok = _gguf_tokenizer(path, str(header.metadata.get("general.architecture")))
    eos = end_token_ids(tok, ck.eos_token_ids, ck.args.vocab_size)
    _save_entry(key, ck.args, ck.state_dict, tok, eos, path)
    return ck.args, ck.state_dict, tok, eos, False


def _load_hf_dir(directory: Path, dtype: torch.dtype) -> tuple[ModelArgs, dict[str, torch.Tensor], Any, list[int]]:
    from transformers import AutoTokenizer

    config = hf.read_config(directory)
    args = hf.model_args(config, directory)
    sd = hf.load_state_dict(directory, dtype)
    try:
        tok = AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:
        raise ModelLoadError(f"cannot load the tokenizer of {directory}: {type(e).__name__}") from None
    return args, sd, tok, end_token_ids(tok, hf.eos_from_configs(directory, config), args.vocab_size)


def load_checkpoint(source: str, dtype: torch.dtype = torch.bfloat16) -> Checkpoint:
    """Load a model by short name (see ``specdecode models list``), .gguf path, HF dir or hub id."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise SpecdecodeError(f"dtype must be a floating torch dtype, got {dtype!r}")
    t0 = time.perf_counter()
    kind, path = resolve_source(source)
    if kind == "gguf":
        args, sd, tok, eos, cached = _load_gguf_file(path, dtype)
    else:
        (args, sd, tok, eos), cached = _load_hf_dir(path, dtype), False
    return Checkpoint(args, sd, tok, eos, source, time.perf_counter() - t0, cached)
