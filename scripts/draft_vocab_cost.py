"""What cutting a draft model's output layer to its first ids saves, and what it can lose
(specdecode/drafters/draft_vocab.py): the draft's one-token step with every id and with the first
N ids, beside the target's T(1), at the same context, interleaved, medians; and, from a `specdecode
bench` results.json, the share of the reference method's output tokens among the first N ids
(a draft can only be right where the target's token is one of them).

    .venv/bin/python scripts/draft_vocab_cost.py qwen2.5-coder-1.5b qwen2.5-coder-0.5b --threads 2 \\
        --rows 32768,65536 --coverage docs/benchmarks/cpu-avx2-zen3-qwen-heads/specbench/results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import torch

import specdecode
from specdecode.bench.machine import cpu_summary
from specdecode.drafters.draft_vocab import with_draft_vocab


def coverage(path: str, rows: list[int], method: str) -> dict:
    """Share of `method`'s output tokens below each row count, per category and overall."""
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    ids: dict[str, list[int]] = defaultdict(list)
    for prompt in results["prompts"]:
        run = prompt["results"].get(method)
        if run:
            ids[prompt["category"]] += run["output_ids"]
    every = [t for v in ids.values() for t in v]
    if not every:
        raise SystemExit(f"{path} has no outputs of {method!r}")
    return {str(n): {"all": round(sum(t < n for t in every) / len(every), 4),
                     **{c: round(sum(t < n for t in v) / len(v), 4) for c, v in ids.items()}} for n in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target")
    ap.add_argument("draft")
    ap.add_argument("--quantize", default="int4", choices=["int8", "int4"], help="target and draft (default int4)")
    ap.add_argument("--rows", default="32768,65536", help="comma-separated draft vocabulary sizes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--coverage", metavar="RESULTS_JSON", help="a `specdecode bench` results.json")
    ap.add_argument("--coverage-method", default="target-int4")
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    torch.set_num_threads(args.threads)
    target = specdecode.load(args.target, quantize=args.quantize, threads=args.threads).lm
    draft = specdecode.load(args.draft, quantize=args.quantize, threads=args.threads).lm
    models = {"target T(1)": target, "draft step, every id": draft}
    models.update({f"draft step, first {n} ids": with_draft_vocab(draft, n) for n in rows})
    n = args.context
    tokens = torch.randint(0, draft.vocab_size, (n + 1,))
    caches = {}
    with torch.inference_mode():
        for name, m in models.items():  # the twins share the draft's layers, not its cache
            caches[name] = m.new_cache(n + 8)
            m(tokens[None, :n], torch.arange(n)[None], caches[name])

        def step(name: str) -> float:
            t0 = time.perf_counter()
            models[name](tokens[None, n:], torch.tensor([[n]]), caches[name])
            elapsed = time.perf_counter() - t0
            caches[name].trim(n)
            return elapsed

        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(5):
            for name in models:
                step(name)
        for _ in range(args.repeats):
            for name in models:
                times[name].append(step(name))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    t1 = med["target T(1)"]
    out = {"cpu": cpu_summary(), "target": args.target, "draft": args.draft, "quantize": args.quantize,
           "context": n, "threads": args.threads, "repeats": args.repeats,
           "ms": {k: round(v, 3) for k, v in med.items()},
           "/ T(1)": {k: round(v / t1, 4) for k, v in med.items()}}
    if args.coverage:
        out["coverage"] = coverage(args.coverage, rows, args.coverage_method)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
