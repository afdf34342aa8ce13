"""Whole-model T(m): the time of one target pass over m = 1..16 tokens (a decode step, a
verification pass), for every weight format on the skinny kernels, beside llama.cpp on the
same GGUF file and the machine's read bandwidth, in one run.

    .venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --threads 2 --out docs/benchmarks/<dir>

Each pass extends a 64-token context and is rolled back. All formats and llama.cpp are loaded
at once and timed in turns: every repeat runs each of them over all m (in an order that rotates
from repeat to repeat), so the machine's drifts (a shared VM's speed can move 20% within minutes)
spread over every row and the ratios between rows are fair; medians are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import specdecode
from specdecode.bench.machine import cpu_summary, kernel_prefetch
from specdecode.kernels import ISA_NAMES, active_isa
from specdecode.quant import weight_bytes

CONTEXT = 64
PREFILL = 256


def read_bandwidth_gbs(repeats: int = 7) -> float:
    """One streaming pass over 1 GiB (as a decode step streams its weights), best of `repeats`."""
    x = torch.ones(2**28, dtype=torch.float32)
    x.sum()
    best = min(_timed(lambda: x.sum()) for _ in range(repeats))
    return x.numel() * 4 / 1e9 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def model_stepper(lm, max_m: int):
    """One timed pass of m tokens after CONTEXT tokens, rolled back after: step(m) -> seconds."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, lm.vocab_size, (1, CONTEXT + max_m), generator=g)
    cache = lm.new_cache(CONTEXT + max_m + 1)
    with torch.inference_mode():
        lm(ids[:, :CONTEXT], torch.arange(CONTEXT)[None], cache, num_logits=1)

    def step(m: int) -> float:
        cache.trim(CONTEXT)
        toks, pos = ids[:, CONTEXT : CONTEXT + m], torch.arange(CONTEXT, CONTEXT + m)[None]
        with torch.inference_mode():
            return _timed(lambda: lm(toks, pos, cache))

    return step


def interleaved_step_times(steppers: dict, ms: list[int], repeats: int) -> dict[str, dict[int, float]]:
    """Median T(m) per stepper, timed in turns: repeat r runs every stepper over all m, starting
    from stepper r mod n; the first repeat warms caches and allocators and is dropped."""
    names = list(steppers)
    times = {n: {m: [] for m in ms} for n in names}
    for r in tqdm(range(repeats + 1), desc="T(m) rounds, every row in turn", unit="round"):
        for n in names[r % len(names):] + names[: r % len(names)]:
            for m in ms:
                dt = steppers[n](m)
                if r:
                    times[n][m].append(dt)
    return {n: {m: statistics.median(v) for m, v in t.items()} for n, t in times.items()}


def _row_limits(text: str) -> list[int]:
    """--one-pass-rows: comma-separated integers >= 1 (argparse turns the error into one line)."""
    try:
        limits = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 2,4; got {text!r}") from None
    if any(v < 1 for v in limits):
        raise argparse.ArgumentTypeError(f"row limits must be >= 1, got {text!r}")
    return limits


def _with_one_pass_rows(step, limit: int):
    """step(m) run with the AVX2 kernels' one-pass row limit set to `limit` (restored after)."""
    from specdecode.kernels import build

    ext = build.extension()
    if ext is None:
        raise specdecode.SpecdecodeError("--one-pass-rows needs the compiled kernels")

    def run(m: int) -> float:
        before = ext.one_pass_rows()
        ext.set_one_pass_rows(limit)
        try:
            return step(m)
        finally:
            ext.set_one_pass_rows(before)

    return run


