"""Engine helpers other modules use (the CLI among them): public, and doing what they say."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from specdecode import engine
from specdecode.errors import SpecdecodeError


def _tok(vocab: dict[str, int]):
    return SimpleNamespace(hf=SimpleNamespace(get_vocab=lambda: dict(vocab)))


def test_check_same_vocab_is_public_and_checks_sizes_and_tokenizers():
    assert not hasattr(engine, "_check_same_vocab")  # the CLI used the private name
    a, b = SimpleNamespace(vocab_size=10), SimpleNamespace(vocab_size=12)
    engine.check_same_vocab(a, SimpleNamespace(vocab_size=10), None, None)
    with pytest.raises(SpecdecodeError, match="vocabulary"):
        engine.check_same_vocab(a, b, None, None)
    engine.check_same_vocab(a, a, _tok({"x": 0}), _tok({"x": 0}))
    with pytest.raises(SpecdecodeError, match="tokenizer differs"):
        engine.check_same_vocab(a, a, _tok({"x": 0}), _tok({"y": 0}))


def test_cli_checks_the_draft_through_the_public_name(monkeypatch):
    """build_engine (cli_common) calls engine.check_same_vocab for --draft models."""
    import argparse

    from specdecode import cli_common

    calls = []
    monkeypatch.setattr(engine, "check_same_vocab", lambda *a: calls.append(a))
    args = argparse.Namespace(model="tiny-random", draft="tiny-random-draft", drafter="model", num_draft_tokens=2,
                              adaptive=False, dtype="float32", device="cpu", threads=None, quantize=None,
                              draft_quantize=None)
    built = cli_common.build_engine(args, progress=False)
    assert built.drafter.name == "model"
    # The CLI's own check compares both tokenizers (the Engine's sees the draft model only).
    assert any(c[3] is not None for c in calls), calls


def test_the_cli_stores_a_quantized_drafts_output_layer_in_its_bodys_format():
    """--draft-quantize int4: the draft's output layer is int4 like its body (its precision moves only
    acceptance; loader.DRAFT_QUANT_HEAD), the target's stays int8 (QUANT_HEAD); output unchanged."""
    import argparse

    from conftest import layer_mode
    from specdecode import SamplingParams, cli_common

    args = argparse.Namespace(model="tiny-random", draft="tiny-random-draft", drafter="model", num_draft_tokens=3,
                              adaptive=False, dtype="float32", device="cpu", threads=None, quantize="int4",
                              draft_quantize="int4")
    built = cli_common.build_engine(args, progress=False)
    assert layer_mode(built.drafter.model.lm_head) == "int4"
    assert layer_mode(built.target.lm_head) == "int8"
    prompt, params = [5, 17, 33, 5, 17, 40, 8], SamplingParams(max_new_tokens=24)
    out, stats = built.generate_ids(prompt, params)
    assert out == engine.Engine(built.target).generate_ids(prompt, params)[0]
    assert stats.drafted_tokens > 0
