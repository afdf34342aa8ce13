"""Does torch.compile pay for the decode step on this machine? Compile time and steady-state speed.

    .venv/bin/python scripts/compile_timing.py smollm2-135m [--quantize int8] [--steps 64] [--threads 2]

Runs the same greedy decode twice, eagerly and through `torch.compile(model, dynamic=True)`,
prints the first-call (compile) time, the steady per-token time of each, the number of
recompilations, and whether the generated tokens are identical.
"""

import argparse
import statistics
import time

import torch
import torch._dynamo

import specdecode


def decode(fn, lm, prompt: torch.Tensor, steps: int) -> tuple[list[int], list[float]]:
    """Greedy target-only decode; returns the tokens and each step's seconds (step 0 = prefill)."""
    with torch.no_grad():
        return _decode(fn, lm, prompt, steps)


def _decode(fn, lm, prompt: torch.Tensor, steps: int) -> tuple[list[int], list[float]]:
    cache = lm.new_cache(prompt.shape[1] + steps + 1)
    tokens, times = [], []
    ids, pos = prompt, torch.arange(prompt.shape[1])[None]
    for _ in range(steps):
        t0 = time.perf_counter()
        logits = fn(ids, pos, cache, num_logits=1)  # (1, 1, V)
        nxt = int(logits[0, -1].argmax())
        times.append(time.perf_counter() - t0)
        tokens.append(nxt)
        ids, pos = torch.tensor([[nxt]]), pos[:, -1:] + 1
    return tokens, times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--quantize", default=None)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    m = specdecode.load(a.model, quantize=a.quantize, threads=a.threads)
    lm = m.lm
    prompt = torch.tensor([m.tokenizer.encode_prompt("Write a Python function that reverses a list.")])

    eager_tokens, eager_times = decode(lm, lm, prompt, a.steps)
    eager_tokens, eager_times = decode(lm, lm, prompt, a.steps)  # warm

    torch._dynamo.config.cache_size_limit = 64
    # The model's forward runs under torch.inference_mode, and dynamo cannot trace in-place
    # writes into the KV cache there ("Cannot set version_counter for inference tensor",
    # torch 2.13): compile the undecorated forward and run it under no_grad instead.
    raw_forward = type(lm).forward.__wrapped__
    compiled = torch.compile(lambda *args, **kw: raw_forward(lm, *args, **kw), dynamic=True)
    t0 = time.perf_counter()
    comp_tokens, comp_times = decode(compiled, lm, prompt, a.steps)
    first_run = time.perf_counter() - t0
    comp_tokens, comp_times = decode(compiled, lm, prompt, a.steps)
    counters = torch._dynamo.utils.counters
    frames = sum(counters["stats"].values()) if "stats" in counters else 0

    e = statistics.median(eager_times[1:]) * 1000
    c = statistics.median(comp_times[1:]) * 1000
    print(f"{a.model} quantize={a.quantize} threads={torch.get_num_threads()} steps={a.steps}")
    print(f"  eager     decode step median {e:7.1f} ms")
    print(f"  compiled  decode step median {c:7.1f} ms  ({e / c:.2f}x eager)")
    print(f"  first compiled run (compiling) {first_run:.1f} s; dynamo stats {dict(counters.get('stats', {}))} ({frames})")
    print(f"  tokens identical: {eager_tokens == comp_tokens}")


if __name__ == "__main__":
    main()
