"""SelfDrafter: the target drafts for itself from a quantized copy of its own weights.

No second model to find or load: an int4 twin of the target reads about 0.28x the bytes per
token of the bf16 original and agrees with it on nearly every token, so drafts are cheap and
almost always accepted. Verification still runs the original weights, so the output is exactly
the target's (quantization only costs speed when a draft is rejected, never correctness).
The twin shares the embedding, norms and RoPE tables with the target and keeps its own KV cache.
"""

from __future__ import annotations

from torch import nn

from ..errors import SpecdecodeError
from ..quant import quantized_copy
from .draft_vocab import DEFAULT_ROWS
from .model import ModelDrafter


class SelfDrafter(ModelDrafter):
    """A ModelDrafter whose model is `quantized_copy(target, mode, group_size, head)`.

    target: the native Transformer being decoded (Model.lm of specdecode.load()).
    mode: "int4" (default: the cheapest draft) or "int8" (closer to the target, dearer).
    vocab_rows: as ModelDrafter's (the copy scores only the first ids of the vocabulary).
    """

    name = "self"

    def __init__(self, target, mode: str = "int4", group_size: int = 32, head: str = "int8",
                 vocab_rows: int | None = DEFAULT_ROWS) -> None:
        target = getattr(target, "lm", target)  # accept a loaded Model too
        if not isinstance(target, nn.Module) or not hasattr(target, "lm_head"):
            raise SpecdecodeError("self-drafting needs a native specdecode model (specdecode.load(...)), "
                                  f"not {type(target).__name__}")
        super().__init__(quantized_copy(target, mode, group_size, head), vocab_rows=vocab_rows)
        self.mode = mode
