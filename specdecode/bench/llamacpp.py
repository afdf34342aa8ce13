"""llama.cpp (through llama-cpp-python) as a peer in the benchmarks, on the same GGUF file.

Two uses: the `llamacpp` bench method (LlamaCppRunner: target-only greedy decoding from the same
prompt ids, timed like the other runners), and `llamacpp_step_times` (T(m): the time of one pass
over m tokens appended to a context, the cost a verification round would pay), which
scripts/llamacpp_tm.py prints and the kernel benchmark compares against.

llama-cpp-python is an optional extra (`pip install 'specdecode[llamacpp]'`, which compiles
llama.cpp for the machine: 5-10 minutes on 2 cores); without it everything here raises
LlamaCppUnavailableError, a SpecdecodeError the CLI prints as one line.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import SamplingParams
from ..tools import ToolSpec
from ..errors import ModelLoadError, SpecdecodeError
from .runs import RunResult

INSTALL_HINT = "pip install 'specdecode[llamacpp]' (it compiles llama.cpp: 5-10 minutes)"
_MIN_CTX = 4096  # the context first allocated for the bench; grown (before timing) for longer requests


class LlamaCppUnavailableError(SpecdecodeError):
    """llama-cpp-python is not installed."""


def import_llama_cpp(needed_by: str = "llama.cpp support") -> Any:
    """The llama_cpp module, or LlamaCppUnavailableError naming the extra to install."""
    try:
        import llama_cpp
    except ImportError:
        raise LlamaCppUnavailableError(
            f"{needed_by} needs llama-cpp-python, an optional extra that is not installed: {INSTALL_HINT}") from None
    return llama_cpp


def llama_cpp_version() -> str | None:
    try:
        return import_llama_cpp().__version__
    except LlamaCppUnavailableError:
        return None


def resolve_gguf(source: str | Path, needed_by: str = "llama.cpp") -> Path:
    """The GGUF file behind a model source: a registry short name or a .gguf path.

    A loaded Model keeps only the source string it was loaded from; this resolves it the way
    specdecode.load did (an installed short name resolves offline, without hashing again).
    `needed_by` names what needs the file in the error for a source that is not one.
    """
    from ..loading import resolve_source
    from ..loading.tiny import TINY_NAMES

    if str(source) in TINY_NAMES:
        raise SpecdecodeError(f"{needed_by} needs a GGUF model; {source!r} is a random test model built in memory")
    kind, path = resolve_source(str(source))
    if kind != "gguf":
        raise SpecdecodeError(f"{needed_by} needs a GGUF model; {source} is a Hugging Face checkpoint ({path})")
    return path


def open_llama(path: str | Path, *, n_ctx: int, threads: int | None, logits_all: bool = False) -> Any:
    """A llama_cpp.Llama on `path`, CPU only, quiet, `threads` for both prompt and decode passes."""
    llama_cpp = import_llama_cpp()
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                               n_threads_batch=threads, n_gpu_layers=0, logits_all=logits_all, verbose=False)
    except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
        raise ModelLoadError(f"llama.cpp cannot load {path}: {e}") from None


class LlamaCppRunner:
    """Target-only decoding with llama.cpp on the target's GGUF file: the C++ peer in a bench run.

    The same prompt ids (no tokenization on llama.cpp's side, no BOS added), greedy (llama.cpp's
    greedy sampler, no repetition penalty), the same EOS ids, max_new_tokens and stopping rule
    as the engine. Timed as EngineRunner times the engine: call -> first token out (prefill,
    including the reset of the context) -> last token out (decode). The KV cache is reset
    before every run, so llama-cpp-python's prompt-prefix reuse never skips a timed prefill.
    Its arithmetic is not ours (quantized GGUF blocks with 8-bit activations, not de-quantized
    bf16), so its greedy output may differ from the target's at near ties: the bench reports
    its agreement, which is not a losslessness check.
    """

    def __init__(self, path: str | Path, eos_token_ids: list[int], threads: int | None,
                 max_context: int | None = None) -> None:
        import_llama_cpp()
        self.path, self.eos, self.threads = Path(path), set(eos_token_ids), threads
        self.max_context = max_context
        self.llm = None
        # False: every run prefills its whole prompt. True (the conversation benchmark): the KV
        # cache is kept and llama.cpp reuses its longest common prefix with the next prompt, as
        # its server's prompt cache does.
        self.keep_prefix = False
        self._ensure_context(min(_MIN_CTX, max_context or _MIN_CTX))

    def _ensure_context(self, needed: int) -> None:
        if self.llm is not None and self.llm.n_ctx() >= needed:
            return
        n_ctx = max(needed, _MIN_CTX)
        n_ctx = 1 << (n_ctx - 1).bit_length()
        if self.max_context:
            n_ctx = max(min(n_ctx, self.max_context), needed)
        if self.llm is not None:
            self.llm.close()
        self.llm = open_llama(self.path, n_ctx=n_ctx, threads=self.threads)

    def _sampling_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        if params.greedy:
            return dict(temp=0.0, top_k=1, top_p=1.0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0)
        if params.seed is not None:
            self.llm.set_seed(params.seed)
        return dict(temp=params.temperature, top_k=params.top_k, top_p=params.top_p, min_p=0.0, typical_p=1.0,
                    repeat_penalty=1.0)

    def run(self, prompt_ids: list[int], params: SamplingParams, tools: ToolSpec | None = None) -> RunResult:
        if params.stop:
            raise SpecdecodeError("the llamacpp bench method does not implement stop strings")
        self._ensure_context(len(prompt_ids) + params.max_new_tokens + 1)
        llm, kw = self.llm, self._sampling_kwargs(params)
        ids: list[int] = []
        finish = "length"
        t0 = time.perf_counter()
        t_first = t_last = None
        cached = 0
        if self.keep_prefix:  # what generate() will reuse: the common prefix, less a last token it must score
            held = list(llm._input_ids[: llm.n_tokens])
            while cached < min(len(held), len(prompt_ids)) and held[cached] == prompt_ids[cached]:
                cached += 1
            cached = min(cached, len(prompt_ids) - 1)
        else:
            llm.reset()  # n_tokens = 0: generate() then evaluates the whole prompt, no cached prefix
        if params.json_schema is not None:  # the same schema, as llama.cpp's grammar (GBNF) of it
            kw["grammar"] = json_schema_grammar_for_llamacpp(params.json_schema)
        elif params.grammar is not None:
            if tools is None:
                raise SpecdecodeError("the llamacpp bench method takes JSON schemas and tool calls, not a Lark grammar")
            kw["grammar"] = tool_call_grammar_for_llamacpp(tools)
        gen = llm.generate(list(prompt_ids), reset=True, **kw)
        try:
            for token in gen:
                t_last = time.perf_counter()
                t_first = t_first or t_last
                ids.append(int(token))
                if token in self.eos and not params.ignore_eos:
                    finish = "stop"
                    break
                if len(ids) >= params.max_new_tokens:
                    break
        finally:
            gen.close()
        end = time.perf_counter()
        t_first, t_last = t_first or end, t_last or end
        output = ids[:-1] if finish == "stop" else ids
        return RunResult(
            output_ids=output, finish_reason=finish, generated_tokens=len(ids), first_chunk_tokens=1,
            prefill_s=t_first - t0, decode_s=t_last - t_first, total_s=end - t0,
            target_passes=max(len(ids) - 1, 0), cached_tokens=cached,
        )

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None


def json_schema_grammar_for_llamacpp(schema: dict) -> Any:
    """llama.cpp's grammar for a JSON schema (its own converter, as its server's response_format uses).
    Its whitespace rules are llama.cpp's, not ours: compare speed and validity, not text."""
    import json

    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)


