"""The conversation benchmark's llama.cpp path (bench/multiturn.py with bench/llamacpp.py) on
SmolLM2-135M's GGUF file, as tests/test_bench_llamacpp.py runs the single-turn one: llama.cpp
keeps its KV cache between turns, so turn 2 reuses turn 1's prompt, and its figures are the
ones the other methods' ratios are taken against."""

from __future__ import annotations

import pytest

from specdecode.bench.methods import METHODS, BenchContext, build_runner
from specdecode.bench.multiturn import Conversation, empty_caches, keep_caches, run_conversation
from specdecode.config import SamplingParams
from test_bench_multiturn import record_prompts

CONV = Conversation("c", "x", ("Name three colours.", "Now name three more."))


@pytest.mark.slow
def test_llamacpp_keeps_its_prompt_cache_between_turns(smollm2):
    tok = smollm2.tokenizer
    runner = build_runner(METHODS["llamacpp"], BenchContext(smollm2, None, list(tok.eos_token_ids)))
    keep_caches(runner)
    assert runner.keep_prefix  # without it every turn would prefill the whole history
    seen = record_prompts(runner)
    params = SamplingParams(temperature=0, max_new_tokens=8)
    turns = run_conversation(runner, CONV, tok, params, smollm2.lm.max_context)
    assert len(turns) == 2 and all(t["generated_tokens"] > 0 and t["ttft_s"] > 0 for t in turns)
    answer = tok.decode(turns[0]["output_ids"])
    assert answer and answer in tok.decode(seen[1]) and CONV.turns[1] in tok.decode(seen[1])
    assert turns[0]["cached_tokens"] == 0
    # Turn 2 starts with turn 1's whole prompt (and its answer, up to re-tokenization), which
    # llama.cpp still holds; only the rest is prefilled.
    assert turns[0]["prompt_tokens"] <= turns[1]["cached_tokens"] < turns[1]["prompt_tokens"]

    empty_caches(runner)  # what the harness does after the warm-up: the next turn 1 is cold again
    again = run_conversation(runner, CONV, tok, params, smollm2.lm.max_context)
    assert again[0]["cached_tokens"] == 0 and again[0]["output_ids"] == turns[0]["output_ids"]
    runner.close()


@pytest.mark.slow
def test_conversation_bench_with_llamacpp(smollm2, tmp_path):
    from specdecode.bench import BenchConfig, run_bench

    cfg = BenchConfig(target="smollm2-135m", methods=["target", "llamacpp"], dataset="code-chat", limit=1,
                      max_new_tokens=8, warmup=1, threads=2, progress=False, out=str(tmp_path))
    results = run_bench(cfg, target=smollm2)
    overall = results["summary"]["overall"]
    assert set(overall) == {"target", "llamacpp"}
    peer = overall["llamacpp"]
    assert peer["turns_checked"] == 0  # another implementation: its turns are not a losslessness check
    assert peer["ttft_later_vs_llamacpp"] == pytest.approx(1.0) and peer["cached_share_later"] > 0.5
    ours = overall["target"]
    assert ours["ttft_later_vs_llamacpp"] == pytest.approx(ours["ttft_later_s"] / peer["ttft_later_s"])
    assert ours["conversation_vs_llamacpp"] == pytest.approx(ours["conversation_s"] / peer["conversation_s"])
    assert "| llamacpp |" in (tmp_path / "conversations.md").read_text()
