"""The methods a benchmark compares, in a registry: one entry per way of generating.

A method is a function BenchContext -> runner, where a runner has `run(prompt_ids, params) ->
RunResult`; returning a specdecode Engine is enough (it is wrapped in EngineRunner). A new
drafter therefore joins the benchmark with one decorated function and no harness change:

    @register_method("spec-int8", needs_draft=True, description="int8 draft model")
    def _spec_int8(ctx):
        return Engine(ctx.target, quantize(ctx.draft), num_draft_tokens=ctx.k("model"), ...)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import SamplingParams
from ..tools import ToolSpec
from ..drafters import NgramDrafter, SuffixDrafter
from ..engine import Engine, default_num_draft_tokens
from ..loader import DRAFT_QUANT_HEAD, QUANT_HEAD
from ..errors import SpecdecodeError
from ..metrics import SpecStats
from .runs import Runner, RunResult

__all__ = ["METHODS", "BenchContext", "Method", "Runner", "RunResult", "EngineRunner", "HFGenerateRunner",
           "register_method", "build_runner"]


@dataclass
class BenchContext:
    """What a method may build from: the loaded models and the run's shared settings."""

    target: Any  # specdecode.Model
    draft: Any | None  # specdecode.Model or None
    eos_token_ids: list[int]
    num_draft_tokens: int | None = None  # None = each drafter's default
    adaptive: bool = False
    head_path: str | None = None  # --head (None: the head trained for the target, if any)
    _hf: dict[str, Any] = field(default_factory=dict, repr=False)
    _head: list = field(default_factory=list, repr=False)
    _quantized: dict[tuple[str, str, str], Any] = field(default_factory=dict, repr=False)

    def k(self, drafter_kind: str) -> int:
        return self.num_draft_tokens or default_num_draft_tokens(drafter_kind)

    def hf_target(self):
        """The transformers twin of the target (shared tensors), built once per run."""
        return self._hf_twin("target", self.target)

    def hf_draft(self):
        return self._hf_twin("draft", self.draft)

    def _hf_twin(self, role: str, model):
        from .hf_from_native import hf_model_from_native

        if role not in self._hf:
            self._hf[role] = hf_model_from_native(model.lm)
        return self._hf[role]

    def quantized_target(self, mode: str):
        """A quantized twin of the target (shares embeddings and norms), built once per run."""
        return self._quantized_twin("target", self.target, mode)

    def quantized_draft(self, mode: str, head: str = DRAFT_QUANT_HEAD):
        """A quantized twin of the draft model, its output layer stored as `head` (by default in the
        body's format, as the CLI loads drafts: specdecode.loader.DRAFT_QUANT_HEAD)."""
        return self._quantized_twin("draft", self.draft, mode, head)

    def _quantized_twin(self, role: str, model, mode: str, head: str = QUANT_HEAD):
        """mode "int8" / "int4": our quantization (the output layer stored as `head`); "gguf": the
        model's GGUF file's own blocks."""
        from ..quant import head_storage, quantized_copy

        # keyed by how the head is stored, as the loader's quantized-model cache is ("same" with
        # int4 and "int4" are one model; a GGUF twin runs the file's own output layer)
        key = (role, mode, "file" if mode == "gguf" else head_storage(mode, head))
        if key not in self._quantized:
            self._quantized[key] = _gguf_twin(model) if mode == "gguf" else quantized_copy(model.lm, mode, head=head)
        return self._quantized[key]

    def head_drafter(self, target=None, required: bool = True, branches: int = 1):
        """A HeadDrafter on the target (or its twin `target`, sharing the embedding), from --head or
        the head trained for the target; None where there is none and it is not `required`
        (branches=2: token trees with the head's second choices)."""
        from ..heads.pipeline import drafter_on, find_head, has_head
        from ..heads.store import load_head

        if not self._head:  # (the head as read, where it was read from): one read for every method
            if not required and self.head_path is None and not has_head(self.target):
                return None
            where = find_head(self.target, self.head_path)
            self._head.append((load_head(where)[0], where))
        head, where = self._head[0]
        return drafter_on(head, self.target.lm if target is None else target, where, branches=branches)

    def engine(self, drafter=None, kind: str | None = None, target=None, **options) -> Engine:
        """An Engine on the target (or `target`) with the run's EOS, draft length and adaptivity."""
        k = self.k(kind) if drafter is not None and kind else None
        return Engine(self.target if target is None else target, drafter, num_draft_tokens=k,
                      adaptive=self.adaptive and drafter is not None, eos_token_ids=self.eos_token_ids,
                      tokenizer=self.target.tokenizer, **options)


