"""The LanguageModel interface the engine and drafters use, and the native implementation's traits.

Anything with this shape can be a target or a draft:
    vocab_size: int, max_context: int, device: torch.device
    new_cache(max_len) -> cache with .length and .trim(n)
    __call__(tokens (1,T), positions (1,T), cache, mask=None, num_logits=None) -> float logits (1,T',V)
The native Transformer has it; specdecode.hf_adapter.HFCausalLM adapts a transformers model to it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class LanguageModel(Protocol):
    vocab_size: int
    max_context: int
    device: torch.device

    def new_cache(self, max_len: int) -> Any: ...

    def __call__(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        mask: torch.Tensor | None = None,
        num_logits: int | None = None,
    ) -> torch.Tensor: ...
