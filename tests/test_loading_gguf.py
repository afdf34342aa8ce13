"""GGUF reading: de-quantization per block format, llama.cpp naming/permutation, bad files.

Every file here is written in-process with ``gguf.GGUFWriter``; references come from
``gguf.quants`` (llama.cpp's own Python port) and, for the K-quants that package cannot
quantize, from a scalar transcription of ggml-quants.c over random but valid blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf import quants as gq

from conftest import tiny_hf_model
from specdecode.errors import ModelLoadError, ModelNotFoundError
from specdecode.loading.gguf import dequantize, load_gguf, open_gguf, unpermute_qk, permute_qk
from specdecode.loading.gguf_file import SkippedArray
from specdecode.loading.gguf_dequant import KERNELS, dequantize_blocks

Q = GGMLQuantizationType
ROWS, COLS = 8, 512  # 512 = two K-quant super-blocks / sixteen 32-blocks per row


def _write(path, tensors: dict[str, tuple[np.ndarray, Q | None]], arch: str = "llama", meta=None) -> None:
    w = GGUFWriter(str(path), arch)
    for key, value in (meta or {}).items():
        getattr(w, key)(value)
    for name, (arr, raw) in tensors.items():
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _random_weights(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ROWS, COLS)).astype(np.float32)


# ---------------------------------------------------------------- block formats


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q5_0, Q.Q4_0, Q.Q4_1])
def test_quantized_tensor_round_trips(tmp_path, qtype):
    data = _random_weights()
    stored = gq.quantize(data, qtype)
    raw = None if qtype in (Q.F32, Q.F16) else qtype
    _write(tmp_path / "q.gguf", {"w": (stored, raw)})
    (t,) = open_gguf(tmp_path / "q.gguf").tensors
    assert t.tensor_type == qtype and t.shape == (COLS, ROWS)  # GGUF order: fastest dim first
    got = dequantize(t)
    assert got.shape == (ROWS, COLS) and got.dtype == torch.float32
    reference = torch.from_numpy(gq.dequantize(stored, qtype).astype(np.float32)).reshape(ROWS, COLS)
    assert torch.equal(got, reference)  # bit-exact with llama.cpp's reference
    bound = {Q.F32: 0, Q.F16: 2e-3, Q.BF16: 2e-2, Q.Q8_0: 3e-2, Q.Q5_0: 0.25, Q.Q4_0: 0.5, Q.Q4_1: 0.5}[qtype]
    assert (got - torch.from_numpy(data)).abs().max() <= bound


def _random_k_blocks(qtype: Q, n: int, seed: int = 1) -> np.ndarray:
    """Random bytes in a valid layout: every field random, the f16 scales finite and small."""
    rng = np.random.default_rng(seed)
    size = GGML_QUANT_SIZES[qtype][1]
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    f16_fields = {Q.Q4_K: [0, 2], Q.Q6_K: [208]}[qtype]
    for off in f16_fields:
        blocks[:, off : off + 2] = rng.uniform(-0.1, 0.1, n).astype(np.float16).view(np.uint8).reshape(n, 2)
    return blocks


def _scalar_q4_k(block: np.ndarray) -> np.ndarray:
    """dequantize_row_q4_K from ggml-quants.c, one block, written out loop by loop."""
    f32 = np.float32
    d, dmin = (f32(x) for x in block[:4].view(np.float16))
    scales, qs = block[4:16], block[16:]

    def scale_min(j: int) -> tuple[int, int]:
        if j < 4:
            return int(scales[j] & 63), int(scales[j + 4] & 63)
        return int((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4)), int((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))

    out, is_ = [], 0
    for j in range(0, 256, 64):
        q = qs[j // 2 : j // 2 + 32]
        sc1, m1 = scale_min(is_)
        sc2, m2 = scale_min(is_ + 1)
        d1, mm1, d2, mm2 = d * f32(sc1), dmin * f32(m1), d * f32(sc2), dmin * f32(m2)
        out += [d1 * f32(x & 0xF) - mm1 for x in q]
        out += [d2 * f32(x >> 4) - mm2 for x in q]
        is_ += 2
    return np.array(out, dtype=np.float32)


def _scalar_q6_k(block: np.ndarray) -> np.ndarray:
    """dequantize_row_q6_K from ggml-quants.c, one block, written out loop by loop."""
    f32 = np.float32
    ql, qh, sc = block[:128], block[128:192], block[192:208].view(np.int8)
    d = f32(block[208:210].view(np.float16)[0])
    y = np.zeros(256, dtype=np.float32)
    for n in range(2):
        l_, h_, s_ = ql[64 * n :], qh[32 * n :], sc[8 * n :]
        for l in range(32):
            is_ = l // 16
            q1 = int((l_[l] & 0xF) | (((h_[l] >> 0) & 3) << 4)) - 32
            q2 = int((l_[l + 32] & 0xF) | (((h_[l] >> 2) & 3) << 4)) - 32
            q3 = int((l_[l] >> 4) | (((h_[l] >> 4) & 3) << 4)) - 32
            q4 = int((l_[l + 32] >> 4) | (((h_[l] >> 6) & 3) << 4)) - 32
            base = 128 * n
            y[base + l] = d * f32(s_[is_]) * f32(q1)
            y[base + l + 32] = d * f32(s_[is_ + 2]) * f32(q2)
            y[base + l + 64] = d * f32(s_[is_ + 4]) * f32(q3)
            y[base + l + 96] = d * f32(s_[is_ + 6]) * f32(q4)
    return y


@pytest.mark.parametrize("qtype,scalar", [(Q.Q4_K, _scalar_q4_k), (Q.Q6_K, _scalar_q6_k)])
def test_k_quant_tensor_matches_references(tmp_path, qtype, scalar):
    blocks = _random_k_blocks(qtype, ROWS * COLS // 256)
    _write(tmp_path / "k.gguf", {"w": (blocks.reshape(ROWS, -1), qtype)})
    (t,) = open_gguf(tmp_path / "k.gguf").tensors
    got = dequantize(t)
    assert got.shape == (ROWS, COLS)
    reference = torch.from_numpy(gq.dequantize(blocks.reshape(ROWS, -1), qtype)).reshape(ROWS, COLS)
    assert torch.equal(got, reference)
    for i in (0, 5):  # independent scalar transcription of the C code, block by block
        np.testing.assert_allclose(got.reshape(-1, 256)[i].numpy(), scalar(blocks[i]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("qtype", sorted(KERNELS))
def test_torch_kernels_equal_gguf_reference_in_bf16_too(qtype):
    block, size = GGML_QUANT_SIZES[Q(qtype)]
    rng = np.random.default_rng(qtype)
    if Q(qtype) in (Q.Q4_K, Q.Q6_K):
        raw = _random_k_blocks(Q(qtype), 64)
    else:
        raw = gq.quantize(rng.standard_normal((4, block * 16)).astype(np.float32), Q(qtype))
    reference = torch.from_numpy(gq.dequantize(raw, Q(qtype)).reshape(-1))
    got32 = dequantize_blocks(torch.from_numpy(raw.reshape(-1).copy()), qtype)
    got16 = dequantize_blocks(torch.from_numpy(raw.reshape(-1).copy()), qtype, torch.bfloat16)
    assert torch.equal(got32, reference) and torch.equal(got16, reference.to(torch.bfloat16))


# ---------------------------------------------------------------- whole models


def _llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute, verbatim."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def _write_model_gguf(path, model, arch: str, qtype: Q | dict[str, Q] = Q.F32, extra_meta: dict | None = None) -> None:
    """What llama.cpp's converter writes for a HF model: metadata, renamed + permuted tensors.

    qtype: the block format of every matrix, or per tensor kind ("attn_q", "ffn_down", "output",
    "token_embd"...; kinds not named stay F32), as llama.cpp's mixed quantizations store them."""
    cfg = model.config
    meta = {
        "add_block_count": cfg.num_hidden_layers, "add_context_length": cfg.max_position_embeddings,
        "add_embedding_length": cfg.hidden_size, "add_feed_forward_length": cfg.intermediate_size,
        "add_head_count": cfg.num_attention_heads, "add_head_count_kv": cfg.num_key_value_heads,
        "add_rope_freq_base": float(cfg.rope_parameters["rope_theta"]),
        "add_layer_norm_rms_eps": cfg.rms_norm_eps, "add_bos_token_id": 1, "add_eos_token_id": 2,
        **(extra_meta or {}),
    }
    tensors = {}
    for name, t in model.state_dict().items():
        w = t.detach().float().numpy()
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            _, _, i, *mid, kind = name.split(".")
            gname = f"blk.{i}.{_HF_TO_GGUF['.'.join(mid)]}.{kind}"
        if arch != "qwen2" and ".attn_q." in gname:  # LlamaModel.modify_tensors (mistral inherits it)
            w = _llama_cpp_permute(w, cfg.num_attention_heads, cfg.num_attention_heads)
        elif arch != "qwen2" and ".attn_k." in gname:
            w = _llama_cpp_permute(w, cfg.num_attention_heads, cfg.num_key_value_heads)
        kind = gname.split(".")[-2]
        q = qtype.get(kind, Q.F32) if isinstance(qtype, dict) else qtype
        if w.ndim == 2 and q != Q.F32:
            tensors[gname] = (gq.quantize(w, q), q)
        else:
            tensors[gname] = (np.ascontiguousarray(w), None)
    _write(path, tensors, arch, meta)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_tiny_model_round_trips_to_hf_state_dict(tmp_path, arch, tie):
    model = tiny_hf_model(arch, tie=tie)
    _write_model_gguf(tmp_path / "m.gguf", model, arch)
    ck = load_gguf(tmp_path / "m.gguf")
    a, cfg = ck.args, model.config
    assert (a.arch, a.num_hidden_layers, a.hidden_size, a.intermediate_size) == (arch, 2, 64, 128)
    assert (a.num_attention_heads, a.num_key_value_heads, a.vocab_size, a.head_dim) == (4, 2, 97, 16)
    assert a.tie_word_embeddings == tie and a.attention_bias == (arch == "qwen2")
    assert a.rope_theta == cfg.rope_parameters["rope_theta"] and a.max_position_embeddings == 512
    assert (ck.bos_token_id, ck.eos_token_ids) == (1, [2])
    expected = {k: v for k, v in model.state_dict().items() if not (tie and k == "lm_head.weight")}
    assert set(ck.state_dict) == set(expected)
    for k, v in expected.items():
        assert torch.equal(ck.state_dict[k], v), k


