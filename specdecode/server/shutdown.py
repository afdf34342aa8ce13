"""Graceful shutdown for `specdecode serve`: a uvicorn.Server that drains the scheduler first.

On SIGTERM (or the first Ctrl-C) uvicorn stops listening at once; this server also makes the
scheduler refuse new requests (503 `shutting_down`) and fail the queued ones the same way, lets
the running generations go on for `grace` seconds, then stops the worker: every open stream
ends with a final chunk (`finish_reason: "abort"`), an error event and `data: [DONE]`, every
waiting non-streamed request gets a 503 JSON error. uvicorn's own timeout, which cancels
request tasks (and logs their tracebacks), is set beyond that so it never fires first.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from types import FrameType

import uvicorn

from .scheduler import Scheduler

DEFAULT_GRACE_SECONDS = 8.0  # `docker stop` kills after 10 s: 8 s of grace leaves 2 to end the streams
FLUSH_SECONDS = 5.0  # after the worker stops: time for the last events to reach the clients


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        config.timeout_graceful_shutdown = int(grace + FLUSH_SECONDS + 1)
        super().__init__(config)
        self.scheduler, self.grace = scheduler, grace

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises a captured signal after its shutdown, so the process would die of
        # SIGTERM; a drained shutdown is a clean exit (status 0).
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.scheduler.drain()
        stopper = asyncio.get_running_loop().call_later(self.grace, self._stop_worker)
        try:
            await super().shutdown(sockets)
        finally:
            stopper.cancel()

    def _stop_worker(self) -> None:
        # stop() joins the worker thread: off the event loop, which must keep serving the streams.
        asyncio.get_running_loop().run_in_executor(None, self.scheduler.stop)
