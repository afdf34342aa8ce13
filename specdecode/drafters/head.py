"""HeadDrafter: a trained draft head on the target's own features (specdecode/heads).

The target's verify pass already computes, for every row, the final-normed hidden state its
lm_head reads; the engine hands those of the settled tokens to this drafter (`add_features`), so
drafting costs no extra target work: one small decoder layer and a draft-vocabulary lm_head per
token (docs/heads.md).

Per request: `features[t]` holds the target's f_t for positions [base, known); the head's own KV
cache holds its rows for the pairs (f_t, x_{t+1}), t in [base, base + cache.length), all computed
from true features. A draft first feeds the pairs the cache lacks (the tokens settled since the
last draft: the catch-up), then its own predictions: row t's output is the head's guess of
f_{t+1}, whose draft-vocabulary argmax (or sample) is the draft of token t + 2, and the guess is
fed back with that token. After verification the rows built on guesses are dropped (trim): the
next draft recomputes them from the target's true features, as EAGLE does.
"""

from __future__ import annotations

import torch

from ..config import SamplingParams
from ..sampling import PositionNoise, draw, logits_to_probs
from .base import Draft, empty_draft
from .model import SecondChoices, confidence

# The most pairs one catch-up feeds the head (None: all). A request's first draft must otherwise
# feed the head every pair of its prompt, and after a long prompt that pass is not worth buying for
# a short answer (a 700-token Spec-Bench summarization prompt: about 0.4 s, 0.83 ms a pair on a
# Zen 3, so the head never drafted there). Past the window the head starts its cache again at the
# window's first pair and attends only from there: older pairs leave its attention, which
# changes its guesses, never the output (drafts are verified). 256: teacher-forced on the benchmark
# answers (scripts/head_agreement.py --windows, a Zen 4, docs/heads.md) the head agreed with the
# target 0.414 of the time on HumanEval's 118- to 157-token prompts with every pair, 0.383 with the
# last 128 (which drop the first pairs: the chat template's opening, where attention gathers), so
# the window must hold such prompts whole; on Spec-Bench 0.312 with 128 or 256, 0.315 with all.
CATCH_UP_WINDOW: int | None = 256


