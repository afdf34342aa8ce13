"""Server metrics in the Prometheus text format (version 0.0.4), written by hand: no dependency.

Counters and histograms are updated from the event loop (requests) and the worker thread
(tokens, latencies), so every update and the rendering take one lock.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import defaultdict

from ..metrics import SpecStats

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
PASS_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Cumulative-bucket histogram; observe(value, count) records `count` equal observations."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, count: int = 1) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += count
        self.sum += value * count
        self.count += count

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip((*self.buckets, math.inf), self.counts):
            running += n
            le = "+Inf" if bound == math.inf else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        return out + [f"{name}_sum {self.sum!r}", f"{name}_count {self.count}"]


class ServerMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.drafted_tokens = 0
        self.accepted_tokens = 0
        self.target_passes = 0
        self.drafted_by_position: list[int] = []
        self.accepted_by_position: list[int] = []
        self.cancelled = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)
        self.duration = Histogram(DURATION_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)  # requests in each target pass
        self.pass_tokens = Histogram(PASS_TOKEN_BUCKETS)  # tokens in each target pass
        self.passes = 0
        self.pass_seconds = 0.0

    def record_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def record_first_token(self, seconds: float, prompt_tokens: int) -> None:
        with self._lock:
            self.ttft.observe(seconds)
            self.prompt_tokens += prompt_tokens

    def record_tokens(self, num_tokens: int, seconds: float | None) -> None:
        """num_tokens new tokens; seconds since the previous chunk (None for the first chunk)."""
        with self._lock:
            self.generated_tokens += num_tokens
            if seconds is not None and num_tokens:
                self.tpot.observe(seconds / num_tokens, num_tokens)

    def record_step(self, info) -> None:
        """One engine step (specdecode.engine.StepInfo): its batch size and tokens."""
        with self._lock:
            if info.batch_size:
                self.passes += 1
                self.pass_seconds += info.seconds
                self.batch_size.observe(info.batch_size)
                self.pass_tokens.observe(info.tokens)

    def record_finished(self, stats: SpecStats | None, seconds: float, cancelled: bool) -> None:
        with self._lock:
            self.duration.observe(seconds)
            self.cancelled += cancelled
            if stats is None:
                return
            self.drafted_tokens += stats.drafted_tokens
            self.accepted_tokens += stats.accepted_tokens
            self.target_passes += stats.target_passes
            for mine, theirs in ((self.drafted_by_position, stats.drafted_by_position),
                                 (self.accepted_by_position, stats.accepted_by_position)):
                mine.extend([0] * (len(theirs) - len(mine)))
                for i, n in enumerate(theirs):
                    mine[i] += n

    def render(self, queue_length: int, active: int, kv_bytes_in_use: int = 0, kv_budget_bytes: int | None = None,
               prefix_cache=None, suffix_stores=()) -> str:
        with self._lock:
            lines: list[str] = []

            def metric(name: str, kind: str, help: str, samples: list[str]) -> None:
                lines.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}", *samples])

            metric("specdecode_requests_total", "counter", "HTTP requests by endpoint and status code.",
                   [f'specdecode_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                    for (e, s), n in sorted(self.requests.items())])
            for name, value, help in (
                ("prompt_tokens", self.prompt_tokens, "Prompt tokens of started generations."),
                ("generation_tokens", self.generated_tokens, "Tokens generated (cancelled requests included)."),
                ("draft_tokens", self.drafted_tokens, "Tokens proposed by the drafter (finished requests)."),
                ("accepted_tokens", self.accepted_tokens, "Drafted tokens the target accepted."),
                ("target_passes", self.target_passes, "Target decode passes (prefill not counted)."),
                ("cancelled_requests", self.cancelled, "Generations cancelled by a client disconnect."),
            ):
                metric(f"specdecode_{name}_total", "counter", help, [f"specdecode_{name}_total {value}"])
            metric("specdecode_drafted_by_position_total", "counter",
                   "Rounds that drafted a token at this position (0-based).",
                   [f'specdecode_drafted_by_position_total{{position="{i}"}} {n}'
                    for i, n in enumerate(self.drafted_by_position)])
            metric("specdecode_accepted_by_position_total", "counter",
                   "Rounds whose draft at this position was accepted.",
                   [f'specdecode_accepted_by_position_total{{position="{i}"}} {n}'
                    for i, n in enumerate(self.accepted_by_position)])
            metric("specdecode_acceptance_rate_by_position", "gauge",
                   "P(draft at this position accepted | drafted), since start.",
                   [f'specdecode_acceptance_rate_by_position{{position="{i}"}} {a / d if d else 0.0!r}'
                    for i, (a, d) in enumerate(zip(self.accepted_by_position, self.drafted_by_position))])
            rate = self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0
            metric("specdecode_acceptance_rate", "gauge", "Accepted / drafted tokens, since start.",
                   [f"specdecode_acceptance_rate {rate!r}"])
            metric("specdecode_queue_length", "gauge", "Requests waiting for a generation slot.",
                   [f"specdecode_queue_length {queue_length}"])
            metric("specdecode_active_requests", "gauge", "Generations in progress (batched).",
                   [f"specdecode_active_requests {active}"])
            metric("specdecode_kv_cache_bytes", "gauge", "KV-cache bytes held by the active requests.",
                   [f"specdecode_kv_cache_bytes {kv_bytes_in_use}"])
            if kv_budget_bytes is not None:
                metric("specdecode_kv_cache_budget_bytes", "gauge", "KV-cache bytes the server admits requests up to.",
                       [f"specdecode_kv_cache_budget_bytes {kv_budget_bytes}"])
                metric("specdecode_kv_cache_usage", "gauge", "KV-cache bytes in use / budget.",
                       [f"specdecode_kv_cache_usage {kv_bytes_in_use / kv_budget_bytes!r}"])
            if prefix_cache is not None:
                pc = prefix_cache.stats
                for name, value, help in (
                    ("lookups", pc.lookups, "Requests (and draft-model starts) that looked up a cached prefix."),
                    ("hits", pc.hits, "Lookups that reused at least one cached KV row."),
                    ("tokens_reused", pc.tokens_reused, "Prompt positions whose KV rows were copied, not computed."),
                    ("tokens_stored", pc.tokens_stored, "Positions whose KV rows were kept after a request."),
                    ("evicted_tokens", pc.evicted_tokens, "Positions dropped, least recently used first."),
                ):
                    metric(f"specdecode_prefix_cache_{name}_total", "counter", help,
                           [f"specdecode_prefix_cache_{name}_total {value}"])
                metric("specdecode_prefix_cache_bytes", "gauge", "Bytes of KV rows the prefix cache holds.",
                       [f"specdecode_prefix_cache_bytes {prefix_cache.bytes_held}"])
                metric("specdecode_prefix_cache_budget_bytes", "gauge", "The prefix cache's budget (--prefix-cache-gb).",
                       [f"specdecode_prefix_cache_budget_bytes {prefix_cache.budget_bytes}"])
            if suffix_stores:
                metric("specdecode_suffix_store_tokens", "gauge",
                       "Tokens of earlier outputs the suffix drafter drafts from (bounded, oldest dropped first).",
                       [f"specdecode_suffix_store_tokens {sum(st.tokens_held for st in suffix_stores)}"])
                metric("specdecode_suffix_store_max_tokens", "gauge", "The suffix store's bound.",
                       [f"specdecode_suffix_store_max_tokens {sum(st.max_tokens for st in suffix_stores)}"])
            metric("specdecode_engine_passes_total", "counter", "Target passes (engine steps) run.",
                   [f"specdecode_engine_passes_total {self.passes}"])
            metric("specdecode_engine_pass_seconds_total", "counter", "Seconds spent in engine steps.",
                   [f"specdecode_engine_pass_seconds_total {self.pass_seconds!r}"])
            metric("specdecode_batch_size", "histogram", "Requests in each target pass.",
                   self.batch_size.lines("specdecode_batch_size"))
            metric("specdecode_tokens_per_pass", "histogram",
                   "Tokens in each target pass (decode rows, drafts and prompt chunks).",
                   self.pass_tokens.lines("specdecode_tokens_per_pass"))
            metric("specdecode_time_to_first_token_seconds", "histogram",
                   "From admission to the queue to the first generated token.",
                   self.ttft.lines("specdecode_time_to_first_token_seconds"))
            metric("specdecode_time_per_output_token_seconds", "histogram",
                   "Latency per generated token after the first (chunk interval / tokens in it).",
                   self.tpot.lines("specdecode_time_per_output_token_seconds"))
            metric("specdecode_request_duration_seconds", "histogram",
                   "From admission to the queue to the end of generation.",
                   self.duration.lines("specdecode_request_duration_seconds"))
            return "\n".join(lines) + "\n"
