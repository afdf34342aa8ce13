"""One worker thread runs every generation, in batches; requests wait in a bounded FIFO queue.

Continuous batching: each turn the worker admits waiting requests (up to `max_batch` in
progress and within the KV-cache memory budget), then advances every active request by one
round in ONE target pass (`Engine.step` over a ragged batch), then sends each request the text
its round produced. Requests join and leave between turns; a finished or cancelled one frees its
caches at once. Outputs are the same as each request's alone (docs/batching.md).

Torch work on the engine never runs concurrently: only the worker thread touches it (the
tokenizer included). The event loop talks to the worker through Job: `submit` (raises QueueFull
at once when max_batch + max_queue requests are already in), `await job.next()`, `job.cancel()`.
A cancelled job leaves the queue at once, or is released by the worker before its next round.

Admission checks a request in this order: the model's context (a prompt that fills it is the
client's 400, whatever the memory), then the KV-cache budget (503 for one that alone never fits).
A request that gave no max_tokens has its default lowered to the most that fits the budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..config import SamplingParams
from ..engine import Chunk, Engine, context_budget
from ..errors import SpecdecodeError
from .metrics import ServerMetrics

log = logging.getLogger("specdecode.server")


class SharedStepError(RuntimeError):
    """A step of several requests failed: a server error for each (the log holds the cause)."""


class QueueFull(Exception):
    pass


class SchedulerStopped(Exception):
    pass


@dataclass
class Event:
    kind: str  # "chunk" | "error"
    chunk: Chunk | None = None
    error: BaseException | None = None


class Job:
    """One generation request: what to generate, and a channel of Events back to the loop."""

    def __init__(self, prompt: Any, chat: bool, params: SamplingParams, loop: asyncio.AbstractEventLoop,
                 default_max_tokens: bool = False, tools: list[dict] | None = None) -> None:
        self.prompt, self.chat, self.params = prompt, chat, params
        self.tools = tools  # OpenAI tool objects the chat template renders (their grammar is in params)
        # The client gave no max_tokens: params.max_new_tokens is the server's default, which
        # admission may lower to what fits the KV-cache budget (an explicit one is never changed).
        self.default_max_tokens = default_max_tokens
        self.loop = loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self.done = False
        self.prompt_tokens = 0
        self.submitted = time.perf_counter()
        self._scheduler: Scheduler | None = None
        self._request = None  # the engine's TextRequest once admitted
        self._ids: list[int] | None = None  # the encoded prompt
        self._kv_bytes = 0  # its share of the KV-cache budget while active
        self._last: float | None = None  # time of the previous chunk

    async def next(self) -> Event:
        return await self.events.get()

    def cancel(self) -> None:
        if self._scheduler is not None and not self.done:
            self._scheduler.cancel(self)

    def _emit(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


class KVBudgetExceeded(SpecdecodeError):
    """A request whose caches alone exceed the server's KV-cache budget (a 503: it never fits)."""