@dataclass(frozen=True)
class Method:
    name: str
    build: Callable[[BenchContext], Any]  # -> Runner or Engine
    description: str = ""
    needs_draft: bool = False
    reference: str = "target"  # the method whose greedy output this one must reproduce exactly
    default: bool = True  # part of `--methods all`
    uses_draft: bool = False  # drafts with the draft model when --draft gives one (needs_draft: must)


METHODS: dict[str, Method] = {}


def register_method(name: str, *, description: str = "", needs_draft: bool = False,
                    reference: str = "target", default: bool = True, uses_draft: bool = False):
    """Decorator: add a method (a BenchContext -> Runner | Engine factory) to the registry."""

    def deco(build: Callable[[BenchContext], Any]):
        METHODS[name] = Method(name, build, description, needs_draft, reference, default, uses_draft or needs_draft)
        return build

    return deco


def build_runner(method: Method, ctx: BenchContext) -> Runner:
    made = method.build(ctx)
    return EngineRunner(made) if isinstance(made, Engine) else made


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EngineRunner:
    """Times a specdecode Engine through its token stream (the path the CLI and server use)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Single-turn runs prefill every prompt and learn nothing from earlier runs (the prefix
        # cache and a suffix store are emptied first), as the peers; the conversation benchmark
        # keeps both, as llama.cpp keeps its prompt cache there.
        self.keep_prefix_cache = False

    def run(self, prompt_ids: list[int], params: SamplingParams, tools: ToolSpec | None = None) -> RunResult:
        stats, ids, finish = SpecStats(), [], "length"  # (a tool grammar is in params.grammar)
        device = self.engine.target.device
        if not self.keep_prefix_cache:
            self.engine.forget_history()
        refreshes = self.engine.cost_model_refreshes
        _sync(device)
        t0 = time.perf_counter()
        t_first = t_last = None
        # Timed from outside, exactly as the HF runner times generate(): call -> first tokens out
        # (so request setup counts as prefill, as it does for HF) -> last tokens out.
        for new, fin in self.engine.stream_tokens(prompt_ids, params, stats):
            t_last = time.perf_counter()
            t_first = t_first or t_last
            ids.extend(new)
            finish = fin or finish
        _sync(device)
        end = time.perf_counter()
        t_first, t_last = t_first or end, t_last or end
        return RunResult(
            output_ids=ids, finish_reason=finish, generated_tokens=stats.generated_tokens, first_chunk_tokens=1,
            prefill_s=t_first - t0, decode_s=t_last - t_first, total_s=end - t0,
            target_passes=stats.target_passes, drafted_by_position=list(stats.drafted_by_position),
            accepted_by_position=list(stats.accepted_by_position), cached_tokens=stats.cached_tokens,
            cost_remeasures=self.engine.cost_model_refreshes - refreshes,
        )


class _TimingStreamer:
    """A transformers streamer that only notes when each chunk of tokens comes out."""

    def __init__(self) -> None:
        self.prompt_seen = False
        self.times: list[float] = []
        self.counts: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        now = time.perf_counter()
        if not self.prompt_seen:  # generate() first hands over the prompt itself
            self.prompt_seen = True
            return
        self.times.append(now)
        self.counts.append(int(value.numel()))

    def end(self) -> None:
        pass


class HFGenerateRunner:
    """transformers `generate` on the target's twin: plain, assisted (draft twin) or prompt lookup.

    Same stopping rule as the engine: greedy (or the same temperature / top-k / top-p), the
    engine's EOS ids, max_new_tokens, no minimum. Prefill is timed as start -> first streamed
    tokens, decode as first -> last streamed tokens, exactly as for the engine; with assisted
    generation the first chunk is the prompt pass that also verifies the first draft.
    """

    def __init__(self, model, eos_token_ids: list[int], assistant=None, assistant_tokens: int | None = None,
                 prompt_lookup_tokens: int | None = None, adaptive: bool = False) -> None:
        if not eos_token_ids:
            raise SpecdecodeError("the HF baselines need the target's EOS token ids")
        self.model, self.eos = model, list(eos_token_ids)
        self.assistant, self.prompt_lookup_tokens = assistant, prompt_lookup_tokens
        if assistant is not None:
            gc = assistant.generation_config
            gc.num_assistant_tokens = assistant_tokens
            # Fixed k and no confidence cut-off, like spec-model; --adaptive turns on HF's own
            # schedule (reset per call, so repeats stay independent).
            gc.num_assistant_tokens_schedule = "heuristic_transient" if adaptive else "constant"
            gc.assistant_confidence_threshold = 0.4 if adaptive else 0.0

    def generation_config(self, params: SamplingParams):
        from transformers import GenerationConfig

        kw: dict[str, Any] = dict(max_new_tokens=params.max_new_tokens, eos_token_id=self.eos, pad_token_id=self.eos[0])
        if params.greedy:
            kw.update(do_sample=False)
        else:
            kw.update(do_sample=True, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
        if self.prompt_lookup_tokens:
            kw.update(prompt_lookup_num_tokens=self.prompt_lookup_tokens, max_matching_ngram_size=NgramDrafter().max_ngram)
        return GenerationConfig(**kw)

    @torch.inference_mode()
    def run(self, prompt_ids: list[int], params: SamplingParams, tools: ToolSpec | None = None) -> RunResult:
        if params.json_schema is not None or params.grammar is not None:
            raise SpecdecodeError("the hf methods do not constrain output to a JSON schema or grammar "
                                  "(json-extract, tool-calls prompts)")
        device = self.model.device
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        gen_config = self.generation_config(params)
        if not params.greedy and params.seed is not None:
            torch.manual_seed(params.seed)
        streamer = _TimingStreamer()
        extra = {"assistant_model": self.assistant} if self.assistant is not None else {}
        _sync(device)
        t0 = time.perf_counter()
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen_config,
                                  streamer=streamer, **extra)
        _sync(device)
        total = time.perf_counter() - t0
        gen = out[0, len(prompt_ids):].tolist()
        eos_at = next((i for i, t in enumerate(gen) if t in self.eos), None)
        finish = "length" if eos_at is None else "stop"
        generated = gen if eos_at is None else gen[: eos_at + 1]
        times = streamer.times or [t0 + total]
        first = streamer.counts[0] if streamer.counts else len(generated)
        return RunResult(
            output_ids=generated if eos_at is None else generated[:-1], finish_reason=finish,
            generated_tokens=len(generated), first_chunk_tokens=min(first, len(generated)),
            prefill_s=times[0] - t0, decode_s=times[-1] - times[0], total_s=total,
            target_passes=max(len(times) - 1, 0),
        )


# -- the built-in methods ------------------------------------------------------------------------


@register_method("target", description="specdecode target-only loop (no drafter): the baseline")
def _target(ctx: BenchContext):
    return ctx.engine()


@register_method("hf", description="transformers generate(), greedy, on the same weights")
def _hf(ctx: BenchContext):
    return HFGenerateRunner(ctx.hf_target(), ctx.eos_token_ids)


@register_method("hf-assisted", needs_draft=True, reference="hf",
                 description="transformers assisted generation (assistant_model= the draft)")
def _hf_assisted(ctx: BenchContext):
    return HFGenerateRunner(ctx.hf_target(), ctx.eos_token_ids, assistant=ctx.hf_draft(),
                            assistant_tokens=ctx.k("model"), adaptive=ctx.adaptive)


@register_method("hf-lookup", reference="hf", description="transformers prompt lookup decoding (prompt_lookup_num_tokens=)")
def _hf_lookup(ctx: BenchContext):
    return HFGenerateRunner(ctx.hf_target(), ctx.eos_token_ids, prompt_lookup_tokens=ctx.k("ngram"))


@register_method("spec-model", needs_draft=True, description="specdecode with the draft model")
def _spec_model(ctx: BenchContext):
    return ctx.engine(ctx.draft, "model")


@register_method("spec-ngram", description="specdecode prompt lookup (n-gram drafter)")
def _spec_ngram(ctx: BenchContext):
    return ctx.engine(NgramDrafter(), "ngram")


# -- cheaper passes (quantized drafts, self-speculation) -----------------------------------------


@register_method("spec-head", default=False,
                 description="specdecode with the draft head trained for the target (`specdecode heads train`)")
def _spec_head(ctx: BenchContext):
    return Engine(ctx.target, ctx.head_drafter(), num_draft_tokens=ctx.num_draft_tokens or "auto",
                  eos_token_ids=ctx.eos_token_ids, tokenizer=ctx.target.tokenizer)


@register_method("spec-self", description="specdecode self-speculation: the target drafts from an int4 copy of itself")
def _spec_self(ctx: BenchContext):
    from ..drafters import SelfDrafter

    # The run's int4 twin of the target: its layers are shared, not quantized again (spec-int8-self).
    return ctx.engine(SelfDrafter(ctx.quantized_target("int4"), "int4"), "self")


@register_method("spec-model-int8", needs_draft=True, description="specdecode with the draft model quantized to int8")
def _spec_model_int8(ctx: BenchContext):
    from ..drafters import ModelDrafter

    return ctx.engine(ModelDrafter(ctx.quantized_draft("int8")), "model")


@register_method("spec-model-int4", needs_draft=True, description="specdecode with the draft model quantized to int4")
def _spec_model_int4(ctx: BenchContext):
    from ..drafters import ModelDrafter

    return ctx.engine(ModelDrafter(ctx.quantized_draft("int4")), "model")


# -- an int8 target: its own baseline, and speculation that must reproduce it exactly -------------
# Weight-only int8 changes the target's output a little (see docs/quantization.md), so these
# methods are checked against `target-int8`, not against the bf16 `target`. On CPUs without
# native bf16 (AVX2), an int8 matmul of k+1 rows costs far less than k+1 bf16 rows, which is
# what lets verification pay off there.


@register_method("target-int8", default=False,
                 description="specdecode target-only loop on an int8 copy of the target (its own baseline)")
def _target_int8(ctx: BenchContext):
    return ctx.engine(target=ctx.quantized_target("int8"))


@register_method("spec-int8-model-int8", needs_draft=True, reference="target-int8", default=False,
                 description="int8 target, draft model quantized to int8")
def _spec_int8_model_int8(ctx: BenchContext):
    from ..drafters import ModelDrafter

    return ctx.engine(ModelDrafter(ctx.quantized_draft("int8")), "model", target=ctx.quantized_target("int8"))


@register_method("spec-int8-self", reference="target-int8", default=False,
                 description="int8 target drafting from an int4 copy of itself")
def _spec_int8_self(ctx: BenchContext):
    from ..drafters import SelfDrafter

    return ctx.engine(SelfDrafter(ctx.quantized_target("int4"), "int4"), "self", target=ctx.quantized_target("int8"))


@register_method("spec-int8-ngram", reference="target-int8", default=False,
                 description="int8 target, prompt lookup (n-gram drafter)")
def _spec_int8_ngram(ctx: BenchContext):
    return ctx.engine(NgramDrafter(), "ngram", target=ctx.quantized_target("int8"))


# -- peers: another engine on the same model file ------------------------------------------------


@register_method("llamacpp", default=False,
                 description="llama.cpp (llama-cpp-python) target-only greedy decoding on the target's GGUF file; "
                             "a different implementation: agreement with `target` is reported, not a losslessness check")
def _llamacpp(ctx: BenchContext):
    from .llamacpp import build_llamacpp_runner

    # Not in "all": it needs an optional extra and a GGUF target, and the harness has no
    # per-method skip beyond --draft; asked for without the extra, it fails with the pip line.
    return build_llamacpp_runner(ctx.target, ctx.eos_token_ids, threads=torch.get_num_threads())


# -- an int4 target on the CPU kernels: the fastest lossless configuration on a CPU -----------------
# int4 weights x int8 activations (specdecode.kernels) change the target's output a little, so
# these are checked against `target-int4`; the kernels make a k+1-token pass cost far less than
# k+1 steps and round every row exactly like a step, so speculation reproduces it token for token.

@register_method("target-int4", default=False,
                 description="specdecode target-only loop on an int4 copy of the target (its own baseline)")
def _target_int4(ctx: BenchContext):
    return ctx.engine(target=ctx.quantized_target("int4"))


@register_method("target-int4-unforced", reference="target-int4", default=False,
                 description="target-int4 without the free drafts of a JSON schema's forced tokens (json-extract)")
def _target_int4_unforced(ctx: BenchContext):
    return ctx.engine(target=ctx.quantized_target("int4"), forced_drafts=False)


@register_method("spec-int4-model-int4", needs_draft=True, reference="target-int4", default=False,
                 description="int4 target, int4 draft model, k chosen per round by the cost policy")
def _spec_int4_model_int4(ctx: BenchContext):
    from ..drafters import ModelDrafter

    return Engine(ctx.quantized_target("int4"), ModelDrafter(ctx.quantized_draft("int4")),
                  num_draft_tokens=ctx.num_draft_tokens or "auto", eos_token_ids=ctx.eos_token_ids, tokenizer=ctx.target.tokenizer)


@register_method("spec-int4-model-int4-allvocab", needs_draft=True, reference="target-int4", default=False,
                 description="spec-int4-model-int4 with the draft scoring every id of the vocabulary (no "
                             "--draft-vocab cut): what the cut gains or loses")
def _spec_int4_model_int4_allvocab(ctx: BenchContext):
    from ..drafters import ModelDrafter

    return Engine(ctx.quantized_target("int4"), ModelDrafter(ctx.quantized_draft("int4"), vocab_rows=None),
                  num_draft_tokens=ctx.num_draft_tokens or "auto", eos_token_ids=ctx.eos_token_ids, tokenizer=ctx.target.tokenizer)


@register_method("spec-int4-model-int4-int8head", needs_draft=True, reference="target-int4", default=False,
                 description="spec-int4-model-int4 with the draft's output layer in int8 (as before drafts took "
                             "their body's format): what the int4 head gains or loses")
def _spec_int4_model_int4_int8head(ctx: BenchContext):
    from ..drafters import ModelDrafter

    return Engine(ctx.quantized_target("int4"), ModelDrafter(ctx.quantized_draft("int4", head="int8")),
                  num_draft_tokens=ctx.num_draft_tokens or "auto", eos_token_ids=ctx.eos_token_ids, tokenizer=ctx.target.tokenizer)


@register_method("spec-int4-model-int4-tree", needs_draft=True, reference="target-int4", default=False,
                 description="spec-int4-model-int4 drafting token trees: the chain plus the draft's second choices "
                             "where the planner grants free rows (greedy)")
def _spec_int4_model_int4_tree(ctx: BenchContext):
    from ..drafters import ModelDrafter

    return Engine(ctx.quantized_target("int4"), ModelDrafter(ctx.quantized_draft("int4"), branches=2),
                  num_draft_tokens=ctx.num_draft_tokens or "auto", eos_token_ids=ctx.eos_token_ids, tokenizer=ctx.target.tokenizer)


# -- the GGUF file's own blocks on the CPU kernels (--quantize gguf): the model llama.cpp runs -------


def _gguf_twin(model):
    from ..loading.gguf_native import native_copy
    from .llamacpp import resolve_gguf

    path = resolve_gguf(model.source, needed_by="--quantize gguf")
    return native_copy(model.lm, path, model.lm.args)[0]


@register_method("target-gguf", default=False,
                 description="specdecode target-only loop on the GGUF file's own blocks (--quantize gguf)")
def _target_gguf(ctx: BenchContext):
    return ctx.engine(target=ctx.quantized_target("gguf"))


@register_method("spec-gguf-model-gguf", needs_draft=True, reference="target-gguf", default=False,
                 description="the target's and the draft's GGUF blocks as shipped, k chosen per round by the cost policy")
def _spec_gguf_model_gguf(ctx: BenchContext):
    from ..drafters import ModelDrafter

    return Engine(ctx.quantized_target("gguf"), ModelDrafter(ctx.quantized_draft("gguf")),
                  num_draft_tokens=ctx.num_draft_tokens or "auto", eos_token_ids=ctx.eos_token_ids, tokenizer=ctx.target.tokenizer)


@register_method("spec-gguf-auto", reference="target-gguf", default=False, uses_draft=True,
                 description="GGUF target as shipped, --drafter auto (n-gram + suffix + the GGUF draft model if given "
                             "+ the draft head if one is trained)")
def _spec_gguf_auto(ctx: BenchContext):
    return _auto(ctx, "gguf", forced_drafts=True)


@register_method("spec-int4-ngram", reference="target-int4", default=False,
                 description="int4 target, prompt lookup (n-gram drafter), k chosen per round by the cost policy")
def _spec_int4_ngram(ctx: BenchContext):
    return Engine(ctx.quantized_target("int4"), NgramDrafter(), num_draft_tokens=ctx.num_draft_tokens or "auto",
                  eos_token_ids=ctx.eos_token_ids, tokenizer=ctx.target.tokenizer)


@register_method("spec-int4-ngram-tree", reference="target-int4", default=False,
                 description="spec-int4-ngram drafting token trees of 3 earlier occurrences' continuations")
def _spec_int4_ngram_tree(ctx: BenchContext):
    return Engine(ctx.quantized_target("int4"), NgramDrafter(branches=3),
                  num_draft_tokens=ctx.num_draft_tokens or "auto", eos_token_ids=ctx.eos_token_ids,
                  tokenizer=ctx.target.tokenizer)


@register_method("spec-int4-head", reference="target-int4", default=False,
                 description="int4 target, the draft head trained for it (`specdecode heads train`), k chosen per round")
def _spec_int4_head(ctx: BenchContext):
    target = ctx.quantized_target("int4")
    return Engine(target, ctx.head_drafter(target), num_draft_tokens=ctx.num_draft_tokens or "auto",
                  eos_token_ids=ctx.eos_token_ids, tokenizer=ctx.target.tokenizer)


@register_method("spec-int4-head-tree", reference="target-int4", default=False,
                 description="spec-int4-head drafting token trees: the chain plus the head's second choices where "
                             "the planner grants free rows (greedy)")
def _spec_int4_head_tree(ctx: BenchContext):
    target = ctx.quantized_target("int4")
    return Engine(target, ctx.head_drafter(target, branches=2), num_draft_tokens=ctx.num_draft_tokens or "auto",
                  eos_token_ids=ctx.eos_token_ids, tokenizer=ctx.target.tokenizer)


@register_method("spec-int4-auto", reference="target-int4", default=False, uses_draft=True,
                 description="int4 target, --drafter auto (n-gram + suffix + int4 draft model if given + the draft "
                             "head if one was trained), policy-chosen")
def _spec_int4_auto(ctx: BenchContext):
    return _auto(ctx, "int4", forced_drafts=True)


@register_method("spec-int4-auto-tree", reference="target-int4", default=False, uses_draft=True,
                 description="spec-int4-auto with every drafter drafting token trees (n-gram: 3 occurrences, suffix: "
                             "its stored alternatives, draft model and head: second choices) on the rows the planner "
                             "grants")
def _spec_int4_auto_tree(ctx: BenchContext):
    return _auto(ctx, "int4", forced_drafts=True, trees=True)


@register_method("spec-int4-auto-unforced", reference="target-int4", default=False, uses_draft=True,
                 description="spec-int4-auto without the free drafts of a JSON schema's forced tokens (json-extract)")
def _spec_int4_auto_unforced(ctx: BenchContext):
    return _auto(ctx, "int4", forced_drafts=False)


def _auto(ctx: BenchContext, mode: str, forced_drafts: bool, trees: bool = False) -> Engine:
    """--drafter auto on the `mode` twins of the target and the draft model (trees: every drafter
    drafting token trees, as --ngram-branches 3 --draft-branches 2 give)."""
    from ..drafters import ModelDrafter

    target = ctx.quantized_target(mode)
    drafters = [ModelDrafter(ctx.quantized_draft(mode), branches=2 if trees else 1)] if ctx.draft is not None else []
    head = ctx.head_drafter(target, required=False, branches=2 if trees else 1)
    drafters += [head] if head is not None else []
    return Engine(target, [*drafters, NgramDrafter(branches=3 if trees else 1), SuffixDrafter(branches=2 if trees else 1)],
                  num_draft_tokens=ctx.num_draft_tokens or "auto", eos_token_ids=ctx.eos_token_ids,
                  tokenizer=ctx.target.tokenizer, forced_drafts=forced_drafts)
