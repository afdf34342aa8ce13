"""What the commands share: the model and sampling options, and building an Engine from them.

specdecode.cli (generate, models), bench/cli.py and server/cli.py all import this module, and
it imports none of them: the command modules never import each other.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .errors import SpecdecodeError
from .loader import DRAFT_QUANT_HEAD
from .drafters.draft_vocab import DEFAULT_ROWS as DRAFT_VOCAB_ROWS
from .prefix_cache import DEFAULT_PREFIX_CACHE_GB

DEFAULT_TARGET = "qwen2.5-coder-1.5b"


def add_model_options(p: argparse.ArgumentParser, default_model: str | None = DEFAULT_TARGET) -> None:
    """Options shared by generate, bench and serve: which models, on what, in what dtype."""
    from .engine import DEFAULT_NUM_DRAFT_TOKENS

    start_k = ", ".join(f"{k} for {kind}" for kind, k in DEFAULT_NUM_DRAFT_TOKENS.items())
    p.add_argument("--model", "-m", default=default_model, help=f"target model: short name, .gguf path, HF dir or hub id (default: {default_model})")
    p.add_argument("--draft", help="draft model (same tokenizer as the target): short name, .gguf, HF dir or hub id")
    p.add_argument("--drafter", choices=["auto", "model", "ngram", "suffix", "self", "head", "none"], default="auto",
                   help="how to draft: 'model' (needs --draft), 'ngram' (prompt lookup, no second model), "
                        "'suffix' (continuations of earlier requests' outputs), "
                        "'self' (the target drafts from a quantized copy of itself, see --draft-quantize), "
                        "'head' (a draft head on the target's own hidden states, trained with `specdecode heads "
                        "train`, or --head PATH), 'none' (target only); 'auto' (default) = the n-gram and suffix "
                        "drafters, plus the draft model if --draft is given and the head if one was trained for the "
                        "target, the policy choosing one per round")
    p.add_argument("--head", metavar="PATH",
                   help="the draft head for --drafter head / auto: our head directory or a published EAGLE-1 or EAGLE-3 "
                        "checkpoint (model.safetensors + config.json) "
                        "(default: the one `specdecode heads train` made for the target, if any)")
    p.add_argument("--num-draft-tokens", "-k", type=_draft_length, default="auto",
                   help="tokens drafted per round: 'auto' (default: chosen each round from pass costs measured on "
                        "this machine and the acceptance so far, 0 when speculation would not pay) or a fixed N >= 1")
    p.add_argument("--ngram-branches", type=int, default=1, metavar="N",
                   help="the n-gram drafter drafts token trees of N earlier occurrences' continuations, and the "
                        "suffix drafter trees of its stored continuations (default 1: chains; trees are verified "
                        "exactly, docs/trees.md; they have not yet measured faster than the chain)")
    p.add_argument("--draft-branches", type=int, default=1, choices=[1, 2], metavar="N",
                   help="2: the draft model and the draft head draft token trees, their chain plus their second "
                        "choices where the planner finds verify rows for free (greedy requests; docs/trees.md); "
                        "default 1, a chain")
    p.add_argument("--draft-vocab", type=_row_count, default=DRAFT_VOCAB_ROWS, metavar="N",
                   help="the draft model (--draft, or the target's copy with --drafter self) scores only the "
                        "first N ids of the vocabulary, the common ones in a BPE vocabulary: its output layer "
                        f"is a large share of a small model's reads (default {DRAFT_VOCAB_ROWS}, where the "
                        "vocabulary is at least 1.5x that; 0 = all ids). Output never changes, only speed")
    p.add_argument("--adaptive", action="store_true",
                   help=f"with one drafter: start at k = {start_k} (or -k N) and grow / shrink it with acceptance "
                        "(--drafter auto then means the draft model if given, else n-gram)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "float16"],
                   help="weights dtype (default: bfloat16, the fastest on CPU and GPU)")
    p.add_argument("--quantize", choices=["none", "int8", "int4", "gguf"], default="none",
                   help="quantization of the target's linear layers (fewer bytes read per token; on CPU int8/int4 "
                        "weights with int8 activations per block of 32, docs/kernels.md; gguf: a GGUF file's own "
                        "blocks as shipped (Q4_K, Q6_K, Q8_0, Q5_0, Q4_0), CPU only; changes the target's "
                        "output slightly, speculation stays exact to it)")
    p.add_argument("--draft-quantize", choices=["none", "int8", "int4", "gguf"], default=None,
                   help="quantization of the draft model (--draft), or of the target's copy with --drafter self "
                        "(default: none for --draft, int4 for self)")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: all cores)")
    p.add_argument("--prefix-cache-gb", type=float, default=DEFAULT_PREFIX_CACHE_GB, metavar="GB",
                   help="memory for the KV rows of prompts and answers already computed: a request that starts "
                        "with one (a conversation's history, a shared system prompt) prefills only the rest; "
                        "output bits do not change (docs/prefix-cache.md; 0 = off; default "
                        f"{DEFAULT_PREFIX_CACHE_GB:g})")
    p.add_argument("--tp", type=int, default=1, metavar="N",
                   help="tensor parallelism: shard the target over N processes started by torchrun, one per rank "
                        "(torchrun --nproc-per-node N -m specdecode ... --tp N; gloo on CPU, NCCL on CUDA; "
                        "docs/scale-out.md; default 1)")
    p.add_argument("--tp-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="with --tp N > 1: a rank that does not answer a collective within this time, or dies, "
                        "ends the others with an error (default 60)")


def _row_count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of ids, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (all ids) or more, got {n}")
    return n


def _draft_length(value: str) -> str | int:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {value!r}") from None


def add_sampling_options(p: argparse.ArgumentParser, default_max_new_tokens: int = 256) -> None:
    p.add_argument("--max-new-tokens", "-n", type=int, default=default_max_new_tokens,
                   help=f"most tokens to generate (default {default_max_new_tokens})")
    p.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for reproducible sampling")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def describe_drafter(engine) -> str:
    """The drafter(s) and draft length an engine runs with, in a few words (generate --stats, chat)."""
    if engine.drafter is None:
        return "none (target only)"
    names = "+".join(getattr(engine.drafter, "names", [engine.drafter.name]))
    if engine.auto:
        return f"{names}, k=auto (0..{engine.num_draft_tokens}, chosen per round)"
    return f"{names}, k={engine.num_draft_tokens}{' adaptive' if engine.adaptive else ''}"


def build_engine(args: argparse.Namespace, progress: bool = True):
    """Load target (+ draft) per the shared options and return an Engine."""
    import specdecode

    from .drafters import ModelDrafter, NgramDrafter, SelfDrafter, SuffixDrafter
    from .engine import check_same_vocab

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
    head_path = getattr(args, "head", None)
    if head_path and drafter_kind not in ("head", "auto"):
        raise SpecdecodeError(f"--head was given but --drafter is {drafter_kind!r}; drop one of them")
    draft_branches = getattr(args, "draft_branches", 1)
    if draft_branches > 1 and drafter_kind not in ("model", "head", "auto"):
        raise SpecdecodeError(f"--draft-branches applies to the draft model and the draft head, but --drafter is "
                              f"{drafter_kind!r}")
    # checked before anything loads (the Engine would say the same after minutes of loading)
    if isinstance(k, int) and k < 1 and drafter_kind != "none":  # (without a drafter k is ignored)
        raise SpecdecodeError(f"num_draft_tokens (-k) must be 'auto' or an integer >= 1, got {k}")
    branches = getattr(args, "ngram_branches", 1)
    if branches < 1:
        raise SpecdecodeError(f"--ngram-branches must be >= 1, got {branches}")
    group = tensor_parallel_group(args)
    if group is not None:
        progress = progress and group.leader  # the other ranks work silently
    target = _load(args.model, args, "target", progress, getattr(args, "quantize", None), group)
    draft_quantize = getattr(args, "draft_quantize", None)
    drafter = None
    if drafter_kind in ("model", "auto") and args.draft:
        draft = _load(args.draft, args, "draft", progress, draft_quantize, group, replicated=True,
                      head=DRAFT_QUANT_HEAD)
        drafter = ModelDrafter(draft.lm, branches=draft_branches, vocab_rows=getattr(args, "draft_vocab", None))
        check_same_vocab(target.lm, draft.lm, target.tokenizer, draft.tokenizer)
    head = None
    if drafter_kind == "head" or (drafter_kind == "auto" and (head_path or _has_head(target))):
        from .heads.pipeline import head_drafter_for

        head = head_drafter_for(target, head_path, branches=draft_branches)
        if progress:
            print(f"draft head: {head.describe()}", file=sys.stderr, flush=True)
    if draft_branches > 1 and drafter is None and head is None:
        raise SpecdecodeError("--draft-branches needs a draft model (--draft) or a draft head (`specdecode heads "
                              "train`, or --head PATH)")
    if drafter_kind == "auto":
        drafter = [d for d in (drafter, head, NgramDrafter(branches=branches), SuffixDrafter(branches=branches))
                   if d is not None]
    elif drafter_kind == "head":
        drafter = head
    elif drafter_kind == "ngram":
        drafter = NgramDrafter(branches=branches)
    elif drafter_kind == "suffix":
        drafter = SuffixDrafter(branches=branches)
    elif drafter_kind == "self":
        mode = "int4" if draft_quantize in (None, "none") else draft_quantize
        if mode == "gguf":
            raise SpecdecodeError("--drafter self drafts from an int8 or int4 copy of the target; "
                                  "--draft-quantize gguf applies to a --draft GGUF model")
        drafter = SelfDrafter(target.lm, mode, vocab_rows=getattr(args, "draft_vocab", None))
        if progress:
            print(f"self-drafter: {mode} copy of the target", file=sys.stderr, flush=True)
    engine = specdecode.Engine(target, drafter, num_draft_tokens=k, adaptive=adaptive,
                               prefix_cache=getattr(args, "prefix_cache_gb", DEFAULT_PREFIX_CACHE_GB))
    engine.tp_group = group
    if group is not None and engine.needs_cost_model:  # every rank must choose the same draft lengths
        from .parallel import agree_cost_model

        engine.costs.give(agree_cost_model(engine.target, engine._drafters(), group))
    if engine.needs_cost_model:
        if progress:
            print("measuring pass costs (cached per machine and model) ...", file=sys.stderr, flush=True)
        cm = engine.cost_model
        if progress:
            how = "from cache" if cm.target.from_cache else f"in {cm.target.measure_seconds:.2f} s"
            print(f"cost model {how}: T(2)/T(1) = {cm.T(2) / cm.T(1):.2f}, T(8)/T(1) = {cm.T(8) / cm.T(1):.2f}",
                  file=sys.stderr, flush=True)
    return engine


def _has_head(target) -> bool:
    """Whether a head was trained for this target (native models only: a head reads their features)."""
    from .heads.pipeline import has_head

    return hasattr(target.lm, "model") and has_head(target)


def tensor_parallel_group(args: argparse.Namespace):
    """The tensor-parallel group for --tp N > 1 (joined here; torchrun must have started this
    process), else None."""
    tp = getattr(args, "tp", 1)
    if tp == 1:
        return None
    from .parallel import init_tensor_parallel

    return init_tensor_parallel(tp, args.device, getattr(args, "tp_timeout", 60.0))


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt argument, or stdin for '-': read by tensor-parallel rank 0 only (the others
    would split a piped stdin with it); `agree_request` then gives every rank rank 0's."""
    if args.prompt != "-":
        return args.prompt
    if getattr(args, "tp", 1) > 1 and os.environ.get("RANK", "0") != "0":
        return "-"
    return sys.stdin.read()


