"""Log-probabilities of emitted tokens, for OpenAI's `logprobs` / `top_logprobs`.

They are the target's: log-softmax of its logits at the row that chose the token (after a JSON
schema's mask, before temperature, top-k and top-p, as vLLM reports them by default). Every row
of a verify pass is computed exactly like the single step that would have produced it
(row-invariant kernels), so speculation gives the same numbers, bit for bit, as target-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the `top_logprobs` most likely tokens at that position, best first


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """One TokenLogprob per token: tokens[i] was chosen at row i of logits (>= len(tokens), V)."""
    if not tokens:
        return []
    rows = torch.log_softmax(logits[: len(tokens)].float(), dim=-1)  # (n, V)
    chosen = rows.gather(1, torch.tensor(tokens, device=rows.device).view(-1, 1)).flatten().tolist()
    if top > 0:
        values, ids = rows.topk(top, dim=-1)  # (n, top)
        tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        tops = [[] for _ in tokens]
    return [TokenLogprob(t, lp, tp) for t, lp, tp in zip(tokens, chosen, tops)]