def _size(n: int) -> str:
    """Bytes for a message, in the largest unit that keeps a digit before the point (no "0 MiB")."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


class Scheduler:
    def __init__(self, engine: Engine, metrics: ServerMetrics, max_batch: int = 32, max_queue: int = 64,
                 kv_budget_bytes: int | None = None) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError("need max_batch >= 1 and max_queue >= 0")
        if kv_budget_bytes is not None and kv_budget_bytes < 1:
            raise ValueError("need kv_budget_bytes >= 1 (or None: no limit)")
        self.engine, self.metrics = engine, metrics
        self.max_batch, self.max_queue = max_batch, max_queue
        self.kv_budget_bytes = kv_budget_bytes
        self.kv_bytes_in_use = 0
        self._pending: deque[Job] = deque()
        self._active: list[Job] = []
        # Jobs submitted and not yet done. Not len(_pending) + len(_active): a job the worker is
        # admitting has left the one and not reached the other, and must still hold its place.
        self._jobs_in = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._draining = False  # shutting down: refuse new requests, let the running ones go on
        self._thread: threading.Thread | None = None

    # -- event-loop side ---------------------------------------------------------------------

    @property
    def queue_length(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def draining(self) -> bool:
        return self._draining or self._stopping

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._cond:
            if not self._stopping and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="specdecode-worker", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def drain(self) -> None:
        """Refuse new requests from now on and fail the queued ones; running ones go on until
        stop(). The first step of a graceful shutdown."""
        with self._cond:
            self._draining = True
            waiting = list(self._pending)
            self._pending.clear()
        for job in waiting:
            self._finish(job, None, error=SchedulerStopped("the server is shutting down"))

    def submit(self, job: Job) -> Job:
        self.start()
        with self._cond:
            if self._stopping or self._draining:
                raise SchedulerStopped()
            if self._jobs_in >= self.max_batch + self.max_queue:
                raise QueueFull()
            job._scheduler = self
            self._jobs_in += 1
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        with self._cond:
            if job.done:
                return
            job.cancelled = True
            if job not in self._pending:
                return  # active: the worker closes it at its next turn
            self._pending.remove(job)  # never started: nothing to close
            job.done = True
            self._jobs_in -= 1
        self.metrics.record_finished(None, time.perf_counter() - job.submitted, cancelled=True)

    # -- worker side -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._active or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    break
            self._admit()
            for job in [j for j in self._active if j.cancelled]:
                self._finish(job, None)
            if self._active:
                self._round()
                if not self._active and not self._pending:
                    self.engine.settle()  # between requests: deferred re-timing (Engine.settle)
        with self._cond:
            jobs = [*self._active, *self._pending]
            self._pending.clear()
        for job in jobs:
            self._finish(job, None, error=SchedulerStopped("the server is shutting down"))

    def _admit(self) -> None:
        """Move waiting jobs into the batch while there is room (batch size and KV budget), oldest first."""
        while len(self._active) < self.max_batch:
            with self._cond:
                if not self._pending:
                    return
                job = self._pending.popleft()
            try:
                if job._ids is None:
                    job._ids = self.engine.encode(job.prompt, job.chat, job.tools)
                    job.prompt_tokens = len(job._ids)
                    # The context first: a prompt that fills it is too long for any budget (a 400 the
                    # client can fix by shortening it), not a request for too much memory.
                    context_budget(len(job._ids), job.params.max_new_tokens, self.engine.target.max_context)
                    if job.default_max_tokens:
                        fitted = self._fit_default_max_tokens(len(job._ids), job.params.max_new_tokens)
                        job.params = dataclasses.replace(job.params, max_new_tokens=fitted)
                need = self.engine.kv_bytes(len(job._ids), job.params.max_new_tokens)
                if self.kv_budget_bytes is not None and need > self.kv_budget_bytes:
                    fits = self._most_tokens_that_fit(len(job._ids), job.params.max_new_tokens)
                    hint = f"max_tokens up to {fits} would fit" if fits else "the prompt alone does not fit"
                    raise KVBudgetExceeded(
                        f"this request needs {_size(need)} of KV cache, more than the server's budget "
                        f"of {_size(self.kv_budget_bytes)} (--kv-cache-gb); {hint}")
                if (self.kv_budget_bytes is not None and self._active
                        and self.kv_bytes_in_use + need > self.kv_budget_bytes):
                    with self._cond:  # wait at the head of the queue until others free their caches
                        if not job.cancelled:
                            self._pending.appendleft(job)
                            return
                    self._finish(job, None)  # cancelled while it was being considered
                    return
                job._request = self.engine.open(job._ids, job.params, chat=False)
            except Exception as e:  # a user error (SpecdecodeError: 4xx) or a bug (500, logged by the app)
                self._finish(job, None, error=e)
                continue
            job._kv_bytes = need
            with self._cond:
                self.kv_bytes_in_use += need
                self._active.append(job)
            if job.cancelled:
                self._finish(job, None)

    def _fit_default_max_tokens(self, prompt_tokens: int, default: int) -> int:
        """The default max_tokens for this prompt: `default`, or less where the model's context or
        the whole KV budget ends first. Sized against the whole budget, not what is free now, so
        the answer does not depend on other traffic (a request that fits waits for room)."""
        fitted = min(default, self.engine.target.max_context - prompt_tokens)
        if self.kv_budget_bytes is None or self.engine.kv_bytes(prompt_tokens, fitted) <= self.kv_budget_bytes:
            return fitted
        most = self._most_tokens_that_fit(prompt_tokens, fitted)
        if not most:
            need = self.engine.kv_bytes(prompt_tokens, 1)
            raise KVBudgetExceeded(
                f"the prompt ({prompt_tokens} tokens) and one generated token need {_size(need)} of KV cache, "
                f"more than the server's budget of {_size(self.kv_budget_bytes)} (--kv-cache-gb); "
                "send a shorter prompt")
        return most

    def _most_tokens_that_fit(self, prompt_tokens: int, upto: int) -> int:
        """The largest max_new_tokens in [1, upto] whose caches fit the whole KV budget, 0 if none.
        Binary search: kv_bytes only grows with max_new_tokens."""
        budget = self.kv_budget_bytes
        if budget is None:
            return upto
        if self.engine.kv_bytes(prompt_tokens, 1) > budget:
            return 0
        lo, hi = 1, upto + 1  # kv_bytes(lo) fits; hi is past the range or does not fit
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.engine.kv_bytes(prompt_tokens, mid) <= budget:
                lo = mid
            else:
                hi = mid
        return lo

    def _round(self) -> None:
        """One engine step over every active job, then each job's chunk."""
        batch = list(self._active)
        try:
            info = self.engine.step([job._request.state for job in batch])
        except Exception as e:  # a bug in the step: fail the jobs of this batch (500s), keep serving
            log.exception("generation step failed")
            # A step several requests shared cannot say whose it was, and one client's error (its
            # grammar, its prompt) must not reach the others: each gets a server error.
            shared = SharedStepError("a generation step this request shared with others failed") if len(batch) > 1 else None
            for job in batch:
                self._finish(job, None, error=shared or e)
            return
        self.metrics.record_step(info)
        now = time.perf_counter()
        for job in batch:
            try:
                self._deliver(job, now)
            except Exception as e:  # a bug outside the engine (e.g. in the metrics): fail this job, a 500
                log.exception("delivering a chunk failed")
                self._finish(job, None, error=e)

    def _deliver(self, job: Job, now: float) -> None:
        """Send a job the text its last round produced; finish it when that was its last."""
        chunk = job._request.take()
        if chunk is None:
            return
        if job._last is None:
            self.metrics.record_first_token(now - job.submitted, job.prompt_tokens)
            self.metrics.record_tokens(len(chunk.token_ids), None)
        else:
            self.metrics.record_tokens(len(chunk.token_ids), now - job._last)
        job._last = now
        if chunk.finish_reason:
            self._finish(job, chunk.stats, last=Event("chunk", chunk))
        else:
            job._emit(Event("chunk", chunk))

    def _finish(self, job: Job, stats, error: BaseException | None = None, last: Event | None = None) -> None:
        """Release the job's caches, free its place, then send its last event."""
        if job._request is not None:
            try:
                self.engine.release(job._request.state)
            except Exception:
                log.exception("releasing a generation failed")
            job._request = None
        with self._cond:
            if job in self._active:
                self._active.remove(job)
                self.kv_bytes_in_use -= job._kv_bytes
            if not job.done:  # _finish may run twice for one job (a failure while delivering its last chunk)
                self._jobs_in -= 1
            job.done = True  # before the last event: a later cancel() is a no-op
        cancelled = job.cancelled and stats is None and error is None
        self.metrics.record_finished(stats, time.perf_counter() - job.submitted, cancelled)
        if last is not None:
            job._emit(last)
        if error is not None:
            job._emit(Event("error", error=error))