def agree_request(engine, prompt: str, params):
    """(prompt, params) as rank 0 has them, with a seed every tensor-parallel rank shares, so all
    ranks sample alike (unchanged without --tp)."""
    import dataclasses
    import secrets

    group = getattr(engine, "tp_group", None)
    if group is None:
        return prompt, params
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    msg = group.broadcast_json({"prompt": prompt, "seed": seed} if group.leader else None)
    return msg["prompt"], dataclasses.replace(params, seed=int(msg["seed"]))


@contextlib.contextmanager
def tensor_parallel_run(args: argparse.Namespace):
    """Around a command with --tp N > 1: ranks other than 0 print nothing (rank 0 speaks for all;
    errors raised out of the block are still printed by the caller, on every rank), and every rank
    leaves the group at the end (waiting for the others unless it is failing)."""
    if getattr(args, "tp", 1) <= 1:
        yield
        return
    from .parallel.tp import close_tensor_parallel

    with contextlib.ExitStack() as stack:
        if os.environ.get("RANK", "0") != "0":
            null = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stdout(null))
            stack.enter_context(contextlib.redirect_stderr(null))
        try:
            yield
        except BaseException:
            close_tensor_parallel(wait=False)
            raise
        close_tensor_parallel()


def _load(source: str, args: argparse.Namespace, role: str, progress: bool, quantize: str | None = None,
          group=None, replicated: bool = False, head: str | None = None):
    import specdecode

    if progress:
        print(f"loading {role} {source}{'' if group is None or replicated else f' (shard of {group.world_size})'} ...",
              file=sys.stderr, flush=True)
    try:
        if group is not None and not replicated:
            from .parallel import load_sharded

            model = load_sharded(source, group, dtype=args.dtype, threads=args.threads, quantize=quantize)
        else:
            device = group.device if group is not None else args.device
            model = specdecode.load(source, dtype=args.dtype, device=device, threads=args.threads, quantize=quantize,
                                    head=head)
    except SpecdecodeError as e:
        raise SpecdecodeError(f"cannot load the {role} model: {e}") from None
    if progress:
        how = "from cache" if model.from_cache else "converted"
        quant = f" weights {model.quantize}," if model.quantize else ""
        print(f"loaded {role} {source} in {model.load_seconds:.1f} s ({how}, {str(model.dtype).removeprefix('torch.')},"
              f"{quant} {model.lm.device})", file=sys.stderr, flush=True)
    return model
