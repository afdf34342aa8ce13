"""What every request passes before the app sees it: Host, Origin, API key, Content-Type, body.

A local model server is reachable from any web page the user opens: a page can POST a
"simple" cross-origin request (no preflight for text/plain), and with DNS rebinding its own
host name resolves to 127.0.0.1 and it can read the answers too. So:

* the Host header must name this server (the bound address, localhost, 127.0.0.1, [::1]) or
  one of `allowed_hosts` -- a rebound page sends its own name, and gets 421;
* a request from a browser page (it carries an Origin header) is refused with 403 unless its
  origin is in `allowed_origins`, which then get CORS headers (preflights included);
* a POST body must be declared `application/json` (415 otherwise), which a page cannot send
  cross-origin without a preflight.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterable

from .errors import clip, send_error
from .metrics import ServerMetrics

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})
CORS_MAX_AGE = b"600"


def host_name(header: str) -> str | None:
    """The host of a Host header without its port, lower case; IPv6 without brackets.
    None for a malformed value."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        rest = header[end + 1:] if end >= 0 else ""
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        return header[1:end]
    name, sep, port = header.rpartition(":")
    if sep:
        return name if name and port.isdigit() and ":" not in name else None
    return header or None


def allowed_host_names(bind_host: str, allowed_hosts: Iterable[str] = ()) -> frozenset[str] | None:
    """The Host names accepted; None = any.

    Local names are always accepted: a rebinding page sends its own name, never these. Bound
    to every interface (0.0.0.0, ::), the names clients use cannot be known, so any Host is
    accepted unless --allowed-hosts lists them; '*' accepts any Host wherever bound.
    """
    names = {h.strip().lower().strip("[]") for h in allowed_hosts if h.strip()}
    if "*" in names:
        return None
    bind = bind_host.strip().lower().strip("[]")
    if bind in WILDCARD_ADDRESSES:
        return frozenset(LOCAL_HOSTS | names) if names else None
    return frozenset(LOCAL_HOSTS | {bind} | names)


class GuardMiddleware:
    """Pure ASGI: counts requests by endpoint and status, checks Host, Origin, the API key and
    the Content-Type, limits the body and the time to send it.

    The body is read here in full (at most max_body_bytes, else 413; within read_timeout, else
    408) and replayed to the app, so no handler ever buffers an unbounded body. Endpoint labels
    come from a fixed set, so clients cannot grow the metrics with made-up paths.
    """

    def __init__(self, app, metrics: ServerMetrics, endpoints: frozenset[str], api_key: str | None,
                 max_body_bytes: int, hosts: frozenset[str] | None = None,
                 allowed_origins: Iterable[str] = (), read_timeout: float | None = None) -> None:
        self.app, self.metrics, self.endpoints, self.max_body_bytes = app, metrics, endpoints, max_body_bytes
        self.api_key = api_key.encode() if api_key else None
        self.hosts = hosts
        self.origins = frozenset(o.strip().rstrip("/").lower() for o in allowed_origins if o.strip())
        self.read_timeout = read_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in self.endpoints else (
            "/v1/models/{model}" if path.startswith("/v1/models/") else "other")
        status = 499  # the client left before any response
        headers = _headers(scope)
        origin = headers.get("origin")
        cors: list[tuple[bytes, bytes]] = []

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if cors:
                    message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        try:
            if not self._host_ok(headers.get("host")):
                await send_error(send_status, 421, "the Host header does not name this server; "
                                 "start it with --allowed-hosts NAME to accept that name", code="invalid_host")
                return
            if origin is not None:
                if origin.rstrip("/").lower() not in self.origins and "*" not in self.origins:
                    await send_error(send_status, 403, f"requests from the web origin {clip(origin, 100)!r} are "
                                     "not allowed; start the server with --allowed-origins ORIGIN to allow it",
                                     code="origin_not_allowed")
                    return
                cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
                if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
                    await self._preflight(send_status, headers)
                    return
            if self.api_key is not None and path != "/health" and not self._authorized(headers):
                await send_error(send_status, 401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                                 code="invalid_api_key", headers=[(b"www-authenticate", b"Bearer")])
                return
            if scope["method"] == "POST" and not _is_json(headers.get("content-type")):
                await send_error(send_status, 415, "the request body must be JSON sent with "
                                 "'Content-Type: application/json'", code="unsupported_media_type")
                return
            try:
                async with asyncio.timeout(self.read_timeout):
                    body = await self._read_body(headers, receive, send_status)
            except TimeoutError:
                await send_error(send_status, 408, f"the request body did not arrive within {self.read_timeout:g} s",
                                 code="request_timeout", headers=[(b"connection", b"close")])
                return
            if body is None:
                return
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_status)
        except Exception:
            status = 500
            raise
        finally:
            self.metrics.record_request(endpoint, status)

    def _host_ok(self, host: str | None) -> bool:
        if self.hosts is None:
            return True
        name = host_name(host) if host is not None else None
        return name is not None and name in self.hosts

    def _authorized(self, headers: dict[str, str]) -> bool:
        value = headers.get("authorization")
        if value is None:
            return False
        scheme, _, token = value.encode("latin-1").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)

    async def _preflight(self, send, headers: dict[str, str]) -> None:
        """Answer a CORS preflight from an allowed origin (its CORS headers come from `send`)."""
        asked = headers.get("access-control-request-headers", "")
        allow_headers = ", ".join(h.strip() for h in asked.split(",") if h.strip()) or "Content-Type"
        await send({"type": "http.response.start", "status": 204,
                    "headers": [(b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                                (b"access-control-allow-headers", allow_headers.encode("latin-1")),
                                (b"access-control-max-age", CORS_MAX_AGE)]})
        await send({"type": "http.response.body", "body": b""})

    async def _read_body(self, headers: dict[str, str], receive, send) -> bytes | None:
        """The whole body, or None after answering 413 (or when the client left)."""
        limit = self.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(send)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send) -> None:
        await send_error(send, 413, f"the request body is larger than {self.max_body_bytes} bytes",
                         code="request_too_large", headers=[(b"connection", b"close")])


def _headers(scope) -> dict[str, str]:
    """Request headers by lower-case name (the first of repeated ones), decoded as HTTP does."""
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json"
