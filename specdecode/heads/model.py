"""A draft head on the target's own features (EAGLE: Li et al. 2024, "EAGLE: Speculative Sampling
Requires Rethinking Feature Uncertainty").

One decoder layer reads, for each position t, the target's final-normed hidden state f_t (the
vector its lm_head turns into the logits of token t + 1) and the embedding of the token x_{t+1}
that followed, and predicts f_{t+1}; a small lm_head over a draft vocabulary (the most frequent
tokens, mapped back to target ids by `d2t`, as EAGLE-3) turns the prediction into the draft of
token t + 2. Drafting further feeds the head its own predicted feature. The layer is EAGLE-1's:
fc(concat(embedding, feature)) -> attention + SwiGLU MLP, no norm before the attention (the fc's
output is the residual stream), no norm after (the prediction is a feature, already normed).
Parameter names follow EAGLE-1's checkpoints (`fc`, `layers.0.*`), so its heads load unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import KVCache
from ..config import ModelArgs
from ..model import DecoderLayer, RotaryEmbedding, causal_mask, rotate_half


@dataclass
class HeadConfig:
    """Shape of a draft head. hidden_size and the attention shape are the target's (the head reads
    its features and shares its embedding and RoPE); the MLP width and draft vocabulary are the
    head's own choice (smaller = cheaper per draft step and quicker to train)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    draft_vocab_size: int
    target_vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    attention_bias: bool = False
    fc_bias: bool = True
    # "eagle1": our heads and EAGLE-1's (DraftHead); "eagle3": a published EAGLE-3 head (eagle3.py)
    kind: str = "eagle1"
    # EAGLE-3: the target layers whose inputs the head reads (None: EAGLE-3's default, layers 2,
    # N // 2 and N - 3 of an N-layer target, fixed by bind())
    feature_layers: list[int] | None = None
    norm_before_residual: bool = False  # EAGLE-3: the residual is the normed hidden state

    @classmethod
    def for_target(cls, args: ModelArgs, draft_vocab_size: int, intermediate_size: int | None = None) -> HeadConfig:
        return cls(args.hidden_size, intermediate_size or args.intermediate_size, args.num_attention_heads,
                   args.num_key_value_heads, args.head_dim, draft_vocab_size, args.vocab_size, args.rms_norm_eps,
                   args.rope_theta, args.max_position_embeddings, args.attention_bias)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def layer_args(self) -> ModelArgs:
        return ModelArgs(arch="llama", vocab_size=self.target_vocab_size, hidden_size=self.hidden_size,
                         intermediate_size=self.intermediate_size, num_hidden_layers=1,
                         num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
                         head_dim=self.head_dim, rope_theta=self.rope_theta, rms_norm_eps=self.rms_norm_eps,
                         max_position_embeddings=self.max_position_embeddings, attention_bias=self.attention_bias)


