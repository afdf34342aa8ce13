"""One worker thread runs every generation; requests wait in a bounded FIFO queue.

Torch work on the engine never runs concurrently: only the worker thread touches it (the
tokenizer included). Up to `max_active` generations are in progress at once and advance
round-robin, one engine chunk (one speculative round) per turn, so a long generation does
not hold back a short one that arrived later. max_active=1 is plain FIFO, one at a time.

Each active generation gets its own shallow copy of the engine and of its drafter
(`fork_engine`): the drafter keeps per-request state (its KV cache, the n-gram index) that
`Drafter.begin` creates afresh, and the target's cache is already per request.

The event loop talks to the worker through Job: `submit` (raises QueueFull at once when
max_active + max_queue requests are already in), `await job.next()`, `job.cancel()`.
A cancelled job leaves the queue at once, or is closed by the worker at its next turn; its
engine generator is closed in the worker, which rolls the caches back.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..config import SamplingParams
from ..engine import Chunk, Engine
from ..errors import SpecdecodeError
from .metrics import ServerMetrics

log = logging.getLogger("specdecode.server")


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

    def __init__(self, prompt: Any, chat: bool, params: SamplingParams, loop: asyncio.AbstractEventLoop) -> None:
        self.prompt, self.chat, self.params = prompt, chat, params
        self.loop = loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self.done = False
        self.prompt_tokens = 0
        self.submitted = time.perf_counter()
        self._scheduler: Scheduler | None = None
        self._gen = None
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


def fork_engine(engine: Engine) -> Engine:
    """A per-request view of the engine: same weights, its own drafter state."""
    forked = copy.copy(engine)
    if engine.drafter is not None:
        forked.drafter = copy.copy(engine.drafter)
    return forked


class Scheduler:
    def __init__(self, engine: Engine, metrics: ServerMetrics, max_active: int = 4, max_queue: int = 64) -> None:
        if max_active < 1 or max_queue < 0:
            raise ValueError("need max_active >= 1 and max_queue >= 0")
        self.engine, self.metrics = engine, metrics
        self.max_active, self.max_queue = max_active, max_queue
        self._pending: deque[Job] = deque()
        self._active: list[Job] = []
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
            if len(self._pending) + len(self._active) >= self.max_active + self.max_queue:
                raise QueueFull()
            job._scheduler = self
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
        self.metrics.record_finished(None, time.perf_counter() - job.submitted, cancelled=True)

    # -- worker side -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._active or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    break
                while self._pending and len(self._active) < self.max_active:
                    self._active.append(self._pending.popleft())
                turn = list(self._active)
            for job in turn:
                try:
                    self._step(job)
                except Exception as e:  # a bug in the step itself: fail this job (a 500), keep serving
                    log.exception("generation step failed")
                    self._finish(job, None, error=e)
        with self._cond:
            jobs = [*self._active, *self._pending]
            self._pending.clear()
        for job in jobs:
            self._finish(job, None, error=SchedulerStopped("the server is shutting down"))

    def _step(self, job: Job) -> None:
        if job.cancelled:
            self._finish(job, None)
            return
        try:
            if job._gen is None:
                engine = self.engine if self.max_active == 1 else fork_engine(self.engine)
                ids = engine.encode(job.prompt, job.chat)
                if not ids:
                    raise SpecdecodeError("the prompt is empty")
                job.prompt_tokens = len(ids)
                job._gen = engine.stream(ids, job.params)
            chunk = next(job._gen)
        except StopIteration:  # the engine always ends on a finish chunk; be safe anyway
            chunk = Chunk("", [], "stop", None)
        except Exception as e:
            self._finish(job, None, error=e)
            return
        now = time.perf_counter()
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
        """Close the job's generation, free its slot, then send its last event."""
        if job._gen is not None:
            try:
                job._gen.close()  # rolls the caches back, ends the drafter's request
            except Exception:
                log.exception("closing a generation failed")
            job._gen = None
        with self._cond:
            if job in self._active:
                self._active.remove(job)
            job.done = True  # before the last event: a later cancel() is a no-op
        cancelled = job.cancelled and stats is None and error is None
        self.metrics.record_finished(stats, time.perf_counter() - job.submitted, cancelled)
        if last is not None:
            job._emit(last)
        if error is not None:
            job._emit(Event("error", error=error))
