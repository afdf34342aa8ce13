"""What a benchmark method's runner returns: one timed generation (shared by methods.py and the
peer runners such as llamacpp.py, so neither imports the other)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..config import SamplingParams
from ..tools import ToolSpec


@dataclass
class RunResult:
    """One timed generation. Timings in seconds; tokens counted with the EOS that stopped it."""

    output_ids: list[int]  # generated ids, EOS excluded
    finish_reason: str  # "stop" (EOS) | "length"
    generated_tokens: int  # including the EOS token, if one ended the generation
    first_chunk_tokens: int  # tokens that came out of the prefill step (1 for token-by-token loops)
    prefill_s: float  # start -> first tokens out
    decode_s: float  # first tokens out -> last tokens out
    total_s: float
    target_passes: int | None = None  # target decode passes after the prefill step; None = unknown
    drafted_by_position: list[int] | None = None
    accepted_by_position: list[int] | None = None
    cached_tokens: int | None = None  # prompt tokens reused from a prefix cache; None = unknown
    cost_remeasures: int = 0  # times the engine's cost model was timed again during this run (a stall)

    @property
    def decode_tokens(self) -> int:
        return self.generated_tokens - self.first_chunk_tokens


class Runner(Protocol):
    def run(self, prompt_ids: list[int], params: SamplingParams, tools: ToolSpec | None = None) -> RunResult:
        """One generation; `tools`: the prompt's tools, whose grammar is params.grammar (for
        runners that must build their own grammar of them, llama.cpp's)."""
