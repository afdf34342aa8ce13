"""uvicorn's h11 protocol with a header-read timeout.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but only once a
response is complete: a client that connects and then sends nothing (or one header byte at a
time) holds its connection, and a file descriptor, forever. This protocol gives every request
`header_timeout` seconds, from the connection (or the previous answer) to its last header
line; the body has its own bound in GuardMiddleware.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeoutH11Protocol(H11Protocol):
    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._disarm_if_headers_read()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined request may already have been parsed by the call above.
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _disarm_if_headers_read(self) -> None:
        # h11 leaves IDLE once a request's headers are complete (SEND_BODY, DONE, ...).
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutH11Protocol]:
    """The protocol class to pass as uvicorn's `http=`, with its timeout set."""
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout": float(seconds)})
