"""The FastAPI app: OpenAI-compatible completions and chat completions over one Engine.

    app = create_app(engine, ServerConfig(model_name="qwen2.5-coder-1.5b"))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Request flow: parse and check the body here (event loop), queue a Job (scheduler.py), wait
for its first chunk (so errors such as a too-long prompt still get a proper 4xx), then answer
as JSON or as server-sent events. A client that disconnects cancels its job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import SamplingParams
from ..engine import Engine
from ..errors import ContextLengthError, SpecdecodeError
from ..tools import ToolCallStream, ToolSpec
from . import schemas
from .errors import APIError, clip, error_body
from .guard import GuardMiddleware, allowed_host_names
from .metrics import ServerMetrics
from .scheduler import Event, Job, KVBudgetExceeded, QueueFull, Scheduler, SchedulerStopped

log = logging.getLogger("specdecode.server")

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
ENDPOINTS = frozenset({COMPLETIONS, CHAT, "/v1/models", "/health", "/metrics"})
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ABORTED = "abort"  # finish_reason of a stream cut by the server (shutdown, error), as vLLM


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None  # None: no authentication
    max_batch: int = 32  # generations in progress at once, advanced together in one pass per round
    max_queue: int = 64  # requests waiting beyond max_batch before 429
    kv_budget_bytes: int | None = None  # KV-cache memory all active requests may hold (None: no limit)
    max_body_bytes: int = 1 << 20
    max_tokens_limit: int = 4096
    host: str = "127.0.0.1"  # the bound address: with localhost, the Host names accepted
    allowed_hosts: tuple[str, ...] = ()  # more Host names ("*" = any)
    allowed_origins: tuple[str, ...] = ()  # browser origins allowed, with CORS ("*" = any)
    read_timeout: float | None = 10.0  # seconds to send a request's body (uvicorn bounds the headers)


def create_app(engine: Engine, config: ServerConfig) -> FastAPI:
    if engine.tokenizer is None:
        raise SpecdecodeError("the server needs an engine with a tokenizer")
    metrics = ServerMetrics()
    scheduler = Scheduler(engine, metrics, config.max_batch, config.max_queue, config.kv_budget_bytes)
    limits = schemas.Limits(config.max_tokens_limit, engine.target.vocab_size)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="specdecode", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.scheduler, app.state.metrics, app.state.config = engine, scheduler, metrics, config
    kernels = _kernel_report(engine)
    app.add_middleware(GuardMiddleware, metrics=metrics, endpoints=ENDPOINTS, api_key=config.api_key,
                       max_body_bytes=config.max_body_bytes, hosts=allowed_host_names(config.host, config.allowed_hosts),
                       allowed_origins=config.allowed_origins, read_timeout=config.read_timeout)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None, code),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body("internal server error", "server_error", None, None), status_code=500)

    # -- endpoints -------------------------------------------------------------------------

    @app.get("/health")
    async def health():
        if scheduler.draining:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        if not scheduler.alive:
            return JSONResponse({"status": "error", "detail": "generation worker is not running"}, status_code=503)
        return {"status": "ok", "kernels": kernels}

    @app.get("/metrics")
    async def prometheus_metrics():
        return PlainTextResponse(metrics.render(scheduler.queue_length, scheduler.active, scheduler.kv_bytes_in_use,
                                                scheduler.kv_budget_bytes, engine.prefix_cache, engine.suffix_stores),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict:
        drafter = engine.drafter.name if engine.drafter is not None else "none"
        return {"id": config.model_name, "object": "model", "created": created, "owned_by": "specdecode",
                "specdecode": {"drafter": drafter, "num_draft_tokens": engine.num_draft_tokens,
                               "adaptive": engine.adaptive, "max_context": engine.target.max_context,
                               "prefix_cache": engine.prefix_cache_status}}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        schemas.raise_for_model(model_id, config.model_name)
        return model_card()

    @app.post(COMPLETIONS)
    async def completions(request: Request):
        req = schemas.parse(schemas.CompletionRequest, await request.body())
        schemas.raise_for_model(req.model, config.model_name)
        params = schemas.sampling_params(req, limits, DEFAULT_COMPLETION_MAX_TOKENS)
        prompt = schemas.completion_prompt(req, limits)
        return await generate(request, req, prompt, params, chat=False)

    @app.post(CHAT)
    async def chat_completions(request: Request):
        req = schemas.parse(schemas.ChatCompletionRequest, await request.body())
        schemas.raise_for_model(req.model, config.model_name)
        tools = schemas.tool_spec(req)
        params = schemas.sampling_params(req, limits, config.max_tokens_limit, tools)
        messages = schemas.chat_messages(req)
        return await generate(request, req, messages, params, chat=True, tools=tools)

    def retry_after() -> int:
        """Seconds until a slot is likely to free: a mean request's duration shared among the
        active slots, at least 1 and at most 60 (the client's hint, not a promise)."""
        finished = metrics.duration
        mean = finished.sum / finished.count if finished.count else 1.0
        return max(1, min(60, math.ceil(mean / scheduler.max_batch)))

    async def generate(request: Request, req, prompt, params: SamplingParams, chat: bool,
                       tools: ToolSpec | None = None):
        job = Job(prompt, chat, params, asyncio.get_running_loop(),
                  default_max_tokens=schemas.requested_max_tokens(req) is None,
                  tools=tools.template_tools if tools is not None else None)
        try:
            scheduler.submit(job)
        except QueueFull:
            raise APIError(429, f"the server is busy: {scheduler.max_batch} generations running and "
                                f"{scheduler.max_queue} waiting; retry later", "rate_limit_error", None,
                           "queue_full", headers={"Retry-After": str(retry_after())}) from None
        except SchedulerStopped:
            raise APIError(503, "the server is shutting down", "server_error", None, "shutting_down") from None
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        handed_off = False
        try:
            first = await job.next()
            if first.kind == "error":
                raise _engine_error(first.error, "messages" if chat else "prompt")
            if first.kind == "disconnected":
                return Response(status_code=499)
            rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
            token_bytes = engine.tokenizer.token_bytes if params.logprobs is not None else None
            reply = Reply(rid, int(time.time()), config.model_name, chat, token_bytes,
                          tools if tools is not None and tools.choice != "none" else None)
            if req.stream:
                watcher.cancel()  # from here StreamingResponse watches for the disconnect itself
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                handed_off = True
                return JobStreamingResponse(job, reply.sse(job, first, include_usage))
            return await reply.json(job, first)
        finally:
            watcher.cancel()
            if not handed_off:
                job.cancel()  # no-op when finished

    return app


class JobStreamingResponse(StreamingResponse):
    """Server-sent events whose job is cancelled however the response ends (even unstarted)."""

    def __init__(self, job: Job, content: AsyncIterator[str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


class Reply:
    """Builds one request's answer from its job's events, as one JSON body or as SSE."""

    def __init__(self, rid: str, created: int, model: str, chat: bool, token_bytes=None,
                 tools: ToolSpec | None = None) -> None:
        self.rid, self.created, self.model, self.chat = rid, created, model, chat
        self.token_bytes = token_bytes  # set when the client asked for logprobs
        self.text_offset = 0  # completions' logprobs: characters streamed so far
        self.tools = tools  # chat with tools: the answer's tool calls are parsed out of its text

    def _logprobs(self, lps: list, text: str) -> dict | None:
        """The OpenAI logprobs object of `lps`, the tokens behind `text` (None if not asked for)."""
        if self.token_bytes is None:
            return None
        if self.chat:
            return schemas.chat_logprobs(lps, self.token_bytes)
        out = schemas.completion_logprobs(lps, self.token_bytes, self.text_offset)
        self.text_offset += len(text)
        return out

    def _body(self, text: str, finish: str, lps: list, **extra) -> dict:
        logprobs = self._logprobs(lps, text)
        if not self.chat:
            return schemas.completion_body(self.rid, self.created, self.model, text, finish, logprobs, **extra)
        calls = None
        if self.tools is not None:
            content, calls = self.tools.parse(text)
            text, finish = content, ("tool_calls" if calls and finish == "stop" else finish)
        return schemas.chat_body(self.rid, self.created, self.model, text, finish, logprobs, calls, **extra)

    def _chunk(self, text: str | None, finish: str | None = None, role: bool = False, lps: list | None = None,
               delta: dict | None = None, **extra) -> str:
        logprobs = self._logprobs(lps, text or "") if lps else None
        if self.chat:
            if delta is None:
                delta = None if text is None else ({"role": "assistant", "content": text} if role else
                                                   ({"content": text} if text else {}))
            body = schemas.chat_chunk(self.rid, self.created, self.model, delta, finish, logprobs, **extra)
        else:
            body = schemas.completion_body(self.rid, self.created, self.model, text, finish, logprobs, **extra)
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    @staticmethod
    def _extras(job: Job, chunk) -> dict:
        stats = chunk.stats
        completion = stats.generated_tokens if stats is not None else 0
        cached = stats.cached_tokens if stats is not None else 0
        return {"usage": schemas.usage(job.prompt_tokens, completion, cached),
                "specdecode": stats.to_dict() if stats is not None else None}

    async def json(self, job: Job, event: Event) -> JSONResponse:
        parts, lps = [], []
        while True:
            if event.kind == "error":
                raise _engine_error(event.error, "messages" if self.chat else "prompt")
            if event.kind == "disconnected":
                return Response(status_code=499)
            chunk = event.chunk
            parts.append(chunk.text)
            lps.extend(chunk.logprobs or [])
            if chunk.finish_reason:
                return JSONResponse(self._body("".join(parts), chunk.finish_reason, lps, **self._extras(job, chunk)))
            event = await job.next()

    async def sse(self, job: Job, event: Event, include_usage: bool) -> AsyncIterator[str]:
        pending: list = []  # logprobs of tokens not yet sent
        calls = ToolCallStream(self.tools) if self.tools is not None else None
        try:
            if self.chat:
                yield self._chunk("", role=True)
            while True:
                if event.kind == "error":  # mid-stream (shutdown, a failing step): say so, then end
                    err = _engine_error(event.error, "messages" if self.chat else "prompt")
                    yield self._chunk("", ABORTED)
                    yield f"data: {json.dumps(err.body())}\n\n"
                    break
                chunk = event.chunk
                pending.extend(chunk.logprobs or [])  # tokens whose text is still held back travel on
                if calls is not None:  # tool calls: text goes out as content and call deltas
                    deltas = calls.feed(chunk.text) + (calls.finish() if chunk.finish_reason else [])
                    for delta in deltas:
                        yield self._chunk(delta.get("content", ""), lps=pending, delta=delta)
                        pending = []
                elif chunk.text:
                    yield self._chunk(chunk.text, lps=pending)
                    pending = []
                if chunk.finish_reason:
                    extras = self._extras(job, chunk)
                    finish = chunk.finish_reason
                    if calls is not None and calls.calls and finish == "stop":
                        finish = "tool_calls"
                    yield self._chunk("", finish, lps=pending, specdecode=extras["specdecode"])
                    if include_usage:
                        yield self._chunk(None, **extras)
                    break
                event = await job.next()
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()  # the client went away mid-stream (or a no-op: the job is done)


async def _watch_disconnect(request: Request, job: Job) -> None:
    """Cancel the job when the client disconnects before its answer starts (or while a JSON
    answer is being generated); the handler sees a 'disconnected' event."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            job.events.put_nowait(Event("disconnected"))
            return


def _kernel_report(engine: Engine) -> dict | None:
    """The linear layers' kernel path and whether a verify pass rounds like single steps (probed once)."""
    import torch

    if not isinstance(engine.target, torch.nn.Module):
        return None
    from ..kernels import probe_row_invariance

    inv = probe_row_invariance(engine.target)
    return {"path": inv.kernel_path, "row_invariant": inv.row_invariant}


def _engine_error(exc: BaseException | None, prompt_param: str) -> APIError:
    """Errors raised by the engine while starting a generation, as API errors: a SpecdecodeError
    (or a chat template's refusal) is the client's to fix, 400; any other exception, a
    ValueError included, is a bug here: 500 with a generic message, the traceback logged."""
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), "invalid_request_error", prompt_param, "context_length_exceeded")
    if isinstance(exc, KVBudgetExceeded):
        return APIError(503, str(exc), "server_error", None, "kv_cache_budget")
    if isinstance(exc, SchedulerStopped):
        return APIError(503, "the server is shutting down", "server_error", None, "shutting_down")
    try:
        from jinja2 import TemplateError
    except ImportError:  # pragma: no cover - jinja2 comes with transformers
        TemplateError = ()  # type: ignore[assignment]
    if isinstance(exc, TemplateError):
        return APIError(400, f"the chat template rejected the messages: {clip(str(exc))}", "invalid_request_error",
                        "messages")
    if isinstance(exc, SpecdecodeError):  # what the client can fix; anything else is our bug
        return APIError(400, clip(str(exc)), "invalid_request_error", None, None)
    log.error("generation failed", exc_info=exc)
    return APIError(500, "internal server error during generation", "server_error", None, None)


def api_key_from_env(value: str | None) -> str | None:
    return value or os.environ.get("SPECDECODE_API_KEY") or None
