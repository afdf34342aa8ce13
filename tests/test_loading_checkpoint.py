"""load_checkpoint on GGUF files: tokenizer from metadata, EOS ids, the converted-weights cache."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import tiny_hf_model
from specdecode.errors import ModelNotFoundError
from specdecode.loading import load_checkpoint, store
from test_loading_gguf import _write_model_gguf
from test_loading_hf import CHATML, tiny_tokenizer


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tokenizer_meta() -> dict:
    """llama.cpp-style gpt2 tokenizer metadata (GGUFWriter calls) for the tiny tokenizer."""
    tok = json.loads(tiny_tokenizer().backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])]
    return {
        "add_tokenizer_model": "gpt2",
        "add_tokenizer_pre": "default",
        "add_token_list": tokens,
        "add_token_merges": [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]],
        "add_token_types": [3 if t.startswith("<|") else 1 for t in tokens],
        "add_eos_token_id": 0,  # as many base files do: <|endoftext|>, not the chat turn end
        "add_chat_template": CHATML,
    }


@pytest.fixture
def tiny_gguf(tmp_path, arch):
    model = tiny_hf_model(arch)
    path = tmp_path / f"tiny-{arch}.gguf"
    _write_model_gguf(path, model, arch, extra_meta=tokenizer_meta())
    return model, path


def test_first_load_converts_second_reads_cache(tiny_gguf, cache):
    model, path = tiny_gguf
    first = load_checkpoint(str(path), torch.float32)
    assert not first.from_cache and first.source == str(path)
    for k, v in model.state_dict().items():
        assert torch.equal(first.state_dict[k], v), k
    # metadata eos (<|endoftext|>) plus the ChatML turn end the chat template relies on
    assert first.eos_token_ids == [0, 2]
    assert first.tokenizer.encode("def add(x, y):") == tiny_tokenizer().encode("def add(x, y):")
    assert first.tokenizer.chat_template == CHATML

    (entry,) = (cache / "converted").iterdir()
    assert {"model.safetensors", "config.json", "specdecode.json", "tokenizer.json"} <= {p.name for p in entry.iterdir()}
    second = load_checkpoint(str(path), torch.float32)
    assert second.from_cache and second.args == first.args and second.eos_token_ids == first.eos_token_ids
    assert all(torch.equal(second.state_dict[k], v) for k, v in first.state_dict.items())
    assert second.tokenizer.encode("hello world") == first.tokenizer.encode("hello world")
    assert second.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n"


@pytest.mark.parametrize("arch", ["llama"])
def test_cache_is_keyed_by_dtype_and_file_identity(tiny_gguf, cache):
    _, path = tiny_gguf
    load_checkpoint(str(path), torch.float32)
    bf = load_checkpoint(str(path), torch.bfloat16)
    assert not bf.from_cache and all(v.dtype == torch.bfloat16 for v in bf.state_dict.values())
    assert load_checkpoint(str(path), torch.bfloat16).from_cache
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the file changed
    assert not load_checkpoint(str(path), torch.bfloat16).from_cache
    assert not [p for p in (cache / "converted").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("arch", ["qwen2"])
def test_damaged_cache_entry_is_rebuilt(tiny_gguf, cache):
    _, path = tiny_gguf
    load_checkpoint(str(path), torch.float32)
    entry = store.entry_path(store.converted_key(path, torch.float32))
    (entry / "model.safetensors").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="damaged cache entry"):
        again = load_checkpoint(str(path), torch.float32)
    assert not again.from_cache
    assert load_checkpoint(str(path), torch.float32).from_cache


@pytest.mark.parametrize("arch", ["llama"])
def test_directory_with_one_gguf_and_with_several(tiny_gguf, tmp_path):
    _, path = tiny_gguf
    assert load_checkpoint(str(tmp_path), torch.float32).args.arch == "llama"
    (tmp_path / "other.gguf").write_bytes(path.read_bytes())
    with pytest.raises(ModelNotFoundError, match="several .gguf files"):
        load_checkpoint(str(tmp_path))


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("SPECDECODE_CACHE")
    assert store.cache_dir() == store.Path.home() / ".cache" / "specdecode"
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    assert store.cache_dir() == tmp_path


def test_streamed_safetensors_round_trip(tmp_path):
    from safetensors.torch import load_file

    sd = {
        "a": torch.randn(3, 5).to(torch.bfloat16),
        "b.c": torch.randn(7),
        "half": torch.randn(2, 2).half(),
        "scalar": torch.tensor(1.5),
        "strided": torch.randn(4, 6).t(),
    }
    store.save_safetensors(sd, tmp_path / "x.safetensors")
    back = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in sd.items())


@pytest.mark.parametrize("arch", ["llama"])
def test_unwritable_cache_only_warns(tiny_gguf, cache, monkeypatch):
    _, path = tiny_gguf

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "save_safetensors", full_disk)
    with pytest.warns(UserWarning, match="could not cache"):
        ck = load_checkpoint(str(path), torch.float32)
    assert not ck.from_cache and ck.args.arch == "llama"
    assert not [p for p in (cache / "converted").iterdir()]  # no half-written entry left