def tool_call_grammar_for_llamacpp(tools: ToolSpec) -> Any:
    """llama.cpp's grammar (GBNF) for the answer our tool grammar allows when a call is required:
    one `<tool_call>` block whose JSON is {"name": one of the callable functions, "arguments": its
    parameters}, made by llama.cpp's own JSON-schema converter (its whitespace rules, not ours)."""
    import json

    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    if tools.choice == "auto" or tools.parallel:
        raise SpecdecodeError("the llamacpp bench method builds grammars for one required call only")
    call = {"anyOf": [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                       "required": ["name", "arguments"], "additionalProperties": False} for t in tools.callable]}
    gbnf = json_schema_to_gbnf(json.dumps(call), prop_order=["name", "arguments"]).replace("root ::=", "call ::=", 1)
    text = 'root ::= "<tool_call>\\n" call "\\n</tool_call>" "\\n"?\n' + gbnf
    return LlamaGrammar.from_string(text, verbose=False)


def build_llamacpp_runner(target: Any, eos_token_ids: list[int], threads: int | None) -> LlamaCppRunner:
    """The bench method's runner for a loaded target (specdecode Model): llama.cpp on its GGUF file."""
    import_llama_cpp("the llamacpp bench method")  # the likely problem: say so before anything else
    max_context = getattr(getattr(target, "lm", None), "max_context", None)
    return LlamaCppRunner(resolve_gguf(target.source), eos_token_ids, threads, max_context)


