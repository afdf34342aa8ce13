"""Sharding the native Transformer over a tensor-parallel group (Megatron-LM's layout).

Each rank builds a *local* model from its shard of the weights, with the ordinary
build_transformer, so the CPU kernels' packing and --quantize apply to it unchanged:

    q/k/v_proj   rows of this rank's heads (H/N query heads, Hkv/N kv heads; biases too)
    o_proj       the matching columns, then an all-reduce (sum) of its output
    gate/up_proj rows [r*I/N, (r+1)*I/N), down_proj those columns, then an all-reduce
    embed_tokens rows of this rank's vocabulary slice; other tokens' rows are zero, and an
                 all-reduce makes the full embedding (a tied lm_head is that same slice)
    lm_head      rows of this rank's vocabulary slice (V padded with zero rows to a multiple of N),
                 then an all-gather of the slices into (.., V) logits (the padding dropped)
    norms        replicated

Attention needs no traffic: a rank's query heads only read its own kv heads (GQA groups stay
whole when both head counts divide by N), and its KV cache holds only those heads. A pass
costs 2 all-reduces of (T, hidden) per layer, one for the embedding and one all-gather of
(T, V/N) logits.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from ..config import ModelArgs
from ..errors import SpecdecodeError
from .tp import TPGroup

# (dim, start, stop, rows): slice [start, stop) of dim, then zero-padded to `rows` rows (dim 0 only).
Slice = tuple[int, int, int, int]
# get(name, spec) -> the tensor `name`, sliced by spec (None = whole), in the asked dtype.
Getter = Callable[[str, "Slice | None"], torch.Tensor]


def shard_args(args: ModelArgs, world: int) -> ModelArgs:
    """The local model's shape: H/N heads, Hkv/N kv heads, I/N MLP columns, ceil(V/N) vocabulary rows."""
    H, Hkv, I = args.num_attention_heads, args.num_key_value_heads, args.intermediate_size
    bad = [f"{name} = {n}" for name, n in (("attention heads", H), ("key/value heads", Hkv),
                                          ("MLP intermediate size", I)) if n % world]
    if bad:
        raise SpecdecodeError(f"cannot split this model over --tp {world}: {', '.join(bad)} "
                              f"{'is' if len(bad) == 1 else 'are'} not divisible by {world}")
    return replace(args, num_attention_heads=H // world, num_key_value_heads=Hkv // world,
                   intermediate_size=I // world, head_dim=args.head_dim, vocab_size=-(-args.vocab_size // world))


def shard_plan(args: ModelArgs, rank: int, world: int) -> dict[str, Slice]:
    """What rank `rank` keeps of each split tensor (HF names); tensors not listed are replicated."""
    hd = args.head_dim
    hq, hkv = args.num_attention_heads // world * hd, args.num_key_value_heads // world * hd
    i = args.intermediate_size // world
    v = -(-args.vocab_size // world)
    vocab = (0, rank * v, min((rank + 1) * v, args.vocab_size), v)
    plan: dict[str, Slice] = {"model.embed_tokens.weight": vocab}
    if not args.tie_word_embeddings:
        plan["lm_head.weight"] = vocab
    for layer in range(args.num_hidden_layers):
        p = f"model.layers.{layer}."
        for name, width in (("q_proj", hq), ("k_proj", hkv), ("v_proj", hkv)):
            rows = (0, rank * width, (rank + 1) * width, width)
            plan[f"{p}self_attn.{name}.weight"] = rows
            plan[f"{p}self_attn.{name}.bias"] = rows
        plan[f"{p}self_attn.o_proj.weight"] = (1, rank * hq, (rank + 1) * hq, 0)
        for name in ("gate_proj", "up_proj"):
            plan[f"{p}mlp.{name}.weight"] = (0, rank * i, (rank + 1) * i, i)
        plan[f"{p}mlp.down_proj.weight"] = (1, rank * i, (rank + 1) * i, 0)
    return plan


def take(t: torch.Tensor, spec: Slice | None) -> torch.Tensor:
    """`t` sliced by spec, as a tensor of its own (a view would keep the whole tensor alive)."""
    if spec is None:
        return t
    dim, start, stop, rows = spec
    part = t.narrow(dim, start, stop - start).clone(memory_format=torch.contiguous_format)
    if dim == 0 and rows > part.shape[0]:
        part = torch.cat([part, part.new_zeros(rows - part.shape[0], *part.shape[1:])])
    return part


def dict_getter(state: dict[str, torch.Tensor]) -> Getter:
    """A getter over a full state dict that drops each full tensor once its slice is taken."""
    def get(name: str, spec: Slice | None) -> torch.Tensor:
        return take(state.pop(name), spec)

    return get


def build_sharded(args: ModelArgs, names: list[str], get: Getter, group: TPGroup, dtype: torch.dtype,
                  device: torch.device | str, packed: bool = True) -> nn.Module:
    """This rank's Transformer: the tensors `names` read through `get` (sliced per shard_plan),
    built by build_transformer, then wired with the group's collectives (`parallelize`)."""
    from ..model import build_transformer

    local = shard_args(args, group.world_size)
    plan = shard_plan(args, group.rank, group.world_size)
    state = {}
    for name in names:
        if "rotary_emb" in name or (args.tie_word_embeddings and name == "lm_head.weight"):
            continue
        state[name] = get(name, plan.get(name))
    model = build_transformer(local, state, dtype=dtype, device=device, packed=packed)
    del state
    return parallelize(model, args, group)


def parallelize(model: nn.Module, args: ModelArgs, group: TPGroup) -> nn.Module:
    """Wrap a local model's o_proj, down_proj, embedding and lm_head in their collectives; the model
    then reports the full vocabulary (its interface is the unsharded model's)."""
    vocab_rows = model.args.vocab_size
    for layer in model.model.layers:
        layer.self_attn.o_proj = RowParallelLinear(layer.self_attn.o_proj, group)
        layer.mlp.down_proj = RowParallelLinear(layer.mlp.down_proj, group)
    model.model.embed_tokens = VocabParallelEmbedding(model.model.embed_tokens, group.rank * vocab_rows, group)
    model.lm_head = VocabParallelHead(model.lm_head, args.vocab_size, group)
    model.args = replace(model.args, vocab_size=args.vocab_size)
    model.tp = group
    model.tp_full_args = args
    return model


class RowParallelLinear(nn.Module):
    """A linear layer over this rank's slice of its input features, then the sum over ranks."""

    def __init__(self, linear: nn.Module, group: TPGroup) -> None:
        super().__init__()
        self.linear, self.group = linear, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(self.linear(x))  # (.., hidden), summed over ranks

    def extra_repr(self) -> str:
        return f"all-reduce over {self.group.world_size} ranks"


class VocabParallelEmbedding(nn.Module):
    """Rows [start, start + n) of the embedding; a token outside them contributes zeros here, and
    the all-reduce adds the one rank's row that holds it."""

    def __init__(self, embedding: nn.Embedding, start: int, group: TPGroup) -> None:
        super().__init__()
        self.embedding, self.start, self.group = embedding, start, group

    @property
    def weight(self) -> torch.Tensor:  # the local rows: device and dtype for caches and KV sizing
        return self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = self.embedding.weight.shape[0]
        local = tokens - self.start
        inside = (local >= 0) & (local < rows)
        x = self.embedding(local.clamp(0, rows - 1)).masked_fill(~inside.unsqueeze(-1), 0)  # (.., hidden)
        return self.group.all_reduce(x)

    def extra_repr(self) -> str:
        return f"rows {self.start}..{self.start + self.embedding.weight.shape[0]} of the vocabulary"


class VocabParallelHead(nn.Module):
    """This rank's vocabulary slice of the logits, in float32, all-gathered into (.., V)."""

    def __init__(self, lm_head: nn.Module, vocab_size: int, group: TPGroup) -> None:
        super().__init__()
        # Named lm_head, as in the Transformer, so quantize_model gives it the head's format.
        self.lm_head, self.vocab_size, self.group = lm_head, vocab_size, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.lm_head(x).float()  # (.., ceil(V/N))
        return self.group.all_gather_last(local)[..., : self.vocab_size]  # (.., V)

    def extra_repr(self) -> str:
        return f"vocabulary {self.vocab_size} gathered from {self.group.world_size} ranks"
