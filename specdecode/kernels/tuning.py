"""How far ahead the integer kernels prefetch their weight stream, measured once per machine.

Each integer kernel prefetches its weights `prefetch_distance` bytes ahead into L2 (skinny.h):
a 4-bit block's decode keeps the out-of-order window busy with arithmetic, so the hardware
prefetcher alone keeps too few lines in flight. The best distance is the machine's, not the
code's: 16 KB on a 2-core Xeon (16 -> 25.6 GB/s at m = 1), no difference between 0 and 32 KB on
a Zen 3, 8 KB on a Zen 4 (the whole 1.5B GGUF model's T1 4-8% below 16 KB's, 4 KB 11-19% above).
So the first quantized load on a machine times a few distances on a stream of weights far larger
than any cache, in the formats and shapes a model has, and keeps the fastest in `tuning.json` beside the compiled kernels (keyed
by CPU, kernel path and threads); later loads read it. `SPECDECODE_PREFETCH_DISTANCE=<bytes>`
(0: none) sets it without measuring.

Only which distance is used changes, never a result: a prefetch moves no data the kernels read.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import SpecdecodeError
from .build import ISA_NAMES, active_isa, extension, kernel_cache_root

ENV = "SPECDECODE_PREFETCH_DISTANCE"
DEFAULT = 16384  # the kernels' own default (skinny.h), kept unless another is clearly faster
CANDIDATES = (8192, 12288, DEFAULT, 24576)  # bytes; below 8 KB a Zen 4 lost 11-58%
CLEAR_GAIN = 0.02  # another distance replaces the default only when its median is 2% faster
ROUNDS = 15  # interleaved rounds: every distance timed once per round, medians compared
STREAM_MB = 256  # weights streamed per timing: several times any L3, as a model's are
FILE = "tuning.json"
VERSION = 1


def machine_key() -> str:
    """The CPU (its model name), the kernel path in use and the threads: what the best distance
    depends on."""
    name = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} | {ISA_NAMES[active_isa()]} | {torch.get_num_threads()} threads"


def choose(medians: dict[int, float]) -> int:
    """The distance to use from median seconds per distance: the fastest, unless the default is
    within CLEAR_GAIN of it (a VM's noise should not move a setting that was fine)."""
    best = min(medians, key=medians.get)
    if DEFAULT in medians and medians[DEFAULT] <= medians[best] * (1.0 + CLEAR_GAIN):
        return DEFAULT
    return best


def _stream_layers() -> list[torch.nn.Module]:
    """About STREAM_MB of weights in the formats and shapes of a quantized 1.5B model's layers
    (Q4_K attention-sized and MLP-sized, Q6_K down-sized, int4, int8), one call each, over
    buffers of constant bytes: no fp16 or bf16 scale is subnormal (none slows the float steps),
    and no output is ever read. The formats do not respond alike (int4 alone barely moved
    between 4 and 24 KB on a Zen 4, Q4_K's small layers moved 7%), so all of them are timed."""
    from .gguf_pack import FORMATS
    from .linear import GGUF_LINEARS, PackedInt4Linear, PackedInt8Linear

    by_name = {f.name: t for t, f in FORMATS.items()}
    kinds = [(GGUF_LINEARS[by_name["Q4_K"]], 1536, 1536), (GGUF_LINEARS[by_name["Q4_K"]], 8960, 1536),
             (GGUF_LINEARS[by_name["Q6_K"]], 1536, 8960), (PackedInt4Linear, 8960, 1536),
             (PackedInt8Linear, 1536, 1536)]
    layers = []
    for cls, n_out, k in kinds:
        layout = cls.buffer_layout(n_out, k, torch.float32)
        per_layer = sum(int(torch.Size(shape).numel()) * dt.itemsize for shape, dt in layout.values())
        count = max(1, STREAM_MB * 2**20 // len(kinds) // per_layer)
        for _ in range(count):
            bufs = {name: (torch.full(shape, 0x3C, dtype=dt) if dt != torch.float32 else torch.full(shape, 0.01))
                    for name, (shape, dt) in layout.items()}
            layers.append(cls.from_buffers(k, n_out, torch.float32, bufs))
    return layers


def measure(candidates: tuple[int, ...] = CANDIDATES, rounds: int = ROUNDS,
            clock: Callable[[], float] = time.perf_counter) -> dict[int, float]:
    """Median seconds of one pass over the stream (one row, as a decode step) per distance,
    every distance timed once per round in an order that alternates; the setting is restored."""
    ext = extension()
    if ext is None:
        raise SpecdecodeError("the CPU kernels are not built here: nothing to tune")
    layers = _stream_layers()
    xs = {k: torch.randn(1, k) for k in {layer.in_features for layer in layers}}
    before = ext.prefetch_distance()
    times: dict[int, list[float]] = {d: [] for d in candidates}
    try:
        with torch.inference_mode():
            for r in range(rounds + 1):  # round 0 warms up and is dropped
                for d in candidates if r % 2 else tuple(reversed(candidates)):
                    ext.set_prefetch_distance(d)
                    t0 = clock()
                    for layer in layers:
                        layer(xs[layer.in_features])
                    if r:
                        times[d].append(clock() - t0)
    finally:
        ext.set_prefetch_distance(before)
    return {d: statistics.median(v) for d, v in times.items()}


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("version") == VERSION else {}


def _write(path: Path, data: dict) -> None:
    """Atomic: a concurrent reader sees the old file or the new one."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _from_env() -> int | None:
    raw = os.environ.get(ENV)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise SpecdecodeError(f"{ENV} must be a number of bytes >= 0 (0: no software prefetch), got {raw!r}")
    return value


@functools.cache
def tuned_prefetch_distance() -> int | None:
    """Sets the kernels' prefetch distance for this machine (measured once, then read from
    tuning.json) and returns it; None without the kernels. Once per process."""
    ext = extension()
    if ext is None:
        return None
    forced = _from_env()
    if forced is not None:
        ext.set_prefetch_distance(forced)
        return forced
    path = kernel_cache_root() / FILE
    data = _read(path)
    key = machine_key()
    entry = data.get("machines", {}).get(key)
    if not (isinstance(entry, dict) and isinstance(entry.get("prefetch_distance"), int)):
        medians = measure()
        entry = {"prefetch_distance": choose(medians),
                 "medians_ms": {str(d): round(t * 1e3, 3) for d, t in medians.items()},
                 "stream_mb": STREAM_MB}
        data = _read(path) or {"version": VERSION, "machines": {}}
        data.setdefault("machines", {})[key] = entry
        try:
            _write(path, data)
        except OSError:
            pass  # a read-only cache: measured again next time, used now all the same
    ext.set_prefetch_distance(entry["prefetch_distance"])
    return entry["prefetch_distance"]
