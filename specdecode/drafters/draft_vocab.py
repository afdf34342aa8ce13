"""A draft model's output layer cut to the first rows of its vocabulary.

A draft step reads every weight of the draft model once, and a small model's output layer is a
large share of them: Qwen2.5-0.5B's 151,936 x 896 output rows are 136 MB as int8, against about
225 MB for its 24 int4 layers. A drafter only needs the tokens it is likely to be right about.
Byte-level BPE vocabularies (GPT-2's, Qwen's, Llama 3's) number tokens in the order their merges
were learned, frequent pieces first, so the first ids are the common ones without any data. Of the
tokens Qwen2.5-Coder-1.5B wrote (int4) for 30 Spec-Bench prompts / 10 HumanEval prompts / 15
coding-conversation turns, the first 98,304 ids hold 99.8% / 100% / 100%; the first 65,536 only
98.4% / 96.9% / 98.3%, missing tokens a draft gets right, such as the code fence "```python"
(id 73,594). docs/draft-vocab.md.

Lossless whatever rows are kept: the twin scores the cut rows with CUT_LOGIT, a finite value far
below any real logit, so a draft's q is zero there and its argmax never lands there (unless a
grammar forbids every kept row; q is then spread over what the grammar allows). Verification keeps
the target's distribution for any q, so only acceptance can change, never the output.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..quant import shallow_copy

# The first 98,304 ids: 99.8% / 100% / 100% of the target's Spec-Bench / HumanEval / code-chat tokens
# (above), for 0.35 T(1) a draft step against 0.34 with 65,536 and 0.41 with every id (Zen 3).
DEFAULT_ROWS = 98304
# Cut only where it saves at least a third of the output layer's reads.
MIN_SAVING = 1 / 3
# A logit no real one comes near, yet finite: tempering, penalties and biases keep it finite, and a
# grammar that forbids every kept row still leaves a distribution over the cut ones.
CUT_LOGIT = -1.0e4

_twins: "weakref.WeakKeyDictionary[nn.Module, dict[int, nn.Module]]" = weakref.WeakKeyDictionary()


class CutHead(nn.Module):
    """The first `rows` outputs of a layer computing at least that many, the other ids of the
    vocabulary scored CUT_LOGIT: (.., D) -> (.., V)."""

    def __init__(self, inner: nn.Module, rows: int, vocab_size: int) -> None:
        super().__init__()
        # kept_rows also tells the cost model's fingerprint this pass reads fewer rows.
        self.inner, self.kept_rows, self.vocab_size = inner, rows, vocab_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = self.inner(x)[..., : self.kept_rows]  # (.., rows); a packed layer computes whole tiles
        return F.pad(kept, (0, self.vocab_size - self.kept_rows), value=CUT_LOGIT)  # (.., V)

    def extra_repr(self) -> str:
        return f"kept_rows={self.kept_rows}, vocab_size={self.vocab_size}"


def first_rows(layer: nn.Module, rows: int) -> nn.Module | None:
    """A layer computing the first `rows` outputs of `layer` (a packed one: up to the end of their
    last tile) from the same weights, no copy; None for a layer type this cannot cut (a
    tensor-parallel head, PyTorch's own quantized layers)."""
    from ..kernels.linear import PackedLinear
    from ..kernels.pack import TILE

    if type(layer) is nn.Linear:
        cut = nn.Linear(layer.in_features, rows, bias=layer.bias is not None, device="meta")
        cut.weight = nn.Parameter(layer.weight.detach()[:rows], requires_grad=False)  # a view
        if layer.bias is not None:
            cut.bias = nn.Parameter(layer.bias.detach()[:rows], requires_grad=False)
        return cut
    if isinstance(layer, PackedLinear):
        # Every packed layout starts with its tiles of TILE output rows: the first tiles are the
        # first rows, views of the same buffers.
        kept = min(-(-rows // TILE) * TILE, layer.out_features)
        layout = type(layer).buffer_layout(kept, layer.in_features, layer.act_dtype)
        buffers = {name: getattr(layer, name)[: shape[0]] for name, (shape, _) in layout.items()}
        bias = None if layer.bias is None else layer.bias.detach()[:kept]
        return type(layer).from_buffers(layer.in_features, kept, layer.act_dtype, buffers, bias)
    return None


def with_draft_vocab(model: nn.Module, rows: int | None = DEFAULT_ROWS) -> nn.Module:
    """`model` with its output layer cut to the first `rows` ids (CutHead), sharing every other
    module and weight; the same twin for every call with the same model and rows (drafters on one
    draft model still propose in one batched pass). `model` itself when rows is None or 0, when the
    cut would save less than MIN_SAVING of the layer, or when the model is not a native one whose
    output layer can be cut."""
    if rows is not None and rows < 0:
        raise ValueError(f"a draft vocabulary cannot have {rows} rows")
    vocab = getattr(model, "vocab_size", None)
    head = getattr(model, "lm_head", None)
    if not rows or not isinstance(model, nn.Module) or vocab is None or head is None:
        return model
    if rows > vocab * (1 - MIN_SAVING):
        return model
    known = _twins.setdefault(model, {})
    if rows not in known:
        inner = first_rows(head, rows)
        if inner is None:
            return model
        twin = shallow_copy(model)  # the same layers, embedding, norms and RoPE tables
        twin._modules["lm_head"] = CutHead(inner, rows, vocab)
        known[rows] = twin
    return known[rows]
