"""EAGLE-3 heads as published (Li et al. 2025, "EAGLE-3: Scaling up Inference Acceleration of
Large Language Models via Training-Time Test"; the layout SpecForge writes and vLLM / SGLang load).

Where an EAGLE-1 head (model.DraftHead) reads the target's final features, an EAGLE-3 head reads
the hidden states entering three of the target's layers (a low, a middle and a high one; by
default 2, N // 2 and N - 3 of N), concatenated, and `fc` maps them to one vector g_t. Its one
decoder layer takes, for each position, the embedding of x_{t+1} and g_t, each RMS-normed
(`input_layernorm`, `hidden_norm`), side by side: the attention's q/k/v read 2 D inputs, the
residual stream is g_t (or its normed copy with `norm_before_residual`), and after the MLP the
layer's output h_t (pre-norm) goes through `norm` and `lm_head` to logits over the draft
vocabulary (`d2t` maps draft ids to target ids). Drafting further feeds h_t back in g's place
(fc applies to the target's features only).

Here `fc` runs once per settled target row, when the engine hands the features over
(project_features): the drafter then keeps one D-wide row per position, as for an EAGLE-1 head.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import MLP, Attention, RMSNorm
from .model import HeadConfig


class Eagle3Layer(nn.Module):
    """EAGLE-3's decoder layer (`midlayer.*`): attention over [norm(embedding), norm(hidden)]."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        args, D = config.layer_args(), config.hidden_size
        self.norm_before_residual = config.norm_before_residual
        self.self_attn = Attention(args, 0)
        attn = self.self_attn
        bias = config.attention_bias
        attn.q_proj = nn.Linear(2 * D, attn.n_heads * attn.head_dim, bias=bias)  # reads both halves
        attn.k_proj = nn.Linear(2 * D, attn.n_kv_heads * attn.head_dim, bias=bias)
        attn.v_proj = nn.Linear(2 * D, attn.n_kv_heads * attn.head_dim, bias=bias)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(D, config.rms_norm_eps)  # on the embedding
        self.hidden_norm = RMSNorm(D, config.rms_norm_eps)  # on the hidden state
        self.post_attention_layernorm = RMSNorm(D, config.rms_norm_eps)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache, mask) -> torch.Tensor:
        """embeds, hidden (1, N, D) -> the layer's output before the final norm (1, N, D)."""
        normed = self.hidden_norm(hidden)
        residual = normed if self.norm_before_residual else hidden
        x = torch.cat([self.input_layernorm(embeds), normed], dim=-1)  # (1, N, 2 D)
        residual = residual + self.self_attn(x, cos, sin, cache, mask)
        return residual + self.mlp(self.post_attention_layernorm(residual))


class Eagle3Head(nn.Module):
    """An EAGLE-3 head's weights under their published names: fc, midlayer.*, norm, lm_head, d2t
    (as target ids here; the files hold offsets), and embed_tokens when the file has its own."""

    def __init__(self, config: HeadConfig, own_embedding: bool = False) -> None:
        super().__init__()
        if config.kind != "eagle3":
            raise ValueError(f"an Eagle3Head needs an eagle3 config, not {config.kind!r}")
        self.config = config
        D = config.hidden_size
        layers = len(config.feature_layers) if config.feature_layers else 3
        self.fc = nn.Linear(layers * D, D, bias=config.fc_bias)
        self.midlayer = Eagle3Layer(config)
        self.norm = RMSNorm(D, config.rms_norm_eps)
        self.lm_head = nn.Linear(D, config.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.arange(config.draft_vocab_size, dtype=torch.long))  # draft id -> target id
        if own_embedding:
            self.embed_tokens = nn.Embedding(config.target_vocab_size, D)
        self.shares_target_lm_head = False

    def project_features(self, rows: torch.Tensor) -> torch.Tensor:
        """The target's layer inputs, concatenated (n, 3 D) -> g (n, D)."""
        return self.fc(rows)

    def decode(self, embeds: torch.Tensor, features: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               cache, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """embeds (N, D) of x_{t+1}, features (N, D) (g_t, or the head's own h_{t-1} further on)
        -> (h_t (N, D), draft-vocabulary logits (N, V_d))."""
        h = self.midlayer(embeds[None], features[None], cos, sin, cache, mask)[0]  # (N, D)
        return h, self.lm_head(self.norm(h))
