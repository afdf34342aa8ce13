"""What a draft head is trained on: the target's own answers, with its features at every position.

The features come out of the passes the engine runs anyway (a FeatureRecorder is a drafter that
never drafts and keeps what the engine hands it), so collecting them costs the target's
generation and nothing more. Prompts: a JSONL file of the user's ({"prompt": ...} or
{"messages": [...]}, one per line), text files (their text is the sequence: prefill only), or by
default prompts built from what is on this machine offline: the docstrings of Python's standard
library, turned into requests to explain, write, translate, summarize and answer, and requests
the target writes itself from the openings of everyday ones (self_written_prompts). Never the
benchmark prompts (`benchmark_overlap` checks).
"""

from __future__ import annotations

import ast
import json
import pkgutil
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..config import SamplingParams
from ..errors import SpecdecodeError
from ..user_files import read_user_text

_TASKS = (
    "Explain what the Python module `{mod}` is for, with a short example.",
    "Write a Python function that uses `{mod}` to do the following: {line}",
    "Translate into French: {line}",
    "Translate into German: {line}",
    "Traduce al inglés y explica: {line}",
    "Summarize in two sentences: {para}",
    "Answer briefly: what does this mean, and when would I need it? \"{line}\"",
    "Rewrite this more simply for a beginner: {para}",
    "Give three bullet points about: {line}",
    "Is this statement correct? Explain your reasoning step by step. {line}",
)


# How the self-written requests begin (self_written_prompts): everyday chat, writing, translation,
# summaries, questions, reasoning and role play, the kinds of request the docstring prompts lack.
CHAT_OPENERS = (
    "Can you explain", "Translate the following text into English:", "Translate this German sentence into English:",
    "Summarize the following news story:", "What is the difference between", "Write a short story about",
    "I'm planning a trip to", "How do I", "Why do", "What are some tips for", "Write an email to",
    "Give me a recipe for", "Who was", "What happened during", "Compare", "Write a poem about",
    "Help me understand", "What would happen if", "Describe", "I need advice on",
    "Write a persuasive paragraph about", "Solve this math problem:", "A train leaves", "If a store sells",
    "Imagine you are", "Pretend to be", "Read the following passage and answer the question.",
    "Based on the text below,", "List five", "What is the capital of", "How does", "Is it true that",
    "Rewrite this paragraph in a formal tone:", "Draft a cover letter for", "What are the pros and cons of",
    "Plan a weekly schedule for", "Explain to a child", "Give me a fun fact about", "What should I consider when",
    "Create a dialogue between",
)


def finish_request(opener: str, written: str) -> str:
    """A self-written request cleaned up: the opener and what the model wrote after it, up to the
    end of the user's turn; a model that goes on to answer its own request is cut at the first
    blank line (the second, where the first paragraph ends with a colon: it introduces a passage)."""
    text = opener + written
    for end in ("<|im_end|>", "<|eot_id|>", "</s>", "\nAssistant", "\nAnswer:", "\n**"):
        text = text.split(end)[0]
    paras = [p for p in text.split("\n\n") if p.strip()]
    if not paras:
        return ""
    return ("\n\n".join(paras[:2]) if paras[0].rstrip().endswith(":") else paras[0]).strip()


def self_written_prompts(model, count: int, *, seed: int = 0, batch: int = 8, max_new_tokens: int = 72,
                         progress: bool = False) -> list[str]:
    """`count` user requests the target writes itself (Magpie, Xu et al. 2024): the chat template
    opened at a user turn and the start of a request (CHAT_OPENERS, in turn), continued with
    sampling (temperature 1, top-p 0.95, a seed per request, so the same requests come again),
    then cleaned (finish_request). Requests that hold a benchmark prompt, or are too short, are
    dropped: fewer than `count` may come back. Needs a chat template."""
    from tqdm.auto import tqdm

    from ..engine import Engine

    tokenizer = model.tokenizer
    if tokenizer is None:
        raise SpecdecodeError("writing user requests needs the target's tokenizer")
    openers = [CHAT_OPENERS[i % len(CHAT_OPENERS)] for i in range(count)]
    starts = {o: tokenizer.open_user_turn(o) for o in set(openers)}  # (no chat template: an error here)
    requests = [(starts[o], SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, top_p=0.95,
                                           seed=seed * 1_000_003 + i)) for i, o in enumerate(openers)]
    written: dict[int, str] = {}

    def keep(i: int, state) -> None:
        written[i] = finish_request(openers[i], tokenizer.hf.decode(state.tokens[len(requests[i][0]):]))

    bar = tqdm(total=count, desc="requests written", unit="request", disable=None if progress else True)
    decode_all(Engine(model, None, prefix_cache=None), requests, batch, keep, bar)
    kept = [written[i] for i in range(count) if len(written.get(i, "")) > 25]
    return [p for p, held in zip(kept, holds_benchmark_prompt(kept)) if not held]


