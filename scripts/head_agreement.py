"""How often a draft head's first draft equals the target's next token, teacher-forced, on the
benchmark prompts' answers (Spec-Bench by category, HumanEval), for the head's own draft
vocabulary and for larger ones made of the target's lm_head rows (the missing target ids, lowest
first, as a bigger draft vocabulary would add them; "full": all of them).

    .venv/bin/python scripts/head_agreement.py qwen2.5-coder-1.5b --quantize int4 --threads 2

Evaluation only: nothing is trained on these prompts. Every generated position counts (the
benchmark's acceptance counts only the rounds the planner chose to draft, so it reads higher).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict

import torch

import specdecode
from specdecode.bench.datasets import load_prompts
from specdecode.bench.machine import cpu_summary
from specdecode.engine import Engine
from specdecode.heads.data import collect
from specdecode.heads.model import lm_head_weight
from specdecode.heads.pipeline import head_drafter_for


def vocabularies(d2t: torch.Tensor, vocab_size: int, sizes: list[int]) -> dict[str, torch.Tensor]:
    """name -> the target ids a draft vocabulary holds: the head's, the head's grown to each size
    with the lowest ids it lacks, and the whole vocabulary."""
    out = {f"head ({d2t.numel()})": d2t}
    taken = torch.zeros(vocab_size, dtype=torch.bool)
    taken[d2t] = True
    missing = (~taken).nonzero().view(-1)
    for size in sizes:
        if d2t.numel() < size < vocab_size:
            out[str(size)] = torch.cat([d2t, missing[: size - d2t.numel()]])
    out["full"] = torch.arange(vocab_size)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--quantize", default="int4", choices=["none", "int8", "int4"])
    ap.add_argument("--head", default=None, help="a head directory (default: the target's trained head)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-category", type=int, default=5, help="Spec-Bench prompts per category")
    ap.add_argument("--humaneval", type=int, default=10, help="HumanEval prompts")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--sizes", default="16384,32768", help="larger draft vocabularies to try, comma-separated")
    ap.add_argument("--windows", default="", help="catch-up windows to try with the head's own vocabulary, "
                    "comma-separated pairs (e.g. 32,128)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = specdecode.load(args.model, quantize=None if args.quantize == "none" else args.quantize,
                            threads=args.threads)
    head = head_drafter_for(model, args.head).model
    prompts = load_prompts("spec-bench", None, args.per_category) + load_prompts("humaneval", None, args.humaneval)
    engine = Engine(model, None)
    encoded = [engine.encode(p.message(True)) for p in prompts]
    answers = collect(model, encoded, max_new_tokens=args.max_new_tokens, batch=8, progress=True)
    W = lm_head_weight(model.lm)  # (V, D)
    sets = vocabularies(head.head.d2t.cpu(), W.shape[0], [int(s) for s in args.sizes.split(",") if s])
    rows_of = {name: W[ids] for name, ids in sets.items()}  # (|ids|, D): gathered once
    agree: dict[str, Counter] = defaultdict(Counter)
    total: Counter = Counter()
    windows = [int(w) for w in args.windows.split(",") if w]
    if any(w < 1 for w in windows):
        ap.error(f"--windows: each window is at least one pair, got {args.windows}")
    own = next(iter(sets))  # the head's own vocabulary
    for tokens, features in answers:  # in the order answers finished: find each one's prompt
        t = tokens.tolist()
        i = next(i for i, e in enumerate(encoded) if t[: len(e)] == e)
        P, T = len(encoded[i]), tokens.shape[0]
        cache = head.new_cache(T + 2)
        # Row t: the pair (f_t, x_{t+1}) -> the head's f_{t+1}, whose argmax drafts x_{t+2}.
        h, _ = head.step(tokens[1:T].long(), features[: T - 1], torch.arange(T - 1), cache)  # (T-1, D)
        rows = h.float()[torch.arange(P - 2, T - 2)]  # the rows that draft generated tokens
        truth = tokens[P:T].long()
        category = prompts[i].category
        for name, ids in sets.items():
            agree[category][name] += int((ids[(rows @ rows_of[name].T).argmax(-1)] == truth).sum())
        for w in windows:  # the first draft (context P + 1 tokens) fed pairs t in [P - w, P), then every pair since
            s = max(P - w, 0)
            h, _ = head.step(tokens[s + 1 : T].long(), features[s : T - 1], torch.arange(s, T - 1), head.new_cache(T + 2))
            rows = h.float()[torch.arange(max(P - 2, s), T - 2) - s]
            picked = sets[own][(rows @ rows_of[own].T).argmax(-1)] == truth[truth.numel() - rows.shape[0] :]
            agree[category][f"window {w}"] += int(picked.sum())
        total[category] += truth.numel()
    spec = [c for c in total if c != "code"]
    report = {"cpu": cpu_summary(), "model": args.model, "quantize": args.quantize}
    for name, cats in [*((c, [c]) for c in total), ("Spec-Bench", spec)]:
        n = sum(total[c] for c in cats)
        names = [*sets, *(f"window {w}" for w in windows)]
        report[name] = {s: round(sum(agree[c][s] for c in cats) / n, 3) for s in names} | {"positions": n}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
