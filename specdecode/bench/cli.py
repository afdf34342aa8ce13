"""`specdecode bench`: the command line of the benchmark harness."""

from __future__ import annotations

import argparse
import sys

from ..cli_common import DEFAULT_TARGET


def add_parser(subparsers) -> argparse.ArgumentParser:  # noqa: ANN001 - argparse's private type
    from ..engine import DEFAULT_NUM_DRAFT_TOKENS
    from .methods import METHODS

    defaults = ",".join(m for m, spec in METHODS.items() if spec.default)
    defaults_k = ", ".join(f"{kind} {k}" for kind, k in DEFAULT_NUM_DRAFT_TOKENS.items())
    p = subparsers.add_parser(
        "bench", help="benchmark speculative decoding against the baselines, side by side",
        description="Run every method on the same prompts (interleaved, warm, repeated) and write results.json, "
                    "results.md and PNG charts. Example: specdecode bench --target qwen2.5-coder-1.5b "
                    "--draft qwen2.5-coder-0.5b --limit 5 --max-new-tokens 128 --out bench_out",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--target", "--model", "-m", dest="model", default=DEFAULT_TARGET,
                   help="target model: short name, .gguf path, HF dir or hub id")
    p.add_argument("--draft", default=None, help="draft model for spec-model and hf-assisted (same tokenizer)")
    p.add_argument("--methods", default="all",
                   help=f"comma list of methods; 'all' = {defaults}; 'target' always runs. Registered: {', '.join(METHODS)}")
    p.add_argument("--dataset", default="spec-bench", help="spec-bench | humaneval | PATH.jsonl ({\"prompt\": ..., \"category\": ...}), or a comma list "
                        "for one run over several (spec-bench,humaneval); conversations: code-chat (ours: write, "
                        "revise, test) and/or mt-bench-2turn (MT-bench's two turns), each turn resending the "
                        "conversation, with every method's prompt cache kept (conversations.md)")
    p.add_argument("--categories", default=None,
                   help="comma list (spec-bench: mt_bench,translation,summarization,qa,math_reasoning,rag; humaneval: code)")
    p.add_argument("--limit", type=int, default=None, help="prompts per category (default: all)")
    p.add_argument("--max-new-tokens", "-n", type=int, default=128, help="most tokens per generation, for every method")
    p.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (outputs are checked for equality)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per prompt and method; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="prompts run untimed by every method before timing")
    p.add_argument("--num-draft-tokens", "-k", type=int, default=None,
                   help="tokens drafted per round, for the drafting methods (default: specdecode's, "
                        f"{defaults_k}; spec-int4-* let the cost policy choose)")
    p.add_argument("--adaptive", action="store_true",
                   help="adaptive draft length (specdecode's policy; HF's heuristic schedule for hf-assisted)")
    p.add_argument("--prompt-format", choices=["auto", "chat", "raw"], default="auto",
                   help="chat template or raw text; auto = chat if the tokenizer has a template")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "float16"],
                   help="weights dtype (auto = bfloat16)")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (auto = cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: all cores)")
    p.add_argument("--head", metavar="PATH",
                   help="the draft head of the *-head methods and of *-auto (default: the head `specdecode heads "
                        "train` made for the target, if any; auto methods run without a head when there is none)")
    p.add_argument("--out", default="bench_out", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out, skipping finished prompts")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results.json in --out")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--list-methods", action="store_true", help="print the registered methods and exit")
    p.set_defaults(func=cmd_bench)
    return p


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def config_from_args(args: argparse.Namespace):
    from .harness import BenchConfig

    return BenchConfig(
        target=args.model, draft=args.draft, methods=_csv(args.methods) or ["all"], dataset=args.dataset,
        categories=_csv(args.categories), limit=args.limit, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, seed=args.seed, repeats=args.repeats, warmup=args.warmup,
        num_draft_tokens=args.num_draft_tokens, adaptive=args.adaptive, prompt_format=args.prompt_format,
        dtype=args.dtype, device=args.device, threads=args.threads, head=args.head, out=args.out, resume=args.resume,
        overwrite=args.overwrite, progress=not args.quiet,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from .harness import run_bench
    from .methods import METHODS

    if args.list_methods:
        for name, m in METHODS.items():
            flags = ", ".join(f for f, on in (("needs --draft", m.needs_draft), ("not in 'all'", not m.default)) if on)
            print(f"{name:<14} {m.description}" + (f"  [{flags}]" if flags else ""))
        return 0
    config = config_from_args(args)
    # Before any model loads: a missing optional dependency must not surface after an hour's run.
    from .report import charts_missing

    no_charts = charts_missing()
    if no_charts:
        print(f"specdecode bench: warning: no charts: {no_charts} (results.json and results.md are written)",
              file=sys.stderr, flush=True)
    try:
        import transformers

        transformers.logging.set_verbosity_error()  # per-call generate() notices would break the progress bar
        results = run_bench(config)
    except KeyboardInterrupt:
        print(f"\nspecdecode bench: interrupted; finished prompts are in {config.out}/results.json "
              f"(--resume continues)", file=sys.stderr)
        return 130
    if results.get("config", {}).get("kind") == "conversations":
        print(f"{len(results['conversations'])} conversations; TTFT of turns 2+, decode tok/s, conversation time:",
              file=sys.stderr)
        for m, s in results["summary"]["overall"].items():
            ttft = f"{s['ttft_later_s']:.2f} s" if s["ttft_later_s"] is not None else "-"
            tps = f"{s['decode_tokens_per_s']:.2f}" if s["decode_tokens_per_s"] else "-"
            bad = f"  ({s['turns_differing']} turns differ from the reference)" if s["turns_differing"] else ""
            print(f"  {m:<22} {ttft:>8}  {tps:>7} tok/s  {s['conversation_s']:.1f} s{bad}", file=sys.stderr)
        print(f"wrote {config.out}/conversations.json, conversations.md", file=sys.stderr)
        return 0
    overall = results["summary"]["by_category"]["overall"]
    print(f"{len(results['prompts'])} prompts; decode tokens/s and speed-up over the target-only loop:", file=sys.stderr)
    for m, s in overall.items():
        tps = f"{s['decode_tokens_per_s']:.2f}" if s["decode_tokens_per_s"] else "-"
        sp = f"{s['speedup_vs_target']:.2f}x" if s["speedup_vs_target"] else "-"
        bad = f"  ({s['mismatches_vs_target']} outputs differ from target-only)" if s["mismatches_vs_target"] else ""
        print(f"  {m:<14} {tps:>9} tok/s  {sp:>7}{bad}", file=sys.stderr)
    print(f"wrote {config.out}/results.json, results.md" + ("" if no_charts else " and charts"), file=sys.stderr)
    return 0