def test_unpermuted_weights_give_the_same_logits(tmp_path):
    """The point of undoing the permutation: HF rotate_half RoPE on our weights = original."""
    model = tiny_hf_model("llama")
    _write_model_gguf(tmp_path / "m.gguf", model, "llama", Q.Q8_0)
    ck = load_gguf(tmp_path / "m.gguf")
    twin = tiny_hf_model("llama", seed=1)
    twin.load_state_dict(ck.state_dict)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]])
    with torch.no_grad():
        p, q = model(ids).logits.softmax(-1), twin(ids).logits.softmax(-1)
    assert (p - q).abs().max() < 0.05  # only Q8_0 rounding separates them


def test_permutation_helpers_are_inverse_and_match_llama_cpp():
    w = torch.randn(4 * 16, 32)
    assert torch.equal(unpermute_qk(permute_qk(w, 4), 4), w)
    assert torch.equal(permute_qk(w, 4), torch.from_numpy(_llama_cpp_permute(w.numpy(), 4, 4)))


def test_load_gguf_casts_to_requested_dtype(tmp_path):
    _write_model_gguf(tmp_path / "m.gguf", tiny_hf_model("qwen2"), "qwen2", Q.Q4_0)
    ck = load_gguf(tmp_path / "m.gguf", torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in ck.state_dict.values())


