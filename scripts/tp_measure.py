"""Tensor parallelism on this machine: pass times T(1), T(8) and target-only decode speed of a
model at --tp 1 and --tp N, with the time spent in collectives. Numbers for docs/scale-out.md.

    .venv/bin/python scripts/tp_measure.py --model qwen2.5-coder-1.5b --threads 1
    .venv/bin/torchrun --standalone --nproc-per-node 2 scripts/tp_measure.py --model qwen2.5-coder-1.5b \
        --threads 1 --tp 2

Every rank runs the same passes (they are collective); rank 0 prints one JSON line. T(m) is the
fastest of --reps passes over m new tokens after a --context-token prefix; decode is a greedy
target-only generation of --tokens tokens. "comm" is the time in all-reduce / all-gather calls
(rank 0's own clock: it includes waiting for the slower rank).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import specdecode
from specdecode import SamplingParams
from specdecode.engine import Engine

PROMPT = "Write a Python function that parses a CSV file and returns the rows as dictionaries."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args()

    group = None
    t0 = time.perf_counter()
    if args.tp > 1:
        from specdecode.parallel import init_tensor_parallel, load_sharded

        group = init_tensor_parallel(args.tp, "cpu", timeout_s=300)
        model = load_sharded(args.model, group, dtype=args.dtype, threads=args.threads)
    else:
        model = specdecode.load(args.model, dtype=args.dtype, device="cpu", threads=args.threads)
    load_s = time.perf_counter() - t0
    lm = model.lm
    out = {"model": args.model, "tp": args.tp, "threads_per_rank": args.threads, "dtype": str(model.dtype),
           "load_s": round(load_s, 1), "cpu": _cpu()}

    ids = torch.arange(100, 100 + args.context + 8).view(1, -1)
    pos = torch.arange(args.context + 8).view(1, -1)
    with torch.inference_mode():
        cache = lm.new_cache(args.context + 8)
        lm(ids[:, : args.context], pos[:, : args.context], cache).argmax(-1).tolist()
        for m in (1, 8):
            best, comm = None, None
            for _ in range(args.reps):
                if group is not None:
                    group.reset_counters()
                t = time.perf_counter()
                lm(ids[:, args.context : args.context + m], pos[:, args.context : args.context + m], cache).argmax(-1).tolist()
                dt = time.perf_counter() - t
                cache.trim(args.context)
                if best is None or dt < best:
                    best, comm = dt, (group.comm_seconds if group is not None else 0.0)
            out[f"T{m}_ms"] = round(best * 1e3, 1)
            out[f"T{m}_comm_ms"] = round(comm * 1e3, 2)
            if group is not None:
                out["collectives_per_pass"] = group.comm_calls
                out[f"T{m}_comm_bytes_per_rank"] = group.comm_bytes

    if group is not None:  # the collectives alone, ranks idle otherwise: latency without load imbalance
        hidden = lm.tp_full_args.hidden_size
        with torch.inference_mode():
            for name, fn, x in (("allreduce_hidden_us", group.all_reduce, torch.ones(1, hidden)),
                                ("allgather_logits_us", group.all_gather_last,
                                 torch.ones(1, -(-lm.vocab_size // group.world_size)))):
                fn(x)
                t = time.perf_counter()
                for _ in range(100):
                    fn(x)
                out[name] = round((time.perf_counter() - t) / 100 * 1e6, 1)

    engine = Engine(model)
    params = SamplingParams(max_new_tokens=args.tokens, seed=0, ignore_eos=True)
    prompt_ids = engine.encode(PROMPT)
    if group is not None:
        group.reset_counters()
    result_ids, stats = engine.generate_ids(prompt_ids, params)
    out["decode_tokens"] = len(result_ids)
    out["decode_tok_s"] = round(stats.decode_tokens_per_second, 2)
    out["decode_s"] = round(stats.decode_seconds, 2)
    out["prefill_s"] = round(stats.prefill_seconds, 2)
    if group is not None:
        out["decode_comm_s"] = round(group.comm_seconds, 3)
        out["comm_calls"] = group.comm_calls
    out["first_ids"] = result_ids[:8]
    if group is None or group.leader:
        print(json.dumps(out), flush=True)


def _cpu() -> str:
    from specdecode.cost_model import cpu_signature

    return f"{cpu_signature()}; load {os.getloadavg()[0]:.2f}"


if __name__ == "__main__":
    main()
