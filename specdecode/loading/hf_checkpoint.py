"""Hugging Face checkpoints: a local directory (config.json + safetensors) or a hub id.

Weights are read with safetensors only: a ``.bin`` checkpoint is a pickle, and unpickling
a downloaded file can run arbitrary code, so ``.bin`` files are opened with
``torch.load(weights_only=True)``, which refuses anything but tensors.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from specdecode.config import SUPPORTED_ARCHS, ModelArgs
from specdecode.errors import ModelLoadError, ModelNotFoundError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# What a snapshot needs: config, weights, tokenizer files, generation config.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def is_hf_dir(path: str | os.PathLike[str]) -> bool:
    return Path(path, "config.json").is_file()


def looks_like_hub_id(source: str) -> bool:
    """``org/name`` that is not a local path: worth asking the hub about."""
    return bool(_HUB_ID.fullmatch(source)) and not Path(source).exists() and not source.endswith(".gguf")


def read_config(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {directory / 'config.json'}: {e}") from None


def model_args(config: dict[str, Any], where: Path) -> ModelArgs:
    """ModelArgs from a HF config dict; an architecture we cannot run is a clear error."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_ARCHS:
        raise ModelLoadError(
            f"{where} holds a {model_type!r} model; supported architectures: {', '.join(SUPPORTED_ARCHS)}"
        )
    try:
        return ModelArgs.from_hf_config(config)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{where}/config.json is inconsistent: {e}") from None


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files: the index's shards, else model*.safetensors, else *.bin."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / s for s in shards]
    files = sorted(directory.glob("model*.safetensors")) or sorted(directory.glob("*.safetensors"))
    return files or sorted(directory.glob("pytorch_model*.bin"))


def load_state_dict(directory: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All tensors of a HF checkpoint directory, in ``dtype``, under HF causal-LM names."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = weight_files(directory)
    if not files:
        raise ModelLoadError(f"{directory} has a config.json but no *.safetensors weights")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise ModelLoadError(f"{directory} is missing the shard {f.name} listed in its index")
        try:
            part = load_file(f) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True)
        except (SafetensorError, OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelLoadError(f"cannot read weights {f} (only plain tensors are accepted): {msg}") from None
        for k, v in part.items():
            if "rotary_emb" in k:  # RoPE tables are rebuilt by the model, not loaded
                continue
            if not k.startswith(("model.", "lm_head.")):  # saved from the bare backbone
                k = "model." + k
            sd[k] = v.to(dtype) if v.is_floating_point() else v
    return sd


def eos_from_configs(directory: Path, config: dict[str, Any]) -> list[int]:
    """End-of-generation ids declared by generation_config.json, then config.json."""
    ids: list[int] = []
    sources = [config]
    gen = directory / "generation_config.json"
    if gen.is_file():
        try:
            sources.insert(0, json.loads(gen.read_text()))
        except ValueError:
            pass
    for src in sources:
        v = src.get("eos_token_id")
        for i in [v] if isinstance(v, int) else (v or []):
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return ids


def hub_snapshot(repo_id: str) -> Path:
    """Local directory of a hub model: the local HF cache first, then a download.

    These machines usually reach no hub, so every failure becomes one line that says so
    and points at what does work offline (a local path or a short name).
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise ModelNotFoundError(f"cannot fetch {repo_id}: huggingface_hub is not installed") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=True))
    except (OSError, ValueError) as e:  # not in the local HF cache (LocalEntryNotFoundError is an OSError)
        log.debug("%s is not in the local Hugging Face cache (%s); trying a download", repo_id, type(e).__name__)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, etag_timeout=10))
    except Exception as e:
        from .registry import MODELS

        kind = type(e).__name__
        if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
            raise ModelNotFoundError(f"{repo_id} is not a model on the hub the machine can access ({kind})") from None
        raise ModelNotFoundError(
            f"cannot download {repo_id}: no model hub is reachable ({kind}); pass a local path "
            f"(.gguf file or HF directory) or a short name: {', '.join(sorted(MODELS))}"
        ) from None
