"""The decoding loop, layered step -> token stream -> text stream -> string (as mlx-lm).

One round: the planner says what each request drafts, the drafters propose, the target scores
last-token + k drafts of every request in one pass, verification keeps the longest acceptable
prefix plus one target token, caches roll back. Without a drafter the same loop is the plain
target-only decoder (k = 0 every round). By default (num_draft_tokens="auto") the CostPlanner
picks k, and the drafter when there are several (specdecode/policy/, docs/policy.md).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .config import SamplingParams
from .constraint import Constraint, GrammarVocabulary, constrain, json_schema_grammar, lark_grammar
from .cost_model import CostModel
from .drafters.base import Draft, Drafter, empty_draft, fork_drafter
from .drafters.composite import DrafterSet, drafter_members, feature_request, give_features
from .errors import ContextLengthError, InvalidParameterError, SpecdecodeError
from .logit_adjust import adjust_logits, adjusts_logits
from .logprobs import TokenLogprob, token_logprobs
from .metrics import SpecStats
from .policy import NO_DRAFT, AdaptiveK, CostPlanner, FixedK, PassCostRatios, Plan, Planner, draft_room
from .prefix_cache import DEFAULT_PREFIX_CACHE_GB, PrefixCache
from .ragged import Segment, forward_segments
from .request import RequestState
from .sampling import PositionNoise, draw, draw_rows, logits_to_probs, make_generator
from .tools import ToolCall, ToolSpec, template_messages
from .verify import greedy_accept, rejection_sample

# The fixed draft length of --adaptive's start and of `-k` bench methods without a number, by
# drafter name (measured on a 2-core AVX2 CPU, Qwen2.5-Coder 1.5B target: short drafts won there).
DEFAULT_NUM_DRAFT_TOKENS = {"model": 2, "ngram": 2, "self": 2}
FALLBACK_NUM_DRAFT_TOKENS = 5  # a drafter kind without a measured default (a user's own drafter)
AUTO = "auto"
MAX_DRAFT_TOKENS = 15  # auto's longest draft: the cost model times passes of up to 16 tokens
# A prompt is prefilled in chunks of this many tokens, one chunk per pass, so a long prompt never
# stalls the requests decoding beside it for long. Fixed per engine (not per batch): a prompt is
# prefilled by the same calls alone or batched, which keeps outputs identical.
PREFILL_CHUNK = 128
# Prompt chunks join a pass while it has fewer tokens than this (decode rows count too).
MAX_BATCH_TOKENS = 512


def default_num_draft_tokens(drafter_kind: str) -> int:
    """The fixed draft length used when none is given, by drafter name ("model", "ngram", "self")."""
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
class StepInfo:
    """What one `Engine.step` did: requests in the pass, tokens in the pass, seconds."""

    batch_size: int
    tokens: int
    seconds: float


@dataclass
class Chunk:
    """A piece of streamed output."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" (EOS or stop string) | "length" on the last chunk
    stats: SpecStats | None = None
    logprobs: list[TokenLogprob] | None = None  # one per token id, when params.logprobs is set


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    stats: SpecStats = field(default_factory=SpecStats)
    logprobs: list[TokenLogprob] | None = None  # one per token id, when params.logprobs is set
    # With tools: the calls the model made and the rest of its text (None when empty).
    tool_calls: list[ToolCall] | None = None
    content: str | None = None


class TextRequest:
    """A request decoded to text: its RequestState, a streaming detokenizer and the stop strings.

    After each `Engine.step` that included the state, `take()` gives the Chunk of what it
    produced (None when a step produced no text yet, e.g. a prompt chunk). A stop string ends
    the request early: `done` turns True and the caller releases the state.
    """

    def __init__(self, state: RequestState, tokenizer) -> None:
        from .stopping import StopStringMatcher

        self.state = state
        self.detok = tokenizer.detokenizer()
        self.stopper = StopStringMatcher(state.params.stop)
        self.done = False

    def take(self) -> Chunk | None:
        s = self.state
        new, finish = s.new_tokens, s.finish_reason
        if self.done or (not new and not finish):
            return None
        lps = s.new_logprobs if s.params.logprobs is not None else None
        text, hit = self.stopper.feed(self.detok.add(new))
        if hit:
            self.done = True
            return Chunk(text, new, "stop", s.stats, lps)
        if finish:
            self.done = True
            text2, hit = self.stopper.feed(self.detok.flush())
            return Chunk(text + text2 + ("" if hit else self.stopper.flush()), new, "stop" if hit else finish, s.stats, lps)
        return Chunk(text, new, logprobs=lps) if text or new else None


