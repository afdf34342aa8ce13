"""How far ahead the integer kernels prefetch their weight stream, measured once per machine.

Each integer kernel prefetches its weights `prefetch_distance` bytes ahead into L2 (skinny.h):
a 4-bit block's decode keeps the out-of-order window busy with arithmetic, so the hardware
prefetcher alone keeps too few lines in flight. The best distance is the machine's, not the
code's: 16 KB on a 2-core Xeon (16 -> 25.6 GB/s at m = 1), no difference between 0 and 32 KB on
a Zen 3, 8 KB on a Zen 4 (the whole 1.5B GGUF model's T1 3.6-8% below 16 KB's, 4 KB 11-19%
above). So the first quantized load on a machine times a few distances on a stream of weights
far larger than any cache, in the formats and shapes a model has, and keeps the fastest in
`tuning.json` beside the compiled kernels (keyed by CPU, kernel path and threads; where that
folder cannot be written, each process measures again); later loads read it.
`SPECDECODE_PREFETCH_DISTANCE=<bytes>` (0: none) sets it without measuring. The scalar path does
not prefetch: nothing is measured there.

Only which distance is used changes, never a result: a prefetch moves no data the kernels read.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

from ..errors import SpecdecodeError
from .build import ISA_NAMES, active_isa, extension, kernel_cache_root

ENV = "SPECDECODE_PREFETCH_DISTANCE"
MAX_DISTANCE = 2**20  # bytes: far past any useful distance, and within the kernels' int
DEFAULT = 16384  # the kernels' own default (skinny.h), kept unless another is clearly faster
CANDIDATES = (8192, 12288, DEFAULT, 24576)  # bytes; below 8 KB a Zen 4 lost 11-58%
CLEAR_GAIN = 0.02  # another distance replaces the default only when its median is 2% faster
ROUNDS = 15  # interleaved rounds: every distance timed once per round, medians compared
STREAM_MB = 256  # weights streamed per timing: several times any L3, as a model's are
FILE = "tuning.json"
VERSION = 1


def machine_key() -> str:
    """The CPU (the cost model's signature: model name, cores, vector flags), the kernel path in
    use and the threads: what the best distance depends on."""
    from ..cost_model import cpu_signature

    return f"{cpu_signature()} | {ISA_NAMES[active_isa()]} | {torch.get_num_threads()} threads"


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


def measure(candidates: tuple[int, ...] = CANDIDATES, rounds: int = ROUNDS) -> dict[int, float]:
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
                    t0 = time.perf_counter()
                    for layer in layers:
                        layer(xs[layer.in_features])
                    if r:
                        times[d].append(time.perf_counter() - t0)
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
    """Atomic: a concurrent reader sees the old file or the new one (two processes measuring at
    once: the last one's file stays, each holding a measured entry)."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _from_env() -> int | None:
    raw = os.environ.get(ENV)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_DISTANCE:
        raise SpecdecodeError(f"{ENV} must be a number of bytes from 0 (no software prefetch) to {MAX_DISTANCE}, "
                              f"got {raw!r}")
    return value


def _valid(distance: object) -> bool:
    return type(distance) is int and 0 <= distance <= MAX_DISTANCE


def _cached_entry(data: dict, key: str) -> int | None:
    machines = data.get("machines")
    entry = machines.get(key) if isinstance(machines, dict) else None
    distance = entry.get("prefetch_distance") if isinstance(entry, dict) else None
    return distance if _valid(distance) else None


def known_prefetch_distance() -> int | None:
    """The distance a quantized load on this machine uses, without measuring anything: the
    environment's, else the one kept in tuning.json for this machine, else the kernels' current
    setting; None without the kernels. For reports."""
    ext = extension()
    if ext is None:
        return None
    try:
        forced = _from_env()
    except SpecdecodeError:
        forced = None  # the load that uses it says what is wrong
    if forced is not None:
        return forced
    cached = _cached_entry(_read(kernel_cache_root() / FILE), machine_key())
    return cached if cached is not None else int(ext.prefetch_distance())


def tuned_prefetch_distance(measure_if_unknown: bool = True) -> int | None:
    """Sets the kernels' prefetch distance for this machine (measured once, then read from
    tuning.json) and returns it; None without the kernels. Once per process and thread count.
    measure_if_unknown=False keeps the current setting where nothing is kept for this machine
    (tensor-parallel ranks, which would time each other's streams)."""
    return _tuned(torch.get_num_threads(), measure_if_unknown)


@functools.cache
def _tuned(threads: int, measure_if_unknown: bool) -> int | None:
    ext = extension()
    if ext is None:
        return None
    forced = _from_env()
    if forced is not None:
        ext.set_prefetch_distance(forced)
        return forced
    if active_isa() < 1:
        return int(ext.prefetch_distance())  # the scalar path does not prefetch
    path = kernel_cache_root() / FILE
    key = machine_key()
    distance = _cached_entry(_read(path), key)
    if distance is None and not measure_if_unknown:
        return int(ext.prefetch_distance())
    if distance is None:
        try:
            medians = measure()
        except (MemoryError, RuntimeError) as exc:  # no room for the stream: keep the default
            warnings.warn(f"specdecode: could not measure the kernels' prefetch distance ({exc}); "
                          f"using {DEFAULT} bytes", RuntimeWarning, stacklevel=2)
            ext.set_prefetch_distance(DEFAULT)
            return DEFAULT
        distance = choose(medians)
        data = _read(path)
        if not isinstance(data.get("machines"), dict):
            data = {"version": VERSION, "machines": {}}
        data["machines"][key] = {"prefetch_distance": distance,
                                 "medians_ms": {str(d): round(t * 1e3, 3) for d, t in medians.items()},
                                 "stream_mb": STREAM_MB}
        try:
            _write(path, data)
        except OSError:
            pass  # a cache that cannot be written: measured again by the next process, used now
    ext.set_prefetch_distance(distance)
    return distance
