"""ModelDrafter: a smaller model with the same tokenizer drafts autoregressively."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..config import SamplingParams
from ..logit_adjust import adjust_logits, adjusts_logits
from ..sampling import PositionNoise, draw, logits_to_probs
from .base import Draft, empty_draft, with_leaves
from .draft_vocab import DEFAULT_ROWS, with_draft_vocab


class ModelDrafter:
    """Drafts k tokens with its own KV cache; returns its probabilities q when sampling.

    branches=2 (greedy requests only): a token tree, the k-token chain plus, where the planner
    grants extra rows (Plan.tree_nodes), the draft's second choice at the depths where the chain
    is likeliest to break: the draft's probability of reaching that depth times the second
    choice's probability (with_second_choices). A second choice costs no draft step (it
    comes from the logits the chain's step already computed) and is a leaf: when the target
    takes it, the round gains the target's next token after it.

    Invariant: the draft cache holds context[:-1]; `propose` first feeds whatever context
    tokens the cache lacks (one normally, two after a fully accepted round), so the draft
    "catches up" without a separate pass. A seeded request's draft races q against the same
    position noise the target uses (sampling.PositionNoise): no q is returned then, since
    verification only checks that the target drew the same token.

    vocab_rows: the draft scores only the first this many ids of its vocabulary (draft_vocab.py:
    its output layer is a large share of a small model's reads); None or 0 scores them all. Where
    the cut saves little, or the model's output layer cannot be cut, the whole vocabulary is kept.
    """

    name = "model"
    reports_confidence = True  # propose_many asks a stop rule after every token (policy/draft_stop.py)

    def __init__(self, model, branches: int = 1, vocab_rows: int | None = DEFAULT_ROWS) -> None:  # model: a LanguageModel
        if branches not in (1, 2):
            raise ValueError(f"a draft model drafts a chain (branches=1) or a chain with second choices (2), got {branches}")
        self.model = with_draft_vocab(model, vocab_rows)
        self.branches = branches
        self.cache = None
        self.prefix_cache = None  # the engine's PrefixCache (use_prefix_cache), shared by the forks
        self._context: list[int] = []  # the context of the last propose (the engine's token list)
        self._context_len = 0
        self._prompt_len = 0
        self._verified = True  # whether the rows beyond the last context are settled (on_verified)

    def use_prefix_cache(self, prefix_cache) -> None:
        """Start each request from the draft rows of its longest prefix an earlier request left
        (the engine calls this once); None turns it off."""
        self.prefix_cache = prefix_cache if prefix_cache is not None and prefix_cache.applies(self.model) else None

    @property
    def batch_key(self) -> int:
        """Drafters with the same key propose together in one batched call (propose_many)."""
        return id(self.model)

    @staticmethod
    def propose_many(drafters, contexts, ks, params, rngs, stops=None, constraints=None,
                     forced_drafts: bool = True, tree_nodes=None) -> list[Draft]:
        """propose for several requests at once (see propose_batch)."""
        return propose_batch(drafters, contexts, ks, params, rngs, stops, constraints, forced_drafts, tree_nodes)

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    def catch_up_tokens(self, context: list[int]) -> int:
        """Tokens of `context` the draft cache lacks (the prompt too, before the first draft): the
        first draft step feeds them all in one pass. The planner spreads that one-time cost over
        the rest of the request (specdecode/policy/planner.py)."""
        return len(context) - (self.cache.length if self.cache is not None else 0)

    def begin(self, prompt: list[int], max_len: int, device: torch.device) -> None:
        self.cache = self.model.new_cache(max_len)
        self.device = device
        self._context, self._context_len, self._verified = prompt, 0, True
        self._prompt_len = len(prompt)  # penalties count the output only (logit_adjust.py)
        if self.prefix_cache is not None:  # the catch-up then feeds only what no request computed
            self.prefix_cache.fill(self.model, prompt, self.cache, len(prompt) - 1)

    def _pick(self, logits: torch.Tensor, position: int, params: SamplingParams,
              rng: torch.Generator | PositionNoise | None,
              need_confidence: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, float | None]:
        """(next draft token for text position `position`, its distribution q when sampling, the
        draft's confidence when asked) from logits (V,). Greedy, the confidence is the untempered
        top probability (q would be one-hot, always 1)."""
        q = None if params.greedy else logits_to_probs(logits, params)  # (V,)
        conf = confidence(logits, q) if need_confidence else None
        if params.greedy:
            return logits.argmax(-1), None, conf
        return draw(q, rng, position), (None if isinstance(rng, PositionNoise) else q), conf

    def propose(
        self, context: list[int], k: int, params: SamplingParams, generator: torch.Generator | PositionNoise | None
    ) -> Draft:
        return propose_batch([self], [context], [k], [params], [generator])[0]

    def on_verified(self, num_accepted: int) -> None:
        # Keep the context before this round plus the accepted drafts; the cache may hold fewer
        # (the last draft is never fed), which the next propose catches up on. After a tree,
        # num_accepted counts the chain's nodes only: a second choice was never fed.
        self.cache.trim(min(self.cache.length, self._context_len + num_accepted))
        self._verified = True

    def end(self) -> None:
        if self.prefix_cache is not None and self.cache is not None:
            # Rows hold the context (and, once verified, the accepted drafts, which the engine
            # appended to the same token list); unverified drafts of an interrupted round do not.
            settled = self.cache.length if self._verified else min(self.cache.length, self._context_len)
            self.prefix_cache.store(self.model, self._context, self.cache, min(settled, len(self._context) - 1))
        self.cache = None


def confidence(logits: torch.Tensor, q: torch.Tensor | None) -> float:
    """The draft's top probability for the token it just drafted: of q when it sampled (what it
    drew from), else of the untempered logits (V,)."""
    return float(q.max()) if q is not None else float(torch.softmax(logits.float(), -1).max())


def propose_batch(drafters: list[ModelDrafter], contexts: list[list[int]], ks: list[int],
                  params: list[SamplingParams], generators: list,
                  stops: Sequence[Callable[[float], bool] | None] | None = None,
                  constraints: Sequence[Any] | None = None, forced_drafts: bool = True,
                  tree_nodes: Sequence[int | None] | None = None) -> list[Draft]:
    """Draft for several requests at once: every draft step is one pass of the shared draft model
    over all requests still drafting (each request's drafter keeps its own cache).

    Step 0 feeds each request's catch-up tokens (what its cache lacks of its context), later steps
    its previous draft token. Each request's tokens, q and random draws are the ones its own
    `propose` would give: the pass is row-invariant and each request draws from its own generator
    (or position noise, when seeded).

    constraints: each request's grammar state (constraint.Constraint) or None. The draft model
    then drafts under the grammar's mask (q is the masked distribution: never a token the
    constrained target would reject for certain), and where the grammar forces tokens after a
    drafted one they join the draft for free (q one-hot: the constrained target gives them
    probability 1), no draft step spent on them; the next step feeds them with the drafted token.
    The grammar state is walked along and rolled back before returning.

    tree_nodes: second choices each request may add (ModelDrafter's branches=2; greedy requests
    without a grammar or logit adjustments only, else ignored; None: max(1, k // 2), as a fixed k
    gets): the draft is then a token tree.
    """
    from ..ragged import Segment, forward_segments

    if not drafters:
        return []
    model = drafters[0].model
    if any(d.model is not model for d in drafters):
        raise ValueError("propose_batch needs drafters that share one draft model")
    tokens: list[list[torch.Tensor]] = [[] for _ in drafters]
    qs: list[list[torch.Tensor]] = [[] for _ in drafters]
    live: list[int] = []
    for i, (d, ctx, k) in enumerate(zip(drafters, contexts, ks)):
        d._context, d._context_len, d._verified = ctx, len(ctx), k <= 0
        if k > 0:
            live.append(i)
    segments = [Segment(drafters[i].cache, contexts[i][drafters[i].cache.length :], 1) for i in live]
    pushed = [0] * len(drafters)  # tokens each request's grammar state was walked past
    forced_at: list[list[int]] = [[] for _ in drafters]  # draft positions the grammar forced
    # Second-choice candidates of tree requests: (score, depth, token) per request.
    budget = [(max(1, k // 2) if n is None else n) if d.branches > 1 and p.greedy and not adjusts_logits(p)
              and (constraints is None or constraints[i] is None) else 0
              for i, (d, p, k, n) in enumerate(zip(drafters, params, ks, tree_nodes or [None] * len(drafters)))]
    seconds = [SecondChoices(n) for n in budget]
    try:
        while live:
            logits = forward_segments(model, segments)  # each (1, V)
            still, segments = [], []
            for i, lg in zip(live, logits):
                d = drafters[i]
                stop = stops[i] if stops is not None else None
                grammar = constraints[i] if constraints is not None else None
                row = lg[-1]  # (V,)
                if adjusts_logits(params[i]):  # the target's penalties and biases, with the draft's own history
                    output = contexts[i][d._prompt_len:] + [int(t) for t in tokens[i]]
                    row = adjust_logits(row.view(1, -1), params[i], output)[0]
                if grammar is not None:
                    row = row.masked_fill(~grammar.allowed().to(row.device), float("-inf"))
                # A tree request (greedy) takes its confidence from the same softmax as its second choice.
                token, q, conf = d._pick(row, len(contexts[i]) + len(tokens[i]), params[i], generators[i],
                                         need_confidence=stop is not None and budget[i] == 0)
                if budget[i] > 0:
                    conf = seconds[i].see(row, len(tokens[i]))
                tokens[i].append(token)
                if q is not None:
                    qs[i].append(q)
                fed = [token]
                if grammar is not None:
                    if not grammar.push(int(token)):
                        continue  # the grammar is complete: only its end follows, the target's to draw
                    pushed[i] += 1
                    for f in grammar.forced(ks[i] - len(tokens[i]) if forced_drafts else 0):
                        grammar.push(f)
                        pushed[i] += 1
                        fed.append(torch.tensor(f, dtype=token.dtype, device=token.device))
                        forced_at[i].append(len(tokens[i]))
                        tokens[i].append(fed[-1])
                        if q is not None:
                            qs[i].append(torch.zeros_like(q).index_fill_(0, fed[-1].view(1), 1.0))
                if stop is not None and not stop(conf):
                    continue
                if len(tokens[i]) < ks[i]:
                    still.append(i)
                    segments.append(Segment(d.cache, torch.stack(fed), 1))
            live = still
    finally:
        for i, n in enumerate(pushed):
            if n:
                constraints[i].pop(n)
    drafts = []
    for d, p, toks, q, forced, second in zip(drafters, params, tokens, qs, forced_at, seconds):
        if not toks:
            drafts.append(empty_draft(d.device))
            continue
        token_tensor = torch.stack(toks).to(d.device)  # (k',)
        q_tensor = torch.stack(q).to(d.device) if q and not p.greedy else None
        draft = Draft(token_tensor.tolist(), token_tensor, q_tensor, tuple(forced))
        drafts.append(second.tree(draft))
    return drafts


def with_second_choices(chain: Draft, candidates: list[tuple[float, int, int]], budget: int) -> Draft:
    """The chain plus the `budget` likeliest second choices (score, depth, token) as leaves: the
    one at depth t is a sibling of the chain's token t (its parent the chain's token t - 1, -1 the
    context). Chain nodes first, then the leaves by depth: parents before children."""
    picked = sorted(sorted(candidates, key=lambda c: -c[0])[:budget], key=lambda c: c[1])
    k = len(chain.tokens)
    return with_leaves(chain, [(depth - 1, tok) for _, depth, tok in picked if depth < k])


class SecondChoices:
    """One greedy request's second choices, gathered while its chain is drafted (branches=2):
    (score, depth, token), the score the draft's probability of reaching that depth times the
    second choice's probability. Budget 0 gathers nothing and leaves the chain a chain."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.candidates: list[tuple[float, int, int]] = []
        self.reach = 1.0  # the draft's own probability that its chain survives so far

    def see(self, row: torch.Tensor, depth: int, to_target: torch.Tensor | None = None) -> float:
        """Note the second choice of the logits `row` (V,) that drafted the chain's token at `depth`
        (to_target maps a draft vocabulary's ids to the target's); -> the top probability (the
        untempered greedy confidence)."""
        top = torch.softmax(row.float(), -1).topk(2)  # the chain's token and the second choice
        p1, p2 = float(top.values[0]), float(top.values[1])
        second = int(top.indices[1])
        self.candidates.append((self.reach * p2, depth, second if to_target is None else int(to_target[second])))
        self.reach *= p1
        return p1

    def tree(self, chain: Draft) -> Draft:
        """The chain with the likeliest `budget` second choices as leaves (with_second_choices)."""
        return with_second_choices(chain, self.candidates, self.budget) if self.budget > 0 and self.candidates else chain