class DraftHead(nn.Module):
    """The head's own weights (what a head file holds): fc, one decoder layer, lm_head, d2t."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.fc = nn.Linear(2 * D, D, bias=config.fc_bias)
        self.layers = nn.ModuleList([DecoderLayer(config.layer_args(), 0)])
        self.layers[0].input_layernorm = nn.Identity()  # EAGLE-1: the fc's output goes straight in
        self.lm_head = nn.Linear(D, config.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.arange(config.draft_vocab_size, dtype=torch.long))  # draft id -> target id

    # -- drafting (HeadModel.step) -----------------------------------------------------------------

    def project_features(self, rows: torch.Tensor) -> torch.Tensor:
        """The target's features as this head's feature rows: EAGLE-1 reads them as they are."""
        return rows

    def decode(self, embeds: torch.Tensor, features: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               cache, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """embeds (N, D) of x_{t+1}, features (N, D) f_t -> (predicted f_{t+1} (N, D), logits (N, V_d))."""
        x = self.fc(torch.cat([embeds, features], dim=-1))[None]  # (1, N, D)
        h = self.layers[0](x, cos, sin, cache, mask)[0]  # (N, D)
        return h, self.lm_head(h)

    # -- training (autograd, full sequences, float32) ---------------------------------------------

    def forward_train(self, embeds: torch.Tensor, features: torch.Tensor, cos: torch.Tensor,
                      sin: torch.Tensor) -> torch.Tensor:
        """embeds (B, T, D) of x_{t+1}, features (B, T, D) f_t -> predicted f_{t+1} (B, T, D).
        Causal attention over the T positions; the same arithmetic as the decoding path."""
        layer = self.layers[0]
        attn = layer.self_attn
        x = self.fc(torch.cat([embeds, features], dim=-1))  # (B, T, D)
        B, T, _ = x.shape
        q = attn.q_proj(x).view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = attn.k_proj(x).view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = attn.v_proj(x).view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=attn.n_kv_heads != attn.n_heads)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(B, T, attn.n_heads * attn.head_dim))
        return x + layer.mlp(layer.post_attention_layernorm(x))  # (B, T, D)


class HeadModel(nn.Module):
    """A DraftHead bound to its target's embedding and RoPE tables, for drafting.

    Also a LanguageModel for the cost model's timing passes (`__call__` without features feeds
    zeros: a pass costs the same whatever the values), so the planner prices a head step as it
    prices a draft model's. The embedding and RoPE are the target's very tensors (no copy).
    """

    def __init__(self, head: DraftHead, embed: nn.Embedding, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.head = head
        self.args = head.config  # a dataclass: the cost model's fingerprint of this shape
        self._embed = [embed]  # a list: not a submodule (the target owns it; weight_bytes skips it)
        self._rope = [rope]

    @property
    def vocab_size(self) -> int:
        return self.head.config.target_vocab_size

    @property
    def max_context(self) -> int:
        return self.head.config.max_position_embeddings

    @property
    def device(self) -> torch.device:
        return self.head.d2t.device

    @property
    def dtype(self) -> torch.dtype:
        return self._embed[0].weight.dtype

    def kv_bytes_per_position(self) -> int:
        """Its cache's K and V of one position, and the target feature HeadDrafter keeps per position."""
        c, element = self.head.config, self._embed[0].weight.element_size()
        return (2 * c.num_key_value_heads * c.head_dim + c.hidden_size) * element

    def new_cache(self, max_len: int) -> KVCache:
        c = self.head.config
        return KVCache(1, c.num_key_value_heads, c.head_dim, max_len, 1, self.dtype, self.device)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
             cache) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (N,) x_{t+1}, features (N, D) f_t, positions (N,) t; cache: a KVCache (one
        request) or a RaggedBatch of several (rows in segment order; caches not advanced here).
        -> (predicted features (N, D), draft-vocabulary logits (N, V_d) float32)."""
        if isinstance(cache, KVCache):
            mask = causal_mask(cache, tokens.shape[0])  # as the target's forward: causal past T = 32 too
        else:
            mask = None  # a RaggedBatch: each segment is masked causally by the attention layer
        e = self._embed[0](tokens)  # (N, D)
        cos, sin = self._rope[0](positions[None], e.dtype)
        h, logits = self.head.decode(e, features.to(e.dtype), cos, sin, cache, mask)
        return h, logits.float()

    @property
    def feature_layers(self) -> list[int] | None:
        """The target layers whose inputs the head reads (EAGLE-3), or None: the final features."""
        return self.head.config.feature_layers if self.head.config.kind == "eagle3" else None

    @torch.inference_mode()
    def project_features(self, rows: torch.Tensor) -> torch.Tensor:
        """The target's features (n, D or 3 D) as the head's feature rows (n, D)."""
        return self.head.project_features(rows.to(self.dtype))

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, mask=None,
                num_logits: int | None = None) -> torch.Tensor:
        """The LanguageModel shape, for timing: zero features; logits (1, T', V_d)."""
        t = tokens.view(-1)
        feats = torch.zeros(t.shape[0], self.head.config.hidden_size, dtype=self.dtype, device=self.device)
        _, logits = self.step(t, feats, positions.view(-1), cache)
        cache.advance(t.shape[0])
        return logits[-(num_logits or logits.shape[0]):][None]


def lm_head_weight(target) -> torch.Tensor:
    """The target's lm_head as a float (V, D) matrix, whatever its packing or quantization."""
    lm_head = getattr(target, "lm", target).lm_head
    w = lm_head.weight if isinstance(lm_head, torch.nn.Linear) else lm_head.dequantized_weight()
    return w.detach().float()


def feature_layers_on(config: HeadConfig, num_layers: int) -> list[int] | None:
    """The target layers whose inputs an EAGLE-3 head reads on a target of `num_layers` layers
    (None for an EAGLE-1 head): its own list, else EAGLE-3's default 2, N // 2, N - 3."""
    if config.kind != "eagle3":
        return None
    layers = list(config.feature_layers or (2, num_layers // 2, num_layers - 3))
    if any(not 0 <= i < num_layers for i in layers) or len(set(layers)) != len(layers):
        raise ValueError(f"this EAGLE-3 head reads the inputs of target layers {layers}; the target has "
                         f"{num_layers} layers (0..{num_layers - 1})")
    return layers


def bind(head: nn.Module, target, quantize: str | None = "int8") -> HeadModel:
    """A HeadModel on `target` (a native Transformer), in the target's dtype, its linear layers
    quantized ("int8" default: a head step then reads about a quarter of its float bytes; "int4";
    None keeps floats) onto the same CPU kernels the target runs."""
    from ..quant import quantize_linear

    target = getattr(target, "lm", target)
    if not hasattr(target, "model") or not hasattr(target.model, "embed_tokens"):
        raise TypeError(f"a draft head needs a native specdecode target, not {type(target).__name__}")
    embed, rope = target.model.embed_tokens, target.rope
    c, a = head.config, target.args
    if c.hidden_size != a.hidden_size or c.target_vocab_size != a.vocab_size:
        raise ValueError(f"this head was made for hidden size {c.hidden_size} and {c.target_vocab_size} tokens; "
                         f"the target has {a.hidden_size} and {a.vocab_size}")
    layers = feature_layers_on(c, a.num_hidden_layers)
    shares = getattr(head, "shares_target_lm_head", False)
    head = copy.deepcopy(head)  # the caller's head stays as it was (one file may serve several targets)
    head.config = replace(c, feature_layers=layers)
    if getattr(head, "embed_tokens", None) is not None:  # an EAGLE-3 file with its own embedding
        embed = head.embed_tokens
    if (c.head_dim, c.rope_theta) != (a.head_dim, a.rope_theta) or c.max_position_embeddings > a.max_position_embeddings:
        # the head's own RoPE, over every position the target can reach (the engine drafts that far)
        longest = max(c.max_position_embeddings, a.max_position_embeddings)
        rope = RotaryEmbedding(c.head_dim, longest, c.rope_theta).to(embed.weight.device)
    if shares:  # an EAGLE-1 file without lm_head: the target's rows
        with torch.no_grad():
            head.lm_head.weight.copy_(lm_head_weight(target)[head.d2t.long()])
    head = head.to(device=embed.weight.device, dtype=embed.weight.dtype).eval()
    head.d2t = head.d2t.long()
    for p in head.parameters():
        p.requires_grad_(False)
    if quantize:
        for parent in list(head.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, quantize_linear(child, quantize))
    else:
        from ..kernels import pack_float_linears

        pack_float_linears(head)
    return HeadModel(head, embed, rope)