# -- T(m): one pass over m tokens ------------------------------------------------------------------


def _context_tokens(llm: Any, n: int) -> list[int]:
    """n ids of ordinary text (code), so attention runs over a realistic context."""
    text = (b"def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n"
            b"    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n")
    ids = llm.tokenize(text, add_bos=False, special=False)
    return (ids * (n // len(ids) + 1))[:n]


def llamacpp_step_times(gguf_path: str | Path, ms: Iterable[int] = range(1, 17), threads: int | None = None,
                        repeats: int = 7, *, context: int = 64, all_logits: bool = True,
                        warmup: int = 2) -> dict[int, float]:
    """llama.cpp's whole-model T(m) in seconds: median time of one eval of m tokens after `context` tokens.

    gguf_path: a .gguf file or a registry short name (see `specdecode models list`).
    all_logits: logits for every one of the m positions, as a verification pass needs (llama.cpp
    then runs its output layer on all m rows); False = only the last row's, as in prefill.
    The KV cache is rolled back to the context after each eval, and the m values are interleaved
    within each repeat, so slow drifts of the machine spread over all m.
    """
    samples = llamacpp_step_samples(gguf_path, ms, threads, repeats, context=context, all_logits=all_logits,
                                    warmup=warmup)
    return {m: statistics.median(ts) for m, ts in samples.items()}


def llamacpp_step_samples(gguf_path: str | Path, ms: Iterable[int] = range(1, 17), threads: int | None = None,
                          repeats: int = 7, *, context: int = 64, all_logits: bool = True,
                          warmup: int = 2) -> dict[int, list[float]]:
    """Every timed eval behind llamacpp_step_times (seconds, in run order): for spreads and minima."""
    ms = sorted(set(int(m) for m in ms))
    if not ms or ms[0] < 1:
        raise SpecdecodeError(f"m values must be >= 1, got {ms}")
    if repeats < 1:
        raise SpecdecodeError(f"repeats must be >= 1, got {repeats}")
    with LlamaStepper(gguf_path, ms[-1], threads, context=context, all_logits=all_logits) as stepper:
        times: dict[int, list[float]] = {m: [] for m in ms}
        for r in range(warmup + repeats):
            for m in ms:
                dt = stepper.step(m)
                if r >= warmup:
                    times[m].append(dt)
        return times


class LlamaStepper:
    """llama.cpp timed one pass at a time: `step(m)` evaluates m tokens after `context` tokens and
    rolls the KV cache back, returning the seconds it took. For scripts that interleave llama.cpp's
    passes with other engines' (a fair ratio on a machine whose speed drifts). A context manager:
    the model is freed on exit.
    """

    def __init__(self, gguf_path: str | Path, max_m: int, threads: int | None, *, context: int = 64,
                 all_logits: bool = True) -> None:
        self.context = context
        self._llm = open_llama(resolve_gguf(gguf_path), n_ctx=max(256, context + max_m + 16), threads=threads,
                               logits_all=all_logits)
        prompt = _context_tokens(self._llm, context + max_m)
        self._step_ids = prompt[context:]
        self._llm.reset()
        self._llm.eval(prompt[:context])

    def step(self, m: int) -> float:
        if not 1 <= m <= len(self._step_ids):
            raise SpecdecodeError(f"m must be within 1..{len(self._step_ids)}, got {m}")
        self._llm.n_tokens = self.context  # roll back: eval() drops the KV cells from n_tokens on first
        t0 = time.perf_counter()
        self._llm.eval(self._step_ids[:m])
        return time.perf_counter() - t0

    def close(self) -> None:
        self._llm.close()

    def __enter__(self) -> "LlamaStepper":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
