"""RequestState: everything one generation owns, so that the engine itself holds none.

`Engine.start` makes one, `Engine.step(states)` advances any set of them by one round in one
target pass, `Engine.release` frees its caches. Between steps a state is plain data: requests
join and leave a batch freely, and nothing of one request is reachable from another's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .config import SamplingParams
from .metrics import SpecStats
from .sampling import PositionNoise


@dataclass
class RequestState:
    prompt_ids: list[int]
    params: SamplingParams
    budget: int  # tokens this request may generate (max_new_tokens cut to the context)
    eos: set[int]
    max_len: int  # positions its caches hold: prompt + budget + the longest draft + 1
    cache: Any  # the target's KV cache of this request (invariant once prefilled: tokens[:-1])
    drafter: Any  # its own DrafterSet (fork_drafter), or None
    generator: torch.Generator  # unseeded sampling draws from it (rejection sampling)
    noise: PositionNoise | None = None  # seeded sampling: each position's draw is keyed by (seed, position)
    constraint: Any = None  # structured output: its grammar state at tokens (constraint.Constraint)
    plan_state: Any = None  # the planner's per-request state (Planner.begin sets it)
    stats: SpecStats = field(default_factory=SpecStats)
    tokens: list[int] = field(default_factory=list)  # prompt + every token produced so far
    prefilled: int = 0  # prompt tokens already in the target cache (prefill goes by chunks)
    new_tokens: list[int] = field(default_factory=list)  # what the last step produced (EOS cut)
    new_logprobs: list = field(default_factory=list)  # their TokenLogprobs, when params.logprobs is set
    finish_reason: str | None = None  # "stop" | "length" once finished
    released: bool = False
    first_token_at: float | None = None

    @property
    def rng(self) -> torch.Generator | PositionNoise:
        """Where this request's random draws come from (sampling.draw): its position noise when seeded."""
        return self.noise if self.noise is not None else self.generator

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def prefilling(self) -> bool:
        return self.prefilled < len(self.prompt_ids)

    @property
    def generated(self) -> list[int]:
        """The output so far (EOS excluded: stats.generated_tokens counts it, as OpenAI usage does)."""
        n = self.stats.generated_tokens - (1 if self.finish_reason == "stop" else 0)
        return self.tokens[len(self.prompt_ids) : len(self.prompt_ids) + n]
