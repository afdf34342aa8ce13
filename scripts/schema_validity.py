"""Do constrained answers follow their schema? N requests on a real model, each checked by jsonschema.

The json-extract prompts (specdecode/bench/data/json_extract.jsonl: extraction and tool-call
arguments, a schema each) or, with --dataset tool-calls, the tool-call requests
(specdecode/bench/data/tool_calls.jsonl: a call is valid when the answer is one call of an offered
function with arguments valid for its parameters), greedy and sampled with several seeds, through the engine
`specdecode bench`'s spec-int4-auto method builds (int4 target, int4 draft model + n-gram +
suffix, the planner choosing): the share of answers valid for their schema, why the others are
not, tokens per target pass and the share of tokens the grammar forced.

    .venv/bin/python scripts/schema_validity.py --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \\
        --seeds 4 -n 256 [--dataset tool-calls]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--seeds", type=int, default=4, help="sampled requests per prompt, besides the greedy one")
    ap.add_argument("-t", "--temperature", type=float, default=0.7)
    ap.add_argument("-n", "--max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dataset", choices=["json-extract", "tool-calls"], default="json-extract")
    args = ap.parse_args()
    import jsonschema
    from tqdm.auto import tqdm

    import specdecode
    from specdecode.bench.datasets import load_prompts
    from specdecode.bench.machine import cpu_summary
    from specdecode.drafters import ModelDrafter, NgramDrafter, SuffixDrafter

    target = specdecode.load(args.target, quantize="int4", threads=args.threads)
    draft = specdecode.load(args.draft, quantize="int4", threads=args.threads)
    engine = specdecode.Engine(target, [ModelDrafter(draft.lm), NgramDrafter(), SuffixDrafter()])
    prompts = load_prompts(args.dataset)
    jobs = [(p, None) for p in prompts] + [(p, s) for p in prompts for s in range(args.seeds)]
    valid, why, tokens, passes, forced = 0, Counter(), 0, 0, 0
    for p, seed in tqdm(jobs, desc="requests", file=sys.stderr):
        params = specdecode.SamplingParams(max_new_tokens=args.max_new_tokens, json_schema=p.json_schema,
                                           temperature=0.0 if seed is None else args.temperature, seed=seed)
        spec = p.tool_spec
        if spec is None:
            r = engine.generate(p.text, params, chat=True)
        else:
            r = engine.generate(p.text, params, chat=True, tools=p.tools, tool_choice=p.tool_choice,
                                parallel_tool_calls=False)
        tokens, passes, forced = tokens + r.stats.generated_tokens - 1, passes + r.stats.target_passes, forced + r.stats.forced_tokens
        try:
            if spec is None:
                jsonschema.validate(json.loads(r.text), p.json_schema)
            else:
                schemas = {t.name: t.parameters for t in spec.callable}
                if r.finish_reason != "tool_calls" or len(r.tool_calls) != 1 or r.tool_calls[0].name not in schemas:
                    why[f"not one call of an offered function (finish: {r.finish_reason})"] += 1
                    continue
                jsonschema.validate(json.loads(r.tool_calls[0].arguments), schemas[r.tool_calls[0].name])
            valid += 1
        except json.JSONDecodeError:
            why[f"not JSON (finish: {r.finish_reason})"] += 1
        except jsonschema.ValidationError as e:
            why[f"schema: {e.message[:60]}"] += 1
    print(f"CPU: {cpu_summary()}")
    print(f"{valid} of {len(jobs)} answers valid for their schema ({valid / len(jobs):.0%}); "
          f"{len(prompts)} prompts x (greedy + {args.seeds} seeds at temperature {args.temperature}), "
          f"at most {args.max_new_tokens} tokens")
    print(f"tokens per target pass {tokens / max(passes, 1):.2f}; forced by the grammar {forced / max(tokens, 1):.0%} of tokens")
    for reason, n in why.most_common():
        print(f"  {n} x {reason}")


if __name__ == "__main__":
    main()
