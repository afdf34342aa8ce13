"""OpenAI-compatible HTTP server: `specdecode serve`, or create_app(engine, ServerConfig(...)).

Needs the `server` extra (FastAPI, uvicorn). See docs/server.md.
"""

from __future__ import annotations

__all__ = ["create_app", "ServerConfig"]


def __getattr__(name: str):
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
