"""`specdecode heads train | show`: train a draft head for a target on this machine, or describe it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_common import DEFAULT_TARGET
from ..errors import SpecdecodeError
from .data import read_prompts
from .pipeline import DEFAULT_SELF_WRITTEN, CorpusSpec, HeadShape, find_head, train_for_target
from .store import load_head
from .train import TrainConfig


def add_parser(sub) -> None:
    h = sub.add_parser("heads", help="train or show a draft head (a drafter on the target's own features)",
                       description="Draft heads (EAGLE-style): one small layer that drafts from the target's hidden "
                                   "states, trained here on the target's own answers; use with --drafter head "
                                   "(docs/heads.md).")
    hsub = h.add_subparsers(dest="heads_cmd", required=True, metavar="ACTION")
    t = hsub.add_parser("train", help="collect the target's answers and features, then train a head (resumable)",
                        description="Collect the target's answers (with its hidden states) to a corpus of prompts, "
                                    "then train a draft head on them. An interrupted run picks up where it stopped: "
                                    "collected parts and finished epochs are kept. The head is saved under "
                                    "$SPECDECODE_CACHE/heads/<target>/ (or --out) and used by --drafter head.")
    _target_options(t)
    t.add_argument("--prompts", metavar="FILE.jsonl",
                   help='the prompts the target answers: one {"prompt": ...} or {"messages": [...]} per line '
                        "(default: prompts built from Python's standard library docstrings, never benchmark prompts)")
    t.add_argument("--text", metavar="FILE", action="append", default=[],
                   help="plain text files to add (the target reads them: its features over the text; repeatable)")
    t.add_argument("--num-prompts", type=int, default=CorpusSpec.num_prompts,
                   help=f"how many default prompts (default {CorpusSpec.num_prompts}; at most about 1,100 are built)")
    t.add_argument("--self-written", type=int, default=None, metavar="N",
                   help="also N requests the target writes itself from the openings of everyday ones (chat, "
                        "translation, summaries, questions, stories), then answers: text of the kind the docstring "
                        f"prompts lack (default {DEFAULT_SELF_WRITTEN} with the default prompts, 0 with --prompts "
                        "or --text)")
    t.add_argument("--max-new-tokens", "-n", type=int, default=CorpusSpec.max_new_tokens,
                   help=f"longest answer per prompt (default {CorpusSpec.max_new_tokens})")
    t.add_argument("--batch", type=int, default=8, help="prompts answered at once (default 8)")
    t.add_argument("--epochs", type=int, default=TrainConfig.epochs, help=f"default {TrainConfig.epochs}")
    t.add_argument("--unroll", type=int, default=TrainConfig.unroll,
                   help=f"draft steps trained per position, each on the head's own earlier guesses (default "
                        f"{TrainConfig.unroll})")
    t.add_argument("--holdout", type=float, default=TrainConfig.holdout,
                   help=f"share of the answers kept out of training, to report after each epoch how often the head "
                        f"agrees with the target on text it has not seen (default {TrainConfig.holdout}; 0: none)")
    t.add_argument("--feature-noise", type=float, default=TrainConfig.feature_noise,
                   help="uniform noise in [-a, a] added to the target features the head reads while training "
                        f"(EAGLE's augmentation; default {TrainConfig.feature_noise})")
    t.add_argument("--lr", type=float, default=TrainConfig.lr, help=f"peak learning rate (default {TrainConfig.lr})")
    t.add_argument("--draft-vocab", type=int, default=8192,
                   help="the head's vocabulary: the corpus's most frequent tokens (default 8192; smaller is cheaper "
                        "per draft step, larger misses fewer tokens)")
    t.add_argument("--intermediate-size", type=int, default=None, help="the head's MLP width (default 2 x hidden)")
    t.add_argument("--out", metavar="DIR", help="where to write the head (default: the cache, keyed by the target)")
    t.set_defaults(func=cmd_train)
    s = hsub.add_parser("show", help="where the head of a target is and how it was trained")
    _target_options(s)
    s.add_argument("--head", metavar="PATH", help="a head directory instead of the target's")
    s.set_defaults(func=cmd_show)


def _target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_TARGET, help=f"the target (default {DEFAULT_TARGET})")
    p.add_argument("--quantize", choices=["none", "int8", "int4"], default="int4",
                   help="the target's weights while collecting its features (default int4: what it drafts for "
                        "in the fast path; a head serves the other formats of the same target too)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "float16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")


def _load_target(args: argparse.Namespace):
    import specdecode

    print(f"loading target {args.model} ...", file=sys.stderr, flush=True)
    try:
        return specdecode.load(args.model, dtype=args.dtype, device=args.device, threads=args.threads,
                               quantize=None if args.quantize == "none" else args.quantize)
    except SpecdecodeError as e:
        raise SpecdecodeError(f"cannot load the target model: {e}") from None


def cmd_train(args: argparse.Namespace) -> int:
    for name in ("num_prompts", "max_new_tokens", "batch", "epochs", "unroll", "draft_vocab"):
        if getattr(args, name) < 1:
            raise SpecdecodeError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.self_written is not None and args.self_written < 0:
        raise SpecdecodeError(f"--self-written must be >= 0, got {args.self_written}")
    if args.intermediate_size is not None and args.intermediate_size < 1:
        raise SpecdecodeError(f"--intermediate-size must be >= 1, got {args.intermediate_size}")
    if not args.lr > 0:
        raise SpecdecodeError(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.holdout < 1:
        raise SpecdecodeError(f"--holdout must be a share in [0, 1), got {args.holdout}")
    if not args.feature_noise >= 0:
        raise SpecdecodeError(f"--feature-noise must be >= 0, got {args.feature_noise}")
    # the user's files are checked before the target loads (minutes), not after
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise SpecdecodeError(f"--out {args.out} exists and is not a directory")
    if args.prompts is not None and not read_prompts(Path(args.prompts)):
        raise SpecdecodeError(f"{args.prompts} holds no prompts")
    for f in args.text:
        if not Path(f).is_file():
            raise SpecdecodeError(f"--text {f}: no such file")
    model = _load_target(args)
    spec = CorpusSpec(args.prompts, list(args.text), args.num_prompts, args.max_new_tokens, args.batch,
                      self_written=args.self_written)
    config = TrainConfig(epochs=args.epochs, unroll=args.unroll, lr=args.lr, holdout=args.holdout,
                         feature_noise=args.feature_noise)
    directory, info = train_for_target(model, spec, HeadShape(args.draft_vocab, args.intermediate_size), config,
                                       out=args.out, progress=True)
    last = info["epochs"][-1] if info["epochs"] else {}
    agree = ", ".join(f"{a:.2f}" for a in last.get("top1_by_step", []))
    print(f"head saved in {directory}\n  corpus: {info['corpus']['tokens']} tokens in {info['corpus']['sequences']} "
          f"answers (collected in {info['corpus']['collect_seconds']} s this run)\n  training: "
          f"{info['train_seconds']} s this run, {info['threads']} threads; last epoch top-1 agreement with the target "
          f"by draft step, on the training corpus: {agree}"
          + (f"; on the {last['held_out']['pairs']} held-out positions: "
             + ", ".join(f"{a:.2f}" for a in last["held_out"]["top1_by_step"]) if "held_out" in last else "")
          + f"\n  draft vocabulary covers {info['draft_vocab_coverage']:.1%} of the corpus's tokens")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from pathlib import Path

    directory = Path(args.head) if args.head else find_head(_load_target(args))
    head, meta = load_head(directory)  # checked as --drafter head would read it
    print(f"{directory}")
    if meta.get("format") != "specdecode-head":  # a published EAGLE checkpoint: its layout and shape
        print(json.dumps({"format": meta["format"], "config": head.config.to_dict()}, indent=1))
        return 0
    print(json.dumps({k: meta.get(k) for k in ("config", "target", "target_quantize", "corpus", "train_seconds",
                                               "draft_vocab_coverage", "epochs")}, indent=1))
    return 0
