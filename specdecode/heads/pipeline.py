"""`specdecode heads train` end to end, and finding a trained head for `--drafter head`.

train_for_target: the corpus (the target's answers with its features, collected in parts that
survive an interruption), the draft vocabulary, the head (resumed from the last finished epoch
when a checkpoint of the same shape is there), all under `heads_dir() / target_key(model)`.
head_drafter_for: the HeadDrafter of the head trained for a target (or of a given file).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import SpecdecodeError
from .data import (CHAT_OPENERS, benchmark_overlap, collect, collect_text, default_prompts, read_prompts,
                   self_written_prompts)
from .model import HeadConfig, bind, lm_head_weight
from .store import (drop_checkpoint, head_dir, load_checkpoint, load_corpus, load_head, save_checkpoint,
                    save_corpus, save_head)
from .train import TrainConfig, new_head, pick_draft_vocab, train_head


# Measured (docs/heads.md): a head's agreement on Spec-Bench's answers 0.255 -> 0.311 with 240
# self-written requests' answers, against as much more docstring text.
DEFAULT_SELF_WRITTEN = 256


@dataclass
class CorpusSpec:
    """What the head is trained on: prompts from a JSONL file (else the built-in default prompts,
    `num_prompts` of them), plain text files, how long the target answers."""

    prompts_file: str | None = None
    text_files: list[str] = field(default_factory=list)
    num_prompts: int = 738  # the measured head's corpus (docs/heads.md): ~117k tokens of Qwen2.5-Coder-1.5B
    max_new_tokens: int = 192
    batch: int = 8
    seed: int = 0
    # Requests the target writes itself (data.self_written_prompts), answered too: everyday text the
    # docstring prompts lack. None: DEFAULT_SELF_WRITTEN beside the default prompts, none beside the
    # user's own prompts or text (write_count).
    self_written: int | None = None

    def write_count(self) -> int:
        if self.self_written is not None:
            return self.self_written
        return 0 if self.prompts_file or self.text_files else DEFAULT_SELF_WRITTEN

    def key(self, quantize: str | None) -> str:
        """The corpus directory: answers of the same length from the same weights. (Each part's file
        is named by its own prompts, so a longer prompt list reuses the parts already collected.)"""
        return _digest({"max_new_tokens": self.max_new_tokens, "quantize": quantize})


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SpecdecodeError(f"cannot read {path}: {e.strerror}") from e


def corpus_prompts(spec: CorpusSpec) -> list:
    """The prompts a corpus is collected from (the user's, or the default); benchmark prompts refused."""
    if spec.prompts_file:
        prompts = read_prompts(Path(spec.prompts_file))
        if not prompts:
            raise SpecdecodeError(f"{spec.prompts_file} holds no prompts")
    elif spec.text_files:
        prompts = []
    else:
        prompts = default_prompts(spec.num_prompts, spec.seed)
    overlap = benchmark_overlap(prompts)
    if overlap:
        raise SpecdecodeError(f"{overlap} of the corpus prompts are benchmark prompts (a head trained on them would "
                              "make `specdecode bench` figures meaningless); remove them")
    return prompts


def collect_corpus(model, spec: CorpusSpec, directory: Path, *, part_size: int = 32,
                   progress: bool = False) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict[str, Any]]:
    """The corpus of `spec` for `model`, collected into directory/part-<hash>.safetensors files of
    `part_size` prompts each, named by their prompts: parts already there (an interrupted run's,
    or a shorter prompt list's) are read back, not redone."""
    from ..config import SamplingParams

    prompts = corpus_prompts(spec)
    if spec.write_count():
        prompts = prompts + written_requests(model, spec, directory, progress)
    info = {"spec": asdict(spec), "quantize": getattr(model, "quantize", None), "benchmark_overlap": 0}
    sequences: list = []
    parts = [prompts[a : a + part_size] for a in range(0, len(prompts), part_size)]
    texts = [_read_bytes(Path(f)).decode("utf-8", errors="replace") for f in spec.text_files]
    if texts:
        parts.append(texts)
    started = time.perf_counter()
    for n, part in enumerate(parts):
        path = directory / f"part-{_digest([spec.max_new_tokens, part])}.safetensors"
        if path.is_file():
            seqs, _ = load_corpus(path)
        elif part is texts:
            seqs = collect_text(model, texts, progress=progress)
        else:
            if progress:
                print(f"corpus part {n + 1}/{len(parts)}: the target answers {len(part)} prompts", flush=True)
            seqs = collect(model, part, max_new_tokens=spec.max_new_tokens, batch=spec.batch,
                           params=SamplingParams(max_new_tokens=spec.max_new_tokens), progress=progress)
        if seqs and not path.is_file():
            save_corpus(seqs, path, info)
        sequences += seqs
    info["tokens"] = sum(int(t.shape[0]) for t, _ in sequences)
    info["sequences"] = len(sequences)
    info["collect_seconds"] = round(time.perf_counter() - started, 1)
    return sequences, info


