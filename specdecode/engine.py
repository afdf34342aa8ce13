"""The decoding loop, layered step -> token stream -> text stream -> string (as mlx-lm).

One round: the drafter proposes k tokens, the target scores last-token + k drafts in one pass,
verification keeps the longest acceptable prefix plus one target token, caches roll back.
Without a drafter the same loop is the plain target-only decoder (k = 0 every round).
By default (num_draft_tokens="auto") a cost policy picks k, and the drafter when there are
several, each round from measured pass costs and running acceptance (docs/policy.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .config import SamplingParams
from .cost_model import CostModel, measure_cost_model
from .drafters.base import Drafter
from .drafters.composite import DrafterSet
from .drafters.policy import AdaptiveDraftLength, CostPolicy, FixedDraftLength
from .errors import ContextLengthError, SpecdecodeError
from .metrics import SpecStats
from .sampling import logits_to_probs, make_generator, sample
from .verify import greedy_verify, rejection_sample

# The fastest draft lengths measured on the one machine we had (2-core AVX2 CPU, Qwen2.5-Coder
# 1.5B target; k in 1..4 for a draft model, 1..8 for n-gram): a multi-token verify pass costs
# nearly one pass per token there, so short drafts win (README, "Results"). Where a (k+1)-token
# pass costs about one token's (GPU, AVX-512-BF16), longer drafts (-k 4..6) should pay.
# They remain the starting k of --adaptive; the default is now "auto", which measures instead.
DEFAULT_NUM_DRAFT_TOKENS = {"model": 2, "ngram": 2, "self": 2}
FALLBACK_NUM_DRAFT_TOKENS = 5  # a drafter kind without a measured default (a user's own drafter)
AUTO = "auto"
MAX_DRAFT_TOKENS = 15  # auto's longest draft: the cost model times passes of up to 16 tokens


def default_num_draft_tokens(drafter_kind: str) -> int:
    """The fixed draft length used when none is given, by drafter name ("model", "ngram", "self").

    The one place the default is looked up: the engine's --adaptive start, the bench methods and
    the bench report all call this."""
    return DEFAULT_NUM_DRAFT_TOKENS.get(drafter_kind, FALLBACK_NUM_DRAFT_TOKENS)


def context_budget(prompt_tokens: int, max_new_tokens: int, max_context: int) -> int:
    """How many tokens a request may generate: max_new_tokens, cut so that prompt + output fit
    the model's context (`max_context` positions). Raises ContextLengthError when the prompt
    alone fills it. The one context-fit rule: the engine stops generating at it, and the
    benchmark skips the prompts it would cut (so every method generates the same length)."""
    if prompt_tokens >= max_context:
        raise ContextLengthError(
            f"the prompt has {prompt_tokens} tokens but the model's context is {max_context} tokens"
        )
    return min(max_new_tokens, max_context - prompt_tokens)


@dataclass
class Chunk:
    """A piece of streamed output."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" (EOS or stop string) | "length" on the last chunk
    stats: SpecStats | None = None


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    stats: SpecStats = field(default_factory=SpecStats)


