"""Multi-turn conversations for `specdecode bench --dataset code-chat | mt-bench-2turn`.

A chat client resends the whole conversation every turn: turn n's prompt is the chat template
over every earlier user message, the method's own earlier answers and the new user message.
Each method runs every conversation turn by turn with its caches kept between turns (our
prefix cache; llama.cpp's KV cache, which it reuses for the longest common prefix of the next
prompt, as its server's prompt cache does), and each turn is timed as a single-turn run is:
time to first token (call -> first token, the prefill of what is not cached), decode tok/s,
and the conversation's wall time (the sum of its turns).

Greedy outputs of a speculative method must equal its reference's turn by turn (a turn that
differs changes the history of the turns after it; each is counted). Results go to
conversations.json and conversations.md in --out.
"""

from __future__ import annotations

import gc
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import SamplingParams
from ..errors import SpecdecodeError
from .datasets import DATA_DIR, MT_BENCH_SUBCATEGORIES, SPEC_BENCH_FILE
from .machine import machine_info, now_iso
from .report import md_table
from .results_io import save_json
from .stats import throughput

CODE_CHAT_FILE = DATA_DIR / "code_chat.jsonl"
CONVERSATION_DATASETS = ("code-chat", "mt-bench-2turn")
RESULTS_JSON, RESULTS_MD = "conversations.json", "conversations.md"


@dataclass(frozen=True)
class Conversation:
    id: str
    category: str
    turns: tuple[str, ...]  # the user's messages, in order


def is_conversation_dataset(dataset: str) -> bool:
    parts = [d.strip() for d in dataset.split(",") if d.strip()]
    conv = [p in CONVERSATION_DATASETS for p in parts]
    if any(conv) and not all(conv):
        raise SpecdecodeError(f"--dataset {dataset!r} mixes conversations ({', '.join(CONVERSATION_DATASETS)}) "
                              "with single-turn prompts; run them separately")
    return bool(conv) and all(conv)


def load_conversations(dataset: str, limit: int | None = None) -> list[Conversation]:
    """The conversations of "code-chat" (ours, bundled) and/or "mt-bench-2turn" (Spec-Bench's 80
    MT-bench questions with both turns), comma-separated; at most `limit` per dataset."""
    if limit is not None and limit < 1:
        raise SpecdecodeError(f"--limit must be >= 1, got {limit}")
    out: list[Conversation] = []
    for part in [d.strip() for d in dataset.split(",") if d.strip()]:
        if part == "code-chat":
            rows = [Conversation(f"code-chat/{r['id']}", "code_chat", tuple(r["turns"])) for r in _jsonl(CODE_CHAT_FILE)]
        elif part == "mt-bench-2turn":
            rows = [Conversation(f"mt-bench/{r['question_id']}", "mt_bench", tuple(r["turns"]))
                    for r in _jsonl(SPEC_BENCH_FILE) if r["category"] in MT_BENCH_SUBCATEGORIES]
        else:
            raise SpecdecodeError(f"unknown conversation dataset {part!r}: use {' or '.join(CONVERSATION_DATASETS)}")
        out += rows[:limit] if limit else rows
    return out


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def keep_caches(runner: Any) -> None:
    """Make a runner keep its prompt cache between runs (ours and llama.cpp's have the switch)."""
    for flag in ("keep_prefix_cache", "keep_prefix"):
        if hasattr(runner, flag):
            setattr(runner, flag, True)


def empty_caches(runner: Any) -> None:
    """Forget what a warm-up left behind, so the first timed turn starts cold."""
    engine = getattr(runner, "engine", None)
    if engine is not None:
        engine.forget_history()
    llm = getattr(runner, "llm", None)
    if llm is not None:
        llm.reset()


def run_conversation(runner: Any, conv: Conversation, tokenizer, params: SamplingParams, max_context: int) -> list[dict]:
    """Every turn of `conv` with this runner, each resending the history with its own answers."""
    messages: list[dict[str, str]] = []
    turns = []
    for text in conv.turns:
        messages.append({"role": "user", "content": text})
        ids = tokenizer.encode_prompt(messages, chat=True)
        if len(ids) + params.max_new_tokens >= max_context:
            break  # the context is full: the conversation ends here for every method alike
        gc.collect()
        gc.disable()
        try:
            r = runner.run(ids, params)
        finally:
            gc.enable()
        answer = tokenizer.decode(r.output_ids)
        messages.append({"role": "assistant", "content": answer})
        turns.append({"prompt_tokens": len(ids), "cached_tokens": r.cached_tokens, "ttft_s": r.prefill_s,
                      "decode_s": r.decode_s, "total_s": r.total_s, "generated_tokens": r.generated_tokens,
                      "decode_tokens": r.decode_tokens, "target_passes": r.target_passes, "output_ids": r.output_ids})
    return turns


