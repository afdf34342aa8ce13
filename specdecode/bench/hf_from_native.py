"""A transformers model that shares the native model's weight tensors (no copy, same dtype).

Layers packed for the CPU kernels (specdecode.kernels) have another layout: transformers gets
an equal copy of their weights (same values, more memory). The HF baselines (`generate`, assisted generation, prompt lookup) then run on exactly the bytes
the specdecode methods use: any speed difference is the decoding loop, not the weights.
"""

from __future__ import annotations

import torch

from ..errors import SpecdecodeError


def hf_model_from_native(native) -> "torch.nn.Module":  # native: specdecode.model.Transformer
    """Build the transformers causal LM of `native`'s architecture around its tensors.

    The model is instantiated with its parameters on the meta device (no random init), then
    `load_state_dict(assign=True)` makes each parameter *the* native tensor. Tied embeddings
    stay tied: both names point at the one native tensor. Buffers (RoPE frequencies) are real.
    """
    import transformers
    from accelerate import init_empty_weights

    if not hasattr(native, "args") or not hasattr(native.args, "to_hf_config"):
        from ..hf_adapter import HFCausalLM

        if isinstance(native, HFCausalLM):
            return native.model
        raise SpecdecodeError(f"cannot build a transformers model from {type(native).__name__}")
    cfg = dict(native.args.to_hf_config())
    model_type = cfg.pop("model_type")
    architectures = cfg.pop("architectures")
    weight = native.model.embed_tokens.weight
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    config.architectures = architectures
    config.dtype = weight.dtype
    with init_empty_weights(include_buffers=False):
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    state = native.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise SpecdecodeError(f"native and transformers parameter names differ: missing={missing[:4]} unexpected={unexpected[:4]}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model = model.to(weight.device).eval()  # moves only the buffers: parameters are already there
    still_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if still_meta:
        raise SpecdecodeError(f"tensors left uninitialised: {still_meta[:4]}")
    model.generation_config = transformers.GenerationConfig()
    return model