class Engine:
    """Speculative (or plain) generation for one target model and an optional drafter.

    target: a model from specdecode.load(), a transformers PreTrainedModel (pass tokenizer=),
    or anything implementing specdecode.lm.LanguageModel.
    drafter: None (target only), a Drafter (ModelDrafter, NgramDrafter, ...), a model, which
    becomes a ModelDrafter, or a list of those, which becomes a DrafterSet (one chosen per round).
    num_draft_tokens: "auto" (the default with a drafter): the cost policy picks k in
    0..max_draft_tokens and the drafter, every round; or a fixed k >= 1.
    cost_model: measured pass costs for the policy; None = measure on first need (cached on disk
    per machine and model, see specdecode.cost_model); tests pass synthetic ones.
    """

    def __init__(
        self,
        target,
        drafter=None,
        *,
        tokenizer=None,
        num_draft_tokens: int | str | None = None,
        adaptive: bool = False,
        eos_token_ids: list[int] | None = None,
        cost_model: CostModel | None = None,
        max_draft_tokens: int = MAX_DRAFT_TOKENS,
    ) -> None:
        from .loader import as_language_model, as_tokenizer

        self.target, target_tokenizer = as_language_model(target)
        self.tokenizer = as_tokenizer(tokenizer or target_tokenizer)
        self.drafter = _as_drafter(drafter, self.target, self.tokenizer)
        multi = isinstance(self.drafter, DrafterSet)
        if adaptive and (num_draft_tokens == AUTO or multi):
            raise SpecdecodeError("--adaptive needs one drafter and a fixed draft length (-k N); 'auto' adapts by itself")
        if num_draft_tokens is None and self.drafter is not None:
            # --adaptive alone keeps its old meaning: start at the measured default k and adapt.
            num_draft_tokens = default_num_draft_tokens(self.drafter.name) if adaptive else AUTO
        self.auto = num_draft_tokens == AUTO and self.drafter is not None
        if self.auto:
            if not 1 <= max_draft_tokens <= MAX_DRAFT_TOKENS:
                raise SpecdecodeError(f"max_draft_tokens must be in 1..{MAX_DRAFT_TOKENS}, got {max_draft_tokens}")
            num_draft_tokens = max_draft_tokens
        elif num_draft_tokens == AUTO:
            num_draft_tokens = None
        elif num_draft_tokens is not None and (not isinstance(num_draft_tokens, int) or num_draft_tokens < 1):
            raise SpecdecodeError(f"num_draft_tokens must be 'auto' or an integer >= 1, got {num_draft_tokens!r}")
        # The draft length, or with auto its upper bound (what the KV caches are sized for).
        self.num_draft_tokens = num_draft_tokens or 0
        self.adaptive = adaptive
        self._cost_model = cost_model
        if eos_token_ids is None and self.tokenizer is not None:
            eos_token_ids = self.tokenizer.eos_token_ids
        self.eos_token_ids = set(eos_token_ids or ())

    @property
    def draft_policy(self) -> str:
        """"none", "auto", "fixed" or "adaptive" (for --stats and the server's model card)."""
        if self.drafter is None:
            return "none"
        return AUTO if self.auto else "adaptive" if self.adaptive else "fixed"

    @property
    def needs_cost_model(self) -> bool:
        """Whether generation consults the cost model: auto k, or a choice among several drafters."""
        return self.auto or isinstance(self.drafter, DrafterSet)

    @property
    def cost_model(self) -> CostModel:
        """T(m) of the target and each draft model, measured on first use (a few hundred ms; then cached)."""
        if self._cost_model is None:
            self._cost_model = measure_cost_model(self.target, self._drafters())
        return self._cost_model

    def _drafters(self) -> list[Drafter]:
        if self.drafter is None:
            return []
        return list(self.drafter.drafters) if isinstance(self.drafter, DrafterSet) else [self.drafter]

    def _policy(self):
        if self.drafter is None:
            return None
        if self.needs_cost_model:
            k_fixed = None if self.auto else self.num_draft_tokens
            return CostPolicy(self.cost_model, self._drafters(), k_max=self.num_draft_tokens, k_fixed=k_fixed)
        if self.adaptive:
            return AdaptiveDraftLength(self.num_draft_tokens, 1, max(16, self.num_draft_tokens))
        return FixedDraftLength(self.num_draft_tokens)

    # -- layer 1: rounds ---------------------------------------------------------------------

    def _rounds(self, prompt_ids: list[int], params: SamplingParams, stats: SpecStats) -> Iterator[list[int]]:
        """Yield the new tokens of each round, unbounded; the caller decides when to stop."""
        target, drafter, policy = self.target, self.drafter, self._policy()
        device = target.device
        k_max = policy.k_max if policy else 0
        multi = isinstance(drafter, DrafterSet)
        # Every position fed (drafts included) stays inside the context: RoPE tables and caches
        # end there. `room` below is what keeps a round's drafts within max_len.
        max_len = min(len(prompt_ids) + params.max_new_tokens + k_max + 1, target.max_context)
        generator = make_generator(params.seed, device)
        cache = target.new_cache(max_len)
        tokens = list(prompt_ids)
        if drafter is not None:
            drafter.begin(tokens, max_len, device)
        try:
            t0 = time.perf_counter()
            ids = torch.tensor([tokens], dtype=torch.long, device=device)
            logits = target(ids, torch.arange(len(tokens), device=device)[None], cache, num_logits=1)[0, -1]
            first = int(_pick(logits, params, generator))
            stats.prefill_seconds = time.perf_counter() - t0
            tokens.append(first)
            yield [first]
            while True:
                t0 = time.perf_counter()
                which, k = policy.choose(tokens, max_len - len(tokens) - 1) if policy else (0, 0)
                if k > 0:
                    if multi:
                        draft = drafter.propose(tokens, k, params, generator, which=which)
                    else:
                        draft = drafter.propose(tokens, k, params, generator)
                    draft_tokens, draft_tensor, q = draft.tokens, draft.token_tensor, draft.q
                else:
                    draft_tokens, draft_tensor, q = [], None, None
                t1 = time.perf_counter()
                n = len(tokens)
                last = torch.tensor([tokens[-1]], dtype=torch.long, device=device)
                inp = torch.cat([last, draft_tensor]) if draft_tokens else last  # (k'+1,)
                positions = torch.arange(n - 1, n + len(draft_tokens), device=device)
                logits = target(inp[None], positions[None], cache)[0]  # (k'+1, V)
                if params.greedy:
                    num_accepted, next_token = greedy_verify(inp[1:], logits)
                else:
                    p = logits_to_probs(logits, params)  # (k'+1, V)
                    num_accepted, next_token = rejection_sample(inp[1:], q, p, generator)
                cache.trim(n + num_accepted)  # invariant: the cache holds tokens[:-1]
                if k > 0:  # whoever was asked to draft hears the outcome, even of an empty draft
                    drafter.on_verified(num_accepted)
                if policy:
                    policy.update(len(draft_tokens), num_accepted)
                stats.draft_seconds += t1 - t0
                stats.verify_seconds += time.perf_counter() - t1
                stats.record_round(len(draft_tokens), num_accepted)
                new = draft_tokens[:num_accepted] + [next_token]
                tokens.extend(new)
                yield new
        finally:
            if drafter is not None:
                drafter.end()

    # -- layer 2: token stream with EOS and length --------------------------------------------

    def stream_tokens(
        self, prompt_ids: list[int], params: SamplingParams, stats: SpecStats | None = None
    ) -> Iterator[tuple[list[int], str | None]]:
        """Yield (new token ids, finish_reason or None); stops at EOS or max_new_tokens.

        EOS tokens are not yielded. Closing the iterator early (a cancelled request) releases
        the request's caches; the engine stays reusable.
        """
        params.validate()
        stats = stats if stats is not None else SpecStats()
        if not prompt_ids:
            raise SpecdecodeError("the prompt is empty")
        budget = context_budget(len(prompt_ids), params.max_new_tokens, self.target.max_context)
        eos = set() if params.ignore_eos else self.eos_token_ids
        stats.prompt_tokens = len(prompt_ids)
        rounds = self._rounds(prompt_ids, params, stats)
        start = None
        try:
            for new in rounds:
                if start is None:
                    start = time.perf_counter()
                finish = None
                for i, tok in enumerate(new):
                    if tok in eos:
                        new, finish = new[:i], "stop"
                        break
                if finish is None and stats.generated_tokens + len(new) >= budget:
                    new, finish = new[: budget - stats.generated_tokens], "length"
                stats.generated_tokens += len(new) + (1 if finish == "stop" else 0)
                stats.decode_seconds = time.perf_counter() - start
                yield new, finish
                if finish:
                    return
        finally:
            rounds.close()

    # -- layer 3: text ---------------------------------------------------------------------------

    def encode(self, prompt, chat: bool | None = None) -> list[int]:
        if self.tokenizer is None:
            raise SpecdecodeError("this engine has no tokenizer: pass tokenizer= or use token ids")
        if not prompt:
            raise SpecdecodeError("the prompt is empty")
        if isinstance(prompt, list) and isinstance(prompt[0], int):
            return list(prompt)
        return self.tokenizer.encode_prompt(prompt, chat=chat)

    def stream(self, prompt, params: SamplingParams | None = None, *, chat: bool | None = None, **kwargs) -> Iterator[Chunk]:
        """Yield text chunks as they are decoded; the last chunk carries finish_reason and stats.

        prompt: a string (chat template applied for instruct models unless chat=False), a list
        of chat messages, or a list of token ids. kwargs build SamplingParams when params is None.
        """
        from .stopping import StopStringMatcher

        params = params or SamplingParams(**kwargs)
        prompt_ids = self.encode(prompt, chat)
        stats = SpecStats()
        detok = self.tokenizer.detokenizer()
        stopper = StopStringMatcher(params.stop)
        out_ids: list[int] = []
        tokens = self.stream_tokens(prompt_ids, params, stats)
        try:
            for new, finish in tokens:
                out_ids.extend(new)
                text, hit = stopper.feed(detok.add(new))
                if hit:
                    yield Chunk(text, new, "stop", stats)
                    return
                if finish:
                    text2, hit = stopper.feed(detok.flush())
                    yield Chunk(text + text2 + ("" if hit else stopper.flush()), new, "stop" if hit else finish, stats)
                    return
                if text or new:
                    yield Chunk(text, new)
        finally:
            tokens.close()

    def generate(self, prompt, params: SamplingParams | None = None, *, chat: bool | None = None, **kwargs) -> GenerationResult:
        """Generate to completion; returns text, token ids, finish reason and SpecStats."""
        parts, ids, finish, stats = [], [], "length", SpecStats()
        for chunk in self.stream(prompt, params, chat=chat, **kwargs):
            parts.append(chunk.text)
            ids.extend(chunk.token_ids)
            if chunk.finish_reason:
                finish, stats = chunk.finish_reason, chunk.stats
        return GenerationResult("".join(parts), ids, finish, stats)

    def generate_ids(self, prompt_ids: list[int], params: SamplingParams) -> tuple[list[int], SpecStats]:
        """Token ids in, token ids out (no tokenizer needed); EOS and max_new_tokens apply."""
        stats, ids = SpecStats(), []
        for new, _ in self.stream_tokens(prompt_ids, params, stats):
            ids.extend(new)
        return ids, stats


