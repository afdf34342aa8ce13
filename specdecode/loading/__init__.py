"""load_checkpoint(): a short name, .gguf file, HF directory or hub id -> weights + tokenizer.

The one entry point the rest of specdecode uses to get a model's shape (ModelArgs), its
weights under Hugging Face names in the dtype asked for, a transformers tokenizer, and the
ids that end a generation. GGUF conversions are cached (store.py), so only the first load
of a file pays for de-quantization and tokenizer construction.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from specdecode.config import ModelArgs
from specdecode.errors import ModelLoadError, ModelNotFoundError, SpecdecodeError

from . import hf_checkpoint, registry, store
from .gguf import ModelFileMissingError, load_gguf, open_gguf, read_args, special_token_ids

log = logging.getLogger(__name__)

__all__ = ["Checkpoint", "load_checkpoint", "resolve_source", "end_token_ids"]

# Tokens that end an assistant turn or a document in the model families we run: a chat
# model must stop at its turn end even when its metadata names another EOS.
_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "<end_of_turn>")


@dataclass
class Checkpoint:
    """Everything needed to build and drive a model; weights are already in the asked dtype.

    ``state_dict`` is None when loaded with ``weights=False``; ``weights()`` reads it then.
    ``key`` identifies the source's weights and the dtype (file identities, not contents):
    caches derived from them (quantized models) are named after it.
    """

    args: ModelArgs
    state_dict: dict[str, torch.Tensor] | None
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    eos_token_ids: list[int]
    source: str
    load_seconds: float = 0.0
    from_cache: bool = False
    key: str = ""
    read_weights: Callable[[], dict[str, torch.Tensor]] | None = field(default=None, repr=False, compare=False)

    def weights(self) -> dict[str, torch.Tensor]:
        """The state dict, read on first use if the checkpoint was loaded without it."""
        if self.state_dict is None:
            assert self.read_weights is not None
            self.state_dict = self.read_weights()
        return self.state_dict


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
        if hf_checkpoint.is_hf_dir(path):
            return "hf", path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        if ggufs:
            raise ModelNotFoundError(f"{source} holds several .gguf files; pass one of them: {', '.join(g.name for g in ggufs)}")
        raise ModelNotFoundError(f"{source} is a directory without config.json or a .gguf file")
    if source in registry.MODELS:
        return "gguf", registry.resolve(source)
    if hf_checkpoint.looks_like_hub_id(source):
        return "hf", hf_checkpoint.hub_snapshot(source)
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
        fast = _fast_gguf_tokenizer(d, name, arch)
        if fast is not None:
            return fast
        try:
            return AutoTokenizer.from_pretrained(d, gguf_file=name)
        except Exception as e:  # transformers raises many kinds for tokenizers it cannot build
            msg = (str(e).strip().splitlines() or [""])[0]
            raise ModelLoadError(f"cannot build a tokenizer from {path}: {type(e).__name__}: {msg}") from None


def _fast_gguf_tokenizer(d: str, name: str, arch: str) -> Any | None:
    """The tokenizer built without transformers' model-config step, or None (then the caller
    takes the documented route): this transformers lacks the internals used, or they fail."""
    try:
        from transformers import AutoTokenizer
        from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError as e:
        log.debug("no fast GGUF tokenizer route in this transformers version: %s", e)
        return None
    try:
        if arch in TOKENIZER_MAPPING_NAMES:
            return AutoTokenizer.from_pretrained(d, gguf_file=name, tokenizer_type=arch)
        return TokenizersBackend.from_pretrained(d, gguf_file=name)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        log.warning("fast tokenizer route failed for %s (%s: %s); trying transformers' generic route (slower)",
                    name, type(e).__name__, e)
        return None


def _save_entry(key: str, args: ModelArgs, sd: dict[str, torch.Tensor], tok: Any, eos: list[int], source: Path) -> None:
    def write(d: Path) -> None:
        store.save_safetensors(sd, d / "model.safetensors")
        (d / "config.json").write_text(json.dumps({**args.to_hf_config(), "eos_token_id": eos}, indent=1))
        tok.save_pretrained(str(d))
        marker = {"format": store.FORMAT_VERSION, "args": asdict(args), "eos_token_ids": eos, "source": store.file_identity(source)}
        (d / "specdecode.json").write_text(json.dumps(marker, indent=1))  # written last: marks the entry complete

    try:
        store.save_entry(key, write)
    except OSError as e:  # a full or read-only cache only costs speed next time
        warnings.warn(f"could not cache the converted model in {store.converted_dir()}: {type(e).__name__}: {e}", stacklevel=3)


def _damaged_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged entry raises: bad JSON or fields, bad safetensors, a missing file
    (a tokenizer that cannot be read is turned into a ValueError by _load_entry)."""
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, TypeError, SafetensorError)