def written_requests(model, spec: CorpusSpec, directory: Path, progress: bool = False) -> list[str]:
    """The target's self-written requests of `spec` (self_written_prompts), kept in the corpus
    directory as JSONL: a resumed run reads them back instead of writing them again."""
    from ..loading.store import atomic_write_text

    count = spec.write_count()
    tokenizer = model.tokenizer
    if spec.self_written is None and (tokenizer is None or not tokenizer.has_chat_template):
        if progress:  # a base model: it has no user turn to write (asked for explicitly, it is an error)
            print("the target has no chat template: no self-written requests", flush=True)
        return []
    path = directory / f"requests-{_digest([count, spec.seed, CHAT_OPENERS])}.jsonl"
    if path.is_file():
        return [p for p in read_prompts(path) if isinstance(p, str)]
    if progress:
        print(f"the target writes {count} requests of its own", flush=True)
    requests = self_written_prompts(model, count, seed=spec.seed, batch=spec.batch, progress=progress)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in requests))
    return requests


@dataclass
class HeadShape:
    draft_vocab_size: int = 8192
    intermediate_size: int | None = None  # default: twice the hidden size


def train_for_target(model, spec: CorpusSpec, shape: HeadShape, config: TrainConfig, *, out: Path | None = None,
                     progress: bool = False) -> tuple[Path, dict[str, Any]]:
    """Collect (or reuse) the corpus, train the head (resuming a checkpoint of the same shape and
    training config), save it under `out` (default: the target's heads directory). -> (directory,
    the head.json info)."""
    lm = model.lm
    directory = Path(out) if out is not None else head_dir(model)
    corpus_dir = directory / f"corpus-{spec.key(getattr(model, 'quantize', None))}"
    sequences, corpus_info = collect_corpus(model, spec, corpus_dir, progress=progress)
    if corpus_info["tokens"] < 64:
        raise SpecdecodeError(f"the corpus holds only {corpus_info['tokens']} tokens: too few to train a head")
    eos = sorted(getattr(model.tokenizer, "eos_token_ids", []) or []) if model.tokenizer is not None else []
    d2t = pick_draft_vocab([t for t, _ in sequences], lm.args.vocab_size, shape.draft_vocab_size, always=eos)
    head_config = HeadConfig.for_target(lm.args, int(d2t.shape[0]), shape.intermediate_size or 2 * lm.args.hidden_size)
    head = new_head(head_config, lm_head_weight(lm), d2t, seed=config.seed)
    # what a checkpoint must match to be resumed: the head's shape, the training and the very corpus
    run = {"config": head_config.to_dict(), "train": asdict(config), "corpus": corpus_dir.name,
           "corpus_tokens": corpus_info["tokens"], "sequences": corpus_info["sequences"]}
    start_epoch, opt_state = 0, None
    checkpoint = load_checkpoint(directory)
    if checkpoint is not None:
        state, opt, meta = checkpoint
        if meta.get("run") == run:
            head.load_state_dict(state)
            start_epoch, opt_state = int(meta["epoch"]), opt
            if progress:
                print(f"resuming after epoch {start_epoch} (checkpoint in {directory})", flush=True)
    embed, rope = lm.model.embed_tokens, lm.rope
    started = time.perf_counter()
    summaries = train_head(head, embed, rope, sequences, config, start_epoch=start_epoch, optimizer_state=opt_state,
                           progress=progress, on_epoch=lambda e, h, o: save_checkpoint(directory, h, o, e, {"run": run}))
    covered = _coverage(sequences, d2t)
    info = {"target": str(getattr(model, "source", "")), "target_quantize": getattr(model, "quantize", None),
            "corpus": corpus_info, "train": asdict(config), "epochs": summaries,
            "train_seconds": round(time.perf_counter() - started, 1), "draft_vocab_coverage": covered,
            "threads": torch.get_num_threads()}
    save_head(head, directory, info)
    drop_checkpoint(directory)
    return directory, info


def _coverage(sequences, d2t: torch.Tensor) -> float:
    """The share of the corpus's tokens that are in the draft vocabulary."""
    toks = torch.cat([t.long() for t, _ in sequences])
    return round(float(torch.isin(toks, d2t).float().mean()), 4)


def find_head(model, path: str | Path | None = None) -> Path:
    """The head to draft with: `path` if given, else the one trained for `model` in the cache."""
    if path is not None:
        return Path(path)
    directory = head_dir(model)
    if not has_head(model):
        source = getattr(model, "source", "") or "MODEL"
        raise SpecdecodeError(f"no draft head trained for {source} yet (looked in {directory}); train one with "
                              f"`specdecode heads train --model {source}` or give --head PATH")
    return directory


def head_drafter_for(model, path: str | Path | None = None, quantize: str | None = "int8", branches: int = 1):
    """A HeadDrafter on `model` (a loaded specdecode Model) from its trained head or `path`
    (branches=2: token trees with the head's second choices)."""
    where = find_head(model, path)
    return drafter_on(load_head(where)[0], model.lm, where, quantize, branches)


def drafter_on(head, lm, where: Path, quantize: str | None = "int8", branches: int = 1):
    """A HeadDrafter of the loaded `head` (read from `where`) on the native target `lm`."""
    from ..drafters.head import HeadDrafter

    try:
        return HeadDrafter(bind(head, lm, quantize), branches)
    except (TypeError, ValueError) as e:
        raise SpecdecodeError(f"cannot draft with the head at {where}: {e}") from None


def has_head(model) -> bool:
    """Whether a head was trained for `model` (the auto drafter takes it then)."""
    return (head_dir(model) / "head.json").is_file()
