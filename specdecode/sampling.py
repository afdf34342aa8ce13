"""The ONE place where logits become probabilities, for the target (p) and the draft (q) alike.

Losslessness of rejection sampling needs p and q to be the distributions the tokens are
actually sampled from, so temperature, top-k and top-p are applied by this single function
on both sides (as gpt-fast's logits_to_probs).
"""

from __future__ import annotations

import torch

from .config import SamplingParams

# Below float32's smallest normal number a temperature rounds to 0 (or a subnormal) in the
# division; such a temperature is greedy in every way that float32 can represent.
MIN_TEMPERATURE = torch.finfo(torch.float32).tiny


def logits_to_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """(..., V) float logits -> (..., V) float32 probabilities after temperature, top-k, top-p.

    Greedy (temperature 0) gives a one-hot distribution at the argmax, so the same
    rejection sampler is exact for greedy too. Every result is a valid distribution that
    keeps the most likely token, whatever the parameters: temperature -> 0 tends to greedy
    (uniform over exactly tied maxima), top_p -> 0 keeps only the most likely token.
    """
    logits = logits.float()
    if params.greedy or params.temperature < MIN_TEMPERATURE:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    # Subtract the max before dividing: the scaled logits are <= 0 with the max exactly 0, so a
    # tiny temperature sends the others to -inf (probability 0) instead of overflowing to inf - inf.
    logits = (logits - logits.amax(-1, keepdim=True)) / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # Drop a token when the mass strictly before it already reaches top_p. The first token
        # is kept explicitly: a top_p below float32's smallest value compares as 0.
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one index per row of (..., V) probabilities -> (...,) int64.

    The exponential-race trick (argmax p / E, E ~ Exp(1)) needs no device sync, unlike
    torch.multinomial; it is exact: P(argmax = i) = p_i.
    """
    e = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / e).argmax(-1)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g
