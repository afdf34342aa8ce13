"""Read a GGUF file into ModelArgs + a Hugging Face-named torch state dict.

GGUF stores shapes fastest-dimension first (the reverse of torch), names tensors its own
way (``blk.3.attn_q.weight``), and, for the ``llama`` family, llama.cpp's converter
permutes the rows of q/k so that its interleaved RoPE works. Our model (like transformers)
uses rotate_half RoPE, so that permutation is undone here; qwen2 files are not permuted.
The header is parsed by gguf_file.py and the common block formats are de-quantized by
gguf_dequant.py (both several times faster than the ``gguf`` package's numpy code, and tested
against it); other formats fall back to ``gguf.quants.dequantize``.
"""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from specdecode.config import SUPPORTED_ARCHS, ModelArgs
from specdecode.errors import ModelLoadError, ModelNotFoundError

from .gguf_dequant import KERNELS, dequantize_blocks
from .gguf_file import GGUFFile, GGUFFormatError, TensorInfo, read_gguf

GGUF_MAGIC = b"GGUF"

# llama.cpp permutes q/k rows of these architectures (convert_hf_to_gguf.py, LlamaModel.permute).
PERMUTED_ARCHS = ("llama", "mistral")

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


class ModelFileMissingError(ModelNotFoundError, ModelLoadError):
    """A model path that does not exist: "not found" to some callers, "cannot load" to others."""


@dataclass
class GGUFCheckpoint:
    """What a GGUF file holds that the model needs: shape, weights, special token ids."""

    args: ModelArgs
    state_dict: dict[str, torch.Tensor]
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None for tensors the model does not use."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k permutation (HF rotate_half layout -> GGUF interleaved layout)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of :func:`permute_qk` (same as transformers' reverse_permute_weights)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def open_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse and validate a GGUF file's header (tensors stay memory-mapped, unread).

    Every way a file can be wrong (missing, not GGUF, cut short) becomes a one-line
    ModelNotFoundError / ModelLoadError instead of a numpy or struct traceback.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileMissingError(f"GGUF file not found: {p}")
    with open(p, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        if len(head) < 4:
            raise ModelLoadError(f"{p} is not a GGUF file: it is empty or truncated ({len(head)} bytes)")
        raise ModelLoadError(f"{p} is not a GGUF file (bad magic {head!r}, expected b'GGUF')")
    try:
        return read_gguf(p)
    except GGUFFormatError as e:
        raise ModelLoadError(f"{p} is not a readable GGUF file: {e}") from None


def _field(reader: GGUFFile, key: str, default: Any = None) -> Any:
    return reader.metadata.get(key, default)


def read_args(reader: GGUFFile) -> ModelArgs:
    """ModelArgs from GGUF metadata; shapes the metadata may omit come from the tensors."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ModelLoadError(f"unsupported GGUF architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise ModelLoadError("GGUF file has no token_embd.weight tensor")
    hidden = _field(reader, f"{arch}.embedding_length")
    heads = _field(reader, f"{arch}.attention.head_count")
    layers = _field(reader, f"{arch}.block_count")
    if hidden is None or heads is None or layers is None:
        raise ModelLoadError(f"GGUF metadata lacks {arch}.embedding_length / attention.head_count / block_count")
    if "rope_freqs.weight" in tensors:
        warnings.warn("this GGUF carries rope_freqs (Llama-3.1-style RoPE scaling), which is ignored", stacklevel=2)
    # Rows of the embedding = vocab the weights cover (can exceed the tokenizer's list).
    vocab = int(tensors["token_embd.weight"].shape[-1])
    try:
        return ModelArgs(
            arch=arch,
            vocab_size=vocab,
            hidden_size=int(hidden),
            intermediate_size=int(_field(reader, f"{arch}.feed_forward_length", 4 * hidden)),
            num_hidden_layers=int(layers),
            num_attention_heads=int(heads),
            num_key_value_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
            head_dim=_field(reader, f"{arch}.attention.key_length"),
            rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
            rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
            max_position_embeddings=int(_field(reader, f"{arch}.context_length", 4096)),
            tie_word_embeddings="output.weight" not in tensors,
            attention_bias="blk.0.attn_q.bias" in tensors,
        )
    except ValueError as e:
        raise ModelLoadError(f"GGUF metadata is inconsistent: {e}") from None


def special_token_ids(reader: GGUFFile) -> tuple[int | None, list[int]]:
    """(BOS id, end-of-generation ids) from tokenizer metadata: eos, then eot / eom if present."""
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    eos: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        v = _field(reader, f"tokenizer.ggml.{key}")
        if v is not None and int(v) not in eos:
            eos.append(int(v))
    return (None if bos is None else int(bos)), eos


def dequantize(tensor: TensorInfo, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One GGUF tensor -> torch tensor of ``dtype`` in torch (row-major, out x in) shape.

    The common block formats go through gguf_dequant.py (torch, fast); anything else through
    the reference ``gguf.quants.dequantize``.
    """
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize as gguf_dequantize

    shape = tuple(reversed(tensor.shape))
    raw = torch.from_numpy(tensor.data.reshape(-1))  # a copy-on-write map: no read-only warning
    if tensor.tensor_type in KERNELS:
        return dequantize_blocks(raw.view(torch.uint8), tensor.tensor_type, dtype).reshape(shape)
    if tensor.tensor_type in (Q.F32, Q.F16, Q.BF16):
        native = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}[Q(tensor.tensor_type)]
        return raw.view(torch.uint8).view(native).to(dtype, copy=True).reshape(shape)
    try:
        arr = gguf_dequantize(tensor.data, Q(tensor.tensor_type))
    except NotImplementedError:
        raise ModelLoadError(f"tensor {tensor.name} uses quantization {Q(tensor.tensor_type).name}, which cannot be de-quantized") from None
    return torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(shape).to(dtype)


def load_gguf(path: str | os.PathLike[str] | GGUFFile, dtype: torch.dtype = torch.float32) -> GGUFCheckpoint:
    """Read, de-quantize and rename every tensor of a GGUF file (Hugging Face layout and names)."""
    reader = path if isinstance(path, GGUFFile) else open_gguf(path)
    args = read_args(reader)
    permute = args.arch in PERMUTED_ARCHS
    todo = [(t, name) for t in reader.tensors if (name := hf_name(t.name)) is not None]

    def convert(item: tuple[TensorInfo, str]) -> tuple[str, torch.Tensor]:
        t, name = item
        w = dequantize(t, dtype)
        if permute and ".q_proj." in name:
            w = unpermute_qk(w, args.num_attention_heads)
        elif permute and ".k_proj." in name:
            w = unpermute_qk(w, args.num_key_value_heads)
        return name, w.contiguous()

    # One torch thread per tensor, tensors in parallel: the kernels are thousands of small
    # ops, and with intra-op threads each op waits at a barrier for every core. On a busy
    # 2-core machine that made the 0.5B model take 60 s instead of 5 s.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            # A bar on a terminal once it has taken 2 s (the 1.5B model takes about a minute).
            state_dict = dict(tqdm(pool.map(convert, todo), total=len(todo), desc="converting GGUF", unit="tensor",
                                   leave=False, delay=2.0, disable=None))
    finally:
        torch.set_num_threads(prev)
    bos, eos = special_token_ids(reader)
    return GGUFCheckpoint(args, state_dict, bos, eos)
