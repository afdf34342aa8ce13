"""A Llama-family decoder (llama, qwen2, mistral) in plain PyTorch.

forward(tokens, positions, cache, mask) takes explicit positions and an optional attention mask,
so the same code scores one token, a chain of k drafts, or a token tree. No sampling, no loop.
Parameter names follow Hugging Face transformers, so HF checkpoints load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .config import ModelArgs
from .kernels import fused_layer, layer_ops
from .kernels.attention import chain_attention, chain_attention_applies, tree_attention
from .kernels.linear import project
from .ragged import RaggedBatch, Segment

# Where the row-invariant attention kernel does not apply (CUDA, no compiler), chains up to this
# many tokens (drafts + 1) are attended row by row; longer inputs (prefill) use one masked call.
ROWWISE_ATTENTION_MAX_T = 32


def tree_depths(parents: list[int]) -> list[int]:
    """Depth of each token of a tree (parents first; -1: a root at depth 0)."""
    depths: list[int] = []
    for p in parents:
        depths.append(0 if p < 0 else depths[p] + 1)
    return depths


def tree_path(parents, node: int) -> list[int]:
    """The tokens from the root to `node`, in order."""
    path = [node]
    while int(parents[path[-1]]) >= 0:
        path.append(int(parents[path[-1]]))
    return path[::-1]


def causal_mask(cache: KVCache, T: int) -> torch.Tensor | None:
    """The mask of T new tokens appended to `cache`: None (causal, row-wise attention) where the CPU
    kernel applies (every T: a prefill row then gets the bits a decode step gives it, which is what
    makes a reused prefix exact) or for a chain of up to ROWWISE_ATTENTION_MAX_T tokens; else causal
    with an offset: query i sits in slot cache.length + i."""
    if T <= ROWWISE_ATTENTION_MAX_T or chain_attention_applies(cache.keys[0], cache.keys[0].shape[-1]):
        return None
    L = cache.length + T
    return torch.ones(T, L, dtype=torch.bool, device=cache.keys[0].device).tril(diagonal=cache.length)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if layer_ops.applies(x, self.weight):  # one C++ call instead of eight ops
            return layer_ops.rms_norm(x, self.weight, self.eps)
        # Normalise in float32 like the reference implementation, then return to the input dtype.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotate-half RoPE, computed in float32 once and indexed by position."""

    def __init__(self, head_dim: int, max_positions: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (max_positions, head_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (max_positions, head_dim)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, 1, T, head_dim) so they broadcast over heads
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_idx: int) -> None:
        super().__init__()
        hd = args.head_dim
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = args.num_attention_heads, args.num_key_value_heads, hd
        self.q_proj = nn.Linear(args.hidden_size, self.n_heads * hd, bias=args.attention_bias)
        self.k_proj = nn.Linear(args.hidden_size, self.n_kv_heads * hd, bias=args.attention_bias)
        self.v_proj = nn.Linear(args.hidden_size, self.n_kv_heads * hd, bias=args.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * hd, args.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | RaggedBatch,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = project(x, self.q_proj, self.k_proj, self.v_proj)  # one kernel call for all three
        fused_rope = layer_ops.applies(q, k, cos) and q.is_contiguous() and k.is_contiguous()
        if fused_rope:  # in place on (B, T, heads * hd), the same bits as the lines below
            layer_ops.rope_(q, cos, sin, self.n_heads)
            layer_ops.rope_(k, cos, sin, self.n_kv_heads)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        if not fused_rope:
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if isinstance(cache, RaggedBatch):
            # B == 1 and T == N rows of several requests: each segment writes its own cache and
            # attends alone, with exactly the calls a pass of that segment by itself makes.
            out = torch.cat([self._attend(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], c,
                                          None if tree is not None else causal_mask(c, b - a), tree)
                             for c, a, b, tree in cache.segments], dim=2)  # (1, H, N, hd)
        else:
            out = self._attend(q, k, v, cache, mask)  # (B, H, T, hd)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache,
                mask: torch.Tensor | None, tree: torch.Tensor | None = None) -> torch.Tensor:
        """q (B, H, T, hd), this pass's k/v (B, Hkv, T, hd) -> (B, H, T, hd); writes k/v to `cache`.
        tree: (T,) int64 parents: the T tokens are a token tree (ragged.Segment.parents)."""
        T = q.shape[2]
        k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, L, hd), L = cached + T
        gqa = self.n_kv_heads != self.n_heads
        if tree is not None:
            if chain_attention_applies(k, self.head_dim):
                return tree_attention(q, k, v, self.head_dim**-0.5, tree).to(q.dtype)  # (B, H, T, hd)
            # Elsewhere: each node alone over the context and its path, the shapes of a decode step.
            L0, rows = k.shape[2] - T, []
            for i in range(T):
                path = tree_path(tree, i)
                keys = torch.cat([torch.arange(L0, device=k.device), L0 + torch.tensor(path, device=k.device)])
                rows.append(F.scaled_dot_product_attention(q[:, :, i : i + 1], k[:, :, keys], v[:, :, keys],
                                                           enable_gqa=gqa))
            return torch.cat(rows, dim=2)  # (B, H, T, hd)
        if mask is None and chain_attention_applies(k, self.head_dim):
            # Every causal pass on CPU (prefill chunks, decode steps, verification chains): each
            # query attends alone in a fixed order (specdecode.kernels), so a k+1-token pass rounds
            # exactly like k+1 steps, and a prefilled row exactly like a decoded one.
            return chain_attention(q, k, v, self.head_dim**-0.5).to(q.dtype)  # (B, H, T, hd)
        if mask is None and 1 < T <= ROWWISE_ATTENTION_MAX_T:
            # Elsewhere: attend row by row with exactly the shapes a one-token decode step uses.
            # SDPA's result depends on the number of queries (its blocking changes the float
            # summation order), so one k+1-token pass would round differently from k+1 steps.
            L0 = k.shape[2] - T
            return torch.cat(
                [F.scaled_dot_product_attention(q[:, :, i : i + 1], k[:, :, : L0 + i + 1], v[:, :, : L0 + i + 1],
                                                enable_gqa=gqa) for i in range(T)],
                dim=2,
            )  # (B, H, T, hd)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, self.gate_proj, self.up_proj)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(args, layer_idx)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(self, x, cos, sin, cache, mask):  # noqa: ANN001, ANN201 - internal
        if mask is None:  # on the CPU kernels: the whole layer in one C++ call, with these bits
            y = fused_layer.forward(self, x, cos, sin, cache)
            if y is not None:
                return y
        delta = self.self_attn(self.input_layernorm(x), cos, sin, cache, mask)
        norm = self.post_attention_layernorm
        if layer_ops.applies(x, delta, norm.weight):  # the residual add and the norm in one call
            x, h = layer_ops.add_rms_norm(x, delta, norm.weight, norm.eps)
        else:
            x = x + delta
            h = norm(x)
        return x + self.mlp(h)


