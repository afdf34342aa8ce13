"""The server's scheduler on a scripted engine (no model, no HTTP): what it promises.

- max_active=1 is strict FIFO; with more, active generations advance round-robin, one chunk each;
- at most max_active + max_queue requests are in: the next one gets QueueFull (the 429 path);
- a cancelled request frees its place at once (queued) or at its next turn (active), and its
  generation is closed (the engine rolls its caches back in that `finally`);
- an engine error fails that request only; drain/stop answer waiting requests SchedulerStopped.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from specdecode.config import SamplingParams
from specdecode.engine import Chunk
from specdecode.metrics import SpecStats
from specdecode.server.metrics import ServerMetrics
from specdecode.server.scheduler import Job, QueueFull, Scheduler, SchedulerStopped

TIMEOUT = 10.0


class ScriptedEngine:
    """encode: a name -> its code points; stream: `max_new_tokens` chunks named after the prompt.
    Every step waits for `gate`; the log records starts, chunks and closes in the worker's order."""

    drafter = None

    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.log: list[tuple] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = fail

    def encode(self, prompt, chat=None):
        return [ord(c) for c in prompt]

    def stream(self, ids, params):
        name = "".join(map(chr, ids))
        self.log.append(("start", name))
        try:
            for i in range(params.max_new_tokens):
                assert self.gate.wait(TIMEOUT)
                if name in self.fail:
                    raise RuntimeError(f"engine failure in {name}")
                self.log.append(("chunk", name, i))
                last = i == params.max_new_tokens - 1
                yield Chunk(f"{name}{i}", [i], "length" if last else None, SpecStats() if last else None)
        finally:
            self.log.append(("closed", name))


def _job(name: str, tokens: int = 3) -> Job:
    return Job(name, False, SamplingParams(max_new_tokens=tokens), asyncio.get_running_loop())


async def _collect(job: Job) -> list:
    """Events until the job's last one: chunk texts, then ("error", type) or "done"."""
    out = []
    while True:
        event = await asyncio.wait_for(job.next(), TIMEOUT)
        if event.kind == "error":
            return out + [("error", type(event.error).__name__)]
        out.append(event.chunk.text)
        if event.chunk.finish_reason:
            return out + ["done"]