def _docstrings() -> Iterator[tuple[str, str]]:
    """(module name, docstring) of the standard library's pure-Python modules, read as text (no
    import: nothing is executed)."""
    stdlib = Path(sys.modules["os"].__file__).parent
    for info in sorted(pkgutil.iter_modules([str(stdlib)]), key=lambda m: m.name):
        if info.name.startswith("_") or info.ispkg:
            continue
        path = stdlib / f"{info.name}.py"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        try:
            doc = ast.get_docstring(ast.parse(text), clean=True)
        except (SyntaxError, ValueError):  # a test fixture of bad syntax, a null byte: not a source of prompts
            continue
        if doc and len(doc) > 40:
            yield info.name, doc


def default_prompts(limit: int, seed: int = 0) -> list[str]:
    """Up to `limit` prompts built from the standard library's docstrings (see the module doc):
    three tasks per module in a first round, then rounds of other tasks (each round shuffled on
    its own, so a longer list starts with the shorter one: corpus parts already collected stay
    valid)."""
    docs = []
    for mod, doc in _docstrings():
        lines = [ln.strip() for ln in doc.splitlines() if len(ln.strip()) > 30]
        paras = [p.strip().replace("\n", " ") for p in doc.split("\n\n") if len(p.strip()) > 80]
        if lines:
            docs.append((mod, lines, paras or lines))
    prompts: list[str] = []
    rng = random.Random(seed)
    used: dict[str, set[int]] = {mod: set() for mod, _, _ in docs}
    for round_ in range(len(_TASKS) // 3):
        batch = []
        for mod, lines, paras in docs:
            free = [i for i in range(len(_TASKS)) if i not in used[mod]]
            for i in rng.sample(free, 3):
                used[mod].add(i)
                batch.append(_TASKS[i].format(mod=mod, line=rng.choice(lines), para=rng.choice(paras)[:600]))
        rng.shuffle(batch)
        prompts += batch
        if len(prompts) >= limit:
            break
        rng = random.Random(seed * 1_000_003 + round_ + 1)  # the next round's own stream
    return prompts[:limit]


def read_prompts(path: Path) -> list[str | list[dict]]:
    """A JSONL file of {"prompt": str} or {"messages": [...]} (or plain strings), one per line."""
    out: list[str | list[dict]] = []
    for n, line in enumerate(read_user_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecdecodeError(f"{path}:{n}: not JSON ({e.msg})") from e
        if isinstance(item, dict) and item.get("prompt") is not None:
            item = item["prompt"]
        if isinstance(item, str) and item.strip():
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("messages"), list) and item["messages"] and all(
                isinstance(m, dict) and isinstance(m.get("role"), str)
                and (m.get("content") is None or isinstance(m["content"], (str, list))) for m in item["messages"]):
            out.append(item["messages"])  # content as OpenAI allows it: text, parts, or null beside tool calls
        else:
            raise SpecdecodeError(f'{path}:{n}: expected a non-empty {{"prompt": "..."}} or {{"messages": '
                                  '[{"role": "...", ...}, ...]}')
    return out


def benchmark_overlap(prompts: list) -> int:
    """How many of `prompts` are (or contain) a prompt of the benchmark datasets we ship."""
    return sum(holds_benchmark_prompt(prompts))


def holds_benchmark_prompt(prompts: list) -> list[bool]:
    """For each of `prompts`: whether it is (or contains) a prompt of the benchmark datasets we ship
    (the datasets read once for the whole list)."""
    from ..bench.datasets import all_benchmark_texts

    texts = [t for t in all_benchmark_texts() if len(t) > 20]
    flat = [p if isinstance(p, str) else " ".join(m["content"] for m in p
                                                  if isinstance(m, dict) and isinstance(m.get("content"), str))
            for p in prompts]
    return [bool(p.strip()) and any(t in p or p in t for t in texts) for p in flat]  # ("" is in every text)


class FeatureRecorder:
    """A drafter that never drafts: it keeps the target features the engine hands it and, when
    its request ends, appends (tokens (n,), features (n, D)) to `sink`."""

    name = "record"
    takes_features = True

    def __init__(self, sink: list) -> None:
        self.sink = sink
        self._rows: list[torch.Tensor] = []
        self._context: list[int] = []
        self._known = 0

    def begin(self, prompt: list[int], max_len: int, device: torch.device) -> None:
        self._rows, self._context, self._known, self.device = [], prompt, 0, device

    def add_features(self, start: int, rows: torch.Tensor) -> None:
        if start != self._known:
            raise RuntimeError(f"features out of order: {start} after {self._known}")
        self._rows.append(rows.to(torch.bfloat16).cpu())
        self._known += rows.shape[0]

    def propose(self, context, k, params, generator):  # noqa: ANN001, ANN201 - the Drafter protocol
        from ..drafters.base import empty_draft

        self._context = context  # the engine's own token list: it holds everything at the end
        return empty_draft(self.device)

    def on_verified(self, num_accepted: int) -> None:
        pass  # nothing drafted, nothing to roll back

    def end(self) -> None:
        if self._known >= 2:
            self.sink.append((torch.tensor(self._context[: self._known], dtype=torch.int32),
                              torch.cat(self._rows)))
        self._rows = []


def _is_ids(prompt) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], int)