class Backbone(nn.Module):
    """Embeddings, decoder layers and final norm (HF's `model.` prefix)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(args, i) for i in range(args.num_hidden_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.model = Backbone(args)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rope = RotaryEmbedding(args.head_dim, args.max_position_embeddings, args.rope_theta)

    @property
    def vocab_size(self) -> int:
        return self.args.vocab_size

    @property
    def max_context(self) -> int:
        return self.args.max_position_embeddings

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def new_cache(self, max_len: int, batch_size: int = 1) -> KVCache:
        p = self.model.embed_tokens.weight
        a = self.args
        return KVCache(a.num_hidden_layers, a.num_key_value_heads, a.head_dim, max_len, batch_size, p.dtype, p.device)

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        mask: torch.Tensor | None = None,
        num_logits: int | None = None,
    ) -> torch.Tensor:
        """Score `tokens` (B, T) at `positions` (B, T), appending their K/V to `cache`.

        mask: bool (B or 1, T, cache.length + T), True = may attend; None = causal over the chain.
        num_logits: only project the last n positions to the vocabulary (prefill needs 1).
        Returns float32 logits (B, T or num_logits, V).
        """
        B, T = tokens.shape
        if mask is None:
            mask = causal_mask(cache, T)
        elif mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (B, 1, T, L) broadcasts over heads
        x = self.model.embed_tokens(tokens)  # (B, T, D)
        cos, sin = self.rope(positions, x.dtype)
        fused = fused_layer.forward_stack(self, self.model.layers, x, cos, sin, cache) if mask is None else None
        if fused is not None:  # on the CPU kernels: every layer in one C++ call, with the layers' bits
            x = fused[0]
        else:
            for layer in self.model.layers:
                x = layer(x, cos, sin, cache, mask)
        cache.advance(T)
        if num_logits is not None:
            x = x[:, -num_logits:]
        return self.lm_head(self.model.norm(x)).float()  # (B, T', V)

    @torch.inference_mode()
    def forward_ragged(self, segments: list[Segment]) -> list[torch.Tensor]:
        """Score several requests' tokens in one pass: one call of each linear layer over all rows.

        Segment i appends its T_i tokens to its own cache (positions cache.length on) and gets
        the float32 logits of its last num_logits tokens, (num_logits, V). Every row's result is
        bit for bit what a pass of that segment alone gives: the linear kernels are row-invariant
        and attention runs per segment with the same calls (docs/batching.md).
        """
        device = self.device
        bounds, rows, start = [], [], 0
        for seg in segments:
            T = len(seg.tokens)
            tree = None if seg.parents is None else torch.tensor(seg.parents, dtype=torch.long)
            bounds.append((seg.cache, start, start + T, tree))
            n = T if seg.num_logits is None else min(seg.num_logits, T)
            rows.extend(range(start + T - n, start + T))
            start += T
        tokens = torch.cat([torch.as_tensor(seg.tokens, dtype=torch.long, device=device).view(-1)
                            for seg in segments])  # (N,)
        positions = torch.cat([torch.arange(seg.cache.length, seg.cache.length + len(seg.tokens), device=device)
                               if seg.parents is None else
                               seg.cache.length + torch.tensor(tree_depths(seg.parents), device=device)
                               for seg in segments])  # (N,)
        x = self.model.embed_tokens(tokens[None])  # (1, N, D)
        cos, sin = self.rope(positions[None], x.dtype)
        batch = RaggedBatch(bounds)
        layer_inputs = {i for seg in segments if isinstance(seg.want_features, tuple) for i in seg.want_features}
        entering: dict[int, torch.Tensor] = {}  # layer index -> the hidden states entering it (N, D)
        fused = fused_layer.forward_stack(self, self.model.layers, x, cos, sin, batch, tuple(sorted(layer_inputs)))
        if fused is not None:  # every layer in one C++ call
            x, entering = fused
        else:
            for i, layer in enumerate(self.model.layers):
                if i in layer_inputs:  # a copy: the next layers may add to x in place
                    entering[i] = x[0].clone()
                x = layer(x, cos, sin, batch, None)
        for seg in segments:
            seg.cache.advance(len(seg.tokens))
        for seg, (_, a, b, _) in zip(segments, bounds):  # an EAGLE-3 head's input: layers' inputs
            if isinstance(seg.want_features, tuple):
                seg.features = torch.cat([entering[i][a:b] for i in seg.want_features], dim=-1)  # (T, len * D)
        if any(seg.want_features is True for seg in segments):  # a head drafter's input: every row, normed
            normed = self.model.norm(x)[0]  # (N, D)
            logits = self.lm_head(normed[rows]).float() if rows else None  # (R, V)
            for seg, (_, a, b, _) in zip(segments, bounds):
                if seg.want_features is True:
                    seg.features = normed[a:b]
        else:
            logits = self.lm_head(self.model.norm(x[:, rows])).float()[0] if rows else None  # (R, V)
        out, r = [], 0
        for seg in segments:
            n = len(seg.tokens) if seg.num_logits is None else min(seg.num_logits, len(seg.tokens))
            out.append(logits[r : r + n] if n else torch.empty(0, self.vocab_size, device=device))
            r += n
        return out


def build_transformer(
    args: ModelArgs,
    state_dict: dict[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    packed: bool = True,
) -> Transformer:
    """Instantiate without a throw-away random init (meta device), then load the weights.

    packed: on CPU, run bf16 / fp32 linear layers on specdecode.kernels when they are built
    (False keeps PyTorch's nn.Linear, e.g. to compare against it).
    """
    with torch.device("meta"):
        model = Transformer(args)
    state = dict(state_dict)
    if args.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (args.tie_word_embeddings and m == "lm_head.weight")]
    unexpected = [u for u in unexpected if "rotary_emb" not in u]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the architecture: missing={missing[:4]} unexpected={unexpected[:4]}")
    if args.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # RoPE tables are not in checkpoints: rebuild them for real on the target device.
    model.rope = RotaryEmbedding(args.head_dim, args.max_position_embeddings, args.rope_theta)
    model = model.to(device=device, dtype=dtype).eval()
    if packed:
        # On CPU the linear layers run on the skinny kernels: one weight read for all rows of a
        # verify pass, and each row's bits independent of the number of rows.
        from .kernels import pack_float_linears

        pack_float_linears(model)
    return model
