"""Replay a conversation benchmark's turns with the prefix cache off and check every output is the same.

    .venv/bin/python scripts/prefix_cache_check.py docs/benchmarks/cpu-avx2-qwen-conversations/conversations.json

The benchmark runs every method with its prefix cache on; this runs the int4 target alone with
no prefix cache (every turn prefilled whole) over the same conversations, and compares each
turn's greedy output with what `target-int4` produced with the cache. Prints one line per
conversation and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specdecode import Engine, SamplingParams, load  # noqa: E402
from specdecode.bench.methods import EngineRunner  # noqa: E402
from specdecode.bench.multiturn import load_conversations, run_conversation  # noqa: E402
from specdecode.quant import quantized_copy  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="conversations.json of a `specdecode bench --dataset code-chat ...` run")
    p.add_argument("--method", default="target-int4", help="the method whose outputs to check (default target-int4)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    results = json.loads(Path(args.results).read_text())
    cfg = results["config"]
    target = load(cfg["target"], threads=args.threads)
    lm = quantized_copy(target.lm, "int4") if args.method.startswith(("target-int4", "spec-int4")) else target.lm
    engine = Engine(lm, None, tokenizer=target.tokenizer, eos_token_ids=list(target.tokenizer.eos_token_ids),
                    prefix_cache=None)
    runner = EngineRunner(engine)
    params = SamplingParams(temperature=0.0, max_new_tokens=cfg["max_new_tokens"])
    by_id = {c.id: c for c in load_conversations(cfg["dataset"], cfg["limit"])}
    bad = 0
    for record in results["conversations"]:
        want = record["results"][args.method]
        got = run_conversation(runner, by_id[record["id"]], target.tokenizer, params, lm.max_context)
        same = [g["output_ids"] == w["output_ids"] for g, w in zip(got, want)] + [len(got) == len(want)]
        bad += not all(same)
        print(f"{record['id']}: {sum(same[:-1])}/{len(want)} turns identical with the prefix cache off", flush=True)
    print("all identical" if not bad else f"{bad} conversations differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