class Engine:
    """Speculative (or plain) generation for one target model and an optional drafter.

    target: a model from specdecode.load(), a transformers PreTrainedModel (pass tokenizer=),
    or anything implementing specdecode.lm.LanguageModel.
    drafter: None (target only), a Drafter (ModelDrafter, NgramDrafter, ...), a model, which
    becomes a ModelDrafter, or a list of those, which becomes a DrafterSet (one chosen per round).
    num_draft_tokens: "auto" (the default with a drafter): the CostPlanner picks k in
    0..max_draft_tokens and the drafter, every round; or a fixed k >= 1.
    policy: a Planner (specdecode.policy: FixedK, AdaptiveK, CostPlanner or your own) instead of
    the one num_draft_tokens / adaptive describe.
    cost_model: pass costs for the planner; None = measure on first need (cached on disk per
    machine and model, see specdecode.cost_model); tests pass synthetic ones.
    prefix_cache: a PrefixCache (to share one between engines), its budget in GB, or 0 / None for
    none: a request starts from the longest prefix whose KV rows an earlier request computed,
    for the target and a draft model (specdecode.prefix_cache; output bits do not change).
    forced_drafts: with a json_schema, draft the tokens the grammar forces, for free (False: only
    the drafter drafts; the output is the same either way, for comparing speed).
    """

    def __init__(
        self,
        target,
        drafter=None,
        *,
        tokenizer=None,
        num_draft_tokens: int | str | None = None,
        adaptive: bool = False,
        policy: Planner | None = None,
        eos_token_ids: list[int] | None = None,
        cost_model: CostModel | None = None,
        max_draft_tokens: int = MAX_DRAFT_TOKENS,
        prefill_chunk: int = PREFILL_CHUNK,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        prefix_cache: PrefixCache | float | None = DEFAULT_PREFIX_CACHE_GB,
        forced_drafts: bool = True,
    ) -> None:
        from .loader import as_language_model, as_tokenizer

        self.target, target_tokenizer = as_language_model(target)
        self.tokenizer = as_tokenizer(tokenizer or target_tokenizer)
        self.drafter = _as_drafter(drafter, self.target, self.tokenizer)
        members = drafter_members(self.drafter)
        # Each request drafts through a DrafterSet of its own (one member or several), so the
        # engine treats every drafter configuration alike.
        self._drafter_set = DrafterSet(members) if members else None
        self.costs = PassCostRatios(self.target, members, given=cost_model)
        self.planner = self._make_planner(policy, num_draft_tokens, adaptive, max_draft_tokens, len(members))
        if eos_token_ids is None and self.tokenizer is not None:
            eos_token_ids = self.tokenizer.eos_token_ids
        self.eos_token_ids = set(eos_token_ids or ())
        if not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise SpecdecodeError(f"prefill_chunk must be an integer >= 1, got {prefill_chunk!r}")
        if not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
            raise SpecdecodeError(f"max_batch_tokens must be an integer >= 1, got {max_batch_tokens!r}")
        self.prefill_chunk, self.max_batch_tokens = prefill_chunk, max_batch_tokens
        self.forced_drafts = bool(forced_drafts)
        if prefix_cache is None or isinstance(prefix_cache, PrefixCache):
            self.prefix_cache = prefix_cache
        else:
            self.prefix_cache = PrefixCache.of_gb(prefix_cache)
        for member in members:  # a draft model reuses its rows too (drafters that have any)
            use = getattr(member, "use_prefix_cache", None)
            if use is not None:
                use(self.prefix_cache)

    @property
    def prefix_cache_status(self) -> str:
        """"on (N GB)" or "off (why)", for --stats and the server's model card."""
        if self.prefix_cache is None:
            return "off"
        why = self.prefix_cache.why_not(self.target)
        return why or f"on ({self.prefix_cache.budget_bytes / 2**30:g} GB)"

    def _make_planner(self, policy: Planner | None, k, adaptive: bool, k_max: int, drafters: int) -> Planner | None:
        """The planner num_draft_tokens / adaptive describe (or `policy` as given); None without a drafter."""
        self.auto, self.adaptive, self._policy_name = False, adaptive, "fixed"
        if self.drafter is None:
            if policy is not None:
                raise SpecdecodeError("a policy needs a drafter")
            self.num_draft_tokens = 0
            return None
        if policy is not None:
            if k is not None or adaptive:
                raise SpecdecodeError("give either policy= or num_draft_tokens / adaptive, not both")
            missing = [a for a in ("k_max", "begin", "plan", "observe", "timed", "end", "describe") if not hasattr(policy, a)]
            if missing:
                raise SpecdecodeError(f"policy must implement specdecode.policy.Planner (lacks {', '.join(missing)})")
            self.num_draft_tokens, self._policy_name = policy.k_max, "custom"
            return policy
        if adaptive and (k == AUTO or drafters > 1):
            raise SpecdecodeError("--adaptive needs one drafter and a fixed draft length (-k N); 'auto' adapts by itself")
        if k is None:
            k = default_num_draft_tokens(self.drafter.name) if adaptive else AUTO
        if k == AUTO:
            if not isinstance(k_max, int) or not 1 <= k_max <= MAX_DRAFT_TOKENS:
                raise SpecdecodeError(f"max_draft_tokens must be in 1..{MAX_DRAFT_TOKENS}, got {k_max}")
            self.auto, self.num_draft_tokens, self._policy_name = True, k_max, AUTO
            return CostPlanner(self.costs, k_max=k_max)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise SpecdecodeError(f"num_draft_tokens must be 'auto' or an integer >= 1, got {k!r}")
        self.num_draft_tokens = k
        if adaptive:
            self._policy_name = "adaptive"
            return AdaptiveK(k, 1, max(16, k))
        return CostPlanner(self.costs, k_fixed=k) if drafters > 1 else FixedK(k)

    @property
    def draft_policy(self) -> str:
        """"none", "auto", "fixed", "adaptive" or "custom" (for --stats and the server's model card)."""
        return "none" if self.drafter is None else self._policy_name

    @property
    def needs_cost_model(self) -> bool:
        """Whether the planner consults the measured pass costs."""
        return getattr(self.planner, "costs", None) is self.costs

    @property
    def cost_model(self) -> CostModel:
        """T(m) of the target and each draft model, measured on first use (about 2 s; then cached)."""
        return self.costs.model

    @property
    def cost_model_refreshes(self) -> int:
        """Times the engine's own passes contradicted the cost model and it was measured again."""
        return self.costs.remeasures

    def _drafters(self) -> list[Drafter]:
        return drafter_members(self.drafter)

    @property
    def suffix_stores(self) -> list:
        """The stores of earlier outputs the drafters keep (SuffixDrafter's), for /metrics."""
        return [m.store for m in self._drafters() if getattr(m, "store", None) is not None]

    def forget_history(self) -> None:
        """Drop what earlier requests left behind (the prefix cache's rows, a suffix drafter's
        store of outputs): the next request runs as the first one would. For benchmarks that
        must not let a run learn from the one before it."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        for store in self.suffix_stores:
            store.clear()

    # -- layer 1: requests and rounds --------------------------------------------------------

    def start(self, prompt_ids: list[int], params: SamplingParams, stats: SpecStats | None = None) -> RequestState:
        """A new request's state (caches allocated, nothing computed yet); `step` advances it.

        Raises SpecdecodeError for an empty prompt, bad parameters or a prompt that fills the
        context. The caller must `release` it (step does so itself when it finishes)."""
        params.validate()
        if not prompt_ids:
            raise SpecdecodeError("the prompt is empty")
        if params.logit_bias and max(params.logit_bias) >= self.target.vocab_size:
            raise InvalidParameterError(f"logit_bias: token id {max(params.logit_bias)} is not in the vocabulary "
                                        f"(0..{self.target.vocab_size - 1})")
        budget = context_budget(len(prompt_ids), params.max_new_tokens, self.target.max_context)
        stats = stats if stats is not None else SpecStats()
        stats.prompt_tokens = len(prompt_ids)
        drafter = fork_drafter(self._drafter_set) if self._drafter_set is not None else None
        constraint = self._constraint(params)
        # (a grammar's forced tokens, drafted for free, fit the budget's room: kv_bytes stays exact)
        k_max = self.planner.k_max if self.planner is not None else 0
        # Every position fed (drafts included) stays inside the context: RoPE tables and caches
        # end there. The room the planner sees keeps a round's drafts within max_len.
        max_len = min(len(prompt_ids) + budget + k_max + 1, self.target.max_context)
        device = self.target.device
        seeded = params.seed is not None and not params.greedy
        state = RequestState(
            prompt_ids=list(prompt_ids), params=params, budget=budget,
            eos=set() if params.ignore_eos else set(self.eos_token_ids), max_len=max_len,
            cache=self.target.new_cache(max_len), drafter=drafter,
            generator=make_generator(params.seed, device), stats=stats, tokens=list(prompt_ids),
            noise=PositionNoise(params.seed, self.target.vocab_size, device) if seeded else None,
            constraint=constraint,
        )
        if self.prefix_cache is not None:
            # Reuse rows of at most the prompt's first n - 1 tokens: the last one's pass gives the
            # logits of the first new token.
            state.prefilled = self.prefix_cache.fill(self.target, state.prompt_ids, state.cache, len(prompt_ids) - 1)
            stats.cached_tokens = state.prefilled
        if drafter is not None:
            drafter.begin(state.tokens, max_len, device)
            self.planner.begin(state)
        return state

    def _constraint(self, params: SamplingParams) -> Constraint | None:
        """The grammar state a request with a json_schema starts from (None without one)."""
        if params.json_schema is None and params.grammar is None:
            return None
        if self.tokenizer is None:
            raise SpecdecodeError("structured output (json_schema, grammar) needs the model's tokenizer: pass tokenizer=")
        grammar = json_schema_grammar(params.json_schema) if params.grammar is None else lark_grammar(params.grammar)
        vocabulary = GrammarVocabulary.of(self.tokenizer, self.target.vocab_size, sorted(self.eos_token_ids))
        return Constraint(vocabulary, grammar)

    def kv_bytes(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """KV-cache bytes a request of this size allocates (target and draft model caches; 0 for models
        whose caches grow on demand, such as a transformers model's). What the server's memory budget
        admits requests by."""
        policy_k = self.num_draft_tokens if self.drafter is not None else 0
        budget = min(max_new_tokens, max(self.target.max_context - prompt_tokens, 0))
        positions = min(prompt_tokens + budget + policy_k + 1, self.target.max_context)
        models = [self.target] + [getattr(d, "model", None) for d in self._drafters()]
        return positions * sum(kv_bytes_per_position(m) for m in models if m is not None)

    def release(self, state: RequestState) -> None:
        """Free a request's caches and drafter state (idempotent; also for an unfinished request)."""
        if state.released:
            return
        state.released = True
        if self.prefix_cache is not None and state.cache is not None:
            # The rows that hold tokens: a prompt's prefilled part, or everything but the last
            # token (a step that failed midway may have left unverified drafts beyond it).
            valid = state.prefilled if state.prefilling else len(state.tokens) - 1
            self.prefix_cache.store(self.target, state.tokens, state.cache, min(valid, state.cache.length))
        state.cache = None
        if state.drafter is not None:
            state.stats.plan = self.planner.describe(state)
            self.planner.end(state)
            state.drafter.end()

    def step(self, states: list[RequestState]) -> StepInfo:
        """One round for every unfinished state, in one pass of the target over a ragged batch.

        A request still prefilling contributes its next prompt chunk (at most prefill_chunk
        tokens; chunks go in while the pass has fewer than max_batch_tokens tokens, at least one
        per pass); one that is decoding contributes its last token plus the k tokens its drafter
        proposed (k may be 0). Afterwards each state's `new_tokens` holds what it produced this
        round (EOS cut), `finish_reason` is set when it ended, and a finished state is released.
        """
        for s in states:
            s.new_tokens, s.new_logprobs = [], []
        live = [s for s in states if not s.finished and not s.released]
        if not live:
            return StepInfo(0, 0, 0.0)
        t0 = time.perf_counter()
        decoding = [s for s in live if not s.prefilling]
        drafts, asked, free = self._draft(decoding)
        # Structured output: the tokens each row's grammar state allows; a draft is cut at its
        # first forbidden token (the constrained target would never accept it).
        allowed: dict[int, torch.Tensor] = {}  # index among this pass's owners -> (rows, V) bool
        proposed = [len(d.tokens) for d in drafts]  # what the planner hears: a cut draft was rejected there
        for i, s in enumerate(decoding):
            if s.constraint is not None:
                allowed[i], usable = s.constraint.masks(drafts[i].tokens)
                drafts[i] = drafts[i].cut(usable)
        trees = hasattr(self.target, "forward_ragged")  # token trees need the native model's ragged pass
        for i, s in enumerate(decoding):
            d = drafts[i]
            if d.parents is not None and not (trees and not adjusts_logits(s.params) and len(d) <= draft_room(s)):
                drafts[i] = d.main_branch()  # (penalties count a chain's history; a tree may outgrow the caches)
        t1 = time.perf_counter()
        device = self.target.device
        segments: list[Segment] = []
        for s, d in zip(decoding, drafts):
            last = torch.tensor([s.tokens[-1]], dtype=torch.long, device=device)
            tokens = torch.cat([last, d.token_tensor]) if d.tokens else last  # (k'+1,)
            tree = None if d.parents is None else [-1] + [p + 1 for p in d.parents]
            segments.append(Segment(s.cache, tokens, None, tree, want_features=feature_request(s.drafter)))
        chunks = self._prefill_chunks([s for s in live if s.prefilling], sum(len(g.tokens) for g in segments))
        for j, (s, end) in enumerate(chunks, start=len(decoding)):
            segments.append(Segment(s.cache, s.prompt_ids[s.prefilled : end], 1 if end == len(s.prompt_ids) else 0,
                                    want_features=feature_request(s.drafter)))
            if s.constraint is not None and end == len(s.prompt_ids):
                allowed[j] = s.constraint.masks([])[0]
        logits = list(forward_segments(self.target, segments))  # (1 + k_i, V) per decoding state, (0 or 1, V) per chunk
        for i, s in enumerate(decoding):  # penalties and logit_bias: each row with the output before it
            if adjusts_logits(s.params):
                logits[i] = adjust_logits(logits[i], s.params, s.tokens[len(s.prompt_ids):], drafts[i].tokens)
        for j, (s, _) in enumerate(chunks, start=len(decoding)):
            if adjusts_logits(s.params) and logits[j].shape[0]:
                logits[j] = adjust_logits(logits[j], s.params, ())
        for i, rows in allowed.items():  # the constrained target's logits, for greedy and sampled rows alike
            logits[i] = constrain(logits[i], rows)
        # Greedy rows: one argmax and one host copy for the whole batch.
        owners = decoding + [s for s, _ in chunks]
        greedy = [i for i, s in enumerate(owners) if s.params.greedy and logits[i].shape[0]]
        argmax: dict[int, list[int]] = {}
        if greedy:
            flat = torch.cat([logits[i] for i in greedy]).argmax(-1).tolist()
            r = 0
            for i in greedy:
                argmax[i] = flat[r : r + logits[i].shape[0]]
                r += logits[i].shape[0]
        t2 = time.perf_counter()
        if len(segments) == 1 and decoding and greedy and self.planner is not None:
            # one request, its tokens read back: a pass like the cost model's timed ones
            m = len(segments[0].tokens)
            self.planner.timed(m, segments[0].cache.length - m, t2 - t1)
        for i, (s, d) in enumerate(zip(decoding, drafts)):
            self._verified(s, d, asked[i], logits[i], argmax.get(i), free[i], proposed[i], segments[i].features)
            s.stats.draft_seconds += t1 - t0
            s.stats.verify_seconds += t2 - t1
        for j, (s, end) in enumerate(chunks, start=len(decoding)):
            give_features(s.drafter, s.prefilled, segments[j].features)
            s.prefilled = end
            s.stats.prefill_seconds += t2 - t1
            if end == len(s.prompt_ids):
                first = argmax[j][0] if j in argmax else int(draw(logits_to_probs(logits[j][-1], s.params), s.rng, end))
                s.tokens.append(first)
                if s.constraint is not None:
                    s.constraint.advance([first])
                self._emit(s, [first], logits[j][-1:])
        for s in live:
            if s.finished:
                self.release(s)
        return StepInfo(len(owners), sum(len(g.tokens) for g in segments), time.perf_counter() - t0)

    def _draft(self, states: list[RequestState]) -> tuple[list[Draft], list[int], list[bool]]:
        """This round's draft of each decoding state, the k each drafter was asked for (0 = none)
        and whether the draft is the grammar's forced tokens (free: no drafter, no planner).
        Drafters with `propose_many` (the draft model) propose for all requests sharing their
        model in one batched call: one draft pass per step for all of them."""
        device = self.target.device
        drafts: list[Draft] = [empty_draft(device)] * len(states)
        free = [False] * len(states)
        for i, s in enumerate(states):
            if s.constraint is not None and self.forced_drafts:
                forced = s.constraint.forced(draft_room(s))
                if forced:
                    drafts[i] = Draft(forced, torch.tensor(forced, dtype=torch.long, device=device))
                    free[i] = True
        planned = [s for s, f in zip(states, free) if not f]
        chosen = iter(self.planner.plan(planned) if self.planner is not None and planned else [])
        plans: list[Plan] = [NO_DRAFT if f or self.planner is None else next(chosen) for f in free]
        asked = [p.k for p in plans]
        started = time.perf_counter()
        groups: dict[tuple, list[tuple[int, Drafter]]] = {}
        for i, (s, plan) in enumerate(zip(states, plans)):
            if plan.k <= 0:
                continue
            member = s.drafter.select(plan.which, s.tokens, s.params, s.rng)
            many = getattr(member, "propose_many", None)
            if many is None and getattr(member, "branches", 1) > 1:  # a tree drafter: its main branch and extra nodes
                drafts[i] = member.propose(s.tokens, plan.k, s.params, s.rng, tree_nodes=plan.tree_nodes)
            elif many is None:
                drafts[i] = member.propose(s.tokens, plan.k, s.params, s.rng)
            else:
                groups.setdefault((many, member.batch_key), []).append((i, member))
        for (many, _), group in groups.items():
            idx = [i for i, _ in group]
            grammars = [states[i].constraint for i in idx]
            extra = {"constraints": grammars, "forced_drafts": self.forced_drafts} if any(grammars) else {}
            if any(getattr(m, "branches", 1) > 1 for _, m in group):  # a tree drafter's extra nodes (ModelDrafter)
                extra["tree_nodes"] = [plans[i].tree_nodes for i in idx]
            out = many([m for _, m in group], [states[i].tokens for i in idx], [asked[i] for i in idx],
                       [states[i].params for i in idx], [states[i].rng for i in idx], [plans[i].stop for i in idx],
                       **extra)
            for i, d in zip(idx, out):
                drafts[i] = d
        timed_draft = getattr(self.planner, "timed_draft", None)  # optional in the Planner protocol
        if timed_draft is not None and len(states) == 1 and asked[0] > 0 and drafts[0].tokens:
            # draft steps run: a tree's main path (its other nodes, second choices, cost no step)
            timed_draft(states[0], len(drafts[0].main_path()), time.perf_counter() - started)
        return drafts, asked, free

    def _prefill_chunks(self, waiting: list[RequestState], used: int) -> list[tuple[RequestState, int]]:
        """(state, end of its chunk) for the prompt chunks of this pass, oldest request first.

        Chunk boundaries depend only on the prompt (multiples of prefill_chunk), never on the
        batch, so a prompt is prefilled by the same calls alone or in any batch."""
        chunks = []
        for s in waiting:
            end = min(s.prefilled + self.prefill_chunk, len(s.prompt_ids))
            if chunks and used + end - s.prefilled > self.max_batch_tokens:
                break
            chunks.append((s, end))
            used += end - s.prefilled
        return chunks

    def _verified(self, s: RequestState, draft: Draft, asked: int, logits: torch.Tensor,
                  target_tokens: list[int] | None, free: bool = False, proposed: int | None = None,
                  features: torch.Tensor | None = None) -> None:
        """Verify one state's draft against its logits (1 + k', V), roll back, record, emit.
        free: the draft is the grammar's forced tokens (no drafter or planner hears of it).
        proposed: the drafter's draft length before a grammar cut it at a forbidden token (the
        constrained target rejects that token: the planner's acceptance estimate hears so).
        features: the pass's target features (1 + k', D) when a head drafter asked for them."""
        k = len(draft.tokens)
        n = len(s.tokens)
        if draft.parents is not None:
            return self._verified_tree(s, draft, asked, logits, target_tokens, features)
        if target_tokens is None and s.noise is not None:
            # seeded: the target's own draw at each position, from the position's noise
            target_tokens = draw_rows(logits_to_probs(logits, s.params), s.noise, n)
        if target_tokens is not None:  # greedy or seeded: the longest prefix equal to the target's tokens
            num_accepted, next_token = greedy_accept(draft.tokens, target_tokens)
        else:
            p = logits_to_probs(logits, s.params)  # (k'+1, V)
            num_accepted, next_token = rejection_sample(draft.token_tensor, draft.q, p, s.generator)
        s.cache.trim(n + num_accepted)  # invariant: the cache holds tokens[:-1]
        give_features(s.drafter, n - 1, None if features is None else features[: num_accepted + 1])
        if asked > 0:  # whoever was asked to draft hears the outcome, even of an empty draft
            s.drafter.on_verified(num_accepted)
        # Tokens a grammar forced inside the draft were free and always accepted: the planner and
        # the acceptance counters hear of the drafter's own tokens only.
        proposed = max(k, proposed or 0)
        joined = draft.forced_before(num_accepted)
        if s.drafter is not None and not free:  # rounds without a draft count too (the estimates fade)
            self.planner.observe(s, proposed - draft.forced_before(proposed), num_accepted - joined)
        s.stats.record_round(k - draft.forced_before(k), num_accepted - joined, forced=free)
        s.stats.forced_tokens += joined
        new = draft.tokens[:num_accepted] + [next_token]
        s.tokens.extend(new)
        if s.constraint is not None:
            s.constraint.advance(new)
        if s.noise is not None:
            s.noise.forget_before(len(s.tokens))
        self._emit(s, new, logits)

    def _verified_tree(self, s: RequestState, draft: Draft, asked: int, logits: torch.Tensor,
                       argmax: list[int] | None, features: torch.Tensor | None = None) -> None:
        """Verify a token tree (logits (1 + T, V): row 0 the last token's, row j + 1 node j's): walk
        from the root, at each node drawing the target's own token at that row (greedy: the argmax;
        seeded: the draw of its position's noise; else a sample from the generator) and moving to
        the child that equals it, until none does: the tokens emitted are exactly the target's
        draws along one path, whatever the tree (the drafter has no probabilities; SpecInfer's
        multi-draft rejection sampling is what a sampling drafter's tree would need). The accepted
        nodes' cache rows are compacted behind the context (KVCache.keep)."""
        n = len(s.tokens)
        children: dict[int, dict[int, int]] = {}
        for j, (p, t) in enumerate(zip(draft.parents, draft.tokens)):
            children.setdefault(p, {}).setdefault(t, j)
        path: list[int] = []
        node = -1
        while True:
            row = node + 1
            if argmax is not None:
                token = argmax[row]
            else:
                probs = logits_to_probs(logits[row], s.params)  # (V,)
                token = int(draw(probs, s.rng, n + len(path)))
            child = children.get(node, {}).get(token)
            if child is None:
                break
            path.append(child)
            node = child
        s.cache.keep(n, torch.tensor(path, dtype=torch.long))  # the cache holds tokens[:-1] again
        if features is not None:  # the path's rows: a node's features are a chain's (its path's bits)
            give_features(s.drafter, n - 1, features[torch.tensor([0] + [j + 1 for j in path])])
        # What the planner hears was drafted: the main branch's length (the k it chose, as for a
        # chain), or the accepted path's depth plus the candidate rejected after it, if longer. A
        # leaf ends a path with nothing rejected after it: counting one there made every fully
        # accepted round of a tree with leaves look like a rejection at k + 1.
        main = draft.main_path()
        depth = max(len(main), len(path) + (1 if children.get(node) else 0))
        on_main = next((i for i, (a, b) in enumerate(zip(path, main)) if a != b), min(len(path), len(main)))
        if asked > 0:  # the accepted nodes along the main branch: what a chain drafter's cache holds
            s.drafter.on_verified(on_main)
        if s.drafter is not None:
            self.planner.observe(s, depth, len(path))
            observe_tree = getattr(self.planner, "observe_tree", None)  # optional in the Planner protocol
            if observe_tree is not None:
                observe_tree(s, len(draft.tokens) - len(main), len(path) - on_main)
        s.stats.record_round(len(draft.tokens), len(path))
        new = [draft.tokens[j] for j in path] + [token]
        s.tokens.extend(new)
        if s.constraint is not None:
            s.constraint.advance(new)
        if s.noise is not None:
            s.noise.forget_before(len(s.tokens))
        rows = torch.tensor([0] + [j + 1 for j in path], dtype=torch.long, device=logits.device)
        self._emit(s, new, logits[rows])

    def _emit(self, s: RequestState, new: list[int], logits: torch.Tensor) -> None:
        """Cut `new` at EOS or the length budget; set new_tokens (and their log-probabilities
        from `logits`, row i chose new[i], when asked for), finish_reason and the counters."""
        now = time.perf_counter()
        if s.first_token_at is None:
            s.first_token_at = now
        finish = None
        for i, tok in enumerate(new):
            if tok in s.eos:
                new, finish = new[:i], "stop"
                break
        # The budget may run out before an EOS further on in the round: as the target-only run,
        # which would have stopped there.
        if s.stats.generated_tokens + len(new) >= s.budget:
            new, finish = new[: s.budget - s.stats.generated_tokens], "length"
        s.stats.generated_tokens += len(new) + (1 if finish == "stop" else 0)
        s.stats.decode_seconds = now - s.first_token_at
        s.new_tokens, s.finish_reason = new, finish
        if s.params.logprobs is not None:
            s.new_logprobs = token_logprobs(logits, new, s.params.logprobs)

    # -- layer 2: token stream with EOS and length --------------------------------------------

    def stream_tokens(
        self, prompt_ids: list[int], params: SamplingParams, stats: SpecStats | None = None
    ) -> Iterator[tuple[list[int], str | None]]:
        """Yield (new token ids, finish_reason or None); stops at EOS or max_new_tokens.

        One request stepped alone (a batch of one). EOS tokens are not yielded. Closing the
        iterator early (a cancelled request) releases the request's caches; the engine stays
        reusable.
        """
        state = self.start(prompt_ids, params, stats)
        try:
            while not state.finished:
                self.step([state])
                if state.new_tokens or state.finished:
                    yield state.new_tokens, state.finish_reason
        finally:
            self.release(state)
        self.settle()  # after the last tokens went out (not on a cancelled stream: it may be in a hurry)

    def settle(self) -> bool:
        """Work deferred to a moment no request waits on: a cost model the engine's passes
        contradicted is timed again here (about a second; policy/costs.py). Call it between
        requests (stream_tokens and stream do, after a request's last tokens; the server when its
        batch is empty; a caller of start/step/release, when it has no request open). -> whether
        anything was done."""
        return self.planner.settle() if self.planner is not None and hasattr(self.planner, "settle") else False

    # -- layer 3: text ---------------------------------------------------------------------------

    def encode(self, prompt, chat: bool | None = None, tools: list[dict] | None = None) -> list[int]:
        """A prompt (text, chat messages or token ids) as token ids; `tools` (OpenAI tool objects)
        are rendered by the chat template."""
        if self.tokenizer is None:
            raise SpecdecodeError("this engine has no tokenizer: pass tokenizer= or use token ids")
        if not prompt:
            raise SpecdecodeError("the prompt is empty")
        if isinstance(prompt, list) and isinstance(prompt[0], int):
            if tools:
                raise SpecdecodeError("tools need a text prompt or chat messages, not token ids")
            return list(prompt)
        if isinstance(prompt, list):  # an assistant's tool calls as templates want them
            prompt = template_messages(prompt)
        return self.tokenizer.encode_prompt(prompt, chat=chat, tools=tools)

    def open(self, prompt, params: SamplingParams, *, chat: bool | None = None,
             tools: ToolSpec | None = None) -> TextRequest:
        """Start a request for text: encode the prompt, allocate its state (see `start`). With
        tools, the prompt shows them and params gain their grammar (specdecode/tools.py)."""
        if tools is not None:
            grammar = tools.grammar()
            if grammar is not None:
                if params.json_schema is not None or params.grammar is not None:
                    raise InvalidParameterError("a tool call grammar cannot be combined with json_schema or grammar")
                params = dataclasses.replace(params, grammar=grammar)
        prompt_ids = self.encode(prompt, chat, tools.template_tools if tools is not None else None)
        return TextRequest(self.start(prompt_ids, params), self.tokenizer)

    def stream(self, prompt, params: SamplingParams | None = None, *, chat: bool | None = None,
               tools: ToolSpec | None = None, **kwargs) -> Iterator[Chunk]:
        """Yield text chunks as they are decoded; the last chunk carries finish_reason and stats.

        prompt: a string (chat template applied for instruct models unless chat=False), a list
        of chat messages, or a list of token ids. kwargs build SamplingParams when params is None.
        """
        request = self.open(prompt, params or SamplingParams(**kwargs), chat=chat, tools=tools)
        try:
            while not request.done:
                self.step([request.state])
                chunk = request.take()
                if chunk is not None:
                    yield chunk
        finally:
            self.release(request.state)
        self.settle()  # after the last chunk went out, as stream_tokens

    def generate(self, prompt, params: SamplingParams | None = None, *, chat: bool | None = None,
                 tools: list[dict] | None = None, tool_choice: str | dict | None = None,
                 parallel_tool_calls: bool = True, **kwargs) -> GenerationResult:
        """Generate to completion; returns text, token ids, finish reason and SpecStats.

        tools / tool_choice: OpenAI's (function tools; "none", "auto", "required" or
        {"type": "function", "function": {"name": ...}}; parallel_tool_calls=False: at most one
        call); the calls the model made are in `tool_calls` and the rest of its text in
        `content` (finish_reason "tool_calls"); `text` stays the whole answer."""
        params = params or SamplingParams(**kwargs)
        spec = ToolSpec.of(tools, tool_choice, parallel_tool_calls) if tools is not None else None
        parts, ids, finish, stats, lps = [], [], "length", SpecStats(), []
        for chunk in self.stream(prompt, params, chat=chat, tools=spec):
            parts.append(chunk.text)
            ids.extend(chunk.token_ids)
            lps.extend(chunk.logprobs or [])
            if chunk.finish_reason:
                finish, stats = chunk.finish_reason, chunk.stats
        text = "".join(parts)
        result = GenerationResult(text, ids, finish, stats, lps if params.logprobs is not None else None)
        if spec is not None:
            result.content, result.tool_calls = spec.parse(text)
            if result.tool_calls and finish == "stop":
                result.finish_reason = "tool_calls"
        return result

    def generate_ids(self, prompt_ids: list[int], params: SamplingParams) -> tuple[list[int], SpecStats]:
        """Token ids in, token ids out (no tokenizer needed); EOS and max_new_tokens apply."""
        stats, ids = SpecStats(), []
        for new, _ in self.stream_tokens(prompt_ids, params, stats):
            ids.extend(new)
        return ids, stats


def kv_bytes_per_position(model) -> int:
    """Bytes of K and V one position takes in a native model's cache (0 if not a native model)."""
    own = getattr(model, "kv_bytes_per_position", None)  # a draft head: its one layer and feature row
    if callable(own):
        return own()
    args = getattr(model, "args", None)
    if args is None or not hasattr(model, "model"):
        return 0
    element = model.model.embed_tokens.weight.element_size()
    return 2 * args.num_hidden_layers * args.num_key_value_heads * args.head_dim * element


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