def _load_entry(entry: Path, weights: bool) -> tuple[ModelArgs, dict[str, torch.Tensor] | None, Any, list[int]]:
    from transformers import AutoTokenizer

    marker = json.loads((entry / "specdecode.json").read_text())
    args = ModelArgs(**marker["args"])
    try:
        tok = AutoTokenizer.from_pretrained(str(entry))
    except OSError:
        raise
    except Exception as e:  # the tokenizers library raises plain Exception on a file it cannot parse
        raise ValueError(f"unreadable tokenizer: {type(e).__name__}: {e}") from e
    return args, _read_entry_weights(entry) if weights else None, tok, marker["eos_token_ids"]


def _read_entry_weights(entry: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(entry / "model.safetensors"))


def _load_gguf_file(path: Path, dtype: torch.dtype, weights: bool = True) -> Checkpoint:
    key = store.converted_key(path, dtype)
    entry = store.entry_path(key)
    if entry is not None:
        try:
            args, sd, tok, eos = _load_entry(entry, weights)
        except _damaged_errors() as e:  # a damaged entry is rebuilt, not fatal
            warnings.warn(f"ignoring damaged cache entry {entry}: {type(e).__name__}", stacklevel=3)
            store.remove_entry(key)
        else:
            def read_cached() -> dict[str, torch.Tensor]:
                try:
                    return _read_entry_weights(entry)
                except _damaged_errors() as e:
                    warnings.warn(f"ignoring damaged cache entry {entry}: {type(e).__name__}", stacklevel=4)
                    store.remove_entry(key)
                    return _load_gguf_file(path, dtype).weights()

            return Checkpoint(args, sd, tok, eos, str(path), from_cache=True, key=key, read_weights=read_cached)
    # Sequential on purpose: building the tokenizer in a thread next to the de-quantization
    # made the de-quantization 3x slower (its thousands of small torch ops queue for the GIL).
    # The tensors first: a broken file fails before any tokenizer work.
    header = open_gguf(path)
    sd = load_gguf(header, dtype).state_dict if weights else None
    args = read_args(header)
    tok = _gguf_tokenizer(path, str(header.metadata.get("general.architecture")))
    eos = end_token_ids(tok, special_token_ids(header)[1], args.vocab_size)

    def save(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _save_entry(key, args, state_dict, tok, eos, path)
        return state_dict

    return Checkpoint(args, None if sd is None else save(sd), tok, eos, str(path), key=key,
                      read_weights=lambda: save(load_gguf(header, dtype).state_dict))


def _load_hf_dir(directory: Path, dtype: torch.dtype, weights: bool = True) -> Checkpoint:
    from transformers import AutoTokenizer

    config = hf_checkpoint.read_config(directory)
    args = hf_checkpoint.model_args(config, directory)
    key = store.files_key(directory.name, [directory / "config.json", *hf_checkpoint.weight_files(directory)], dtype)
    sd = hf_checkpoint.load_state_dict(directory, dtype) if weights else None
    try:
        tok = AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:  # transformers raises many kinds for tokenizers it cannot build
        raise ModelLoadError(f"cannot load the tokenizer of {directory}: {type(e).__name__}") from None
    eos = end_token_ids(tok, hf_checkpoint.eos_from_configs(directory, config), args.vocab_size)
    return Checkpoint(args, sd, tok, eos, str(directory), key=key,
                      read_weights=lambda: hf_checkpoint.load_state_dict(directory, dtype))


def load_checkpoint(source: str, dtype: torch.dtype = torch.bfloat16, *, weights: bool = True) -> Checkpoint:
    """Load a model by short name (see ``specdecode models list``), .gguf path, HF dir or hub id.

    weights=False leaves ``state_dict`` None until ``Checkpoint.weights()`` is called: the
    shape, tokenizer and key are enough to find a quantized model in the cache.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise SpecdecodeError(f"dtype must be a floating torch dtype, got {dtype!r}")
    t0 = time.perf_counter()
    kind, path = resolve_source(source)
    ck = _load_gguf_file(path, dtype, weights) if kind == "gguf" else _load_hf_dir(path, dtype, weights)
    ck.source, ck.load_seconds = source, time.perf_counter() - t0
    return ck