async def _until(cond) -> None:
    for _ in range(int(TIMEOUT / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def run(coro_fn, engine: ScriptedEngine, **kw):
    sched = Scheduler(engine, ServerMetrics(), **kw)

    async def main():
        try:
            return await coro_fn(sched)
        finally:
            engine.gate.set()
            await asyncio.to_thread(sched.stop)

    return sched, asyncio.run(main())


def test_max_active_1_is_strict_fifo():
    engine = ScriptedEngine()

    async def body(sched):
        jobs = [sched.submit(_job(n)) for n in "abc"]
        return [await _collect(j) for j in jobs]

    _, results = run(body, engine, max_active=1, max_queue=8)
    assert results == [[f"{n}{i}" for i in range(3)] + ["done"] for n in "abc"]
    starts_and_closes = [e for e in engine.log if e[0] != "chunk"]
    assert starts_and_closes == [("start", "a"), ("closed", "a"), ("start", "b"), ("closed", "b"),
                                 ("start", "c"), ("closed", "c")]


def test_active_generations_advance_round_robin():
    engine = ScriptedEngine()

    async def body(sched):
        with sched._cond:  # all three in before the worker's first turn (the lock is reentrant)
            long, short, third = sched.submit(_job("L", 6)), sched.submit(_job("s", 2)), sched.submit(_job("t", 2))
        return await asyncio.gather(_collect(long), _collect(short), _collect(third))

    _, (long, short, third) = run(body, engine, max_active=2, max_queue=8)
    assert long[-1] == short[-1] == third[-1] == "done"
    chunks = [(e[1], e[2]) for e in engine.log if e[0] == "chunk"]
    # L and s alternate; t takes s's slot once s is done; L is never starved
    assert chunks[:4] == [("L", 0), ("s", 0), ("L", 1), ("s", 1)]
    assert chunks[4:8] == [("L", 2), ("t", 0), ("L", 3), ("t", 1)]
    assert chunks.index(("s", 1)) < chunks.index(("L", 5))  # the short one did not wait for the long one


def test_queue_bound_refuses_then_a_cancelled_waiter_frees_its_place():
    engine = ScriptedEngine()
    engine.gate.clear()

    async def body(sched):
        active = sched.submit(_job("a"))
        await _until(lambda: sched.active == 1)
        waiting = [sched.submit(_job(n)) for n in "bc"]
        assert sched.queue_length == 2
        with pytest.raises(QueueFull):  # max_active + max_queue = 3 requests in
            sched.submit(_job("d"))
        waiting[0].cancel()
        assert sched.queue_length == 1 and waiting[0].done
        late = sched.submit(_job("e"))  # the freed place is usable at once
        engine.gate.set()
        results = [await _collect(j) for j in (active, waiting[1], late)]
        return results, sched.metrics.cancelled

    sched, (results, cancelled) = run(body, engine, max_active=1, max_queue=2)
    assert [r[-1] for r in results] == ["done"] * 3
    assert ("start", "b") not in engine.log  # cancelled before it started: never generated
    assert cancelled == 1


def test_cancelling_an_active_generation_closes_it_and_frees_the_slot():
    engine = ScriptedEngine()

    async def body(sched):
        engine.gate.clear()
        first = sched.submit(_job("a", 50))
        second = sched.submit(_job("b"))
        await _until(lambda: ("start", "a") in engine.log)
        first.cancel()
        engine.gate.set()
        result = await _collect(second)
        await _until(lambda: first.done)
        return result

    sched, result = run(body, engine, max_active=1, max_queue=4)
    assert result[-1] == "done"
    log = engine.log
    assert log.index(("closed", "a")) < log.index(("start", "b"))  # closed (caches rolled back) first
    assert sum(1 for e in log if e[:2] == ("chunk", "a")) < 50
    assert sched.active == 0 and sched.queue_length == 0 and sched.metrics.cancelled == 1


def test_an_engine_error_fails_only_its_request():
    engine = ScriptedEngine(fail={"bad"})

    async def body(sched):
        bad, good = sched.submit(_job("bad")), sched.submit(_job("ok"))
        return await _collect(bad), await _collect(good)

    _, (bad, good) = run(body, engine, max_active=2, max_queue=4)
    assert bad == [("error", "RuntimeError")]  # the app turns a non-SpecdecodeError into a 500
    assert good[-1] == "done" and ("closed", "bad") in engine.log


def test_drain_refuses_new_requests_and_fails_the_waiting_ones():
    engine = ScriptedEngine()
    engine.gate.clear()

    async def body(sched):
        active = sched.submit(_job("a"))
        await _until(lambda: sched.active == 1)
        waiting = sched.submit(_job("b"))
        sched.drain()
        assert sched.draining
        with pytest.raises(SchedulerStopped):
            sched.submit(_job("c"))
        w = await _collect(waiting)
        engine.gate.set()
        return await _collect(active), w

    _, (active, waiting) = run(body, engine, max_active=1, max_queue=4)
    assert active[-1] == "done"  # running generations go on
    assert waiting == [("error", "SchedulerStopped")]


def test_stop_fails_every_job_still_in():
    engine = ScriptedEngine()
    engine.gate.clear()

    async def body(sched):
        jobs = [sched.submit(_job(n, 5)) for n in "ab"]
        await _until(lambda: sched.active == 1)
        stopper = asyncio.create_task(asyncio.to_thread(sched.stop))
        await asyncio.sleep(0.05)
        engine.gate.set()
        await stopper
        return [await _collect(j) for j in jobs]

    _, results = run(body, engine, max_active=1, max_queue=4)
    assert all(r[-1] == ("error", "SchedulerStopped") for r in results)
    assert ("closed", "a") in engine.log


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        Scheduler(ScriptedEngine(), ServerMetrics(), max_active=0)
    with pytest.raises(ValueError):
        Scheduler(ScriptedEngine(), ServerMetrics(), max_queue=-1)


def test_a_full_queue_is_a_429_with_retry_after():
    """The app's side of QueueFull: OpenAI's rate-limit error shape and a Retry-After hint."""
    pytest.importorskip("fastapi")
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from specdecode.server import ServerConfig, create_app

    engine = ScriptedEngine()
    engine.tokenizer = object()
    engine.target = SimpleNamespace(vocab_size=300, max_context=512)
    engine.num_draft_tokens, engine.adaptive = 0, False
    engine.gate.clear()
    app = create_app(engine, ServerConfig("scripted", max_active=1, max_queue=1, allowed_hosts=("testserver",)))
    with TestClient(app) as client:
        sched = app.state.scheduler
        loop = asyncio.new_event_loop()
        try:
            held = [sched.submit(Job(n, False, SamplingParams(max_new_tokens=2), loop)) for n in "ab"]
            resp = client.post("/v1/completions", json={"model": "scripted", "prompt": "hi", "max_tokens": 2})
            assert resp.status_code == 429, resp.text
            assert resp.json()["error"]["type"] == "rate_limit_error" and resp.json()["error"]["code"] == "queue_full"
            assert 1 <= int(resp.headers["retry-after"]) <= 60
            held[1].cancel()  # a waiting request leaves: the next one is let in
            engine.gate.set()
            resp = client.post("/v1/completions", json={"model": "scripted", "prompt": "hi", "max_tokens": 2})
            assert resp.status_code == 200 and resp.json()["choices"][0]["text"] == "hi0hi1"
        finally:
            engine.gate.set()
            loop.close()
