"""Measure weight-only quantization on a real model: quality, decode-step time, verify cost, and
end-to-end self-speculation. Numbers for docs/quantization.md.

    .venv/bin/python scripts/quant_measure.py --model smollm2-135m --threads 2
    .venv/bin/python scripts/quant_measure.py --model qwen2.5-coder-1.5b --threads 2 --parts quality,step
    .venv/bin/python scripts/quant_measure.py --parts linear --threads 2   # one layer, no model

Timings on a shared CPU are noisy: each is the median of --reps repeats, and the load average
at the start of each part is printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import specdecode
from specdecode import SamplingParams
from specdecode.drafters import SelfDrafter
from specdecode.engine import Engine
from specdecode.quant import quantized_copy, weight_bytes

TEXT = """The history of computing is a story of abstraction. Early machines were programmed by
rewiring panels, then by punching cards, and later by writing symbolic assembly code that a
program translated into numbers. Each step let people think about the problem instead of the
machine. Compilers, operating systems and networks followed the same pattern: hide a messy
detail behind a clean interface, then build the next layer on top of it.

def merge_sort(items):
    if len(items) <= 1:
        return items
    mid = len(items) // 2
    left = merge_sort(items[:mid])
    right = merge_sort(items[mid:])
    out = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    return out + left[i:] + right[j:]

Today the same idea drives machine learning systems. A model is trained once and then served to
many users, and the cost of serving is dominated by reading its weights from memory for every
token it produces. Making those weights smaller, or reading them fewer times, is therefore the
most direct way to make generation faster."""

PROMPT = "Write a Python function that checks whether a string is a palindrome, with a docstring and tests."


def load_avg() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def variants(model, which):
    """name -> model; quantized ones share embedding and norms with the bf16 original."""
    out = {}
    for name in which:
        if name == "bf16":
            out[name] = model
        else:
            # "int4", "int4-g32", "int4-g32/head-int8": mode, group size (default 128), lm_head format
            spec, _, head = name.partition("/head-")
            mode, _, g = spec.partition("-g")
            kw = {"head": head} if head else {}
            out[name] = quantized_copy(model, mode, group_size=int(g or 32), **kw)
    return out


@torch.inference_mode()
def quality(models, ids):
    """Teacher-forced perplexity on TEXT and top-1 agreement with the bf16 model's argmax."""
    tokens = torch.tensor([ids])
    pos = torch.arange(len(ids))[None]
    ref = None
    rows = []
    for name, m in models.items():
        logits = m(tokens, pos, m.new_cache(len(ids)))[0]  # (T, V) float32
        logp = torch.log_softmax(logits[:-1], -1)
        nll = -logp.gather(1, tokens[0, 1:, None]).mean()
        top1 = logits.argmax(-1)
        if ref is None:
            ref = top1
        rows.append({"variant": name, "ppl": round(float(nll.exp()), 3),
                     "top1_agree_bf16": round(float((top1 == ref).float().mean()), 4), "tokens": len(ids)})
    return rows


