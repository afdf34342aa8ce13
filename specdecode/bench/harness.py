"""The benchmark loop: every method on the same prompts, interleaved, repeated, written as it goes.

Fairness rules (see docs/benchmarks.md):
- one process, the same weights (the HF methods share the native tensors), dtype and threads;
- a warm-up round per method before anything is timed;
- methods interleaved prompt by prompt (and their order rotated), so slow drifts of the machine
  (thermal, other load) spread over all methods instead of hitting one;
- the same prompt ids, max_new_tokens, EOS ids and greedy rule for every method;
- `repeats` timed runs per (prompt, method); the median is reported, every run is kept.
results.json is rewritten after each prompt, so Ctrl-C loses at most the prompt in flight and
`resume` picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import SamplingParams
from ..engine import DEFAULT_NUM_DRAFT_TOKENS, context_budget
from ..errors import ContextLengthError, SpecdecodeError
from .datasets import BenchPrompt, load_prompts
from .machine import machine_info, now_iso
from .methods import METHODS, BenchContext, Method, RunResult, build_runner
from .report import write_reports
from .results_io import RESULTS_JSON, save_json
from .stats import first_mismatch, median

SCHEMA_VERSION = 1
WARMUP_MAX_TOKENS = 32

# Settings that change what is measured: a resumed run must match them.
_MEASUREMENT_KEYS = ("target", "draft", "dataset", "max_new_tokens", "temperature", "seed", "repeats",
                     "num_draft_tokens", "adaptive", "prompt_format", "dtype", "device", "threads")


@dataclass
class BenchConfig:
    target: str = "tiny-random"
    draft: str | None = None
    methods: list[str] = field(default_factory=lambda: ["all"])
    dataset: str = "spec-bench"
    categories: list[str] | None = None
    limit: int | None = None  # prompts per category
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    repeats: int = 1
    warmup: int = 1  # prompts run once per method, untimed, before the benchmark
    num_draft_tokens: int | None = None
    adaptive: bool = False
    prompt_format: str = "auto"  # auto | chat | raw
    dtype: str = "auto"
    device: str = "auto"
    threads: int | None = None
    head: str | None = None  # the draft head of the head methods (default: the one trained for the target)
    out: str = "bench_out"
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.repeats < 1:
            raise SpecdecodeError(f"--repeats must be >= 1, got {self.repeats}")
        if self.warmup < 0:
            raise SpecdecodeError(f"--warmup must be >= 0, got {self.warmup}")
        if self.prompt_format not in ("auto", "chat", "raw"):
            raise SpecdecodeError(f"--prompt-format must be auto, chat or raw, got {self.prompt_format!r}")
        if self.resume and self.overwrite:
            raise SpecdecodeError("--resume and --overwrite exclude each other")
        SamplingParams(temperature=self.temperature, max_new_tokens=self.max_new_tokens)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def select_methods(names: list[str], has_draft: bool) -> tuple[list[Method], dict[str, str]]:
    """Registry entries for `names` ("all" = every default method); the target loop always runs.

    Returns (methods to run, {skipped method: why}).
    """
    wanted: list[str] = []
    for n in names:
        wanted += [m for m, spec in METHODS.items() if spec.default] if n == "all" else [n]
    unknown = [n for n in wanted if n not in METHODS]
    if unknown:
        raise SpecdecodeError(f"unknown methods {unknown}; registered: {', '.join(METHODS)}")
    wanted = list(dict.fromkeys(["target"] + wanted))  # the baseline every comparison needs
    skipped = {n: "needs a draft model (--draft)" for n in wanted if METHODS[n].needs_draft and not has_draft}
    return [METHODS[n] for n in wanted if n not in skipped], skipped


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_results(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SpecdecodeError(f"cannot resume from {path}: {e}") from None
    if not isinstance(results, dict):
        raise SpecdecodeError(f"cannot resume from {path}: not a specdecode bench results file "
                              f"(a JSON {type(results).__name__}, not an object)")
    if results.get("schema") != SCHEMA_VERSION:
        raise SpecdecodeError(f"{path} has schema {results.get('schema')}, expected {SCHEMA_VERSION}")
    missing = [k for k in ("config", "prompts", "methods", "sessions", "skipped_prompts", "skipped_methods", "machine")
               if k not in results]
    if missing:
        raise SpecdecodeError(f"cannot resume from {path}: it lacks {', '.join(missing)}")
    return results


def check_resumable(previous: dict[str, Any], config: BenchConfig) -> None:
    old, new = previous["config"], config.to_dict()
    diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in _MEASUREMENT_KEYS if old.get(k) != new[k]]
    if diff:
        raise SpecdecodeError("cannot resume: the run measured something else (" + "; ".join(diff) + ")")


def make_record(runs: list[RunResult], decode: Callable[[list[int]], str]) -> dict[str, Any]:
    """One (prompt, method) entry of results.json: counters of the first run, median timings, all runs."""
    first = runs[0]
    prefill, dec, total = (median(getattr(r, f) for r in runs) for f in ("prefill_s", "decode_s", "total_s"))
    return {
        "output_ids": first.output_ids,
        "text": decode(first.output_ids),
        "finish_reason": first.finish_reason,
        "generated_tokens": first.generated_tokens,
        "first_chunk_tokens": first.first_chunk_tokens,
        "decode_tokens": first.decode_tokens,
        "target_passes": first.target_passes,
        "drafted_by_position": first.drafted_by_position,
        "accepted_by_position": first.accepted_by_position,
        "prefill_s": prefill,
        "decode_s": dec,
        "total_s": total,
        "decode_tokens_per_s": first.decode_tokens / dec if dec > 0 else None,
        "repeats_identical": all(r.output_ids == first.output_ids for r in runs),
        "runs": [{"prefill_s": r.prefill_s, "decode_s": r.decode_s, "total_s": r.total_s,
                  "generated_tokens": r.generated_tokens}
                 for r in runs],
        "cost_remeasures": sum(r.cost_remeasures for r in runs),  # mid-request re-timings (policy/costs.py)
    }


def compare_outputs(record: dict[str, Any], greedy: bool) -> None:
    """Mark each method's output equal or not to the target-only greedy output (and its reference)."""
    results = record["results"]
    ref = results.get("target")
    for name, r in results.items():
        pos = first_mismatch(ref["output_ids"], r["output_ids"]) if greedy and ref else None
        r["equal_to_target"] = (pos is None) if greedy and ref else None
        r["first_mismatch"] = pos
        ref_name = METHODS[name].reference if name in METHODS else "target"
        if ref_name != "target" and ref_name in results and greedy:
            pos2 = first_mismatch(results[ref_name]["output_ids"], r["output_ids"])
            r.update(reference=ref_name, equal_to_reference=pos2 is None, first_mismatch_reference=pos2)


