"""On-disk cache: assembled model files and converted (de-quantized) checkpoints.

De-quantizing a 1.5B GGUF takes tens of seconds on a small CPU; reading the same weights
back from safetensors takes about one. So the first load of a GGUF file writes its
converted weights, config and tokenizer here, keyed by the source file's identity and the
dtype, and later loads read them back. Every write goes to a temporary name first and is
renamed into place, so an interrupted write never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1  # bump when the layout or the conversion changes: old entries are ignored


def cache_dir() -> Path:
    """The root of specdecode's cache: ``$SPECDECODE_CACHE`` or ``~/.cache/specdecode``.

    Read at call time (not import time) so tests and users can redirect it per process.
    """
    root = os.environ.get("SPECDECODE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "specdecode")
    return Path(root)


def models_dir() -> Path:
    """Where assembled model files (and their "verified" sidecars) live."""
    return cache_dir() / "models"


def converted_dir() -> Path:
    """Where converted checkpoints live, one sub-directory per (source, dtype)."""
    return cache_dir() / "converted"


def quantized_dir() -> Path:
    """Where quantized, packed models live, one .safetensors file per (source, dtype, format)."""
    return cache_dir() / "quantized"


def file_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Cheap identity of a file (no hashing): absolute path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def converted_key(source: str | os.PathLike[str], dtype: torch.dtype) -> str:
    """Key of a converted checkpoint: changes whenever the source file or the dtype does."""
    ident = file_identity(source)
    ident.update(dtype=str(dtype), format=FORMAT_VERSION)
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    return f"{Path(source).stem}-{str(dtype).removeprefix('torch.')}-{digest}"


def files_key(name: str, files: list[Path], dtype: torch.dtype) -> str:
    """Like converted_key, for a source made of several files (an HF checkpoint directory)."""
    # A missing file is the reader's error to report (it says which shard); here it only changes the key.
    ident = {"files": [file_identity(f) if f.is_file() else {"missing": str(f)} for f in files],
             "dtype": str(dtype), "format": FORMAT_VERSION}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    return f"{name}-{str(dtype).removeprefix('torch.')}-{digest}"


def atomic_write(path: Path, write: Any) -> None:
    """Create ``path`` via ``write(tmp_path)`` on a temp name in the same directory + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file via a temp file + rename (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def entry_path(key: str) -> Path | None:
    """The directory of a complete converted entry, or None (complete = marker file present)."""
    d = converted_dir() / key
    return d if (d / "specdecode.json").is_file() else None


def save_entry(key: str, write: Any) -> Path:
    """Create entry ``key`` atomically: ``write(tmp_dir)`` fills a temp dir that is then renamed.

    The marker ``specdecode.json`` must be written by ``write``; an entry without it is
    never used. If another process finished the same entry first, its copy is kept.
    """
    root = converted_dir()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}.", suffix=".tmp"))
    final = root / key
    try:
        write(tmp)
        if entry_path(key) is not None:
            return final  # another process won the race; its copy is as good as ours
        if final.exists():  # a stale, incomplete entry (no marker)
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError:
        if entry_path(key) is None:
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def remove_entry(key: str) -> None:
    """Drop an entry (e.g. found damaged): renamed away first, so no reader sees it half-deleted."""
    d = converted_dir() / key
    if not d.exists():
        return
    try:
        trash = Path(tempfile.mkdtemp(dir=converted_dir(), prefix=f".{key}.", suffix=".tmp"))
        os.replace(d, trash / "old")
    except OSError as e:  # a read-only cache: the entry stays, and is found damaged again next time
        warnings.warn(f"could not remove cache entry {d}: {e}", stacklevel=2)
        return
    shutil.rmtree(trash, ignore_errors=True)


_ST_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
              torch.int8: "I8", torch.uint8: "U8", torch.int32: "I32", torch.int64: "I64"}


def save_safetensors(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a .safetensors file tensor by tensor (no whole-file buffer in RAM).

    ``safetensors.torch.save_file`` serialises everything into one buffer first; streaming
    the tensors was 1.5x faster for the 3 GB bf16 Qwen 1.5B and halves the peak memory.
    The layout is the spec's: u64 header size, JSON header (8-byte aligned), raw bytes.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for name, t in state_dict.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in state_dict.values():
            f.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
