"""Compile the C++ kernels once on the user's machine (PyTorch's C++ extension tooling) and pick
the instruction-set path at run time.

The sources are compiled without -march flags; each ISA file enables its own instructions with
`#pragma GCC target`, and `best_isa()` (the CPU's own feature flags) decides which path runs,
so one build serves every x86-64 CPU. Without a compiler the project falls back to plain
PyTorch with one warning, never a traceback; `build_error()` keeps the full error of a failed
build (the tests fail with it where a build is expected to work).
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

ISA_NAMES = ("scalar", "avx2", "avx512")  # index = the kernel's ISA code
ISA_ENV = "SPECDECODE_KERNEL_ISA"  # force a lower path: scalar | avx2 | avx512
DISABLE_ENV = "SPECDECODE_KERNELS"  # "off": plain PyTorch linear layers everywhere
CACHE_ENV = "SPECDECODE_KERNEL_CACHE"  # where the compiled module lives
_OFF = ("off", "0", "false", "no")  # values of $SPECDECODE_KERNELS that turn the kernels off
_SRC = Path(__file__).parent / "csrc"
_SOURCES = ("binding.cpp", "skinny_scalar.cpp", "skinny_avx2.cpp", "skinny_avx512.cpp",
            "gguf_scalar.cpp", "gguf_avx2.cpp", "gguf_avx512.cpp", "layer_ops.cpp",
            "decoder_layer.cpp")
_HEADERS = ("skinny.h", "attention.h", "gguf.h", "layer_ops.h", "avx2_tiles.h", "avx512_tiles.h", "ops.h")


def kernel_cache_root() -> Path:
    """$SPECDECODE_KERNEL_CACHE or ~/.cache/specdecode/kernels: the builds and the machine's
    tuning (tuning.py)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "specdecode", "kernels")
    return Path(root)


def _build_dir() -> Path:
    """$SPECDECODE_KERNEL_CACHE or ~/.cache/specdecode/kernels, one folder per source and torch version.

    Not under $SPECDECODE_CACHE on purpose: pointing the model cache elsewhere (tests do, per
    test) should not cost a fresh compile.
    """
    digest = hashlib.sha256()
    for name in (*_SOURCES, *_HEADERS):
        digest.update((_SRC / name).read_bytes())
    import torch

    digest.update(torch.__version__.encode())
    path = kernel_cache_root() / digest.hexdigest()[:16]
    path.mkdir(parents=True, exist_ok=True)
    return path


_build_error: str | None = None  # set by extension() when the compile failed


def disabled() -> bool:
    """$SPECDECODE_KERNELS turns the kernels off (off, 0, false, no)."""
    return os.environ.get(DISABLE_ENV, "").lower() in _OFF


def build_error() -> str | None:
    """The full error of a failed build (exception type, message, compiler output); None when the
    kernels are built or no build was tried (disabled, not x86-64)."""
    extension()
    return _build_error


# A build takes a minute or two on 2 cores. torch's loader serializes builds with a `lock` file in
# the build folder and waits for ever while it exists, so a build killed midway (Ctrl-C, a killed
# job) left every later process hanging without a word. A lock older than this is taken for such
# a leftover and removed, with a warning.
STALE_LOCK_S = 15 * 60


def clear_stale_lock(build_dir: Path, max_age_s: float = STALE_LOCK_S) -> bool:
    """Remove build_dir/lock if it is older than max_age_s seconds; True if it was removed."""
    import time

    lock = build_dir / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age <= max_age_s:
        return False
    warnings.warn(f"specdecode: removing a kernel build lock left {age / 60:.0f} minutes ago by a build that "
                  f"did not finish ({lock})", RuntimeWarning, stacklevel=2)
    lock.unlink(missing_ok=True)
    return True


@functools.cache
def extension():
    """The compiled module, or None (kernels disabled, not x86-64, or no working compiler)."""
    global _build_error
    if disabled():
        return None
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    # pip's ninja lives beside the interpreter, which need not be on PATH.
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    try:
        from torch.utils.cpp_extension import load

        build_dir = _build_dir()  # hashes every source: once
        clear_stale_lock(build_dir)
        return load(
            name="specdecode_skinny",
            sources=[str(_SRC / s) for s in _SOURCES],
            # -fopenmp: at::parallel_for is header code, serial without it. The module then needs
            # libgomp.so.1, which the loader resolves to the copy torch already loaded (one pool).
            extra_cflags=["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            verbose=False,
        )
    # no compiler / ninja / headers; SubprocessError: a compiler that fails torch's `--version` check
    except (OSError, RuntimeError, ImportError, SystemExit, subprocess.SubprocessError) as exc:
        _build_error = f"{type(exc).__name__}: {str(exc).strip()}"
        first = str(exc).strip().splitlines()[:1]
        warnings.warn(
            "specdecode: could not build the CPU kernels, using plain PyTorch linear layers "
            f"(slower multi-token passes, bf16 not row-invariant): {first[0] if first else type(exc).__name__}",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def best_isa() -> int:
    """The best path this CPU runs (0 scalar, 1 AVX2+FMA, 2 AVX-512 VNNI+BF16); -1 without kernels."""
    ext = extension()
    return -1 if ext is None else int(ext.best_isa())


def active_isa() -> int:
    """The path in use: the best one, or a lower one forced with SPECDECODE_KERNEL_ISA."""
    best = best_isa()
    forced = os.environ.get(ISA_ENV)
    if best < 0 or not forced:
        return best
    if forced not in ISA_NAMES:
        from ..errors import SpecdecodeError

        raise SpecdecodeError(f"{ISA_ENV}={forced!r}: choose from {', '.join(ISA_NAMES)}")
    return min(best, ISA_NAMES.index(forced))
