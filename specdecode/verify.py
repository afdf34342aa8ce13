"""Verification of drafted tokens against the target: pure functions over tensors.

Names follow the papers: p = target distribution, q = draft distribution; a drafted token is
accepted, the first rejected one is replaced by a recovered token, and when every draft is
accepted the target's extra distribution gives a bonus token.
"""

from __future__ import annotations

import torch

from .sampling import sample


def greedy_accept(draft: list[int], target_tokens: list[int]) -> tuple[int, int]:
    """The longest prefix of `draft` equal to the target's own tokens, then the target's next one.

    target_tokens (k+1,): the target's token at each position, its argmax (greedy, taken for a
    whole batch in one host copy) or its seeded draw (sampling.PositionNoise). Returns
    (num_accepted, next_token)."""
    num_accepted = 0
    while num_accepted < len(draft) and draft[num_accepted] == target_tokens[num_accepted]:
        num_accepted += 1
    return num_accepted, target_tokens[num_accepted]


def rejection_sample(
    draft: torch.Tensor,
    q: torch.Tensor | None,
    p: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Speculative sampling (Leviathan et al. 2023, Chen et al. 2023): exact for any q.

    draft: (k,) proposed tokens; q: (k, V) draft probabilities, or None for a drafter without
    probabilities (treated as a point mass at each draft token); p: (k+1, V) target probabilities.
    Token i is accepted with probability min(1, p_i(x)/q_i(x)); at the first rejection the
    recovered token is drawn from norm(max(0, p_i - q_i)); if all k are accepted the bonus
    token is drawn from p_k. The output has exactly the target's distribution.
    Returns (num_accepted, next_token).
    """
    k = draft.numel()
    idx = torch.arange(k, device=p.device)
    p_draft = p[idx, draft]  # (k,)
    q_draft = q[idx, draft] if q is not None else torch.ones_like(p_draft)
    u = torch.rand(k, generator=generator, device=p.device)
    # u < p/q written as u * q < p: no division, and q == 0 never yields NaN.
    accepted = (u * q_draft < p_draft).int()
    num_accepted = int(accepted.cumprod(0).sum()) if k else 0
    if num_accepted == k:
        return k, int(sample(p[k], generator))
    p_i = p[num_accepted]
    if q is not None:
        residual = (p_i - q[num_accepted]).clamp_(min=0.0)
    else:
        residual = p_i.clone()
        residual[draft[num_accepted]] = 0.0
    total = residual.sum()
    # A rejection has probability zero when the residual is empty (e.g. p == q); floating-point
    # round-off can still land here, and then p itself is the right distribution.
    dist = residual / total if float(total) > 0.0 else p_i
    return num_accepted, int(sample(dist, generator))
