"""The server's scheduler on a scripted engine (no model, no HTTP): what it promises.

- max_batch=1 is strict FIFO; with more, every active generation advances in each engine step
  (continuous batching), and a waiting request joins as soon as a place frees;
- at most max_batch + max_queue requests are in: the next one gets QueueFull (the 429 path);
- a cancelled request frees its place at once (queued) or before the next step (active), and its
  state is released (the engine frees its caches);
- a request that cannot start fails alone; an engine step that fails fails the requests of that
  pass and the next ones are served; drain/stop answer waiting requests SchedulerStopped;
- the KV-cache budget: requests wait while they do not fit, one that never fits is refused;
  a prompt past the context is a context error first; a default max_tokens shrinks to fit.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from specdecode.config import SamplingParams
from specdecode.engine import Chunk, StepInfo
from specdecode.errors import ContextLengthError
from specdecode.metrics import SpecStats
from specdecode.server.metrics import ServerMetrics
from specdecode.server.scheduler import Job, KVBudgetExceeded, QueueFull, Scheduler, SchedulerStopped

TIMEOUT = 10.0


@dataclass
class ScriptedState:
    name: str
    params: SamplingParams
    produced: int = 0
    fresh: bool = False  # produced a chunk in the last step
    released: bool = False
    stats: SpecStats = field(default_factory=SpecStats)


class ScriptedRequest:
    def __init__(self, state: ScriptedState) -> None:
        self.state = state

    def take(self):
        s = self.state
        if not s.fresh:
            return None
        s.fresh = False
        i = s.produced - 1
        last = s.produced == s.params.max_new_tokens
        return Chunk(f"{s.name}{i}", [i], "length" if last else None, s.stats if last else None)


class ScriptedEngine:
    """encode: a name -> its code points; each step gives every state one chunk named after its
    prompt, `max_new_tokens` in all. Every step waits for `gate`; the log records starts, steps
    (the names in each), chunks and releases in the worker's order. `kv` bytes per request."""

    drafter = None

    def __init__(self, fail_open: set[str] = frozenset(), fail_step: set[str] = frozenset(), kv: int = 0,
                 max_context: int = 512) -> None:
        self.log: list[tuple] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_open, self.fail_step, self.kv = fail_open, fail_step, kv
        self.target = SimpleNamespace(max_context=max_context)

    def encode(self, prompt, chat=None, tools=None):
        return [ord(c) for c in prompt] if isinstance(prompt, str) else list(prompt)

    def kv_bytes(self, prompt_tokens, max_new_tokens):
        return self.kv

    def open(self, ids, params, chat=None):
        name = "".join(map(chr, ids))
        if name in self.fail_open:
            raise RuntimeError(f"cannot start {name}")
        self.log.append(("start", name))
        return ScriptedRequest(ScriptedState(name, params))

    def step(self, states):
        assert self.gate.wait(TIMEOUT)
        names = [s.name for s in states]
        self.log.append(("step", tuple(names)))
        if self.fail_step & set(names):
            raise RuntimeError("engine failure")
        for s in states:
            assert not s.released
            s.fresh = True
            self.log.append(("chunk", s.name, s.produced))
            s.produced += 1
        return StepInfo(len(states), len(states), 0.0)

    def release(self, state):
        if not state.released:
            state.released = True
            self.log.append(("closed", state.name))

    def settle(self):
        self.log.append(("settle",))
        return False


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


def test_max_batch_1_is_strict_fifo():
    engine = ScriptedEngine()

    async def body(sched):
        jobs = [sched.submit(_job(n)) for n in "abc"]
        return [await _collect(j) for j in jobs]

    _, results = run(body, engine, max_batch=1, max_queue=8)
    assert results == [[f"{n}{i}" for i in range(3)] + ["done"] for n in "abc"]
    starts_and_closes = [e for e in engine.log if e[0] in ("start", "closed")]
    assert starts_and_closes == [("start", "a"), ("closed", "a"), ("start", "b"), ("closed", "b"),
                                 ("start", "c"), ("closed", "c")]
    # deferred work (Engine.settle) only once nothing is active or waiting: after the last request
    assert ("settle",) in engine.log and engine.log.index(("settle",)) > engine.log.index(("closed", "c"))


def test_active_generations_advance_together_and_a_freed_place_is_taken_at_once():
    engine = ScriptedEngine()

    async def body(sched):
        with sched._cond:  # all three in before the worker's first turn (the lock is reentrant)
            long, short, third = sched.submit(_job("L", 6)), sched.submit(_job("s", 2)), sched.submit(_job("t", 2))
        return await asyncio.gather(_collect(long), _collect(short), _collect(third))

    _, (long, short, third) = run(body, engine, max_batch=2, max_queue=8)
    assert long == [f"L{i}" for i in range(6)] + ["done"] and short[-1] == third[-1] == "done"
    steps = [e[1] for e in engine.log if e[0] == "step"]
    # L and s share each pass; t joins the pass right after s finished; L is never starved
    assert steps == [("L", "s"), ("L", "s"), ("L", "t"), ("L", "t"), ("L",), ("L",)]


