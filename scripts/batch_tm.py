"""In-process batching: decode tokens/s of B requests stepped together (one target pass per round),
for B = 1, 4, 16, 32, with no server and no drafter, so the figure is the engine's alone.

    .venv/bin/python scripts/batch_tm.py qwen2.5-coder-1.5b --threads 2 [--quantize int4] [--out DIR]

Every request has the same prompt and decodes --tokens tokens (EOS ignored); prefill is done
before the clock starts. Prints one line per B and, with --out, writes batch_tm.json there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import specdecode
from specdecode.bench.machine import cpu_summary
from specdecode.config import SamplingParams
from specdecode.engine import Engine

PROMPT = "Write a Python function that checks whether a string is a palindrome, with tests."


def measure(engine: Engine, ids: list[int], batch: int, tokens: int) -> dict:
    states = [engine.start(ids, SamplingParams(max_new_tokens=tokens + 1, ignore_eos=True)) for _ in range(batch)]
    while any(s.prefilling for s in states):
        engine.step(states)
    t0, produced, steps = time.perf_counter(), 0, 0
    while not all(s.finished for s in states):
        engine.step(states)
        produced += sum(len(s.new_tokens) for s in states)
        steps += 1
    seconds = time.perf_counter() - t0
    return {"batch": batch, "tokens": produced, "seconds": seconds, "tokens_per_second": produced / seconds,
            "ms_per_step": 1000 * seconds / steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,4,16,32")
    p.add_argument("--tokens", type=int, default=24, help="decode tokens per request (default 24)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine(specdecode.load(args.model, quantize=args.quantize))
    ids = engine.encode(PROMPT)
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        rows.append(measure(engine, ids, b, args.tokens))
        r = rows[-1]
        print(f"B={b:>3}: {r['tokens_per_second']:7.1f} tok/s ({r['tokens_per_second'] / rows[0]['tokens_per_second']:.2f}x"
              f" B={rows[0]['batch']}), {r['ms_per_step']:.1f} ms per step", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "batch_tm.json").write_text(json.dumps(
            {"model": args.model, "quantize": args.quantize, "threads": args.threads, "cpu": cpu_summary(),
             "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