class HeadDrafter:
    """Drafts with a HeadModel (heads.model.bind). Greedy: the head's argmax over its draft
    vocabulary; sampled: q is the head's tempered distribution over its vocabulary (zero elsewhere),
    so rejection sampling stays exact; seeded: a race against the target's position noise.

    branches=2 (greedy requests only): a token tree, the chain plus, where the planner grants
    extra rows (Plan.tree_nodes), the head's second choice at the depths where the chain is
    likeliest to break, as ModelDrafter does (model.SecondChoices): a second choice costs no head
    step (it comes from the logits the chain's step computed) and is a leaf."""

    name = "head"
    takes_features = True  # the engine passes the target's features of every settled token
    reports_confidence = True  # propose_many asks the planner's stop rule after every token (EAGLE-2's
    # point: the head's own confidence says how far a draft is worth going)

    def __init__(self, model, branches: int = 1,  # model: heads.model.HeadModel
                 window: int | None = CATCH_UP_WINDOW) -> None:
        if branches not in (1, 2):
            raise ValueError(f"a head drafts a chain (branches=1) or a chain with second choices (2), got {branches}")
        if window is not None and window < 1:
            raise ValueError(f"a head's catch-up window is at least one pair (or None: all), got {window}")
        self.model = model
        self.branches = branches
        self.window = window
        self.cache = None
        self.features: torch.Tensor | None = None
        self.base = 0  # first position with a feature (a prefix-cached prompt starts later)
        self.known = 0  # features known for positions [base, known)
        self._settled = 0  # pairs at positions < this are settled (on_verified trims the rest)

    @property
    def feature_layers(self) -> list[int] | None:
        """The target layers whose inputs the head reads (EAGLE-3), None: the final features."""
        return self.model.feature_layers

    @property
    def batch_key(self) -> int:
        return id(self.model)

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    def begin(self, prompt: list[int], max_len: int, device: torch.device) -> None:
        self.cache = self.model.new_cache(max_len)
        self.features = torch.empty(max_len, self.model.head.config.hidden_size, dtype=self.model.dtype,
                                    device=self.model.device)
        self.base = self.known = self._settled = 0
        self.device = device

    def add_features(self, start: int, rows: torch.Tensor) -> None:
        """The target's features (n, D; an EAGLE-3 head: its layers' inputs, n x 3 D) for positions
        start .. start + n - 1, from its last pass; kept as the head's own rows (n, D)."""
        n = rows.shape[0]
        if n == 0:
            return
        rows = self.model.project_features(rows)  # EAGLE-3's fc, once per settled row (EAGLE-1: as they are)
        if self.known == 0 and self.base == 0 and start > 0:
            self.base = self.known = start  # the first rows of this request (the rest came from a cache)
        if start != self.known:  # not contiguous (cannot happen in the engine's order): start over here
            self.base = self.known = start
            self.cache.trim(0)
        self.features[start : start + n] = rows.to(self.features.dtype)
        self.known = start + n

    def describe(self) -> str:
        c = self.model.head.config
        mode = getattr(self.model.head.fc, "mode", "float")
        kind = f"EAGLE-3 on the inputs of target layers {self.feature_layers}, " if self.feature_layers else ""
        return f"{kind}{c.draft_vocab_size}-token vocabulary, MLP {c.intermediate_size}, {mode} weights"

    def evidence(self, context: list[int], k: int) -> tuple[str, int | None]:
        """(acceptance bucket, tokens it can draft now): none until the target's features of the
        last settled token are in (a request's first round, before any target pass)."""
        return self.name, (None if self.known >= len(context) - 1 and self.known > self.base else 0)

    def _unfed(self, end: int) -> int:
        """Pairs t < end with known features that the head's cache has not been fed."""
        return max(min(self.known, end) - self.base - self.cache.length, 0)

    def _restarts(self, end: int) -> bool:
        """Whether a draft at `end` feeds more than the window: it starts the cache again."""
        return self.window is not None and self._unfed(end) > self.window

    def catch_up_tokens(self, context: list[int]) -> int:
        """Pairs the head's cache lacks of `context` (the planner prices that first pass)."""
        if not self.cache:
            return 0
        end = len(context) - 1
        return self.window if self._restarts(end) else self._unfed(end)

    def catch_up_context(self, context: list[int]) -> int:
        """Pairs the catch-up pass attends besides its own: the head's cache, none after a restart."""
        if not self.cache:
            return 0
        return 0 if self._restarts(len(context) - 1) else self.cache.length

    def propose(self, context: list[int], k: int, params: SamplingParams,
                generator: torch.Generator | PositionNoise | None, tree_nodes: int | None = None) -> Draft:
        return propose_batch([self], [context], [k], [params], [generator], tree_nodes=[tree_nodes])[0]

    @staticmethod
    def propose_many(drafters, contexts, ks, params, rngs, stops=None, constraints=None,
                     forced_drafts: bool = True, tree_nodes=None) -> list[Draft]:
        """propose for several requests in one head pass per step; after each token a request's stop
        rule (if any) hears the head's confidence (grammars are not consulted: a grammar cuts the
        draft at its first forbidden token afterwards)."""
        return propose_batch(drafters, contexts, ks, params, rngs, stops, tree_nodes)

    def on_verified(self, num_accepted: int) -> None:
        # Rows fed with predicted features are not the true pairs: keep the catch-up rows only.
        self.cache.trim(min(self.cache.length, self._settled - self.base))

    def end(self) -> None:
        self.cache = self.features = None