@torch.inference_mode()
def step_times(models, ids, reps, ms=(1, 2, 4, 7, 9, 16)):
    """Forward time of m tokens on top of a 128-token cache, m = 1 and verify sizes.

    Variants and sizes are interleaved within each repeat, so load from other processes hits
    them alike; min (the least disturbed run) and median are both reported.
    """
    ctx = 128
    caches = {}
    for name, m in models.items():
        caches[name] = m.new_cache(ctx + max(ms) + 1)
        m(torch.tensor([ids[:ctx]]), torch.arange(ctx)[None], caches[name], num_logits=1)
    times = {(name, n): [] for name in models for n in ms}
    for r in range(reps + 1):
        for name, m in models.items():
            for n in ms:
                caches[name].trim(ctx)
                tok, pos = torch.tensor([ids[ctx : ctx + n]]), torch.arange(ctx, ctx + n)[None]
                t0 = time.perf_counter()
                m(tok, pos, caches[name])
                if r:  # the first round warms up
                    times[name, n].append(time.perf_counter() - t0)
    rows = []
    for name, m in models.items():
        wb = weight_bytes(m)
        row = {"variant": name, "weight_MB": round(wb / 1e6, 1)}
        for n in ms:
            row[f"ms_{n}"] = round(min(times[name, n]) * 1e3, 2)
            row[f"med_{n}"] = round(statistics.median(times[name, n]) * 1e3, 2)
        row["GBps_1"] = round(wb / (row["ms_1"] / 1e3) / 1e9, 1)
        for n in ms[1:]:
            row[f"rel_{n}"] = round(row[f"ms_{n}"] / row["ms_1"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


@torch.inference_mode()
def linear_times(reps, shape=(8960, 1536), ms=(1, 2, 4, 7, 9, 16)):
    """One random linear layer (default: Qwen-1.5B's MLP up/gate) in fp32, bf16, int8 and int4."""
    from torch import nn

    from specdecode.quant import Int4Linear, Int8Linear

    N, K = shape
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(0)) * 0.02
    layers = {"fp32": nn.Linear(K, N, bias=False), "bf16": nn.Linear(K, N, bias=False, dtype=torch.bfloat16),
              "int8": Int8Linear(w.bfloat16()), "int4": Int4Linear(w.bfloat16(), None, 32)}
    layers["fp32"].weight.data, layers["bf16"].weight.data = w.clone(), w.bfloat16()
    times = {}
    for r in range(reps + 1):
        for name, layer in layers.items():
            for n in ms:
                x = torch.randn(n, K, dtype=torch.float32 if name == "fp32" else torch.bfloat16)
                t0 = time.perf_counter()
                layer(x)
                if r:
                    times.setdefault((name, n), []).append(time.perf_counter() - t0)
    for name, layer in layers.items():
        nbytes = N * K * 4 if name == "fp32" else N * K * 2 if name == "bf16" else layer.weight_bytes()
        t1 = min(times[name, 1])
        row = {"linear": f"{N}x{K}", "format": name, "ms_1": round(t1 * 1e3, 3), "GBps_1": round(nbytes / t1 / 1e9, 1)}
        row.update({f"rel_{n}": round(min(times[name, n]) / t1, 2) for n in ms[1:]})
        print(json.dumps(row), flush=True)


def end_to_end(target, tokenizer, n_new, ks, reps):
    """Greedy decode speed: target-only bf16, int4 target alone, bf16 target + int4 self-draft."""
    prompt = tokenizer.encode_prompt(PROMPT)
    params = SamplingParams(max_new_tokens=n_new, ignore_eos=True)
    rows = []
    ref = None

    def run(name, engine):
        nonlocal ref
        best = []
        for _ in range(reps):
            out, stats = engine.generate_ids(prompt, params)
            best.append(stats.generated_tokens / stats.decode_seconds)
        row = {"setup": name, "tok_per_s": round(statistics.median(best), 2),
               "acceptance": round(stats.accepted_tokens / stats.drafted_tokens, 3) if stats.drafted_tokens else None,
               "tokens_per_pass": round(stats.generated_tokens / max(stats.target_passes, 1), 2)}
        if name == "bf16 target only":
            ref = out
        row["same_as_bf16"] = out == ref
        rows.append(row)
        print(json.dumps(row), flush=True)

    run("bf16 target only", Engine(target))
    for mode in ("int8", "int4"):
        run(f"{mode} target only (lossy)", Engine(quantized_copy(target, mode)))
    for mode in ("int4", "int8"):
        drafter = SelfDrafter(target, mode)
        for k in ks:
            run(f"bf16 target + {mode} self-draft k={k}", Engine(target, drafter, num_draft_tokens=k))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--parts", default="quality,step,e2e")
    ap.add_argument("--variants", default="bf16,int8,int4,int4/head-int8,int4/head-float")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--ks", default="4,6,8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    if "linear" in parts:
        print("# one linear layer (ms: min of %d)" % args.reps, load_avg(), flush=True)
        linear_times(args.reps)
        if parts == ["linear"]:
            return
    model = specdecode.load(args.model, dtype="bfloat16", device="cpu")
    ids = model.tokenizer.encode(TEXT)
    assert len(ids) >= 160, len(ids)
    models = variants(model.lm, args.variants.split(","))
    print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "text_tokens": len(ids)}), flush=True)
    if "quality" in parts:
        print("# quality", load_avg(), flush=True)
        for row in quality(models, ids):
            print(json.dumps(row), flush=True)
    if "step" in parts:
        print("# step times (ms: min and median of %d)" % args.reps, load_avg(), flush=True)
        step_times(models, ids, args.reps)
    if "e2e" in parts:
        print("# end to end", load_avg(), flush=True)
        end_to_end(model.lm, model.tokenizer, args.new_tokens, [int(k) for k in args.ks.split(",")], max(1, args.reps // 3))
    print("# done", load_avg(), flush=True)


if __name__ == "__main__":
    main()
