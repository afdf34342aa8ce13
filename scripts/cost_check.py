"""Check the cost model against passes far past its table: verify-shaped passes (every row's
logits, as a batch of many requests) and prefill-shaped ones (the last row's logits only, as a
prompt chunk or a draft model's catch-up before its first draft), m rows on a fresh cache.

    .venv/bin/python scripts/cost_check.py qwen2.5-coder-0.5b qwen2.5-coder-1.5b --threads 2

Prints, per model and m, the fastest of --repeats passes beside what the cost model says
(`PassCosts.__call__` for verify-shaped, `PassCosts.prefill` for prefill-shaped; no earlier
context, as the policy prices a first catch-up: the rows attend among themselves as one matrix
product). The cost model comes from the cache (or is measured).
"""

from __future__ import annotations

import argparse
import time

import torch

import specdecode
from specdecode.bench.machine import cpu_summary
from specdecode.cost_model import measure_pass_costs


@torch.inference_mode()
def fastest_pass(lm, m: int, num_logits: int | None, repeats: int) -> float:
    ids = (torch.arange(m) % 1000 + 100).view(1, -1)  # (1, m)
    pos = torch.arange(m).view(1, -1)
    best = float("inf")
    for _ in range(repeats):
        cache = lm.new_cache(m + 1)
        t0 = time.perf_counter()
        lm(ids, pos, cache, num_logits=num_logits).argmax(-1).tolist()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model names or paths")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rows", default="16,64,128,256,700", help="comma list of m")
    args = ap.parse_args()
    print(f"CPU: {cpu_summary()}; threads {args.threads or torch.get_num_threads()}")
    for name in args.models:
        lm = specdecode.load(name, threads=args.threads).lm
        costs = measure_pass_costs(lm)
        print(f"{name}: T(1) {costs(1) * 1e3:.0f} ms, T(16) {costs(16) * 1e3:.0f} ms, timed m = {costs.measured}, "
              f"prefill-shaped T(32) {costs.prefill_big * 1e3:.0f} ms")
        print(f"{'m':>5} {'verify measured':>16} {'model':>7} {'ratio':>6} {'prefill measured':>17} {'model':>7} {'ratio':>6}")
        for m in (int(x) for x in args.rows.split(",")):
            v, p = fastest_pass(lm, m, None, args.repeats), fastest_pass(lm, m, 1, args.repeats)
            vm, pm = costs(m), costs.prefill(m)
            print(f"{m:>5} {v * 1e3:>13.0f} ms {vm * 1e3:>7.0f} {vm / v:>6.2f} {p * 1e3:>14.0f} ms {pm * 1e3:>7.0f} {pm / p:>6.2f}")


if __name__ == "__main__":
    main()