def collect(model, prompts: list, *, max_new_tokens: int = 256, batch: int = 8, params: SamplingParams | None = None,
            progress: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The target's answers to `prompts` (chat-templated when the tokenizer has a template) with
    its features: a list of (tokens (n,), features (n, D) bf16), `batch` requests decoding at once."""
    from tqdm.auto import tqdm

    from ..engine import Engine

    sink: list = []
    engine = Engine(model, FeatureRecorder(sink), num_draft_tokens=1, prefix_cache=None)
    params = params or SamplingParams(max_new_tokens=max_new_tokens)
    requests = [(list(p) if _is_ids(p) else engine.encode(p), params) for p in prompts]
    bar = tqdm(total=len(requests), desc="target answers", unit="prompt", disable=None if progress else True)
    decode_all(engine, requests, batch, lambda i, state: None, bar)  # the recorder keeps each answer as it ends
    return sink


def decode_all(engine, requests: list[tuple[list[int], SamplingParams]], batch: int,
               finished: Callable[[int, Any], None], bar) -> None:
    """Decode every (prompt ids, params) request, `batch` at once (a freed place is taken at the
    next step), calling finished(index, state) as each ends and advancing the progress `bar`,
    which is closed at the end; unfinished requests are released if anything fails."""
    waiting = list(range(len(requests)))
    live: list = []  # (index, state)
    try:
        while waiting or live:
            while waiting and len(live) < batch:
                i = waiting.pop(0)
                live.append((i, engine.start(*requests[i])))
            engine.step([s for _, s in live])
            for i, s in live:
                if s.finished:
                    finished(i, s)
                    bar.update(1)
            live = [(i, s) for i, s in live if not s.finished]
    finally:
        for _, s in live:
            engine.release(s)
        bar.close()


def collect_text(model, texts: list[str], *, chunk: int = 1024, progress: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The target's features over plain text (a prefill of each piece of up to `chunk` tokens)."""
    from tqdm.auto import tqdm

    from ..engine import Engine

    sink: list = []
    engine = Engine(model, FeatureRecorder(sink), num_draft_tokens=1, prefix_cache=None)
    pieces = []
    for text in texts:
        ids = engine.encode(text, chat=False)
        pieces += [ids[a : a + chunk] for a in range(0, len(ids), chunk) if len(ids[a : a + chunk]) > 8]
    for ids in tqdm(pieces, desc="text features", unit="piece", disable=None if progress else True):
        engine.generate_ids(ids, SamplingParams(max_new_tokens=1))
    return sink
