"""OpenAI-style errors: every 4xx/5xx body is {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import json


class APIError(Exception):
    """An error answered to the client as is; raised anywhere in request handling."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


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
