"""Training a draft head on the target's own features (EAGLE-style distillation).

Data: sequences of (tokens, the target's final-normed features at every position), from the
target's answers to prompts (heads/data.py collects them through the engine's own passes, which
compute the features anyway). For each position t the head sees (f_t, x_{t+1}) and learns f_{t+1}:

- a distillation loss: cross-entropy of the head's draft-vocabulary distribution,
  softmax(lm_head(f_hat)), against the target's own, softmax(lm_head(f_{t+1})) (the lm_head is the
  target's rows for the draft vocabulary, frozen: the target's distribution is recomputed from
  the stored feature, no logits are stored);
- EAGLE-1's feature loss: smooth L1 between f_hat and f_{t+1};
- unrolled steps (EAGLE-3's "training-time test"): step s feeds the head its own prediction of
  step s - 1, attending the true pairs before the draft began and its own earlier predicted
  pairs, exactly as drafting s tokens does; each step's losses count alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model import rotate_half
from .model import DraftHead, HeadConfig


@dataclass
class TrainConfig:
    epochs: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    unroll: int = 2  # draft steps trained per position (1: teacher forcing only, EAGLE-1)
    feature_weight: float = 0.2  # smooth-L1 feature loss next to the distillation cross-entropy
    seq_len: int = 512  # longer sequences are cut into windows of this many pairs
    batch_tokens: int = 512  # pairs per optimizer step (sequences packed up to this many): a corpus of ~100k
    # pairs then takes ~200 steps an epoch (2048 gave too few steps to learn from a corpus this size)
    seed: int = 0
    holdout: float = 0.05  # share of the sequences held out of training: their agreement, after each
    # epoch, is what the head will do on text it has not seen (the training agreement is not: a corpus
    # of ~100k tokens is memorized)
    feature_noise: float = 0.0  # EAGLE's augmentation: uniform noise in [-a, a] on the target features fed


def split_held_out(sequences: Sequence, share: float, seed: int) -> tuple[list, list]:
    """(training, held-out) sequences: int(len * share) of them held out, chosen by `seed`."""
    n = int(len(sequences) * share)
    order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    held = set(order[:n])
    return ([x for i, x in enumerate(sequences) if i not in held], [x for i, x in enumerate(sequences) if i in held])


def pick_draft_vocab(sequences: Sequence[torch.Tensor], target_vocab: int, size: int,
                     always: Sequence[int] = ()) -> torch.Tensor:
    """The `size` most frequent target ids in the data (ties: lower id first), `always` included
    (EOS and the chat template's specials), sorted by id: the head's d2t."""
    counts = torch.zeros(target_vocab, dtype=torch.long)
    for toks in sequences:
        counts += torch.bincount(toks.long(), minlength=target_vocab)
    for t in always:
        counts[t] = counts.max() + 1
    size = min(size, target_vocab)
    top = torch.argsort(-counts, stable=True)[:size]  # stable: ties keep the lower id first
    return top.sort().values


def new_head(config: HeadConfig, target_lm_head: torch.Tensor, d2t: torch.Tensor, seed: int = 0) -> DraftHead:
    """A head ready to train: its lm_head the target's rows for the draft vocabulary (frozen), fc
    starting as 'pass the feature through' (the identity on the feature half), the rest random."""
    torch.manual_seed(seed)
    head = DraftHead(config).float()
    D = config.hidden_size
    with torch.no_grad():
        head.d2t.copy_(d2t)
        head.lm_head.weight.copy_(target_lm_head.float()[d2t])
        head.fc.weight[:, D:] += torch.eye(D)
        head.layers[0].self_attn.o_proj.weight.mul_(0.1)
        head.layers[0].mlp.down_proj.weight.mul_(0.1)
    head.lm_head.weight.requires_grad_(False)
    return head


def _repeat_kv(t: torch.Tensor, n: int) -> torch.Tensor:
    return t if n == 1 else t.repeat_interleave(n, dim=1)  # (B, Hkv, T, hd) -> (B, H, T, hd)


def unrolled_loss(head: DraftHead, embeds: torch.Tensor, features: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, valid: torch.Tensor, unroll: int,
                  feature_weight: float, noise: float = 0.0) -> tuple[torch.Tensor, list[float]]:
    """embeds (B, T, D) of x_{j+1}, features (B, T + 1, D): f_0 .. f_T (the target's), valid (B, T)
    bool: pairs that exist; noise: uniform in [-noise, noise] added to the true features fed (not
    to the targets). Returns (loss, top-1 agreement with the target per step)."""
    layer = head.layers[0]
    attn = layer.self_attn
    B, T, D = embeds.shape
    H, Hkv, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    target = features[:, 1:]  # (B, T, D) f_{j+1}
    with torch.no_grad():
        p_target = torch.softmax(head.lm_head(target), dim=-1)  # (B, T, V_d)
        top_target = p_target.argmax(-1)  # (B, T)
    scale = hd**-0.5
    inputs = features[:, :-1]  # step 1: the true f_j
    if noise > 0:
        inputs = inputs + (torch.rand_like(inputs) * 2 - 1) * noise
    keys: list[tuple[torch.Tensor, torch.Tensor]] = []  # per step: (k, v) (B, H, T, hd)
    total = torch.zeros((), dtype=torch.float32)
    agree: list[float] = []
    idx = torch.arange(T)
    for s in range(1, unroll + 1):
        x = head.fc(torch.cat([embeds, inputs], dim=-1))  # (B, T, D)
        q = attn.q_proj(x).view(B, T, H, hd).transpose(1, 2)
        k = attn.k_proj(x).view(B, T, Hkv, hd).transpose(1, 2)
        v = attn.v_proj(x).view(B, T, Hkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = _repeat_kv(k * cos + rotate_half(k) * sin, H // Hkv)
        v = _repeat_kv(v, H // Hkv)
        keys.append((k, v))
        if s == 1:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        else:
            # Pair j at step s drafts after the true pairs <= j - s + 1, then its own predicted pairs
            # of steps 2..s at positions j - s + 2 .. j (the last one this step's own).
            k1, v1 = keys[0]
            scores = [(q @ k1.transpose(-1, -2) * scale).masked_fill(
                idx[None, :] > idx[:, None] - s + 1, float("-inf"))]  # (B, H, T, T)
            diag_v = []
            for r in range(2, s + 1):
                kr, vr = keys[r - 1]
                shift = s - r
                kr_s = torch.roll(kr, shift, dims=2)  # row j holds kr[j - shift]
                vr_s = torch.roll(vr, shift, dims=2)
                scores.append((q * kr_s).sum(-1, keepdim=True) * scale)  # (B, H, T, 1)
                diag_v.append(vr_s)
            probs = torch.softmax(torch.cat(scores, dim=-1), dim=-1)
            out = probs[..., :T] @ v1
            for r, vr_s in enumerate(diag_v):
                out = out + probs[..., T + r : T + r + 1] * vr_s
        x = x + attn.o_proj(out.transpose(1, 2).reshape(B, T, H * hd))
        pred = x + layer.mlp(layer.post_attention_layernorm(x))  # (B, T, D): f_hat_{j+1}
        ok = valid & (idx >= s - 1)[None]  # step s exists from pair s - 1 on
        logp = torch.log_softmax(head.lm_head(pred), dim=-1)  # (B, T, V_d)
        ce = -(p_target * logp).sum(-1)  # (B, T)
        feat = F.smooth_l1_loss(pred, target, reduction="none").mean(-1)  # (B, T)
        n = ok.sum().clamp(min=1)
        total = total + ((ce + feature_weight * feat) * ok).sum() / n
        agree.append(float(((logp.argmax(-1) == top_target) & ok).sum() / n))
        # the next step's input at pair j is this step's prediction at pair j - 1
        inputs = torch.cat([torch.zeros_like(pred[:, :1]), pred[:, :-1]], dim=1)
    return total / unroll, agree


def windows(sequences: Sequence[tuple[torch.Tensor, torch.Tensor]], seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut (tokens (n,), features (n, D)) sequences into windows of at most seq_len pairs (+1 feature)."""
    out = []
    for toks, feats in sequences:
        n = toks.shape[0]
        for a in range(0, max(n - 1, 0), seq_len):
            b = min(a + seq_len + 1, n)
            if b - a >= 2:
                out.append((toks[a:b], feats[a:b]))
    return out


def train_head(head: DraftHead, embed: torch.nn.Embedding, rope, sequences: Sequence[tuple[torch.Tensor, torch.Tensor]],
               config: TrainConfig, *, start_epoch: int = 0, optimizer_state: dict | None = None,
               on_epoch: Callable[[int, DraftHead, dict], None] | None = None,
               progress: bool = False) -> list[dict]:
    """Train `head` in place on the target's sequences; returns a summary per epoch.

    embed / rope: the target's (frozen; the embedding is looked up, not trained).
    on_epoch(epoch, head, optimizer_state) after each epoch (the CLI checkpoints there: an
    interrupted run resumes at the next epoch)."""
    from tqdm.auto import tqdm

    train_seqs, held_out = split_held_out(sequences, config.holdout, config.seed)
    data = windows(train_seqs, config.seq_len)
    held_windows = windows(held_out, config.seq_len)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if optimizer_state:
        opt.load_state_dict(optimizer_state)
    steps_per_epoch = max(1, math.ceil(sum(w[0].shape[0] - 1 for w in data) / config.batch_tokens))
    total_steps = steps_per_epoch * config.epochs
    summaries = []
    head.train()
    for epoch in range(start_epoch, config.epochs):
        # each epoch's order from (seed, epoch) alone: a resumed run sees the order an unbroken one saw
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(data), generator=gen).tolist()
        batches, cur, used = [], [], 0
        for i in order:  # pack windows of similar cost into batches of about batch_tokens pairs
            cur.append(data[i])
            used += data[i][0].shape[0] - 1
            if used >= config.batch_tokens:
                batches.append(cur)
                cur, used = [], 0
        if cur:
            batches.append(cur)
        seen, loss_sum, agree_sum = 0, 0.0, None
        bar = tqdm(batches, desc=f"training head, epoch {epoch + 1}/{config.epochs}", unit="batch",
                   disable=None if progress else True, leave=False)
        for step, batch in enumerate(bar):
            global_step = epoch * steps_per_epoch + step
            for g in opt.param_groups:  # linear warm-up, cosine decay
                warm = min(1.0, (global_step + 1) / max(1, total_steps // 20))
                g["lr"] = config.lr * warm * 0.5 * (1 + math.cos(math.pi * min(global_step / total_steps, 1.0)))
            loss, agree = _batch_loss(head, embed, rope, batch, config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            loss_sum += float(loss.detach())
            agree_sum = agree if agree_sum is None else [a + b for a, b in zip(agree_sum, agree)]
            seen += 1
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", top1=f"{agree_sum[0] / seen:.2f}")
        summary = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1),
                   "top1_by_step": [a / max(seen, 1) for a in (agree_sum or [])]}
        if held_windows:
            summary["held_out"] = evaluate(head, embed, rope, held_windows, config)
            head.train()
        summaries.append(summary)
        if progress:  # a line per epoch also where the bar is off (not a terminal: a log file)
            top1 = ", ".join(f"{a:.2f}" for a in summary["top1_by_step"])
            line = f"epoch {epoch + 1}/{config.epochs}: loss {summary['loss']:.3f}, top-1 agreement by draft step {top1}"
            if held_windows:
                held = summary["held_out"]
                line += (f"; held out ({held['pairs']} pairs): loss {held['loss']:.3f}, top-1 "
                         + ", ".join(f"{a:.2f}" for a in held["top1_by_step"]))
            print(line, flush=True)
        if on_epoch is not None:
            on_epoch(epoch + 1, head, opt.state_dict())
    head.eval()
    return summaries


@torch.no_grad()
def evaluate(head: DraftHead, embed, rope, data: list, config: TrainConfig) -> dict:
    """The unrolled loss and top-1 agreement by draft step over windows `data` (no noise, no
    training), pooled by pairs."""
    head.eval()
    pairs, loss_sum, agree_sum = 0, 0.0, [0.0] * config.unroll
    for a in range(0, len(data), 8):
        batch = data[a : a + 8]
        n = sum(w[0].shape[0] - 1 for w in batch)
        loss, agree = _batch_loss(head, embed, rope, batch, config, noise=0.0)
        pairs += n
        loss_sum += float(loss) * n
        agree_sum = [s + g * n for s, g in zip(agree_sum, agree)]
    return {"pairs": pairs, "loss": loss_sum / max(pairs, 1), "top1_by_step": [s / max(pairs, 1) for s in agree_sum]}


def _batch_loss(head: DraftHead, embed, rope, batch, config: TrainConfig,
                noise: float | None = None) -> tuple[torch.Tensor, list[float]]:
    """Pad a batch of windows to one length and compute the unrolled loss."""
    T = max(w[0].shape[0] - 1 for w in batch)
    D = head.config.hidden_size
    tokens = torch.zeros(len(batch), T, dtype=torch.long)
    feats = torch.zeros(len(batch), T + 1, D)
    valid = torch.zeros(len(batch), T, dtype=torch.bool)
    for b, (toks, f) in enumerate(batch):
        n = toks.shape[0] - 1
        tokens[b, :n] = toks[1:].long()  # pair j's token is x_{j+1}
        feats[b, : n + 1] = f.float()
        valid[b, :n] = True
    with torch.no_grad():
        embeds = embed(tokens).float()  # (B, T, D)
        cos, sin = rope(torch.arange(T)[None], torch.float32)  # (1, 1, T, hd)
    return unrolled_loss(head, embeds, feats, cos, sin, valid, config.unroll, config.feature_weight,
                         config.feature_noise if noise is None else noise)
