"""llama.cpp's whole-model T(m): one pass over m = 1..16 tokens appended to a 64-token context.

    .venv/bin/python scripts/llamacpp_tm.py qwen2.5-coder-1.5b --threads 2 [--json out.json]

MODEL is a registry short name or a .gguf path. Two columns: logits for all m rows (what a
verification pass needs) and for the last row only (prefill-like). Median of --repeats evals,
the KV cache rolled back after each, the m values interleaved within each repeat. Needs the
optional extra: pip install 'specdecode[llamacpp]'. The work is done by
specdecode.bench.llamacpp.llamacpp_step_times, which other benchmark scripts import.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from specdecode.bench.llamacpp import llama_cpp_version, llamacpp_step_samples, resolve_gguf
from specdecode.bench.machine import machine_info, now_iso
from specdecode.errors import SpecdecodeError


def cpu_isa() -> str:
    """The ISA class the docs name figures by: AVX-512-BF16 or AVX2 (or neither)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown ISA"
    return "AVX-512-BF16" if "avx512_bf16" in flags else "AVX2" if "avx2" in flags else "no AVX2"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="registry short name (specdecode models list) or .gguf path")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: llama.cpp's own choice)")
    ap.add_argument("--max-m", type=int, default=16, help="largest m (m = 1..max-m)")
    ap.add_argument("--context", type=int, default=64, help="tokens already in the KV cache before each pass")
    ap.add_argument("--repeats", type=int, default=7, help="timed evals per m; the median is reported")
    ap.add_argument("--no-last", action="store_true", help="skip the last-logit-only column")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures (seconds) to this JSON file")
    a = ap.parse_args(argv)
    try:
        path = resolve_gguf(a.model)
        ms = list(range(1, a.max_m + 1))
        modes = {"all_logits": True} if a.no_last else {"all_logits": True, "last_logit": False}
        t0 = time.perf_counter()
        samples = {name: llamacpp_step_samples(path, ms, a.threads, a.repeats, context=a.context, all_logits=flag)
                   for name, flag in modes.items()}
        took = time.perf_counter() - t0
    except SpecdecodeError as e:
        print(f"llamacpp_tm: error: {e}", file=sys.stderr)
        return 2
    tm = {name: {m: statistics.median(ts) for m, ts in d.items()} for name, d in samples.items()}
    cpu = f"{machine_info('cpu')['cpu']} ({cpu_isa()})"
    threads = a.threads or "default"
    print(f"llama.cpp T(m), llama-cpp-python {llama_cpp_version()}, {path.name}, {threads} threads, "
          f"context {a.context}, median of {a.repeats}; {cpu}")
    print(f"command: python scripts/llamacpp_tm.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    header = f"{'m':>3} {'T(m) ms':>9} {'min ms':>8} {'T(m)/T(1)':>10} {'ms/token':>9}"
    if "last_logit" in tm:
        header += f"  {'last-logit ms':>13} {'min ms':>8} {'ratio':>6}"
    print(header)
    t1 = tm["all_logits"][1]
    for m in ms:
        t = tm["all_logits"][m]
        line = f"{m:>3} {t * 1e3:>9.1f} {min(samples['all_logits'][m]) * 1e3:>8.1f} {t / t1:>10.2f} {t * 1e3 / m:>9.1f}"
        if "last_logit" in tm:
            tl = tm["last_logit"][m]
            line += f"  {tl * 1e3:>13.1f} {min(samples['last_logit'][m]) * 1e3:>8.1f} {tl / tm['last_logit'][1]:>6.2f}"
        print(line)
    print(f"({took:.0f} s; T(m) = median, all logits: logits for every row, as a verification pass needs; "
          f"last-logit: only the last row's, as in prefill)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "model": a.model, "gguf": str(path), "llama_cpp_python": llama_cpp_version(), "cpu": cpu,
            "threads": a.threads, "cpus_usable": len(os.sched_getaffinity(0)), "context": a.context,
            "repeats": a.repeats, "date": now_iso(),
            "T_s": {name: {str(m): s for m, s in d.items()} for name, d in tm.items()},
            "samples_s": {name: {str(m): ts for m, ts in d.items()} for name, d in samples.items()},
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
