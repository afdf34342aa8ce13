"""Time one decode step (T=1), a verify pass (T=k+1) and a prefill of the native model.

    .venv/bin/python scripts/step_timing.py qwen2.5-coder-1.5b [--quantize int8]
Prints median milliseconds over repeats, and weights bytes read per step / achieved GB/s.
"""

import argparse
import statistics
import time

import torch

import specdecode


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--quantize", default=None)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    m = specdecode.load(a.model, quantize=a.quantize, threads=a.threads)
    lm = m.lm
    nbytes = sum(t.numel() * t.element_size() for t in list(lm.parameters()) + list(lm.buffers())
                 if t is not lm.model.embed_tokens.weight or lm.args.tie_word_embeddings)
    ctx = 200
    cache = lm.new_cache(ctx + 64)
    ids = torch.randint(0, 1000, (1, ctx))
    prefill = median_ms(lambda: (cache.trim(0), lm(ids, torch.arange(ctx)[None], cache, num_logits=1)), 3)
    out = {"prefill_200_ms": prefill}
    for T in (1, 2, 4, 7, 9):
        toks = torch.randint(0, 1000, (1, T))
        pos = torch.arange(ctx, ctx + T)[None]
        out[f"T{T}_ms"] = median_ms(lambda: (cache.trim(ctx), lm(toks, pos, cache)), a.repeats)
    bandwidth = read_bandwidth_gbs()
    print(f"{a.model} quantize={a.quantize} threads={torch.get_num_threads()} weights read/step {nbytes / 1e9:.2f} GB")
    print(f"  machine read bandwidth {bandwidth:.1f} GB/s (float32 sum over 1 GiB; the bytes-per-token limit "
          f"is {bandwidth / (nbytes / 1e9):.1f} tokens/s)")
    for k, v in out.items():
        extra = ""
        if k == "T1_ms":
            gbs = nbytes / 1e9 / (v / 1000)
            extra = f"  ({gbs:.1f} GB/s = {gbs / bandwidth:.0%} of the measured read bandwidth)"
        print(f"  {k:>16} {v:8.1f}{extra}")


def read_bandwidth_gbs() -> float:
    """Read bandwidth the way a decode step reads weights: one streaming pass over a large tensor."""
    x = torch.ones(2**28, dtype=torch.float32)  # 1 GiB, far beyond any cache
    seconds = median_ms(lambda: x.sum(), 5) / 1000
    return x.numel() * 4 / 1e9 / seconds


if __name__ == "__main__":
    main()
