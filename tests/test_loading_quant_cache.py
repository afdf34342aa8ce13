"""The quantized-model cache: a second load(..., quantize=...) reads the packed layers back,
bit-identical to a fresh quantization, and never quantizes again; damage is rebuilt, an
unwritable cache only warns."""

from __future__ import annotations

import os

import pytest
import torch

import specdecode
import specdecode.quant
from conftest import tiny_hf_model
from specdecode.kernels import PackedFloatLinear, PackedInt4Linear, PackedInt8Linear
from specdecode.loading import quant_cache, store
from test_loading_checkpoint import tokenizer_meta
from test_loading_gguf import _write_model_gguf
from test_loading_hf import save_tiny

pytestmark = pytest.mark.usefixtures("kernels")  # the quantized cache needs them: skip or fail, conftest.kernels


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_gguf(tmp_path, arch: str = "qwen2", tie: bool = False):
    path = tmp_path / f"tiny-{arch}.gguf"
    _write_model_gguf(path, tiny_hf_model(arch, tie=tie), arch, extra_meta=tokenizer_meta())
    return path


def tensors(lm) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name (state_dict() would de-quantize the packed layers)."""
    return {**dict(lm.named_parameters()), **dict(lm.named_buffers())}


def logits(lm) -> torch.Tensor:
    tokens = torch.tensor([[3, 17, 5, 42, 8, 1, 60]])
    return lm(tokens, torch.arange(tokens.shape[1])[None], lm.new_cache(16))


def assert_same_model(a, b) -> None:
    assert [(n, type(m)) for n, m in a.named_modules()] == [(n, type(m)) for n, m in b.named_modules()]
    ta, tb = tensors(a), tensors(b)
    assert set(ta) == set(tb)
    for name, t in ta.items():
        assert t.dtype == tb[name].dtype and torch.equal(t, tb[name]), name
    assert torch.equal(logits(a), logits(b))


def no_quantizing(monkeypatch) -> None:
    def fail(*a, **k):
        raise AssertionError("quantized again")

    monkeypatch.setattr(specdecode.quant, "quantize_model", fail)
    monkeypatch.setattr(specdecode.quant, "quantize_linear", fail)


@pytest.mark.parametrize(("mode", "arch", "tie", "dtype"), [
    ("int8", "qwen2", False, "bfloat16"),
    ("int4", "qwen2", True, "bfloat16"),
    ("int4", "llama", False, "float32"),
    ("int8", "llama", True, "float32"),
])
def test_second_load_reads_the_cache_bit_identical(tmp_path, cache, monkeypatch, mode, arch, tie, dtype):
    path = write_gguf(tmp_path, arch, tie)
    fresh = specdecode.load(str(path), quantize=mode, dtype=dtype)
    assert not fresh.quantized_from_cache and fresh.quantize == mode
    (entry,) = (cache / "quantized").iterdir()
    assert entry.suffix == ".safetensors" and f"-{mode}-" in entry.name

    no_quantizing(monkeypatch)
    monkeypatch.setattr("specdecode.loading._read_entry_weights", lambda e: pytest.fail("float weights read"))
    again = specdecode.load(str(path), quantize=mode, dtype=dtype)
    assert again.quantized_from_cache and again.from_cache
    kinds = {type(m) for m in again.lm.modules()}
    assert (PackedInt8Linear if mode == "int8" else PackedInt4Linear) in kinds
    assert type(again.lm.lm_head) is PackedInt8Linear  # the default int8 head
    assert_same_model(fresh.lm, again.lm)
    assert again.row_invariance == fresh.row_invariance
    assert not [p for p in (cache / "quantized").iterdir() if p.name.endswith(".tmp")]


def test_first_quantized_load_also_fills_the_converted_cache(tmp_path):
    path = write_gguf(tmp_path)
    specdecode.load(str(path), quantize="int8")
    plain = specdecode.load(str(path))
    assert plain.from_cache and not plain.quantized_from_cache and plain.quantize is None
    assert any(isinstance(m, PackedFloatLinear) for m in plain.lm.modules())


def test_keyed_by_mode_source_and_code(tmp_path, monkeypatch):
    path = write_gguf(tmp_path)
    specdecode.load(str(path), quantize="int8")
    assert not specdecode.load(str(path), quantize="int4").quantized_from_cache
    assert specdecode.load(str(path), quantize="int4").quantized_from_cache
    assert not specdecode.load(str(path), quantize="int8", dtype="float32").quantized_from_cache
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the source changed
    assert not specdecode.load(str(path), quantize="int8").quantized_from_cache
    monkeypatch.setattr(quant_cache, "code_version", lambda: "other packing code")
    assert not specdecode.load(str(path), quantize="int8").quantized_from_cache


def test_keyed_by_how_the_output_layer_is_stored(tmp_path, monkeypatch):
    """load(head=...): "same" stores an int4 model's output layer in int4 (a draft's, as the CLI
    loads drafts), one cache entry per storage; "same" and "int4" name the same model."""
    path = write_gguf(tmp_path)
    default = specdecode.load(str(path), quantize="int4")
    draft = specdecode.load(str(path), quantize="int4", head="same")
    assert type(default.lm.lm_head) is PackedInt8Linear and type(draft.lm.lm_head) is PackedInt4Linear
    assert not draft.quantized_from_cache  # not the int8-head entry
    no_quantizing(monkeypatch)
    again = specdecode.load(str(path), quantize="int4", head="int4")
    assert again.quantized_from_cache and type(again.lm.lm_head) is PackedInt4Linear
    assert_same_model(draft.lm, again.lm)
    assert specdecode.load(str(path), quantize="int4").quantized_from_cache  # the default's entry is kept


def test_an_unknown_head_storage_is_a_user_error(tmp_path):
    with pytest.raises(specdecode.SpecdecodeError, match="output-layer storage 'int2'"):
        specdecode.load(str(write_gguf(tmp_path)), quantize="int4", head="int2")


def test_hf_directory_source(tmp_path, monkeypatch):
    d = tmp_path / "hf"
    save_tiny(d, "qwen2")
    fresh = specdecode.load(str(d), quantize="int4")
    assert not fresh.from_cache and not fresh.quantized_from_cache
    no_quantizing(monkeypatch)
    monkeypatch.setattr("specdecode.loading.hf_checkpoint.load_state_dict", lambda *a: pytest.fail("float weights read"))
    again = specdecode.load(str(d), quantize="int4")
    assert again.quantized_from_cache and again.from_cache
    assert_same_model(fresh.lm, again.lm)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_damaged_entry_is_rebuilt(tmp_path, cache, damage):
    path = write_gguf(tmp_path)
    fresh = specdecode.load(str(path), quantize="int4")
    (entry,) = (cache / "quantized").iterdir()
    raw = bytearray(entry.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x40  # in some tensor's bytes: only the checksum can tell
        entry.write_bytes(raw)
    elif damage == "truncate":
        entry.write_bytes(raw[: len(raw) - 100])
    else:
        entry.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="damaged quantized cache entry"):
        rebuilt = specdecode.load(str(path), quantize="int4")
    assert not rebuilt.quantized_from_cache
    assert_same_model(fresh.lm, rebuilt.lm)
    again = specdecode.load(str(path), quantize="int4")
    assert again.quantized_from_cache
    assert_same_model(fresh.lm, again.lm)


def test_entry_of_another_model_is_not_used(tmp_path, cache):
    """A file whose header names another key (copied or renamed by hand) is rebuilt."""
    a, b = write_gguf(tmp_path, "qwen2"), write_gguf(tmp_path, "llama")
    specdecode.load(str(a), quantize="int8")
    (entry_a,) = (cache / "quantized").iterdir()
    specdecode.load(str(b), quantize="int8")
    (entry_b,) = set((cache / "quantized").iterdir()) - {entry_a}
    entry_b.write_bytes(entry_a.read_bytes())
    with pytest.warns(UserWarning, match="another key"):
        assert not specdecode.load(str(b), quantize="int8").quantized_from_cache


def test_unwritable_cache_only_warns(tmp_path, cache):
    path = write_gguf(tmp_path)
    specdecode.load(str(path))  # the converted entry is written
    (cache / "quantized").write_text("not a directory")  # so no file can be created under it
    with pytest.warns(UserWarning, match="could not cache the quantized model"):
        m = specdecode.load(str(path), quantize="int8")
    assert not m.quantized_from_cache and m.from_cache
    with pytest.warns(UserWarning, match="could not cache the quantized model"):
        assert not specdecode.load(str(path), quantize="int8").quantized_from_cache


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_cache_dir_only_warns(tmp_path, cache):
    path = write_gguf(tmp_path)
    specdecode.load(str(path))
    (cache / "quantized").mkdir()
    (cache / "quantized").chmod(0o500)
    try:
        with pytest.warns(UserWarning, match="could not cache the quantized model"):
            assert not specdecode.load(str(path), quantize="int8").quantized_from_cache
    finally:
        (cache / "quantized").chmod(0o700)


def test_damaged_converted_weights_read_late_are_rebuilt(tmp_path, cache):
    """A quantized miss reads the converted float weights only then; damage there is rebuilt too."""
    path = write_gguf(tmp_path)
    fresh = specdecode.load(str(path), quantize="int8")
    (cache / "quantized" / next((cache / "quantized").iterdir()).name).unlink()
    entry = store.entry_path(store.converted_key(path, torch.bfloat16))
    (entry / "model.safetensors").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="damaged cache entry"):
        again = specdecode.load(str(path), quantize="int8")
    assert not again.quantized_from_cache
    assert_same_model(fresh.lm, again.lm)
    assert specdecode.load(str(path)).from_cache  # the converted entry was written anew


@pytest.mark.filterwarnings("ignore:could not cache the converted model")
def test_failed_write_leaves_no_file(tmp_path, cache, monkeypatch):
    path = write_gguf(tmp_path)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "save_safetensors", full_disk)
    with pytest.warns(UserWarning, match="could not cache the quantized model"):
        assert specdecode.load(str(path), quantize="int8").quantize == "int8"
    assert not list((cache / "quantized").iterdir())


def test_from_buffers_checks_shapes():
    w = torch.randn(40, 64)
    for cls in (PackedInt8Linear, PackedInt4Linear):
        layer = cls(w, torch.randn(40), torch.float32)
        bufs = dict(layer.named_buffers())
        copy = cls.from_buffers(64, 40, torch.float32, bufs, layer.bias.detach())
        x = torch.randn(1, 3, 64)
        assert torch.equal(copy(x), layer(x))
        with pytest.raises(ValueError):
            cls.from_buffers(64, 64, torch.float32, bufs)  # 64 rows need 4 tiles of 16, not 3
        with pytest.raises(ValueError):
            cls.from_buffers(64, 40, torch.float32, {k: v[:1] for k, v in bufs.items()})
        with pytest.raises(ValueError):
            cls.from_buffers(64, 40, torch.float32, {})
    f = PackedFloatLinear(w.to(torch.bfloat16))
    g = PackedFloatLinear.from_buffers(64, 40, torch.bfloat16, {"packed": f.packed})
    x = torch.randn(1, 2, 64, dtype=torch.bfloat16)
    assert torch.equal(f(x), g(x))
    with pytest.raises(ValueError):
        PackedFloatLinear.from_buffers(64, 40, torch.float32, {"packed": f.packed})


def test_quantize_progress_flag_changes_nothing():
    lm_a = specdecode.load("tiny-random").lm
    lm_b = specdecode.load("tiny-random").lm
    specdecode.quant.quantize_model(lm_a, "int4")
    specdecode.quant.quantize_model(lm_b, "int4", progress=True)
    assert_same_model(lm_a, lm_b)