def _describe_mismatches(record: dict[str, Any], decode: Callable[[list[int]], str]) -> None:
    """Add the text of the two tokens at each first mismatch, for a reader of the report."""
    ref = record["results"].get("target")
    for r in record["results"].values():
        pos = r.get("first_mismatch")
        r.pop("mismatch_tokens", None)
        if ref is not None and pos is not None:
            pick = lambda ids: decode([ids[pos]]) if pos < len(ids) else None  # noqa: E731
            r["mismatch_tokens"] = {"target": pick(ref["output_ids"]), "method": pick(r["output_ids"])}


def fits_context(prompt_tokens: int, max_new_tokens: int, max_context: int) -> bool:
    """Whether the engine would let this prompt generate all max_new_tokens (engine.context_budget):
    a prompt it would cut short is skipped, so every method is timed on the same length."""
    try:
        return context_budget(prompt_tokens, max_new_tokens, max_context) == max_new_tokens
    except ContextLengthError:
        return False


def _rotated(items: list, shift: int) -> list:
    s = shift % len(items)
    return items[s:] + items[:s]


def run_bench(config: BenchConfig, *, target=None, draft=None, log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Run the benchmark per `config`; returns the results dict (also in config.out/results.json).

    target / draft: already loaded specdecode Models (else loaded from config.target / .draft).
    A KeyboardInterrupt writes what is done (results + reports) and is re-raised.
    """
    import specdecode

    from .multiturn import RESULTS_JSON as CONVERSATIONS_JSON
    from .multiturn import is_conversation_dataset, run_conversations

    config.validate()
    out = Path(config.out)
    conversations = is_conversation_dataset(config.dataset)
    path = out / (CONVERSATIONS_JSON if conversations else RESULTS_JSON)
    previous = None
    if out.exists() and not out.is_dir():
        raise SpecdecodeError(f"--out {out} exists and is not a directory")
    if conversations and config.resume:
        raise SpecdecodeError("the conversation benchmark cannot --resume (a conversation's turns are timed together)")
    if path.exists():
        if config.resume:
            previous = load_results(path)
            check_resumable(previous, config)
        elif not config.overwrite:
            raise SpecdecodeError(f"{path} exists: pass --resume to continue it or --overwrite to start again")
    elif config.resume:
        log(f"nothing to resume in {out}: starting a new run")
    methods, skipped = select_methods(config.methods, bool(config.draft or draft))
    if conversations:  # the bf16 target runs only when asked for or a lossless method's reference
        needed = {m.reference for m in methods if m.name not in ("target", "target-int4", "llamacpp")}
        methods = [m for m in methods if m.name != "target" or "target" in needed | set(config.methods)
                   or len(methods) == 1]
    prompts = [] if conversations else load_prompts(config.dataset, config.categories, config.limit)

    if target is None:
        log(f"loading target {config.target} ...")
        target = specdecode.load(config.target, dtype=config.dtype, device=config.device, threads=config.threads)
    elif config.threads:
        torch.set_num_threads(config.threads)
    if draft is None and config.draft and any(m.uses_draft for m in methods):
        log(f"loading draft {config.draft} ...")
        draft = specdecode.load(config.draft, dtype=config.dtype, device=config.device, threads=config.threads)
    tokenizer = target.tokenizer
    eos = list(tokenizer.eos_token_ids)
    ctx = BenchContext(target, draft, eos, config.num_draft_tokens, config.adaptive, config.head)
    runners = {m.name: build_runner(m, ctx) for m in methods}
    if conversations:
        for name in skipped:
            log(f"skipping {name}: {skipped[name]}")
        return run_conversations(config, methods, runners, target, log)
    chat = tokenizer.has_chat_template if config.prompt_format == "auto" else config.prompt_format == "chat"

    results: dict[str, Any] = previous or {
        "schema": SCHEMA_VERSION,
        # The draft lengths of the methods given no -k, as they were for this run (the report shows them).
        "config": {**config.to_dict(), "default_num_draft_tokens": dict(DEFAULT_NUM_DRAFT_TOKENS)},
        "started": now_iso(),
        "models": {"target": _model_info(target), "draft": _model_info(draft) if draft is not None else None},
        "machine": machine_info(target.lm.device),
        "sessions": [],
        "methods": {},
        "skipped_methods": {},
        "skipped_prompts": [],
        "prompts": [],
    }
    results["sessions"].append({"started": now_iso(), "machine": machine_info(target.lm.device)})
    results["config"].update(categories=config.categories, limit=config.limit, methods=config.methods)
    for m in methods:
        results["methods"][m.name] = {"description": m.description, "needs_draft": m.needs_draft, "reference": m.reference}
    results["skipped_methods"].update(skipped)
    for name in skipped:
        log(f"skipping {name}: {skipped[name]}")
    if results["machine"]["cpu"] != results["sessions"][-1]["machine"]["cpu"]:
        log("warning: resuming on a different CPU than the run started on; timings will not be comparable")
    out.mkdir(parents=True, exist_ok=True)

    done = {p["id"]: p for p in results["prompts"]}
    skipped_ids = {s["id"] for s in results["skipped_prompts"]}
    todo: list[tuple[BenchPrompt, list[int], list[Method]]] = []
    for p in prompts:
        if p.id in skipped_ids:
            continue
        missing = [m for m in methods if m.name not in done.get(p.id, {}).get("results", {})]
        if not missing:
            continue
        tools = p.tool_spec
        if tools is not None and not chat:
            raise SpecdecodeError(f"{p.id}: tool-call prompts need chat format (an instruct model)")
        ids = tokenizer.encode_prompt(p.message(chat), chat=chat, tools=tools.template_tools if tools else None)
        if not fits_context(len(ids), config.max_new_tokens, target.lm.max_context):
            results["skipped_prompts"].append({"id": p.id, "why": f"{len(ids)} prompt tokens + max_new_tokens exceed the context"})
            continue
        todo.append((p, ids, missing))
    if previous:
        log(f"resuming: {len(done)} prompts already done, {len(todo)} to go")

    params = SamplingParams(temperature=config.temperature, max_new_tokens=config.max_new_tokens, seed=config.seed)
    try:
        if todo and config.warmup:
            log(f"warming up: {min(config.warmup, len(todo))} prompt(s), every method")
            warm = dataclasses.replace(params, max_new_tokens=min(config.max_new_tokens, WARMUP_MAX_TOKENS))
            for p, ids, _ in todo[: config.warmup]:
                for m in methods:
                    runners[m.name].run(ids, for_prompt(warm, p), p.tool_spec)
        # The pass costs the cost policy decides by (measured by the warm-up of an `auto` method,
        # else now, before any timed run; cached per machine): the theory beside measurement
        # prices this run with them, not with whatever a later process would measure.
        results["cost_model"] = _cost_model(target, draft).to_dict()
        # ... and those of each method whose planner prices its rounds (an int4 pair has its own)
        results["cost_models"] = {name: r.engine.cost_model.to_dict() for name, r in runners.items()
                                  if getattr(getattr(r, "engine", None), "needs_cost_model", False)}
        # Objects alive now (models, libraries) never become garbage: freezing them keeps each
        # collection between runs short, and no collection runs inside a timed region.
        gc.collect()
        gc.freeze()
        _run_prompts(todo, runners, params, config, results, done, tokenizer.decode, path)
        end_costs = _cost_model(target, draft).to_dict()
        if end_costs != results["cost_model"]:  # an engine saw its passes drift and measured again (policy/costs.py)
            results["cost_model_end"] = end_costs
    except KeyboardInterrupt:
        results["interrupted"] = now_iso()
        write_reports(results, out)
        raise
    finally:
        gc.unfreeze()
    results.pop("interrupted", None)
    results["finished"] = now_iso()
    write_reports(results, out)  # results.json with the summary, results.md, charts
    return results


def for_prompt(params: SamplingParams, prompt: BenchPrompt) -> SamplingParams:
    """The run's sampling settings with the prompt's own JSON schema or tool-call grammar, if it has one."""
    if prompt.json_schema is not None:
        return dataclasses.replace(params, json_schema=prompt.json_schema)
    grammar = prompt.tool_spec.grammar() if prompt.tool_spec is not None else None
    return params if grammar is None else dataclasses.replace(params, grammar=grammar)


def _cost_model(target, draft):
    from ..cost_model import measure_cost_model
    from ..drafters import ModelDrafter

    return measure_cost_model(target.lm, [ModelDrafter(draft.lm)] if draft is not None else [])


def _run_prompts(todo, runners, params, config, results, done, decode, path) -> None:
    from tqdm.auto import tqdm

    total = sum(len(missing) for _, _, missing in todo) * config.repeats
    greedy = params.greedy
    with tqdm(total=total, unit="run", desc="bench", disable=not config.progress, dynamic_ncols=True) as bar:
        for n, (prompt, ids, missing) in enumerate(todo):
            runs: dict[str, list[RunResult]] = {m.name: [] for m in missing}
            for r in range(config.repeats):
                for m in _rotated(missing, n * config.repeats + r):
                    bar.set_postfix_str(f"{prompt.category} {m.name}", refresh=False)
                    gc.collect()
                    gc.disable()
                    try:
                        runs[m.name].append(runners[m.name].run(ids, for_prompt(params, prompt), prompt.tool_spec))
                    finally:
                        gc.enable()
                    bar.update(1)
            record = done.get(prompt.id)
            if record is None:
                record = {"id": prompt.id, "category": prompt.category, "subcategory": prompt.subcategory,
                          "prompt_tokens": len(ids), "results": {}}
                results["prompts"].append(record)
                done[prompt.id] = record
            for name, rs in runs.items():
                record["results"][name] = make_record(rs, decode)
            compare_outputs(record, greedy)
            _describe_mismatches(record, decode)
            results["updated"] = now_iso()
            save_json(results, path)


def _model_info(model) -> dict[str, Any]:
    inv = getattr(model, "row_invariance", None)
    return {"source": model.source, "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.lm.device),
            "quantize": getattr(model, "quantize", None),
            "parameters": sum(p.numel() for p in model.lm.parameters()) if hasattr(model.lm, "parameters") else None,
            "kernels": inv.describe() if inv is not None else None}