def propose_batch(drafters: list[HeadDrafter], contexts: list[list[int]], ks: list[int],
                  params: list[SamplingParams], generators: list, stops=None, tree_nodes=None) -> list[Draft]:
    """Draft for several requests at once: each step is one pass of the shared head over every
    request still drafting (a ragged batch: each request attends its own cache).

    tree_nodes: second choices each request may add (branches=2, greedy requests; None:
    max(1, k // 2), as a fixed k gets): the draft is then a token tree (SecondChoices)."""
    from ..ragged import RaggedBatch

    if not drafters:
        return []
    model = drafters[0].model
    device = model.device
    live, rows = [], []  # rows of each live request: (tokens (n,), features (n, D), positions (n,))
    for i, (d, ctx, k) in enumerate(zip(drafters, contexts, ks)):
        end = len(ctx) - 1  # pairs (f_t, x_{t+1}) exist for t < end
        d._settled = min(end, d.known)
        if k <= 0 or d.known < end or d.known <= d.base:
            continue  # nothing asked, or the target's features of the last token are missing
        if d._restarts(end):
            d.cache.trim(0)  # more to feed than the window: start again at its first pair
            d.base = end - d.window
        t0 = d.base + d.cache.length
        if t0 >= end:  # nothing new to feed: there is no row to draft from (cannot happen after a pass)
            continue
        live.append(i)
        rows.append((torch.tensor(ctx[t0 + 1 : end + 1], dtype=torch.long, device=device), d.features[t0:end],
                     torch.arange(t0, end, device=device)))
    drafted: list[list[int]] = [[] for _ in drafters]
    qs: list[list[torch.Tensor]] = [[] for _ in drafters]
    budget = [(max(1, k // 2) if n is None else n) if d.branches > 1 and p.greedy else 0
              for d, p, k, n in zip(drafters, params, ks, tree_nodes or [None] * len(drafters))]
    seconds = [SecondChoices(n) for n in budget]
    d2t = model.head.d2t
    V = model.vocab_size
    while live:
        bounds, start = [], 0
        for i, (toks, _, _) in zip(live, rows):
            bounds.append((drafters[i].cache, start, start + toks.shape[0], None))
            start += toks.shape[0]
        cache = drafters[live[0]].cache if len(live) == 1 else RaggedBatch(bounds)
        hidden, logits = model.step(torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]),
                                    torch.cat([r[2] for r in rows]), cache)  # (N, D), (N, V_d)
        still, next_rows = [], []
        for (i, (toks, _, pos)), (_, a, b, _) in zip(zip(live, rows), bounds):
            d = drafters[i]
            d.cache.advance(b - a)
            row, p = logits[b - 1], params[i]
            position = len(contexts[i]) + len(drafted[i])  # the text position this draft fills
            stop = stops[i] if stops is not None else None
            q, conf = None, None
            if p.greedy:
                token = int(d2t[int(row.argmax())])
                if budget[i] > 0:  # the chain's token and the second choice, from one softmax
                    conf = seconds[i].see(row, len(drafted[i]), d2t)
            else:
                full = torch.full((V,), float("-inf"), device=row.device).index_copy_(0, d2t, row)  # (V,)
                q = logits_to_probs(full, p)
                token = int(draw(q, generators[i], position))
                if not isinstance(generators[i], PositionNoise):
                    qs[i].append(q)
            drafted[i].append(token)
            if stop is not None and not stop(confidence(row, q) if conf is None else conf):
                continue
            if len(drafted[i]) < ks[i]:
                still.append(i)
                next_rows.append((torch.tensor([token], dtype=torch.long, device=device), hidden[b - 1 : b],
                                  pos[-1:] + 1))
        live, rows = still, next_rows
    out = []
    for d, p, toks, q, second in zip(drafters, params, drafted, qs, seconds):
        if not toks:
            out.append(empty_draft(d.device))
            continue
        draft = Draft(toks, torch.tensor(toks, dtype=torch.long, device=d.device),
                      torch.stack(q) if q and not p.greedy else None)
        out.append(second.tree(draft))
    return out