def run_conversations(config, methods, runners: dict[str, Any], target, log) -> dict[str, Any]:
    """The conversation benchmark over loaded methods (harness.run_bench calls it); writes reports."""
    from tqdm.auto import tqdm

    conversations = load_conversations(config.dataset, config.limit)
    if config.temperature != 0:
        raise SpecdecodeError("the conversation benchmark is greedy (it checks outputs turn by turn): use -t 0")
    params = SamplingParams(temperature=0.0, max_new_tokens=config.max_new_tokens)
    tokenizer = target.tokenizer
    if not tokenizer.has_chat_template:
        raise SpecdecodeError("conversations need a chat model (the target's tokenizer has no chat template)")
    for r in runners.values():
        keep_caches(r)
    if config.warmup:
        log("warming up: one turn, every method")
        warm = Conversation("warmup", "warmup", (conversations[0].turns[0],))
        for name, r in runners.items():
            run_conversation(r, warm, tokenizer, SamplingParams(temperature=0.0, max_new_tokens=16), target.lm.max_context)
            empty_caches(r)
    results: dict[str, Any] = {
        "config": {**config.to_dict(), "kind": "conversations"}, "started": now_iso(),
        "machine": machine_info(target.lm.device),
        "methods": {m.name: {"description": m.description, "reference": m.reference} for m in methods},
        "conversations": [],
    }
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(conversations) * len(methods), unit="conv", desc="conversations",
              disable=not config.progress, dynamic_ncols=True) as bar:
        for n, conv in enumerate(conversations):
            record = {"id": conv.id, "category": conv.category, "results": {}}
            order = methods[n % len(methods):] + methods[: n % len(methods)]  # no method always goes first
            for m in order:
                bar.set_postfix_str(f"{conv.id} {m.name}", refresh=False)
                record["results"][m.name] = run_conversation(runners[m.name], conv, tokenizer, params,
                                                             target.lm.max_context)
                bar.update(1)
            _check_outputs(record, results["methods"])
            results["conversations"].append(record)
            save_json(results, out / RESULTS_JSON)
    results["finished"] = now_iso()
    results["summary"] = summarize(results)
    save_json(results, out / RESULTS_JSON)
    (out / RESULTS_MD).write_text(markdown(results))
    return results


def _check_outputs(record: dict, methods: dict[str, dict]) -> None:
    """Turns whose output differs from the method's reference (each method has one or none)."""
    for name, turns in record["results"].items():
        ref = methods[name].get("reference")
        if ref is None or ref not in record["results"] or ref == name or name == "llamacpp":
            continue  # llama.cpp is another implementation: agreeing with ours is not losslessness
        want = record["results"][ref]
        for i, t in enumerate(turns):
            t["same_as_reference"] = i < len(want) and t["output_ids"] == want[i]["output_ids"]


def summarize(results: dict[str, Any]) -> dict[str, dict[str, dict]]:
    """category (and "overall") -> method -> figures."""
    by_cat: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for rec in results["conversations"]:
        for name, turns in rec["results"].items():
            by_cat[rec["category"]][name].append(turns)
            by_cat["overall"][name].append(turns)
    summary: dict[str, dict[str, dict]] = {}
    for cat, per_method in by_cat.items():
        summary[cat] = {name: _figures(convs) for name, convs in per_method.items()}
        peer = summary[cat].get("llamacpp")
        for fig in summary[cat].values():
            fig["ttft_later_vs_llamacpp"] = _ratio(fig["ttft_later_s"], peer and peer["ttft_later_s"])
            fig["conversation_vs_llamacpp"] = _ratio(fig["conversation_s"], peer and peer["conversation_s"])
    return summary


def _figures(convs: list[list[dict]]) -> dict[str, Any]:
    turns = [t for c in convs for t in c]
    later = [t for c in convs for t in c[1:]]
    decode_tokens = sum(t["decode_tokens"] for t in turns)
    decode_s = sum(t["decode_s"] for t in turns)
    passes = [t["target_passes"] for t in turns if t["target_passes"] is not None]
    cached = [t["cached_tokens"] for t in later if t["cached_tokens"] is not None]
    checked = [t for t in turns if "same_as_reference" in t]
    return {
        "conversations": len(convs), "turns": len(turns),
        "ttft_first_s": _mean([c[0]["ttft_s"] for c in convs if c]),
        "ttft_later_s": _mean([t["ttft_s"] for t in later]),
        "decode_tokens_per_s": throughput(decode_tokens, decode_s),
        "tokens_per_pass": throughput(decode_tokens, sum(passes)),
        "conversation_s": _mean([sum(t["total_s"] for t in c) for c in convs]),
        "cached_share_later": (sum(cached) / sum(t["prompt_tokens"] for t in later)) if cached and later else None,
        "turns_checked": len(checked), "turns_differing": sum(not t["same_as_reference"] for t in checked),
    }


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [f"# Conversations: {cfg['dataset']}", "",
             f"Target `{cfg['target']}`" + (f", draft `{cfg['draft']}`" if cfg.get("draft") else "") +
             f"; {cfg['max_new_tokens']} new tokens a turn, greedy; machine: {results['machine'].get('cpu', '?')}.",
             "Each turn resends the whole conversation; every method keeps its prompt cache between turns "
             "(ours: the prefix cache; llama.cpp: its KV cache's common prefix).", ""]

    def f(x, spec=".2f", suffix=""):
        return "-" if x is None else f"{x:{spec}}{suffix}"

    for cat, per_method in results["summary"].items():
        lines += [f"## {cat}", ""]
        rows = [[name, str(s["conversations"]), f(s["ttft_first_s"], ".2f", " s"), f(s["ttft_later_s"], ".2f", " s"),
                 f(s["ttft_later_vs_llamacpp"], ".2f", "x"), f(s["decode_tokens_per_s"]), f(s["tokens_per_pass"]),
                 f(s["conversation_s"], ".1f", " s"), f(s["conversation_vs_llamacpp"], ".2f", "x"),
                 f(s["cached_share_later"], ".0%"),
                 f"{s['turns_differing']}/{s['turns_checked']}" if s["turns_checked"] else "-"]
                for name, s in per_method.items()]
        lines += [md_table(["method", "convs", "TTFT turn 1", "TTFT turns 2+", "vs llama.cpp", "decode tok/s",
                            "tokens/pass", "conversation", "vs llama.cpp", "prompt cached (2+)", "turns differing"],
                           rows), ""]
    return "\n".join(lines) + "\n"