def test_queue_bound_refuses_then_a_cancelled_waiter_frees_its_place():
    engine = ScriptedEngine()
    engine.gate.clear()

    async def body(sched):
        active = sched.submit(_job("a"))
        await _until(lambda: sched.active == 1)
        waiting = [sched.submit(_job(n)) for n in "bc"]
        assert sched.queue_length == 2
        with pytest.raises(QueueFull):  # max_batch + max_queue = 3 requests in
            sched.submit(_job("d"))
        waiting[0].cancel()
        assert sched.queue_length == 1 and waiting[0].done
        late = sched.submit(_job("e"))  # the freed place is usable at once
        engine.gate.set()
        results = [await _collect(j) for j in (active, waiting[1], late)]
        return results, sched.metrics.cancelled

    sched, (results, cancelled) = run(body, engine, max_batch=1, max_queue=2)
    assert [r[-1] for r in results] == ["done"] * 3
    assert ("start", "b") not in engine.log  # cancelled before it started: never generated
    assert cancelled == 1


def test_cancelling_an_active_generation_releases_it_and_frees_the_place():
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

    sched, result = run(body, engine, max_batch=1, max_queue=4)
    assert result[-1] == "done"
    log = engine.log
    assert log.index(("closed", "a")) < log.index(("start", "b"))  # closed (caches rolled back) first
    assert sum(1 for e in log if e[:2] == ("chunk", "a")) < 50
    assert sched.active == 0 and sched.queue_length == 0 and sched.metrics.cancelled == 1


def test_a_request_that_cannot_start_fails_alone():
    engine = ScriptedEngine(fail_open={"bad"})

    async def body(sched):
        bad, good = sched.submit(_job("bad")), sched.submit(_job("ok"))
        return await _collect(bad), await _collect(good)

    _, (bad, good) = run(body, engine, max_batch=2, max_queue=4)
    assert bad == [("error", "RuntimeError")]  # the app turns a non-SpecdecodeError into a 500
    assert good == ["ok0", "ok1", "ok2", "done"]


def test_a_failing_step_fails_its_pass_and_the_server_goes_on():
    engine = ScriptedEngine(fail_step={"bad"})

    async def body(sched):
        with sched._cond:
            bad, other = sched.submit(_job("bad")), sched.submit(_job("x"))
        first = await asyncio.gather(_collect(bad), _collect(other))
        later = await _collect(sched.submit(_job("ok")))
        return first, later

    sched, ((bad, other), later) = run(body, engine, max_batch=2, max_queue=4)
    # a step the two shared: neither is told the other's error, each gets a server error
    assert bad == [("error", "SharedStepError")] and other == [("error", "SharedStepError")]
    assert ("closed", "bad") in engine.log and ("closed", "x") in engine.log  # caches released
    assert later == ["ok0", "ok1", "ok2", "done"] and sched.active == 0


def test_kv_budget_holds_requests_back_and_refuses_one_that_never_fits():
    engine = ScriptedEngine(kv=100)

    async def body(sched):
        with sched._cond:
            jobs = [sched.submit(_job(n, 2)) for n in "abc"]
        results = await asyncio.gather(*map(_collect, jobs))
        assert sched.kv_bytes_in_use == 0  # every finished request gave its bytes back
        return results

    _, results = run(body, engine, max_batch=8, max_queue=4, kv_budget_bytes=250)
    assert all(r[-1] == "done" for r in results)
    steps = [e[1] for e in engine.log if e[0] == "step"]
    assert steps[0] == ("a", "b")  # c (another 100 bytes) waits: 300 > 250
    assert ("c",) in steps

    engine = ScriptedEngine(kv=300)

    async def too_big(sched):
        return await _collect(sched.submit(_job("big")))

    _, result = run(too_big, engine, max_batch=8, max_queue=4, kv_budget_bytes=250)
    assert result == [("error", KVBudgetExceeded.__name__)] and ("start", "big") not in engine.log


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

    _, (active, waiting) = run(body, engine, max_batch=1, max_queue=4)
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

    _, results = run(body, engine, max_batch=1, max_queue=4)
    assert all(r[-1] == ("error", "SchedulerStopped") for r in results)
    assert ("closed", "a") in engine.log


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        Scheduler(ScriptedEngine(), ServerMetrics(), max_batch=0)
    with pytest.raises(ValueError):
        Scheduler(ScriptedEngine(), ServerMetrics(), kv_budget_bytes=0)
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
    app = create_app(engine, ServerConfig("scripted", max_batch=1, max_queue=1, allowed_hosts=("testserver",)))
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


def test_a_prompt_past_the_context_is_a_context_error_before_the_kv_budget():
    """A prompt that fills the context is the client's 400, even where its caches (sized to the
    whole context) would not fit a small KV budget either."""
    engine = ScriptedEngine(kv=10**9, max_context=8)

    async def body(sched):
        return await _collect(sched.submit(_job("x" * 9))), await _collect(sched.submit(_job("y" * 8)))

    _, (longer, full) = run(body, engine, max_batch=2, max_queue=4, kv_budget_bytes=100)
    assert longer == full == [("error", ContextLengthError.__name__)]
    assert not any(e[0] == "start" for e in engine.log)


