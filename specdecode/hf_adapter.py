"""Adapter: any transformers causal LM as a target or a draft (chain verification only).

Hugging Face users keep the model they already have in memory; specdecode only needs to score
tokens at given positions with a cache it can roll back (DynamicCache.crop).
"""

from __future__ import annotations

import inspect

import torch

from .errors import SpecdecodeError


class HFCache:
    """A transformers DynamicCache with the `length` / `trim` interface of specdecode.KVCache."""

    def __init__(self, config) -> None:  # noqa: ANN001 - a transformers config
        from transformers import DynamicCache

        self.kv = DynamicCache(config=config)
        self.length = 0

    def trim(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot trim a cache of length {self.length} to {length}")
        if length < self.length:
            # A negative argument means "remove that many" in every transformers version.
            self.kv.crop(length - self.length)
        self.length = length


class HFCausalLM:
    """Wraps a transformers `PreTrainedModel` with a causal-LM head."""

    def __init__(self, model) -> None:  # noqa: ANN001 - transformers.PreTrainedModel
        if not hasattr(model, "config") or not callable(model):
            raise SpecdecodeError(f"expected a transformers causal LM, got {type(model).__name__}")
        self.model = model.eval()
        cfg = model.config
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_context = int(getattr(cfg, "max_position_embeddings", 1 << 20) or (1 << 20))
        params = inspect.signature(model.forward).parameters
        # transformers 5 renamed past_key_values to cache.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return self.model.device

    def new_cache(self, max_len: int) -> HFCache:
        return HFCache(self.model.config)

    @torch.inference_mode()
    def __call__(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: HFCache,
        mask: torch.Tensor | None = None,
        num_logits: int | None = None,
    ) -> torch.Tensor:
        if mask is not None:
            raise SpecdecodeError("transformers models support chain drafts only (no tree masks)")
        T = tokens.shape[1]
        cache_position = torch.arange(cache.length, cache.length + T, device=tokens.device)
        out = self.model(
            input_ids=tokens,
            position_ids=positions,
            cache_position=cache_position,
            use_cache=True,
            logits_to_keep=num_logits or 0,
            **{self._cache_kw: cache.kv},
        )
        cache.length += T
        return out.logits.float()
