"""What a benchmark ran on: CPU, cores, threads, memory, GPU, library versions, date."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_isa_flags() -> list[str]:
    """The CPU flags that decide the kernel paths and PyTorch's own (bf16 rounding, cost)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


def cpu_summary() -> str:
    """'AMD EPYC ... (avx2, avx512f, avx512_bf16, ...)': the CPU named beside every figure."""
    return f"{_cpu_model()} ({', '.join(cpu_isa_flags()) or 'no AVX2'})"


def kernel_summary() -> str:
    """The skinny kernels' path in use here, e.g. 'avx512', or why there is none."""
    from ..kernels import ISA_NAMES, active_isa

    isa = active_isa()
    return ISA_NAMES[isa] if isa >= 0 else "none (PyTorch linear layers)"


def kernel_prefetch() -> int | None:
    """The integer kernels' prefetch distance in bytes that quantized loads use on this machine
    (kernels/tuning.py; read, never measured here), or None without the kernels."""
    from ..kernels.tuning import known_prefetch_distance

    return known_prefetch_distance()


def _ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    import transformers

    import specdecode

    info: dict[str, Any] = {
        "date": now_iso(),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_isa_flags": cpu_isa_flags(),
        "kernel_isa": kernel_summary(),
        "kernel_prefetch_bytes": kernel_prefetch(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_bytes": _ram_bytes(),
        "gpu": None,
        "device": str(device) if device is not None else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "specdecode": specdecode.__version__,
        "git_commit": _git_commit(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_bytes": props.total_memory, "count": torch.cuda.device_count(),
                       "cuda": torch.version.cuda}
    return info