class HeldEncodeEngine(ScriptedEngine):
    """encode of a prompt in `held` waits until `release` is set: a job stuck mid-admission,
    popped from the queue but not yet in the batch."""

    def __init__(self, held: set[str]) -> None:
        super().__init__()
        self.held, self.encoding, self.release_encode = held, threading.Event(), threading.Event()

    def encode(self, prompt, chat=None, tools=None):
        if prompt in self.held:
            self.encoding.set()
            assert self.release_encode.wait(TIMEOUT)
        return super().encode(prompt, chat)


def test_a_job_being_admitted_still_holds_its_place():
    """max_batch + max_queue is a hard bound, also while the worker is admitting a job (it has
    left the queue and is not in the batch yet): a burst gets no extra place then."""
    engine = HeldEncodeEngine({"a"})

    async def body(sched):
        first = sched.submit(_job("a"))
        assert await asyncio.to_thread(engine.encoding.wait, TIMEOUT)
        assert sched.queue_length == 0 and sched.active == 0  # a is between the two
        second = sched.submit(_job("b"))
        with pytest.raises(QueueFull):  # a and b are in: max_batch + max_queue = 2
            sched.submit(_job("c"))
        engine.release_encode.set()
        results = [await _collect(first), await _collect(second)]
        third = sched.submit(_job("d"))  # places free again once requests finish
        return results + [await _collect(third)]

    _, results = run(body, engine, max_batch=1, max_queue=1)
    assert [r[-1] for r in results] == ["done"] * 3
    assert ("start", "c") not in engine.log


def test_a_burst_never_has_more_than_max_batch_plus_max_queue_in():
    """12 requests at once on max_batch 2, max_queue 2: exactly 4 are let in, whatever the
    worker is doing while they arrive."""
    engine = HeldEncodeEngine({"0", "1"})

    async def body(sched):
        taken, refused = [], 0
        for i in range(12):
            try:
                taken.append(sched.submit(_job(str(i))))
            except QueueFull:
                refused += 1
            if i == 0:  # the worker is now admitting the first one
                assert await asyncio.to_thread(engine.encoding.wait, TIMEOUT)
        engine.release_encode.set()
        return [await _collect(j) for j in taken], refused

    _, (results, refused) = run(body, engine, max_batch=2, max_queue=2)
    assert len(results) == 4 and refused == 8 and all(r[-1] == "done" for r in results)


class PerTokenKVEngine(ScriptedEngine):
    """KV bytes grow with the positions a request may fill, as the real engine's: 10 per position."""

    def kv_bytes(self, prompt_tokens, max_new_tokens):
        return 10 * min(prompt_tokens + min(max_new_tokens, self.target.max_context - prompt_tokens) + 1,
                        self.target.max_context)


def test_a_default_max_tokens_shrinks_to_fit_the_kv_budget():
    """No max_tokens from the client: the default becomes the most that fits the whole budget
    (here (100 - 10) / 10 = 9 positions for a 4-token prompt: 5 tokens), and the context."""
    engine = PerTokenKVEngine(max_context=64)

    async def body(sched):
        loop = asyncio.get_running_loop()
        fitted = sched.submit(Job("abcd", False, SamplingParams(max_new_tokens=4096), loop, default_max_tokens=True))
        out = await _collect(fitted)
        return out, fitted.params.max_new_tokens

    _, (out, fitted) = run(body, engine, max_batch=2, max_queue=4, kv_budget_bytes=100)
    assert fitted == 5 and out == [f"abcd{i}" for i in range(5)] + ["done"]

    engine = PerTokenKVEngine(max_context=8)  # the context ends first: 8 - 4 = 4 tokens

    async def by_context(sched):
        job = Job("abcd", False, SamplingParams(max_new_tokens=4096), asyncio.get_running_loop(),
                  default_max_tokens=True)
        return await _collect(sched.submit(job)), job.params.max_new_tokens

    _, (out, fitted) = run(by_context, engine, max_batch=2, max_queue=4, kv_budget_bytes=10**6)
    assert fitted == 4 and out[-1] == "done"


def test_an_explicit_max_tokens_or_a_prompt_that_cannot_fit_is_still_refused():
    engine = PerTokenKVEngine(max_context=64)

    async def body(sched):
        loop = asyncio.get_running_loop()
        explicit = sched.submit(Job("abcd", False, SamplingParams(max_new_tokens=6), loop))
        huge_prompt = sched.submit(Job("x" * 10, False, SamplingParams(max_new_tokens=16), loop,
                                       default_max_tokens=True))
        return await _collect(explicit), await _collect(huge_prompt), explicit

    _, (explicit, huge, ejob) = run(body, engine, max_batch=2, max_queue=4, kv_budget_bytes=100)
    assert explicit == huge == [("error", KVBudgetExceeded.__name__)]
    assert ejob.params.max_new_tokens == 6  # an explicit max_tokens is never changed
    assert not any(e[0] == "start" for e in engine.log)
