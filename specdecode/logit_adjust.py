"""OpenAI's presence / frequency penalties and logit_bias, applied to raw logits.

    logit[j] += bias[j] - frequency_penalty * c[j] - presence_penalty * (c[j] > 0)

where c[j] counts token j in the request's output so far (the prompt does not count, as OpenAI
and vLLM define it). The adjusted logits are the model the request samples from, so the engine
applies this to every verify row of the target, each row with the counts of the text before it
(the output plus the drafts ahead of that row), exactly as a target-only run would see them at
that position; speculation then stays exact for the adjusted target. A draft model's logits get
the same adjustment with its own history (not needed for exactness, only for acceptance: a draft
that ignores a ban would keep proposing the banned token).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import SamplingParams


def adjusts_logits(params: SamplingParams) -> bool:
    """Whether the request's logits are changed at all (no work, not even a copy, otherwise)."""
    return bool(params.presence_penalty or params.frequency_penalty or params.logit_bias)


def adjust_logits(logits: torch.Tensor, params: SamplingParams, output: Sequence[int],
                  draft: Sequence[int] = ()) -> torch.Tensor:
    """logits (n, V), row i the logits after output + draft[:i] -> adjusted (n, V) float32.

    n may be anything up to len(draft) + 1 (a verify pass scores the drafts and the token after).
    """
    logits = logits.float()
    if not adjusts_logits(params):
        return logits
    n, vocab = logits.shape
    device = logits.device
    out = logits.clone()
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias.keys()), dtype=torch.long, device=device)
        bias = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32, device=device)
        out[:, ids] += bias  # (the ids are distinct: dict keys)
    if params.presence_penalty or params.frequency_penalty:
        history = list(output) + list(draft[: n - 1])
        counts = torch.zeros(n, vocab, dtype=torch.float32, device=device)  # (n, V)
        if output:
            counts += torch.bincount(torch.tensor(list(output), dtype=torch.long), minlength=vocab)[:vocab].to(device)
        for i, token in enumerate(history[len(output):]):  # draft i counts from row i + 1 on
            counts[i + 1 :, token] += 1
        out -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
    return out
