"""specdecode.load(): a short name, .gguf file, HF directory or hub id -> a ready Model.

Also the adapters that let the Engine take whatever the user already has (a loaded Model, a
transformers model, any LanguageModel).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .errors import SpecdecodeError
from .kernels import RowInvariance, probe_row_invariance
from .lm import LanguageModel
from .tokenizer import Tokenizer

# What load() passes to quantize_model (and keys the quantized-model cache with).
QUANT_GROUP_SIZE = 32
QUANT_HEAD = "int8"
# A draft model's output layer in the body's format (load(head=...), as the CLI and the benchmark
# load drafts): its precision moves only how often drafts are accepted, never the output, and an
# int4 draft's int8 head was a third of its reads. Measured on a Zen 4 (docs/draft-vocab.md): the
# 0.5B Qwen draft's (98,304-row) int4 head agreed with the int4 1.5B target's next token 0.822 of
# the time over Spec-Bench against 0.825 with int8 (HumanEval 0.988 both), and its step took
# 11.78 ms against 12.74 (279 against 312 MB read).
DRAFT_QUANT_HEAD = "same"

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class Model:
    """A loaded model: the network (a LanguageModel), its tokenizer, and where it came from."""

    lm: LanguageModel
    tokenizer: Tokenizer
    source: str
    dtype: torch.dtype
    load_seconds: float = 0.0
    from_cache: bool = False  # the weights came from $SPECDECODE_CACHE (converted or quantized)
    quantize: str | None = None  # "int8" | "int4" (specdecode.quant) | "gguf": the file's own blocks
    row_invariance: "RowInvariance | None" = None  # probed at load: is a verify pass bit-identical to steps?
    quantized_from_cache: bool = False  # the quantized layers were read back, not quantized again


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise SpecdecodeError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecdecodeError("--device cuda was asked for but no CUDA GPU is available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # bf16 halves the bytes read per token, and one-token decoding is bound by those
        # bytes. Even on AVX2 CPUs without native bf16 arithmetic a bf16 decode step is faster
        # than float32 (one 8960x1536 product: 1.75 vs 3.54 ms), though there multi-token
        # passes cost nearly one pass per token (docs/quantization.md).
        return torch.bfloat16
    if dtype not in DTYPES:
        raise SpecdecodeError(f"unknown dtype {dtype!r}; choose from bfloat16, float32, float16")
    return DTYPES[dtype]


def apply_load_options(threads: int | None, quantize: str | None) -> str | None:
    """Check and apply `load`'s threads and quantize options; return quantize normalised
    (None for no quantization). Shared by `load` and the tensor-parallel `load_sharded`."""
    from .loading.gguf_native import MODE as GGUF_NATIVE
    from .quant import MODES

    if threads is not None:
        if threads < 1:
            raise SpecdecodeError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    quantize = None if quantize in (None, "none") else quantize
    if quantize is not None and quantize not in (*MODES, GGUF_NATIVE):
        raise SpecdecodeError(f"unknown quantization {quantize!r}; choose from none, {', '.join(MODES)}, {GGUF_NATIVE}")
    return quantize


def _head_option(head: str | None) -> str:
    """load's head option checked, QUANT_HEAD for None."""
    from .quant import HEAD_CHOICES

    if head is None:
        return QUANT_HEAD
    if head not in HEAD_CHOICES:
        raise SpecdecodeError(f"unknown output-layer storage {head!r}; choose from {', '.join(HEAD_CHOICES)}")
    return head


def tune_kernels(dev: torch.device, measure_if_unknown: bool = True) -> None:
    """The integer kernels' prefetch distance for this machine (measured once: kernels/tuning.py)."""
    from .kernels import kernels_available, tuned_prefetch_distance

    if dev.type == "cpu" and kernels_available():
        tuned_prefetch_distance(measure_if_unknown)


