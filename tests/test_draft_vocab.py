"""A draft model scoring only the first ids of its vocabulary (specdecode/drafters/draft_vocab.py):
the kept ids' logits are the model's own bit for bit, the others CUT_LOGIT, every weight shared;
speculation with such a draft stays exact (greedy here; sampled: tests/test_engine_sampling.py)."""

from __future__ import annotations

import pytest
import torch

from specdecode import SamplingParams
from specdecode.cost_model import model_fingerprint
from specdecode.drafters import ModelDrafter
from specdecode.drafters.draft_vocab import CUT_LOGIT, CutHead, with_draft_vocab
from specdecode.engine import Engine
from specdecode.loading.tiny import tiny_args, tiny_state_dict
from specdecode.model import build_transformer
from specdecode.quant import quantize_model
from specdecode.sampling import logits_to_probs

V, ROWS = 300, 100
CONTEXT = [5, 17, 42, 8, 99, 3, 250, 7]


def _tiny(layout: str, seed: int = 0):
    args = tiny_args(V)
    model = build_transformer(args, tiny_state_dict(args, noise=0.02 * seed), dtype=torch.float32,
                              packed=layout != "float")
    if layout in ("int8", "int4"):
        quantize_model(model, layout, head="same")
    return model


def _logits(model, tokens: list[int]) -> torch.Tensor:
    return model(torch.tensor([tokens]), torch.arange(len(tokens))[None], model.new_cache(len(tokens)))[0]  # (T, V)


@pytest.mark.parametrize("layout", ["float", "packed-float", "int8", "int4"])
def test_the_twin_scores_the_kept_ids_as_the_model_does_and_shares_its_weights(layout, request):
    if layout != "float":
        request.getfixturevalue("kernels")
    model = _tiny(layout)
    twin = with_draft_vocab(model, ROWS)
    assert twin is not model and with_draft_vocab(model, ROWS) is twin  # one twin per model and size
    assert isinstance(twin.lm_head, CutHead) and twin.model is model.model and twin.vocab_size == V
    if layout != "float":  # a packed head is cut to whole tiles of its own buffers: views, no copy
        assert twin.lm_head.inner.packed.data_ptr() == model.lm_head.packed.data_ptr()
        assert twin.lm_head.inner.out_features == 112 and type(twin.lm_head.inner) is type(model.lm_head)
    # Its pass costs are its own: the cost cache must not hand it the whole model's.
    assert model_fingerprint(twin) != model_fingerprint(model)
    full, cut = _logits(model, CONTEXT), _logits(twin, CONTEXT)  # (T, V) each
    assert cut.shape == full.shape
    assert torch.equal(cut[:, :ROWS], full[:, :ROWS])
    assert (cut[:, ROWS:] == CUT_LOGIT).all()


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K", "Q5_0", "Q4_0", "Q8_0"])
def test_a_gguf_head_is_cut_to_its_first_tiles_with_the_same_bits(fmt, request):
    request.getfixturevalue("kernels")
    from test_gguf_kernels import layer_for

    from specdecode.drafters.draft_vocab import first_rows

    layer, _ = layer_for(fmt, 80, 256)  # (N, K) = (80, 256): five tiles of 16 rows
    cut = first_rows(layer, 20)  # two tiles: rows 0..31
    assert type(cut) is type(layer) and cut.out_features == 32
    assert cut.packed.data_ptr() == layer.packed.data_ptr()
    x = torch.randn(3, 256)
    assert torch.equal(cut(x), layer(x)[:, :32])


def test_no_cut_where_it_saves_little_or_is_not_asked_for():
    model = _tiny("float")
    assert with_draft_vocab(model, None) is model and with_draft_vocab(model, 0) is model
    assert with_draft_vocab(model, 250) is model  # keeping more than 2/3 of the rows
    assert with_draft_vocab(object(), ROWS) is not None  # not a native model: returned as it is
    with pytest.raises(ValueError, match="rows"):
        with_draft_vocab(model, -1)
    assert ModelDrafter(model, vocab_rows=None).model is model
    assert ModelDrafter(model, vocab_rows=ROWS).model is with_draft_vocab(model, ROWS)


def test_a_cut_draft_never_proposes_a_cut_id_and_its_q_is_zero_there():
    model = _tiny("float")
    d = ModelDrafter(model, vocab_rows=ROWS)
    d.begin(CONTEXT, 64, torch.device("cpu"))
    draft = d.propose(CONTEXT, 4, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
    assert all(t < ROWS for t in draft.tokens) and draft.q.shape == (4, V)
    assert (draft.q[:, ROWS:] == 0).all()
    torch.testing.assert_close(draft.q.sum(-1), torch.ones(4))


def test_when_a_grammar_forbids_every_kept_id_the_draft_still_has_a_distribution():
    head = CutHead(torch.nn.Linear(8, ROWS), ROWS, V)
    row = head(torch.randn(8))  # (V,)
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[[120, 299]] = True  # a grammar allowing two cut ids only
    q = logits_to_probs(row.masked_fill(~allowed, float("-inf")), SamplingParams(temperature=0.7))
    assert torch.isfinite(q).all() and q[120] > 0 and q[299] > 0
    torch.testing.assert_close(q.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("k", [1, 3])
def test_greedy_speculation_with_a_cut_draft_equals_target_only(k):
    target = _tiny("float")
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    expected, _ = Engine(target, None).generate_ids(CONTEXT, params)
    assert any(t >= ROWS for t in expected)  # the target writes ids the draft can never propose
    # The target's own weights as the draft: every draft is right except where the target's token was cut.
    out, stats = Engine(target, ModelDrafter(target, vocab_rows=ROWS), num_draft_tokens=k).generate_ids(CONTEXT, params)
    assert out == expected
    assert 0 < stats.accepted_tokens < stats.drafted_tokens
