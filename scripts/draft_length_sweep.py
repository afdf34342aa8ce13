"""Draft-length sweep on the int8 Qwen pair: decode tok/s for k = 1..4 (int8 0.5B draft) and
k = 1..8 (n-gram) on one code and one chat prompt, 64 greedy tokens, each beside the int8 target
alone; asserts that every speculative output equals the target-alone output.

    .venv/bin/python scripts/draft_length_sweep.py [--threads 2]
"""

import argparse

import specdecode
from specdecode.bench.datasets import load_prompts
from specdecode.config import SamplingParams
from specdecode.drafters import ModelDrafter, NgramDrafter

DRAFT_LENGTHS = {"model": (1, 2, 3, 4), "ngram": (1, 2, 4, 8)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    target = specdecode.load("qwen2.5-coder-1.5b", quantize="int8", threads=a.threads)
    draft = specdecode.load("qwen2.5-coder-0.5b", quantize="int8", threads=a.threads)
    # The first prompt of each, in the chat format `specdecode bench` sends.
    prompts = [load_prompts("humaneval", limit=1)[0], load_prompts("spec-bench", ["mt_bench"], limit=1)[0]]
    params = SamplingParams(max_new_tokens=64)
    for prompt in prompts:
        text = prompt.message(chat=True)
        alone = specdecode.Engine(target)
        alone.generate(text, params)  # warm-up
        base = alone.generate(text, params)
        base_tps = base.stats.decode_tokens_per_second
        print(f"{prompt.category} ({prompt.id}) target-int8 {base_tps:.2f} tok/s", flush=True)
        for kind, ks in DRAFT_LENGTHS.items():
            for k in ks:
                drafter = ModelDrafter(draft.lm) if kind == "model" else NgramDrafter()
                r = specdecode.Engine(target, drafter, num_draft_tokens=k).generate(text, params)
                assert r.token_ids == base.token_ids, f"{kind} k={k} differs from the target alone"
                s = r.stats
                print(f"  {kind} k={k} {s.decode_tokens_per_second:.2f} tok/s ({s.decode_tokens_per_second / base_tps:.2f}x)"
                      f" acceptance {s.acceptance_rate:.2f}, {s.tokens_per_pass:.2f} tokens per pass", flush=True)


if __name__ == "__main__":
    main()
