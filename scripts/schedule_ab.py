"""One process, three schedules of the same kernels, timed in turns: the whole model's T(m) with a
static split of each product's tiles and the 16 KB default prefetch distance, with threads taking
each other's tiles at 16 KB, and with both tiles taken and this machine's prefetch distance
(kernels/tuning.py). The results are the same bits every way (tests); only the time can differ.

    .venv/bin/python scripts/schedule_ab.py qwen2.5-coder-1.5b --quantize gguf --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from tqdm.auto import tqdm

import specdecode
from specdecode.bench.machine import cpu_summary, kernel_prefetch
from specdecode.kernels import ISA_NAMES, active_isa, extension

from kernel_tm import model_stepper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="qwen2.5-coder-1.5b")
    ap.add_argument("--quantize", default="gguf", choices=["gguf", "int4", "int8"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,2,4,8", help="comma-separated m")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None, help="folder for schedule_ab.json / .md")
    a = ap.parse_args()
    ext = extension()
    if ext is None:
        raise SystemExit("the CPU kernels are not built here: nothing to compare")
    ms = [int(v) for v in a.rows.split(",")]
    lm = specdecode.load(a.model, dtype="bfloat16", quantize=a.quantize, threads=a.threads).lm
    tuned = kernel_prefetch()  # what the load above set
    schedules = {"static split, 16 KB": (0, 16384), "tiles taken, 16 KB": (ext.steal_tiles(), 16384),
                 f"tiles taken, {tuned} bytes (this machine's)": (ext.steal_tiles(), tuned)}
    step = model_stepper(lm, max(ms))
    times = {s: {m: [] for m in ms} for s in schedules}
    names = list(schedules)
    for r in tqdm(range(a.repeats + 1), desc="rounds, every schedule in turn", unit="round"):
        for s in names if r % 2 else names[::-1]:
            ext.set_steal_tiles(schedules[s][0])
            ext.set_prefetch_distance(schedules[s][1])
            for m in ms:
                dt = step(m)
                if r:
                    times[s][m].append(dt)
    med = {s: {m: statistics.median(v) * 1e3 for m, v in t.items()} for s, t in times.items()}
    lines = [f"# Three schedules of the same kernels: {a.model}, {a.quantize}, {a.threads} threads", "",
             f"CPU: {cpu_summary()}; kernel path: {ISA_NAMES[active_isa()]}; medians of {a.repeats} passes "
             "each, the schedules in turns", "",
             "| schedule | " + " | ".join(f"T{m} ms" for m in ms) + " |", "|---|" + "---:|" * len(ms)]
    base = med[names[0]]
    for s in names:
        lines.append(f"| {s} | " + " | ".join(f"{med[s][m]:.1f} ({med[s][m] / base[m]:.3f}x)" for m in ms) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "schedule_ab.md").write_text(text)
        (a.out / "schedule_ab.json").write_text(json.dumps({"cpu": cpu_summary(), "medians_ms": med,
                                                            "schedules": schedules}, indent=1))


if __name__ == "__main__":
    main()
