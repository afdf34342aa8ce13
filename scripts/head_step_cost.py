"""What a draft head's step costs beside the target's: the head's one-token step (its decoder layer
and draft-vocabulary lm_head, as HeadDrafter runs it) and the target's decode step T(1), at the
same context length, interleaved, medians; and the head's k-token catch-up pass.

    .venv/bin/python scripts/head_step_cost.py qwen2.5-coder-1.5b --quantize int4 --threads 2

The head is the one `specdecode heads train` made for the target (or --head PATH).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import specdecode
from specdecode.bench.machine import cpu_summary
from specdecode.heads.pipeline import head_drafter_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--quantize", default="int4", choices=["none", "int8", "int4"])
    ap.add_argument("--head", default=None, help="a head directory (default: the target's trained head)")
    ap.add_argument("--head-quantize", default="int8", choices=["none", "int8", "int4"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = specdecode.load(args.model, quantize=None if args.quantize == "none" else args.quantize,
                            threads=args.threads)
    drafter = head_drafter_for(model, args.head, None if args.head_quantize == "none" else args.head_quantize)
    head, lm = drafter.model, model.lm
    n = args.context
    D = lm.args.hidden_size
    tokens = torch.randint(0, lm.args.vocab_size, (n + 16,))
    cache = lm.new_cache(n + 32)
    hcache = head.new_cache(n + 32)
    with torch.inference_mode():
        lm(tokens[None, :n], torch.arange(n)[None], cache)
        feats = torch.randn(n + 16, D).to(head.dtype)
        head.step(tokens[1 : n + 1], feats[:n], torch.arange(n), hcache)
        hcache.advance(n)

        def target_step():
            lm(tokens[None, n : n + 1], torch.tensor([[n]]), cache)
            cache.trim(n)

        def head_step(m: int):
            head.step(tokens[n : n + m], feats[n : n + m], torch.arange(n, n + m), hcache)

        times: dict[str, list[float]] = {"target T(1)": [], "head step": [], "head catch-up of 4": []}
        for _ in range(10):
            target_step(), head_step(1), head_step(4)
        for _ in range(args.repeats):
            for name, fn in (("target T(1)", target_step), ("head step", lambda: head_step(1)),
                             ("head catch-up of 4", lambda: head_step(4))):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    out = {"cpu": cpu_summary(), "model": args.model, "quantize": args.quantize, "head": drafter.describe(),
           "context": n, "threads": args.threads, "ms": {k: round(v, 3) for k, v in med.items()},
           "head step / T(1)": round(med["head step"] / med["target T(1)"], 4),
           "head catch-up of 4 / T(1)": round(med["head catch-up of 4"] / med["target T(1)"], 4)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
