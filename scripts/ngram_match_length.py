"""How often does the n-gram drafter's guess hold, by the length of the matched suffix?

Replays the drafter (no model runs) over recorded target outputs: for every output position,
the context is prompt + output so far; the drafter's longest suffix match (n = 1..3) proposes
up to 8 tokens, compared with what the target actually produced. Prints, per n, how many
positions had such a match, P(first draft token accepted) and the mean accepted prefix.
These set the n-gram priors of drafters/policy.py (PRIORS) and answer whether 1-token matches
are worth keeping (docs/policy.md).

    .venv/bin/python scripts/ngram_match_length.py docs/benchmarks/cpu-avx2-qwen-*/results.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(paths: list[str]) -> None:
    from specdecode.bench.datasets import load_prompts
    from specdecode.drafters import NgramDrafter
    from specdecode.loading import _gguf_tokenizer, registry
    from specdecode.tokenizer import Tokenizer

    tok = None
    stats: dict[int, list[float]] = defaultdict(lambda: [0, 0, 0.0])  # n -> [positions, first accepted, accepted]
    outputs = 0
    for path in paths:
        results = json.loads(Path(path).read_text())
        cfg = results["config"]
        if tok is None:
            gguf = registry.pull(cfg["target"])
            tok = Tokenizer(_gguf_tokenizer(Path(gguf), "qwen2"), [])
        prompts = {p.id: p for p in load_prompts(cfg["dataset"], cfg.get("categories"), None)}
        for rec in results["prompts"]:
            p = prompts.get(rec["id"])
            out = rec["results"]["target"]["output_ids"]
            if p is None:
                continue
            ids = tok.encode_prompt(p.message(True), chat=True)
            outputs += 1
            drafter = NgramDrafter()
            drafter.begin(ids, 0, "cpu")
            for i in range(len(out)):
                n, guess = drafter.match(ids + out[:i], 8)
                if n == 0:
                    continue
                acc = 0
                while acc < len(guess) and i + acc < len(out) and guess[acc] == out[i + acc]:
                    acc += 1
                s = stats[n]
                s[0] += 1
                s[1] += acc > 0
                s[2] += acc
    print(f"{outputs} recorded target outputs")
    print(f"{'match n':>8} {'positions':>10} {'P(first accepted)':>18} {'mean accepted':>14}")
    for n in sorted(stats):
        pos, first, acc = stats[n]
        print(f"{n:>8} {pos:>10} {first / pos:>18.2f} {acc / pos:>14.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