def test_conversion_warns_nothing_and_leaves_warning_filters_and_file_alone(tmp_path):
    """The conversion threads used to silence torch's read-only-array warning with
    warnings.catch_warnings(), which races on the process-wide filters: a caller's
    pytest.warns / catch_warnings could lose its warnings. Now nothing is silenced because
    nothing warns, and the copy-on-write map never writes the file."""
    import warnings

    path = tmp_path / "m.gguf"
    _write_model_gguf(path, tiny_hf_model("qwen2"), "qwen2", Q.Q8_0)
    before = path.read_bytes()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        load_gguf(path, torch.bfloat16)
        # torch.from_numpy warns (once per process) on a read-only array: the map is writable
        assert all(t.data.flags.writeable for t in open_gguf(path).tensors)
        assert warnings.filters == filters
    assert [str(w.message) for w in seen] == []
    assert path.read_bytes() == before


def test_fast_header_parser_agrees_with_gguf_reader(tmp_path):
    tokens = [f"tok{i}" for i in range(3000)]  # long enough to be skipped
    meta = {"add_token_list": tokens, "add_bos_token_id": 7, "add_chat_template": "{{ x }}", "add_block_count": 1}
    _write(tmp_path / "m.gguf", {"a": (_random_weights(), None), "b": (gq.quantize(_random_weights(1), Q.Q4_1), Q.Q4_1)}, meta=meta)
    ours, ref = open_gguf(tmp_path / "m.gguf"), GGUFReader(tmp_path / "m.gguf")
    assert isinstance(ours.metadata["tokenizer.ggml.tokens"], SkippedArray)
    assert ours.metadata["tokenizer.ggml.tokens"] == 3000
    for key, field in ref.fields.items():
        if key.startswith("GGUF.") or key == "tokenizer.ggml.tokens":
            continue
        assert ours.metadata[key] == pytest.approx(field.contents()), key
    for a, b in zip(ours.tensors, ref.tensors, strict=True):
        assert (a.name, a.tensor_type, a.shape, a.n_bytes, a.data_offset) == (b.name, b.tensor_type, tuple(b.shape.tolist()), b.n_bytes, b.data_offset)
        assert np.array_equal(a.data, b.data)


# ---------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ModelNotFoundError):  # also a not-found error for callers that catch that
        load_gguf(tmp_path / "nope.gguf")


def test_bad_magic(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelLoadError, match="bad magic"):
        load_gguf(tmp_path / "x.gguf")


@pytest.mark.parametrize("keep", [0, 3, 30, 200, -100])
def test_truncated_file(tmp_path, keep):
    _write_model_gguf(tmp_path / "m.gguf", tiny_hf_model("llama"), "llama")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(ModelLoadError) as e:
        load_gguf(tmp_path / "cut.gguf")
    assert "\n" not in str(e.value)


def test_unsupported_architecture(tmp_path):
    _write(tmp_path / "g.gguf", {"token_embd.weight": (_random_weights(), None)}, arch="gemma2")
    with pytest.raises(ModelLoadError, match="unsupported GGUF architecture 'gemma2'"):
        load_gguf(tmp_path / "g.gguf")
