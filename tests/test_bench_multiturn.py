"""The conversation benchmark (specdecode/bench/multiturn.py), on the tiny random models.

Each turn resends the history with the method's own answers, the caches are kept between turns
(turns 2+ report cached prompt tokens), greedy speculative turns equal their reference's, the
datasets hold what they claim, and the report has a row per method.
"""

import json

import pytest

from specdecode.bench.harness import BenchConfig, run_bench
from specdecode.bench.multiturn import (Conversation, is_conversation_dataset, load_conversations,
                                        run_conversation)
from specdecode.bench.methods import EngineRunner
from specdecode.engine import Engine
from specdecode.errors import SpecdecodeError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(max_new_tokens=12, warmup=1, progress=False)


@pytest.fixture(scope="module")
def models():
    import specdecode

    return specdecode.load("tiny-random", dtype="float32"), specdecode.load("tiny-random-draft", dtype="float32")


def record_prompts(runner) -> list[list[int]]:
    """Wrap runner.run so that every prompt it is given is kept, in order, in the returned list."""
    seen: list[list[int]] = []
    real_run = runner.run

    def spy(ids, params):
        seen.append(list(ids))
        return real_run(ids, params)

    runner.run = spy
    return seen


def test_datasets():
    mt = load_conversations("mt-bench-2turn")
    assert len(mt) == 80 and all(len(c.turns) == 2 for c in mt)
    code = load_conversations("code-chat")
    assert len(code) >= 3 and all(len(c.turns) == 3 for c in code)
    assert len(load_conversations("code-chat,mt-bench-2turn", limit=2)) == 4
    assert is_conversation_dataset("code-chat") and not is_conversation_dataset("spec-bench")
    with pytest.raises(SpecdecodeError, match="mixes"):
        is_conversation_dataset("code-chat,spec-bench")
    with pytest.raises(SpecdecodeError):
        load_conversations("chat-nonsense")


def test_each_turn_resends_the_history_with_its_own_answers(models):
    target, _ = models
    runner = EngineRunner(Engine(target, None))
    runner.keep_prefix_cache = True
    seen = record_prompts(runner)
    from specdecode import SamplingParams

    conv = Conversation("c", "x", ("hello there", "and the weather?", "thanks"))
    turns = run_conversation(runner, conv, target.tokenizer, SamplingParams(temperature=0, max_new_tokens=8),
                             target.lm.max_context)
    assert len(turns) == 3
    for i in (1, 2):
        # the previous prompt and the answer it got are the start of the next prompt
        answer = target.tokenizer.decode(turns[i - 1]["output_ids"])
        text = target.tokenizer.decode(seen[i])
        assert answer and answer in text and conv.turns[i - 1] in text and conv.turns[i] in text
        assert turns[i]["cached_tokens"] > 0  # the prefix cache kept the history
    assert turns[0]["cached_tokens"] == 0


def test_end_to_end_conversations(models, tmp_path):
    target, draft = models
    cfg = BenchConfig(target="tiny-random", draft="tiny-random-draft", methods=["target", "spec-ngram", "spec-model"],
                      dataset="code-chat", limit=2, out=str(tmp_path), **FAST)
    results = run_bench(cfg, target=target, draft=draft)
    assert results["config"]["kind"] == "conversations"
    assert len(results["conversations"]) == 2
    overall = results["summary"]["overall"]
    assert set(overall) == {"target", "spec-ngram", "spec-model"}
    for name in ("spec-ngram", "spec-model"):
        s = overall[name]
        assert s["turns_checked"] == 6 and s["turns_differing"] == 0  # lossless, turn by turn
        assert s["cached_share_later"] > 0.5  # turns 2+ came mostly from the prefix cache
    assert overall["target"]["ttft_later_s"] > 0 and overall["target"]["decode_tokens_per_s"] > 0
    md = (tmp_path / "conversations.md").read_text()
    assert "TTFT turns 2+" in md and "| spec-model |" in md
    saved = json.loads((tmp_path / "conversations.json").read_text())
    assert saved["summary"]["overall"]["spec-ngram"]["turns_differing"] == 0
    with pytest.raises(SpecdecodeError, match="resume"):
        run_bench(BenchConfig(**{**cfg.to_dict(), "resume": True}), target=target, draft=draft)


def test_single_turn_runs_prefill_every_prompt(models):
    """Outside conversations the bench empties the prefix cache before each run, as the peers
    reset theirs: every timed prefill computes the whole prompt."""
    target, _ = models
    runner = EngineRunner(Engine(target, None))
    from specdecode import SamplingParams

    ids = target.tokenizer.encode("def add(x, y):")
    p = SamplingParams(temperature=0, max_new_tokens=4)
    runner.run(ids, p)
    assert runner.run(ids, p).cached_tokens == 0
    runner.keep_prefix_cache = True
    runner.run(ids, p)
    assert runner.run(ids, p).cached_tokens == len(ids) - 1
