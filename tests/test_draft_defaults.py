"""The default draft length has one source (engine.DEFAULT_NUM_DRAFT_TOKENS, read through
engine.default_num_draft_tokens), and the bench report prints what the run used."""

from __future__ import annotations

import json

import pytest
import torch

from specdecode import Engine, NgramDrafter
from specdecode import engine as engine_module
from specdecode.bench.methods import BenchContext
from specdecode.bench.report import draft_length_text
from specdecode.engine import DEFAULT_NUM_DRAFT_TOKENS, FALLBACK_NUM_DRAFT_TOKENS, default_num_draft_tokens


@pytest.fixture(scope="module")
def target():
    import specdecode

    torch.set_num_threads(1)
    return specdecode.load("tiny-random", dtype="float32")


def test_default_lookup():
    for kind, k in DEFAULT_NUM_DRAFT_TOKENS.items():
        assert default_num_draft_tokens(kind) == k
    assert default_num_draft_tokens("someone-elses-drafter") == FALLBACK_NUM_DRAFT_TOKENS


def test_bench_and_engine_read_the_engine_constant(monkeypatch, target):
    """Changing the engine's table changes the bench methods and the adaptive start alike."""
    monkeypatch.setitem(DEFAULT_NUM_DRAFT_TOKENS, "ngram", 7)
    monkeypatch.setitem(DEFAULT_NUM_DRAFT_TOKENS, "model", 3)
    ctx = BenchContext(target, None, [0])
    assert (ctx.k("ngram"), ctx.k("model"), ctx.k("mine")) == (7, 3, FALLBACK_NUM_DRAFT_TOKENS)
    assert BenchContext(target, None, [0], num_draft_tokens=4).k("ngram") == 4  # -k wins
    assert ctx.engine(NgramDrafter(), "ngram").num_draft_tokens == 7
    assert Engine(target, NgramDrafter(), adaptive=True).num_draft_tokens == 7


def test_report_text_shows_the_recorded_defaults():
    text = draft_length_text({"num_draft_tokens": None, "default_num_draft_tokens": {"model": 2, "ngram": 8}})
    assert "draft model 2, n-gram 8" in text and "6" not in text
    assert draft_length_text({"num_draft_tokens": 3}).startswith("3 (-k")
    assert "not recorded" in draft_length_text({"num_draft_tokens": None})  # an old results.json


def test_bench_records_and_reports_the_defaults_it_ran_with(tmp_path, target, monkeypatch):
    from specdecode.bench import BenchConfig, run_bench

    monkeypatch.setitem(DEFAULT_NUM_DRAFT_TOKENS, "ngram", 5)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "def add(x, y):", "category": "code"}) + "\n")
    out = tmp_path / "out"
    run_bench(BenchConfig(target="tiny-random", methods=["spec-ngram"], dataset=str(prompts), max_new_tokens=4,
                          warmup=0, progress=False, dtype="float32", out=str(out)), target=target, log=lambda m: None)
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["default_num_draft_tokens"] == dict(engine_module.DEFAULT_NUM_DRAFT_TOKENS)
    md = (out / "results.md").read_text()
    expected = ", ".join(f"{label} {DEFAULT_NUM_DRAFT_TOKENS[kind]}" for kind, label in
                         (("model", "draft model"), ("ngram", "n-gram"), ("self", "self")))
    assert f"draft tokens per round default ({expected};" in md
    assert "n-gram 5" in md and "specdecode default" not in md
