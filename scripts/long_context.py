"""Prefill and decode speed at long contexts, specdecode beside llama.cpp on the same GGUF.

    .venv/bin/python scripts/long_context.py qwen2.5-coder-1.5b --quantize int4 --contexts 4096 16384

For each context length N: a prompt of N tokens (Spec-Bench questions and answers of the bundled
file concatenated: varied text, nothing repeats), prefilled for real by both (prefill tok/s), then
`--decode` tokens decoded greedily by the target alone (decode tok/s at that context). Prints a
Markdown table with the raw figures and the ratios; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdecode import Engine, SamplingParams, load  # noqa: E402
from specdecode.bench.llamacpp import open_llama, resolve_gguf  # noqa: E402
from specdecode.errors import SpecdecodeError  # noqa: E402


def long_prompt(tokenizer, n: int) -> list[int]:
    """n token ids of varied text: the bundled Spec-Bench questions, in order, repeated if needed."""
    lines = (ROOT / "specdecode/bench/data/spec_bench_question.jsonl").read_text().splitlines()
    text = "\n\n".join(t for line in lines for t in json.loads(line)["turns"])
    ids = tokenizer.encode(text, add_special_tokens=False)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def ours(model, prompt: list[int], decode: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) of the target alone, no prefix cache."""
    engine = Engine(model, None, prefix_cache=None)
    engine.generate_ids(prompt[:64], SamplingParams(max_new_tokens=2, temperature=0))  # warm-up, as llama.cpp's
    params = SamplingParams(max_new_tokens=decode + 1, temperature=0, ignore_eos=True)
    _, stats = engine.generate_ids(prompt, params)
    return len(prompt) / stats.prefill_seconds, stats.decode_tokens_per_second


def llamacpp(gguf: Path, prompt: list[int], decode: int, threads: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) of llama.cpp's greedy decoding, timed as ours (first token to last)."""
    llm = open_llama(gguf, n_ctx=len(prompt) + decode + 8, threads=threads)
    llm.eval(prompt[:64])  # warm-up: pages the weights in, as our load does
    llm.reset()
    t0 = time.perf_counter()
    t_first = None
    n = 0
    for _ in llm.generate(list(prompt), reset=True, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, typical_p=1.0,
                          repeat_penalty=1.0):
        n += 1
        if t_first is None:
            t_first = time.perf_counter()
        if n > decode:
            break
    end = time.perf_counter()
    llm.close()
    return len(prompt) / (t_first - t0), decode / (end - t_first)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--quantize", default="int4", choices=["none", "int8", "int4"])
    p.add_argument("--contexts", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--decode", type=int, default=32, help="tokens decoded at each context (default 32)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-llamacpp", action="store_true")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    model = load(args.model, quantize=args.quantize)
    gguf = resolve_gguf(args.model)
    rows = []
    for n in args.contexts:
        if n + args.decode + 1 > model.lm.max_context:
            raise SpecdecodeError(f"{n} tokens + {args.decode} exceed the model's context ({model.lm.max_context})")
        prompt = long_prompt(model.tokenizer.hf, n)
        ours_prefill, ours_decode = ours(model, prompt, args.decode)
        print(f"specdecode {n}: prefill {ours_prefill:.1f} tok/s, decode {ours_decode:.2f} tok/s", file=sys.stderr, flush=True)
        lc = (None, None) if args.no_llamacpp else llamacpp(gguf, prompt, args.decode, args.threads)
        if lc[0] is not None:
            print(f"llama.cpp {n}: prefill {lc[0]:.1f} tok/s, decode {lc[1]:.2f} tok/s", file=sys.stderr, flush=True)
        rows.append((n, ours_prefill, ours_decode, *lc))
    print(f"| context | prefill tok/s (ours / llama.cpp) | decode tok/s (ours / llama.cpp) | decode ratio |")
    print("|---:|---:|---:|---:|")
    for n, op, od, lp, ld in rows:
        lp_s = f"{lp:.1f}" if lp else "-"
        ld_s = f"{ld:.2f}" if ld else "-"
        ratio = f"{od / ld:.2f}x" if ld else "-"
        print(f"| {n} | {op:.1f} / {lp_s} | {od:.2f} / {ld_s} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
