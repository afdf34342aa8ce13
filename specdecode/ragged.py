"""Ragged batches: several requests' tokens scored in one target pass.

A Segment is one request's contribution to a pass: the tokens it appends to its own KV cache
and how many of them need logits (a verify chain needs all 1 + k, a prefill chunk only its last
or none). `forward_segments` runs a list of them through any LanguageModel: in one pass on the
native Transformer (`forward_ragged`), one call per segment on anything else (a transformers
model behind specdecode.hf_adapter), with the same results either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Segment:
    cache: Any  # this request's cache (KVCache for the native model); tokens go in at cache.length
    tokens: list[int] | torch.Tensor  # (T,) T >= 1
    num_logits: int | None = None  # logits of the last n tokens; None = all T
    # A token tree instead of a chain: each token's parent among the segment's tokens (-1: the
    # cache's last token), parents first. A token sits at position cache.length + its depth and
    # attends the cache and its root-to-token path (native model only).
    parents: list[int] | None = None
    # The target's features for a head drafter (drafters/head.py), filled into `features` by the
    # native model from this pass, for all T tokens: True = the final-normed hidden states (T, D)
    # (EAGLE-1, our heads); a tuple of layer indices = the hidden states entering those layers,
    # concatenated in that order (T, len * D) (EAGLE-3 reads a low, a middle and a high layer).
    want_features: bool | tuple[int, ...] = False
    features: torch.Tensor | None = None


class RaggedBatch:
    """What the native model's attention layers see instead of one cache: each segment's cache,
    its rows [start, end) of the pass and its tree (an int64 tensor of parents, or None: a chain)."""

    def __init__(self, segments: list[tuple[Any, int, int, Any]]) -> None:  # (cache, start, end, parents or None)
        self.segments = segments


def forward_segments(model, segments: list[Segment]) -> list[torch.Tensor]:
    """Logits (num_logits or T, V) float32 for each segment, caches advanced; one pass when the model
    can take a ragged batch."""
    if not segments:
        return []
    if hasattr(model, "forward_ragged"):
        return model.forward_ragged(segments)
    if any(seg.parents is not None for seg in segments):
        raise ValueError("token trees need the native model (forward_ragged)")
    out = []
    for seg in segments:
        T = len(seg.tokens)
        n = T if seg.num_logits is None else min(seg.num_logits, T)
        start = seg.cache.length
        tokens = torch.as_tensor(seg.tokens, dtype=torch.long, device=model.device).view(1, -1)
        positions = torch.arange(start, start + T, device=model.device)[None]
        logits = model(tokens, positions, seg.cache, num_logits=max(n, 1))[0].float()  # (max(n,1), V)
        out.append(logits[logits.shape[0] - n :])
    return out
