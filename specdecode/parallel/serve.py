"""`specdecode serve --tp N`: rank 0 serves HTTP, the other ranks replay its engine calls.

The scheduler drives an Engine through start (via open), step and release. On rank 0 it drives
a LeaderEngine instead: before each call it broadcasts the call as a small JSON message (the
prompt ids and sampling parameters, seed included; the ids of the requests in a step), then
runs it on its own engine. Every other rank runs a FollowerLoop that receives the messages and
makes the same calls on its engine, so all ranks enter each pass, and its collectives, together.
Requests are named by integers the leader assigns. While idle the leader sends a heartbeat, so
the followers' wait never reaches the group's timeout; a lost rank ends the server with an error.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import threading
import time

from ..config import SamplingParams
from ..errors import SpecdecodeError
from .tp import TensorParallelError, TPGroup

log = logging.getLogger("specdecode.server")

_PARAM_FIELDS = [f.name for f in dataclasses.fields(SamplingParams)]


class LeaderEngine:
    """The Engine interface the server uses (open, encode, kv_bytes, step, release and the
    attributes the app reads), forwarding every call that runs the model to the followers first."""

    def __init__(self, engine, group: TPGroup, heartbeat_s: float | None = None) -> None:  # noqa: ANN001
        self._engine, self.group = engine, group
        self._lock = threading.Lock()  # one message + its local call at a time, heartbeats included
        self._ids: dict[int, int] = {}  # id(state) -> request number
        self._next = 0
        self._last_sent = time.monotonic()
        self.lost: TensorParallelError | None = None
        self._heartbeat_s = heartbeat_s if heartbeat_s is not None else group.timeout_s / 4
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="specdecode-tp-heartbeat", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str):  # noqa: ANN204 - tokenizer, drafter, target, ... of the engine
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._engine, name)

    def __setattr__(self, name: str, value) -> None:  # noqa: ANN001
        if name == "max_batch_tokens":  # engine settings must be the same on every rank
            raise AttributeError("set max_batch_tokens on every rank's engine before wrapping it")
        object.__setattr__(self, name, value)

    def _send(self, message: dict) -> None:
        self.group.broadcast_json(message)
        self._last_sent = time.monotonic()

    def _lose(self, e: TensorParallelError) -> None:
        """A rank is gone: every later call would fail, so the server shuts down (and exits with e)."""
        if self.lost is None:
            self.lost = e
            log.error("%s; shutting down", e)
            os.kill(os.getpid(), signal.SIGTERM)

    def _call(self, message: dict, fn, *args):  # noqa: ANN001, ANN202
        """Broadcast `message`, then run fn(*args) here. A lost rank fails the call as a shutdown
        (the client gets 503 shutting_down, not a 400: nothing it sent was wrong)."""
        from ..server.scheduler import SchedulerStopped

        with self._lock:
            try:
                if self.lost is not None:
                    raise self.lost
                self._send(message)
                return fn(*args)
            except TensorParallelError as e:
                self._lose(e)
                raise SchedulerStopped(f"the server is shutting down: {e}") from e

    def open(self, prompt, params: SamplingParams, *, chat: bool | None = None):  # noqa: ANN001, ANN201
        from ..engine import TextRequest

        ids = self._engine.encode(prompt, chat)
        if params.seed is None:  # one seed for the request on every rank
            params = dataclasses.replace(params, seed=secrets.randbits(63))
        with self._lock:
            number = self._next
            self._next += 1
        msg = {"op": "start", "id": number, "prompt_ids": ids,
               "params": {f: getattr(params, f) for f in _PARAM_FIELDS}}
        state = self._call(msg, self._engine.start, ids, params)
        self._ids[id(state)] = number
        return TextRequest(state, self._engine.tokenizer)

    def start(self, prompt_ids: list[int], params: SamplingParams, stats=None):  # noqa: ANN001, ANN201
        return self.open(list(prompt_ids), params, chat=False).state

    def step(self, states):  # noqa: ANN001, ANN201
        msg = {"op": "step", "ids": [self._ids[id(s)] for s in states]}
        return self._call(msg, self._engine.step, states)

    def release(self, state) -> None:  # noqa: ANN001
        number = self._ids.pop(id(state), None)
        if number is None or self.lost is not None:
            self._engine.release(state)
            return
        self._call({"op": "release", "id": number}, self._engine.release, state)

    def close(self) -> None:
        """Tell the followers to exit (best effort: they may be gone already)."""
        self._stop.set()
        with self._lock:
            if self.lost is None:
                try:
                    self.group.broadcast_json({"op": "exit"})
                except TensorParallelError:
                    pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._heartbeat_s / 2):
            if time.monotonic() - self._last_sent < self._heartbeat_s or self.lost is not None:
                continue
            with self._lock:
                if self.lost is None and not self._stop.is_set():
                    try:
                        self._send({"op": "ping"})
                    except TensorParallelError as e:
                        self._lose(e)
                        return


class FollowerLoop:
    """A follower rank's server: replay the leader's engine calls until it says exit."""

    def __init__(self, engine, group: TPGroup) -> None:  # noqa: ANN001
        self.engine, self.group = engine, group
        self.states: dict[int, object] = {}

    def run(self) -> int:
        while True:
            msg = self.group.broadcast_json()
            op = msg["op"]
            if op == "exit":
                return 0
            if op == "start":
                params = SamplingParams(**msg["params"])
                try:
                    self.states[msg["id"]] = self.engine.start(msg["prompt_ids"], params)
                except SpecdecodeError:
                    pass  # the leader's start failed the same way (the request's 4xx)
            elif op == "step":
                states = [self.states[i] for i in msg["ids"]]
                try:
                    self.engine.step(states)
                except TensorParallelError:
                    raise
                except Exception:  # the leader's step failed at the same point: its jobs get 500s
                    log.exception("generation step failed (as on rank 0)")
            elif op == "release":
                state = self.states.pop(msg["id"], None)
                if state is not None:
                    self.engine.release(state)
