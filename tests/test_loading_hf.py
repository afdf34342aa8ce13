"""Hugging Face checkpoints: local safetensors dirs (plain and sharded), .bin safety, hub ids offline."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from conftest import tiny_hf_model
from specdecode.errors import ModelLoadError, ModelNotFoundError, SpecdecodeError
from specdecode.loading import hf_checkpoint, load_checkpoint

CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A 97-token byte-level BPE trained in-process (no hub), ChatML specials at 0..2."""
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=97, show_progress=False, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    raw.train_from_iterator(["def add(x, y):\n    return x + y\n", "hello world"] * 10, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


def save_tiny(path, arch: str = "llama", tie: bool = False, **save_kw):
    model = tiny_hf_model(arch, tie=tie)
    model.save_pretrained(path, safe_serialization=True, **save_kw)
    tiny_tokenizer().save_pretrained(path)
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_local_dir_loads_back_equal(tmp_path, arch, tie):
    model = save_tiny(tmp_path, arch, tie)
    ck = load_checkpoint(str(tmp_path), torch.float32)
    assert ck.args.arch == arch and ck.args.tie_word_embeddings == tie and ck.args.vocab_size == 97
    assert ck.args.attention_bias == (arch == "qwen2") and not ck.from_cache
    for k, v in model.state_dict().items():
        if tie and k == "lm_head.weight" and k not in ck.state_dict:
            continue
        assert torch.equal(ck.state_dict[k], v), k
    # eos from config/generation_config (2 = <|im_end|>), the tokenizer's eos (0), ChatML turn end.
    assert ck.eos_token_ids == [2, 0]
    assert ck.tokenizer.encode("hello world") == tiny_tokenizer().encode("hello world")


def test_sharded_dir_and_dtype(tmp_path):
    model = save_tiny(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ck = load_checkpoint(str(tmp_path), torch.bfloat16)
    assert set(ck.state_dict) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert ck.state_dict[k].dtype == torch.bfloat16 and torch.equal(ck.state_dict[k], v.to(torch.bfloat16))


def test_missing_shard_is_a_clear_error(tmp_path):
    save_tiny(tmp_path, max_shard_size="20KB")
    next(tmp_path.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(ModelLoadError, match="missing the shard"):
        load_checkpoint(str(tmp_path))


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    save_tiny(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        load_checkpoint(str(tmp_path))


def test_bin_weights_only_tensors(tmp_path):
    model = save_tiny(tmp_path)
    sd = model.state_dict()
    (tmp_path / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    ck = load_checkpoint(str(tmp_path), torch.float32)
    assert all(torch.equal(ck.state_dict[k], v) for k, v in sd.items())

    class Evil:  # unpickling this would run code; weights_only refuses it
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="only plain tensors"):
        load_checkpoint(str(tmp_path))


def test_unsupported_model_type(tmp_path):
    save_tiny(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    with pytest.raises(ModelLoadError, match="'gpt_neox'"):
        load_checkpoint(str(tmp_path))


def test_hub_id_without_hub_is_a_clear_error(monkeypatch):
    import huggingface_hub

    calls = []

    def offline(repo_id, **kw):
        calls.append(kw.get("local_files_only", False))
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelNotFoundError) as e:
        load_checkpoint("Qwen/Qwen2.5-0.5B-Instruct")
    msg = str(e.value)
    assert "no model hub is reachable" in msg and "qwen2.5-coder-0.5b" in msg and "\n" not in msg
    assert calls == [True, False]  # the local HF cache is tried before the network


def test_hub_snapshot_is_used_as_local_dir(tmp_path, monkeypatch):
    import huggingface_hub

    save_tiny(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(tmp_path))
    assert load_checkpoint("someone/tiny", torch.float32).args.num_hidden_layers == 2


@pytest.mark.parametrize(
    "source,err,match",
    [
        ("no-such-model", ModelNotFoundError, "known models: qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, smollm2-135m"),
        ("./missing/model.gguf", ModelLoadError, "no such file"),
        ("", ModelNotFoundError, "no model given"),
    ],
)
def test_bad_sources(source, err, match):
    with pytest.raises(err, match=match):
        load_checkpoint(source)


def test_bad_dtype():
    with pytest.raises(SpecdecodeError, match="floating"):
        load_checkpoint("smollm2-135m", torch.int8)


def test_looks_like_hub_id(tmp_path):
    assert hf_checkpoint.looks_like_hub_id("Qwen/Qwen2.5-0.5B")
    assert not any(hf_checkpoint.looks_like_hub_id(s) for s in ("smollm2-135m", "a/b/c", "x/y.gguf"))