def _pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    if params.greedy:
        return logits.argmax(-1)
    return sample(logits_to_probs(logits, params), generator)


def _as_drafter(drafter, target, tokenizer) -> Drafter | None:
    from .drafters.model import ModelDrafter
    from .loader import as_language_model

    if isinstance(drafter, (list, tuple)):
        members = [_as_drafter(d, target, tokenizer) for d in drafter if d is not None]
        if not members:
            return None
        return members[0] if len(members) == 1 else DrafterSet(members)
    if drafter is None or isinstance(drafter, Drafter):
        if isinstance(drafter, ModelDrafter):
            check_same_vocab(target, drafter.model, tokenizer, None)
        return drafter
    model, draft_tokenizer = as_language_model(drafter)
    check_same_vocab(target, model, tokenizer, draft_tokenizer)
    return ModelDrafter(model)


def check_same_vocab(target, draft, tokenizer, draft_tokenizer) -> None:
    if target.vocab_size != draft.vocab_size:
        raise SpecdecodeError(
            f"the draft's vocabulary ({draft.vocab_size} tokens) does not match the target's "
            f"({target.vocab_size}); a draft model must share the target's tokenizer"
        )
    if tokenizer is not None and draft_tokenizer is not None:
        if tokenizer.hf.get_vocab() != draft_tokenizer.hf.get_vocab():
            raise SpecdecodeError("the draft's tokenizer differs from the target's; they must be identical")
