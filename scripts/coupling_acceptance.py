"""How often a draft token is accepted under the two exact sampling rules, on real models.

Rejection sampling (Leviathan et al. 2023) accepts a draft token x ~ q with probability
min(1, p(x)/q(x)): per position, P(accept) = sum_x min(p, q) = 1 - TV(p, q), the most any
coupling can give. Drafter-invariant sampling (sampling.PositionNoise; Daliri, Musco, Suresh
2024) accepts when argmax(q / E) == argmax(p / E) for the position's shared noise E: P(accept)
>= (1 - TV) / (1 + TV), but the output is a function of (seed, position) alone, so a seed
replays exactly whatever the drafter, k, batch or history. This script measures both on the
target's own sampled outputs (teacher-forced: p and q at every output position):

    .venv/bin/python scripts/coupling_acceptance.py --target qwen2.5-coder-1.5b \\
        --draft qwen2.5-coder-0.5b --quantize int4 --limit 2 -n 48 -t 0.7
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import torch


@torch.inference_mode()
def position_probs(model, ids: list[int], out: list[int], params) -> torch.Tensor:
    """(len(out), V) the model's distribution for each out[j] after ids + out[:j], one pass."""
    from specdecode.sampling import logits_to_probs

    cache = model.new_cache(len(ids) + len(out) + 1)
    seq = ids + out[:-1]
    logits = model(torch.tensor([seq]), torch.arange(len(seq)).view(1, -1), cache, num_logits=len(out))[0]
    return logits_to_probs(logits.float(), params)  # (len(out), V)


def acceptances(p: torch.Tensor, q: torch.Tensor, draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: (1 - TV(p, q), P(argmax q/E == argmax p/E) over `draws` noise vectors)."""
    overlap = torch.minimum(p, q).sum(-1)  # (n,)
    g = torch.Generator().manual_seed(seed)
    same = torch.zeros(p.shape[0])
    for _ in range(draws):
        e = torch.empty_like(p).exponential_(1.0, generator=g)  # (n, V)
        same += ((p / e).argmax(-1) == (q / e).argmax(-1)).float()
    return overlap, same / draws


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--quantize", default="int4", help="int4 | int8 | none, for both models (default: int4)")
    ap.add_argument("--dataset", default="spec-bench,humaneval")
    ap.add_argument("--limit", type=int, default=2, help="prompts per category")
    ap.add_argument("-n", "--max-new-tokens", type=int, default=48)
    ap.add_argument("-t", "--temperature", type=float, action="append", help="repeatable (default: 0.7 and 1.0)")
    ap.add_argument("--draws", type=int, default=32, help="noise vectors per position for the coupling estimate")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    import specdecode
    from specdecode.bench.datasets import load_prompts
    from specdecode.config import SamplingParams
    from specdecode.engine import Engine

    quant = None if args.quantize == "none" else args.quantize
    target = specdecode.load(args.target, threads=args.threads, quantize=quant)
    draft = specdecode.load(args.draft, threads=args.threads, quantize=quant)
    engine = Engine(target, None)
    prompts = load_prompts(args.dataset, None, args.limit)
    print("| temperature | category | positions | rejection sampling (1 - TV) | drafter-invariant (shared noise) | ratio |")
    print("|---:|---|---:|---:|---:|---:|")
    for temp in args.temperature or [0.7, 1.0]:
        rows: dict[str, list[torch.Tensor]] = defaultdict(lambda: [torch.empty(0), torch.empty(0)])
        for i, pr in enumerate(prompts):
            params = SamplingParams(temperature=temp, max_new_tokens=args.max_new_tokens, seed=1000 + i)
            ids = engine.tokenizer.encode_prompt(pr.message(True), chat=True)
            out = engine.generate(ids, params).token_ids
            if not out:
                continue
            p = position_probs(target.lm, ids, out, params)
            q = position_probs(draft.lm, ids, out, params)
            rs, gm = acceptances(p, q, args.draws, seed=i)
            for key in (pr.category, "all"):
                rows[key][0] = torch.cat([rows[key][0], rs])
                rows[key][1] = torch.cat([rows[key][1], gm])
            print(f"[{temp} {i + 1}/{len(prompts)}] {pr.category}", file=sys.stderr)
        for cat, (rs, gm) in sorted(rows.items(), key=lambda kv: kv[0] == "all"):
            print(f"| {temp} | {cat} | {rs.numel()} | {rs.mean():.3f} | {gm.mean():.3f} | {gm.mean() / rs.mean():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