def prefill_ms_per_token(lm) -> float:
    ids = torch.randint(0, lm.vocab_size, (1, PREFILL), generator=torch.Generator().manual_seed(1))
    cache = lm.new_cache(PREFILL + 1)
    best = float("inf")
    for _ in range(2):
        cache.trim(0)
        best = min(best, _timed(lambda: lm(ids, torch.arange(PREFILL)[None], cache, num_logits=1)))
    return best / PREFILL * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="qwen2.5-coder-1.5b", help="registry short name or .gguf path")
    ap.add_argument("--formats", default="gguf,int4,int8,bf16",
                    help="comma-separated: gguf (the file's own blocks), int4, int8, bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--max-m", type=int, default=16)
    ap.add_argument("--no-llamacpp", action="store_true", help="skip llama.cpp even if llama-cpp-python is installed")
    ap.add_argument("--out", type=Path, default=None, help="directory for kernel_tm.json and kernel_tm.md")
    ap.add_argument("--one-pass-rows", type=_row_limits, default=None,
                    help="comma-separated settings of the AVX2 kernels' one-pass row limit (e.g. 2,4): each "
                         "format gets a row per setting, timed in turns (2 is the two-pass order past m = 2)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ms = list(range(1, a.max_m + 1))
    result: dict = {"model": a.model, "threads": a.threads, "cpu": cpu_summary(), "kernel_isa": ISA_NAMES[active_isa()]
                    if active_isa() >= 0 else "none (PyTorch)", "torch": torch.__version__}
    result["read_bandwidth_gbs"] = read_bandwidth_gbs()
    result["prefetch_bytes"] = kernel_prefetch()
    steppers, rows, stack = {}, {}, contextlib.ExitStack()
    for fmt in a.formats.split(","):
        quant = None if fmt == "bf16" else fmt
        lm = specdecode.load(a.model, dtype="bfloat16", quantize=quant, threads=a.threads).lm
        with torch.inference_mode():
            prefill = prefill_ms_per_token(lm)
        rows[fmt] = {"format": fmt, "weight_bytes": weight_bytes(lm), "prefill_ms_per_token": prefill}
        print(f"{fmt}: loaded, prefill {prefill:.2f} ms/token", flush=True)
        if not a.one_pass_rows:
            steppers[fmt] = model_stepper(lm, max(ms))
            continue
        step = model_stepper(lm, max(ms))
        for limit in a.one_pass_rows:
            name = f"{fmt} (one pass to {limit} rows)"
            rows[name] = dict(rows[fmt], format=name)
            steppers[name] = _with_one_pass_rows(step, limit)
        del rows[fmt]
    if not a.no_llamacpp:
        try:
            from specdecode.bench.llamacpp import LlamaStepper, llama_cpp_version

            name = f"llama.cpp {llama_cpp_version()} (GGUF as shipped)"
            steppers[name] = stack.enter_context(LlamaStepper(a.model, max(ms), a.threads)).step
            rows[name] = {"format": name, "weight_bytes": None, "prefill_ms_per_token": None}
        except specdecode.SpecdecodeError as exc:
            print(f"llama.cpp skipped: {exc}")
    with stack:
        for name, t in interleaved_step_times(steppers, ms, a.repeats).items():
            rows[name]["T_s"] = t
    result["rows"] = list(rows.values())
    result["interleaved"] = True
    text = render(result)
    print(text)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "kernel_tm.json").write_text(json.dumps(result, indent=1))
        (a.out / "kernel_tm.md").write_text(text)


def render(r: dict) -> str:
    bw = r["read_bandwidth_gbs"]
    picks = [m for m in (2, 3, 4, 8, 12, 16) if m in r["rows"][0]["T_s"]]
    lines = [f"# T(m): {r['model']}, {r['threads']} threads", "",
             f"CPU: {r['cpu']}; kernel path: {r['kernel_isa']}; torch {r['torch']}; "
             f"read bandwidth (1 GiB sum) {bw:.1f} GB/s"
             + (f"; prefetch distance {r['prefetch_bytes']} bytes (this machine's, kernels/tuning.py)"
                if r.get("prefetch_bytes") is not None else "")
             + ("; every row timed in turns, one repeat after another" if r.get("interleaved") else ""), "",
             "| format | weights GB | T1 ms | GB/s at T1 (% of read bw) | " + " | ".join(f"T{m}/T1" for m in picks)
             + " | prefill ms/token |",
             "|---|---:|---:|---:|" + "---:|" * len(picks) + "---:|"]
    for row in r["rows"]:
        t = {int(k): v for k, v in row["T_s"].items()}
        gb = row["weight_bytes"] / 1e9 if row["weight_bytes"] else None
        gbs = f"{gb / t[1]:.1f} ({gb / t[1] / bw:.0%})" if gb else "-"
        pre = f"{row['prefill_ms_per_token']:.2f}" if row["prefill_ms_per_token"] else "-"
        lines.append(f"| {row['format']} | {gb:.2f} | " if gb else f"| {row['format']} | - | ")
        lines[-1] += f"{t[1] * 1e3:.1f} | {gbs} | " + " | ".join(f"{t[m] / t[1]:.2f}" for m in picks) + f" | {pre} |"
    lines += ["", f"T(m) in ms, m = 1..{max(int(k) for k in r['rows'][0]['T_s'])}:", ""]
    for row in r["rows"]:
        t = {int(k): v for k, v in row["T_s"].items()}
        lines.append(f"- {row['format']}: " + ", ".join(f"{t[m] * 1e3:.1f}" for m in sorted(t)))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        main()
    except specdecode.SpecdecodeError as exc:  # a user's mistake (an unknown model, a missing file): one line
        raise SystemExit(f"kernel_tm: error: {exc}") from None
