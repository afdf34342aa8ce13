"""OpenAI-style errors: every 4xx/5xx body is {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import json

ECHO_CHARS = 200  # how much of a client's string an error message repeats back
MAX_MESSAGE_CHARS = 2000  # a last bound on any error message, whatever went into it


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` cut to `limit` characters with an ellipsis: a 1 MB model name must not come back
    in a 1 MB error body."""
    return text if len(text) <= limit else text[:limit] + "..."


class APIError(Exception):
    """An error answered to the client as is; raised anywhere in request handling."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": clip(message, MAX_MESSAGE_CHARS), "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


async def send_error(send, status: int, message: str, type: str = "invalid_request_error",
                     code: str | None = None, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Answer an error straight from ASGI middleware (before the app sees the request)."""
    body = json.dumps(error_body(message, type, None, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
