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


class PositionNoise:
    """The exponential noise of a seeded request, one vector per position of its text.

    Drafter-invariant speculative sampling (Daliri, Musco, Suresh 2024, "Coupling without
    communication and drafter-invariant speculative decoding"): the token at position t is
    argmax(p / E_t) (the exponential race: exactly a draw from p), where E_t ~ Exp(1)^V depends
    only on (seed, t). The target-only run, a speculative run and any batch then draw the same
    token at t from the same p; a drafter that races its q against the same E_t proposes that
    token whenever q and p agree enough, and verification only checks equality. So a seed means
    the same text whatever the drafter, k, batch or history.

    E_t is computed once per position (float64 uniforms, ~2 ms for 152k tokens) and kept until
    the text has moved past it, so the drafter and the target share it.
    """

    def __init__(self, seed: int, vocab_size: int, device: torch.device | str = "cpu") -> None:
        self.seed, self.vocab_size, self.device = int(seed), int(vocab_size), torch.device(device)
        self._at: dict[int, torch.Tensor] = {}

    def at(self, position: int) -> torch.Tensor:
        """E_position: (V,) float32, every entry > 0."""
        e = self._at.get(position)
        if e is None:
            # Generated on the CPU whatever the device: the same bits on every machine.
            g = torch.Generator().manual_seed(_mix(self.seed, position))
            u = torch.rand(self.vocab_size, generator=g, dtype=torch.float64)
            e = self._at[position] = (-torch.log(u.clamp_min_(1e-300))).float().to(self.device)
        return e

    def forget_before(self, position: int) -> None:
        """Drop the noise of positions before `position` (the text there is final)."""
        for t in [t for t in self._at if t < position]:
            del self._at[t]


def _mix(seed: int, position: int) -> int:
    """A 63-bit generator seed from (seed, position): splitmix64's finalizer, so nearby pairs
    give unrelated streams."""
    x = (seed * 0x9E3779B97F4A7C15 + position + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


def draw(probs: torch.Tensor, rng: torch.Generator | PositionNoise | None, position: int) -> torch.Tensor:
    """One token from probs (V,) for text position `position`, as a 0-d int64 tensor (no host
    sync): by the request's position noise when it is seeded (the same token whoever asks), else
    from its generator."""
    if isinstance(rng, PositionNoise):
        return (probs / rng.at(position)).argmax(-1)
    return sample(probs, rng)


def draw_rows(probs: torch.Tensor, noise: PositionNoise, first_position: int) -> list[int]:
    """draw for each row of probs (n, V), row i at position first_position + i; one host copy."""
    e = torch.stack([noise.at(first_position + i) for i in range(probs.shape[0])])  # (n, V)
    return (probs / e).argmax(-1).tolist()
