"""ModelDrafter: a smaller model with the same tokenizer drafts autoregressively."""

from __future__ import annotations

import torch

from ..config import SamplingParams
from ..sampling import logits_to_probs, sample
from .base import Draft, empty_draft


class ModelDrafter:
    """Drafts k tokens with its own KV cache; returns its probabilities q when sampling.

    Invariant: the draft cache holds context[:-1]; `propose` first feeds whatever context
    tokens the cache lacks (one normally, two after a fully accepted round), so the draft
    "catches up" without a separate pass.

    min_confidence: adaptive draft length. Stop drafting once the draft's top probability
    falls below this (its guesses beyond that point are mostly rejected); 0 disables.
    """

    name = "model"

    def __init__(self, model, min_confidence: float = 0.0) -> None:  # model: a LanguageModel
        self.model = model
        self.min_confidence = min_confidence
        self.cache = None
        self._context_len = 0

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    def catch_up_tokens(self, context: list[int]) -> int:
        """Tokens of `context` the draft cache lacks (the prompt too, before the first draft): the
        first draft step feeds them all in one pass. The policy spreads that one-time cost over
        the rest of the request (drafters/policy.py)."""
        return len(context) - (self.cache.length if self.cache is not None else 0)

    def begin(self, prompt: list[int], max_len: int, device: torch.device) -> None:
        self.cache = self.model.new_cache(max_len)
        self.device = device
        self._context_len = 0

    def _feed(self, tokens: list[int] | torch.Tensor) -> torch.Tensor:
        """Append tokens to the draft cache; return the logits of the last one, (V,)."""
        start = self.cache.length
        t = torch.as_tensor(tokens, dtype=torch.long, device=self.model.device).view(1, -1)
        positions = torch.arange(start, start + t.shape[1], device=self.model.device).view(1, -1)
        return self.model(t, positions, self.cache, num_logits=1)[0, -1]

    def propose(
        self, context: list[int], k: int, params: SamplingParams, generator: torch.Generator | None
    ) -> Draft:
        self._context_len = len(context)
        if k <= 0:
            return empty_draft(self.device)
        logits = self._feed(context[self.cache.length :])
        tokens: list[torch.Tensor] = []
        qs: list[torch.Tensor] = []
        for i in range(k):
            if params.greedy and not self.min_confidence:
                token = logits.argmax(-1)
            else:
                q = logits_to_probs(logits, params)  # (V,)
                if self.min_confidence and i > 0 and float(q.max()) < self.min_confidence:
                    break
                token = q.argmax(-1) if params.greedy else sample(q, generator)
                qs.append(q)
            tokens.append(token)
            if i + 1 < k:
                logits = self._feed(token.view(1))
        token_tensor = torch.stack(tokens).to(self.device)  # (k',)
        q = torch.stack(qs).to(self.device) if qs and not params.greedy else None
        return Draft(token_tensor.tolist(), token_tensor, q)

    def on_verified(self, num_accepted: int) -> None:
        # Keep the context before this round plus the accepted drafts; the cache may hold fewer
        # (the last draft is never fed), which the next propose catches up on.
        self.cache.trim(min(self.cache.length, self._context_len + num_accepted))

    def end(self) -> None:
        self.cache = None
