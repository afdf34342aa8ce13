"""SpecStats: counters of one generation. The CLI formats them, the server exports them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SpecStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV rows came from the prefix cache (not prefilled)
    generated_tokens: int = 0
    target_passes: int = 0  # decode passes of the target (prefill not counted)
    draft_rounds: int = 0  # passes in which at least one token was drafted
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    forced_tokens: int = 0  # tokens a grammar forced, drafted for free and accepted (not in drafted_tokens)
    drafted_by_position: list[int] = field(default_factory=list)  # i: rounds with a draft at position i
    accepted_by_position: list[int] = field(default_factory=list)  # i: rounds whose draft i was accepted
    prefill_seconds: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    decode_seconds: float = 0.0  # wall time from the first token to the last
    plan: str = ""  # the planner's account of how the request drafted (Planner.describe)

    def record_round(self, num_drafted: int, num_accepted: int, forced: bool = False) -> None:
        """One target pass that verified num_drafted drafts (forced: the grammar's free ones)."""
        self.target_passes += 1
        if forced:
            self.forced_tokens += num_accepted
            return
        if num_drafted == 0:
            return
        self.draft_rounds += 1
        self.drafted_tokens += num_drafted
        self.accepted_tokens += num_accepted
        while len(self.drafted_by_position) < num_drafted:
            self.drafted_by_position.append(0)
            self.accepted_by_position.append(0)
        for i in range(num_drafted):
            self.drafted_by_position[i] += 1
        for i in range(num_accepted):
            self.accepted_by_position[i] += 1

    @property
    def acceptance_rate(self) -> float:
        """Fraction of drafted tokens the target accepted."""
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def acceptance_by_position(self) -> list[float]:
        """P(draft i accepted | drafted): the chance of acceptance at each depth of the draft."""
        return [a / d if d else 0.0 for a, d in zip(self.accepted_by_position, self.drafted_by_position)]

    @property
    def tokens_per_pass(self) -> float:
        """Mean tokens produced per target decode pass (1.0 without speculation)."""
        decoded = self.generated_tokens - 1  # the first token comes from the prefill
        return decoded / self.target_passes if self.target_passes else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        decoded = self.generated_tokens - 1
        return decoded / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(
            acceptance_rate=self.acceptance_rate,
            acceptance_by_position=self.acceptance_by_position,
            tokens_per_pass=self.tokens_per_pass,
            decode_tokens_per_second=self.decode_tokens_per_second,
        )
        return d

    def format(self) -> str:
        """Human-readable summary (the CLI's --stats)."""
        lines = [
            f"prompt tokens      {self.prompt_tokens}  ({self.cached_tokens} from the prefix cache, "
            f"prefill {self.prefill_seconds * 1000:.0f} ms)",
            f"generated tokens   {self.generated_tokens}  in {self.decode_seconds:.2f} s decode"
            f"  = {self.decode_tokens_per_second:.2f} tok/s",
            f"target passes      {self.target_passes}  ({self.tokens_per_pass:.2f} tokens per pass)",
        ]
        if self.drafted_tokens:
            by_pos = " ".join(f"{r:.2f}" for r in self.acceptance_by_position)
            lines += [
                f"drafted / accepted {self.drafted_tokens} / {self.accepted_tokens}"
                f"  (acceptance {self.acceptance_rate:.1%}, {self.draft_rounds} rounds)",
                f"acceptance by pos  {by_pos}",
                f"time drafting      {self.draft_seconds:.2f} s, verifying {self.verify_seconds:.2f} s",
            ]
        if self.forced_tokens:
            lines.append(f"forced tokens      {self.forced_tokens}  (the grammar allowed only them: drafted for free)")
        if self.plan:
            lines.append(f"planner            {self.plan}")
        return "\n".join(lines)