def load(
    source: str,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = "auto",
    threads: int | None = None,
    quantize: str | None = None,
    head: str | None = None,
) -> Model:
    """Load a model by short name (see `specdecode models list`), .gguf path, HF dir or hub id.

    quantize: None / "none" (weights in `dtype`), "int8" or "int4": quantization of the linear
    layers after loading (specdecode.quant.quantize_model; on CPU with the kernels, activations
    are quantized per block of 32 too, see docs/kernels.md); "gguf": a GGUF file's linear layers
    run its own blocks as shipped (specdecode.loading.gguf_native; CPU kernels only).
    head: how a quantized model stores its output layer: "int8" (the default, QUANT_HEAD: the most
    sensitive layer), "same" as the body, "int4" or "float" (specdecode.quant.quantize_model); a
    draft model can take "same" (DRAFT_QUANT_HEAD). Ignored without int8 / int4 quantization.
    The result's `row_invariance` says whether a verify pass rounds exactly like single steps here.
    On CPU with the kernels, a quantized model is cached in $SPECDECODE_CACHE/quantized, so only
    the first load of a (model, dtype, quantize) quantizes (specdecode.loading.quant_cache).
    """
    from .kernels import kernels_available
    from .loading.tiny import TINY_NAMES, load_tiny
    from .model import build_transformer
    from .quant import head_storage, quantize_model

    quantize = apply_load_options(threads, quantize)
    head = _head_option(head)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    t0 = time.perf_counter()
    if quantize == "gguf" and source in TINY_NAMES:
        raise SpecdecodeError(f"--quantize gguf runs a GGUF file's own blocks; {source} is not a GGUF file")
    if source in TINY_NAMES:
        lm, hf_tok, eos = load_tiny(source, dt, dev)
        if quantize:
            tune_kernels(dev)
            quantize_model(lm, quantize, head=head)
        return Model(lm, Tokenizer(hf_tok, eos), source, dt, time.perf_counter() - t0, False, quantize,
                     probe_row_invariance(lm))
    from .loading import load_checkpoint, quant_cache, resolve_source
    from .loading.gguf_native import make_native

    gguf_path = None
    if quantize == "gguf":
        kind, gguf_path = resolve_source(source)
        if kind != "gguf":
            raise SpecdecodeError(f"--quantize gguf runs a GGUF file's own blocks; {source} is a Hugging Face "
                                  "checkpoint: use --quantize int4 or int8")
        if dev.type != "cpu":
            raise SpecdecodeError("--quantize gguf runs on the CPU kernels: use --device cpu")
    cache_quantized = quantize is not None and dev.type == "cpu" and kernels_available()
    ckpt = load_checkpoint(source, dt, weights=not cache_quantized)  # a wrong source fails here, first
    if quantize:
        tune_kernels(dev)
    lm, qkey = None, None
    if cache_quantized:
        # (a GGUF-native model runs the file's own output layer: head does not apply)
        stored = QUANT_HEAD if quantize == "gguf" else head_storage(quantize, head)
        qkey = quant_cache.cache_key(ckpt.key, quantize, QUANT_GROUP_SIZE, stored)
        lm = quant_cache.load(qkey, ckpt.args, dt)
    quantized_from_cache = lm is not None
    if lm is None:
        lm = build_transformer(ckpt.args, ckpt.weights(), dtype=dt, device=dev)
        if quantize == "gguf":
            make_native(lm, gguf_path, ckpt.args)
        elif quantize:
            quantize_model(lm, quantize, QUANT_GROUP_SIZE, head, progress=True)
        if qkey is not None:
            quant_cache.save(qkey, lm)
    tokenizer = Tokenizer(ckpt.tokenizer, ckpt.eos_token_ids)
    return Model(lm, tokenizer, source, dt, time.perf_counter() - t0, ckpt.from_cache or quantized_from_cache,
                 quantize, probe_row_invariance(lm), quantized_from_cache)


def as_language_model(obj) -> tuple[LanguageModel, Tokenizer | None]:
    """Accept a Model, a transformers PreTrainedModel, or a LanguageModel."""
    from .hf_adapter import HFCausalLM

    if isinstance(obj, Model):
        return obj.lm, obj.tokenizer
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        PreTrainedModel = ()  # type: ignore[assignment]
    if isinstance(obj, PreTrainedModel):
        return HFCausalLM(obj), None
    if isinstance(obj, LanguageModel):
        return obj, None
    raise SpecdecodeError(f"cannot use {type(obj).__name__} as a model: pass specdecode.load(...) or a transformers model")


def as_tokenizer(tok) -> Tokenizer | None:
    """Accept a specdecode Tokenizer or a transformers tokenizer (EOS from its eos_token_id)."""
    if tok is None or isinstance(tok, Tokenizer):
        return tok
    eos = tok.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    return Tokenizer(tok, eos_ids)
