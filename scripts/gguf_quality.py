"""How close each way of running a quantized GGUF file stays to the file's own model: greedy answers
to Spec-Bench prompts compared with those of the file de-quantized to bf16, for `--quantize gguf`
(the file's blocks as shipped), our int4 and int8 re-quantizations, and llama.cpp, in one run.

    .venv/bin/python scripts/gguf_quality.py qwen2.5-coder-1.5b --per-category 5 --tokens 128 --out docs/benchmarks/<dir>

Reports per method: outputs identical to the reference's, and the first differing token
position (mean over the outputs that differ; an identical output counts as not differing).
Greedy and batched (the kernels are row-invariant: a row's output does not depend on its batch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import specdecode
from specdecode.bench.datasets import load_prompts
from specdecode.bench.machine import cpu_summary
from specdecode.config import SamplingParams
from specdecode.engine import Engine


def generate_all(engine: Engine, prompts: list[list[int]], tokens: int, batch: int, desc: str) -> list[list[int]]:
    """Greedy outputs of every prompt, `batch` requests stepped together."""
    outs: list[list[int]] = []
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False)
    for i in range(0, len(prompts), batch):
        states = [engine.start(ids, SamplingParams(max_new_tokens=tokens)) for ids in prompts[i : i + batch]]
        while not all(s.finished for s in states):
            engine.step(states)
        outs += [list(s.generated) for s in states]
        bar.update(len(states))
    bar.close()
    return outs


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="qwen2.5-coder-1.5b", help="registry short name or .gguf path")
    p.add_argument("--per-category", type=int, default=5, help="Spec-Bench prompts per category (default 5)")
    p.add_argument("--tokens", type=int, default=128, help="greedy tokens per answer (default 128)")
    p.add_argument("--formats", default="gguf,int4,int8", help="comma-separated: gguf, int4, int8")
    p.add_argument("--batch", type=int, default=10, help="requests stepped together (default 10)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-llamacpp", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="directory for gguf_quality.json and gguf_quality.md")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    bench_prompts = load_prompts("spec-bench", limit=a.per_category)
    reference = specdecode.load(a.model, dtype="bfloat16", threads=a.threads)
    ref_engine = Engine(reference, prefix_cache=0)
    prompt_ids = [ref_engine.encode(bp.message(True), chat=True) for bp in bench_prompts]
    eos = reference.tokenizer.eos_token_ids
    t0 = time.perf_counter()
    outputs = {"bf16 (reference)": generate_all(ref_engine, prompt_ids, a.tokens, a.batch, "bf16")}
    del ref_engine, reference
    for fmt in a.formats.split(","):
        model = specdecode.load(a.model, dtype="bfloat16", quantize=fmt, threads=a.threads)
        outputs[f"specdecode {fmt}"] = generate_all(Engine(model, prefix_cache=0), prompt_ids, a.tokens, a.batch, fmt)
        del model
    if not a.no_llamacpp:
        from specdecode.bench.llamacpp import LlamaCppRunner, llama_cpp_version, resolve_gguf

        runner = LlamaCppRunner(resolve_gguf(a.model), eos, a.threads)
        outputs[f"llama.cpp {llama_cpp_version()}"] = [
            runner.run(ids, SamplingParams(max_new_tokens=a.tokens)).output_ids
            for ids in tqdm(prompt_ids, desc="llama.cpp", unit="prompt", leave=False)]
        runner.close()
    ref = outputs["bf16 (reference)"]
    rows = []
    for name, outs in outputs.items():
        if name == "bf16 (reference)":
            continue
        diffs = [first_difference(o, r) for o, r in zip(outs, ref)]
        differing = [d for d in diffs if d is not None]
        by_cat: dict[str, list[bool]] = {}
        for bp, d in zip(bench_prompts, diffs):
            by_cat.setdefault(bp.category, []).append(d is None)
        rows.append({"method": name, "identical": len(diffs) - len(differing), "prompts": len(diffs),
                     "mean_first_difference": statistics.mean(differing) if differing else None,
                     "first_differences": diffs,
                     "identical_by_category": {c: sum(v) for c, v in by_cat.items()}})
    result = {"model": a.model, "cpu": cpu_summary(), "tokens": a.tokens, "per_category": a.per_category,
              "threads": a.threads, "seconds": time.perf_counter() - t0, "rows": rows,
              "command": "scripts/gguf_quality.py " + " ".join(f"{k}={v}" for k, v in vars(a).items() if k != "out")}
    text = render(result)
    print(text)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "gguf_quality.json").write_text(json.dumps(result, indent=1))
        (a.out / "gguf_quality.md").write_text(text)


def render(r: dict) -> str:
    cats = list(r["rows"][0]["identical_by_category"]) if r["rows"] else []
    lines = [f"# Closeness to the GGUF file's own model: {r['model']}", "",
             f"CPU: {r['cpu']}; {r['threads']} threads; Spec-Bench, {r['per_category']} prompts per category, "
             f"{r['tokens']} greedy tokens; reference: the file de-quantized to bf16.", "",
             "| method | identical outputs | mean first differing token (of those that differ) | "
             + " | ".join(cats) + " |",
             "|---|---:|---:|" + "---:|" * len(cats)]
    for row in r["rows"]:
        mean = f"{row['mean_first_difference']:.1f}" if row["mean_first_difference"] is not None else "-"
        per = " | ".join(f"{row['identical_by_category'][c]}" for c in cats)
        lines.append(f"| {row['method']} | {row['identical']}/{row['prompts']} | {mean} | {per} |")
    lines += ["", "(per category: identical outputs of that category's prompts)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
