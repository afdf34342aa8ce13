"""OpenAI request schemas (types checked strictly by pydantic), their checks, and response bodies.

Types are strict: "max_tokens": "10" or 1.5 is an error, not a silent conversion. Fields an
OpenAI client may send that this server cannot honour (n > 1, best_of, echo, the legacy
functions) are rejected with a 400 that names them, rather than ignored; unknown fields are
ignored. Extensions beyond OpenAI's API: top_k and ignore_eos (as vLLM). response_format
json_object and json_schema constrain the answer (specdecode/constraint.py); tools and
tool_choice are specdecode/tools.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..config import SamplingParams
from ..constraint import ANY_JSON_OBJECT, json_schema_grammar
from ..errors import InvalidParameterError
from ..logprobs import MAX_TOP_LOGPROBS
from ..tools import ToolSpec, template_messages
from .errors import APIError, bad_request, clip

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1000  # stop matching holds back up to len(stop) - 1 characters per check
CHAT_ROLES = {"system", "user", "assistant", "tool", "developer"}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool | None = None


class _GenerationRequest(_Strict):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # extension
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = None  # extension: generate exactly max_tokens (benchmarks)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # JSON keys are strings: token ids
    logprobs: Any = None
    best_of: int | None = None  # accepted only at its neutral value


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(_Strict):
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's calls (checked by tools.template_messages)
    tool_call_id: str | None = None  # a tool message: the call it answers


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None  # the legacy form of tools: refused with a pointer to tools
    response_format: Any = None


@dataclass
class Limits:
    max_tokens_limit: int
    vocab_size: int


def parse(model: type[BaseModel], body: bytes) -> Any:
    """JSON bytes -> request model; malformed JSON and wrong types become a 400."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = [str(x) for x in err["loc"]]
        if err["type"] == "json_invalid":
            raise bad_request(f"the request body is not valid JSON: {err['msg']}", code="invalid_json") from None
        if not loc:
            raise bad_request(f"the request body must be a JSON object: {err['msg']}") from None
        what = "missing required field" if err["type"] == "missing" else f"invalid value: {err['msg']}"
        raise bad_request(f"{'.'.join(loc)}: {what}", param=loc[0]) from None


def _reject_unsupported(req: _GenerationRequest) -> None:
    checks = [
        ("n", req.n not in (None, 1), f"n must be 1, got {req.n}: n > 1 is not supported, send one request per choice"),
        ("best_of", req.best_of not in (None, 1), f"best_of must be 1, got {req.best_of}"),
    ]
    if isinstance(req, CompletionRequest):
        checks += [("echo", bool(req.echo), "echo is not supported"), ("suffix", bool(req.suffix), "suffix is not supported")]
    else:
        checks += [("functions", bool(req.functions), "functions (the legacy form) is not supported: send tools")]
    for param, bad, message in checks:
        if bad:
            raise bad_request(message, param=param, code="unsupported_parameter")


def response_schema(req: _GenerationRequest) -> dict[str, Any] | None:
    """The JSON schema a chat request's response_format asks for: None for text, any JSON object
    for json_object, the given schema for json_schema (checked: an invalid one is a 400)."""
    fmt = getattr(req, "response_format", None)
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return dict(ANY_JSON_OBJECT)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_request("response_format.json_schema.schema must be a JSON schema object", "response_format")
        try:
            json_schema_grammar(schema)
        except InvalidParameterError as e:
            raise bad_request(f"response_format: {e}", "response_format") from None
        return schema
    raise bad_request('response_format.type must be "text", "json_object" or "json_schema"', "response_format")


def tool_spec(req: _GenerationRequest) -> ToolSpec | None:
    """A chat request's tools and tool_choice (None without tools); a bad one is a 400."""
    tools = getattr(req, "tools", None)
    if tools is None:
        if getattr(req, "tool_choice", None) not in (None, "none", "auto"):
            raise bad_request("tool_choice needs tools", "tool_choice")
        return None
    try:
        return ToolSpec.of(tools, req.tool_choice, req.parallel_tool_calls)
    except InvalidParameterError as e:
        param = "tool_choice" if str(e).startswith("tool_choice") else "tools"
        raise bad_request(str(e), param) from None


def _logit_bias(req: _GenerationRequest, vocab_size: int) -> dict[int, float] | None:
    """OpenAI's logit_bias ({"token id": bias}) with integer keys, checked against the vocabulary."""
    if not req.logit_bias:
        return None
    out = {}
    for key, bias in req.logit_bias.items():
        # ASCII digits only ("²".isdigit() is true), and short enough for int() to take
        if not (key.isascii() and key.isdecimal() and len(key) <= 12) or int(key) >= vocab_size:
            raise bad_request(f"logit_bias keys must be token ids in 0..{vocab_size - 1}, got {clip(key)!r}", "logit_bias")
        if not (math.isfinite(bias) and -100 <= bias <= 100):
            raise bad_request(f"logit_bias values must be in [-100, 100], got {bias}", "logit_bias")
        out[int(key)] = float(bias)
    return out


def requested_logprobs(req: _GenerationRequest) -> int | None:
    """Alternatives per token the client wants with each token's logprob, None for no logprobs.
    Chat: `logprobs: true` and `top_logprobs` 0..20; completions: `logprobs` 0..5 (OpenAI's)."""
    if isinstance(req, ChatCompletionRequest):
        if req.logprobs is not None and not isinstance(req.logprobs, bool):  # (1 == True would pass `in`)
            raise bad_request("logprobs must be true or false", "logprobs")
        top = req.top_logprobs
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS):
            raise bad_request(f"top_logprobs must be an integer in 0..{MAX_TOP_LOGPROBS}", "top_logprobs")
        if top and not req.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        return (top or 0) if req.logprobs else None
    n = req.logprobs
    if n is None:
        return None
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 5:
        raise bad_request("logprobs must be an integer in 0..5 for completions", "logprobs")
    return n


def _logprob(v: float) -> float:
    return v if v > -9999.0 else -9999.0  # JSON has no -inf; OpenAI reports impossible tokens so


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")  # a token may hold part of a UTF-8 character


def chat_logprobs(lps: list, token_bytes) -> dict:
    """OpenAI's chat `logprobs` object for TokenLogprobs."""
    def entry(token: int, logprob: float) -> dict:
        b = token_bytes(token)
        return {"token": _text(b), "logprob": _logprob(logprob), "bytes": list(b)}

    return {"content": [{**entry(x.token, x.logprob), "top_logprobs": [entry(t, v) for t, v in x.top]} for x in lps],
            "refusal": None}


def completion_logprobs(lps: list, token_bytes, offset: int = 0) -> dict:
    """OpenAI's (legacy) completions `logprobs` object; text offsets count from `offset`."""
    tokens, offsets = [], []
    for x in lps:
        offsets.append(offset)
        tokens.append(_text(token_bytes(x.token)))
        offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [_logprob(x.logprob) for x in lps],
            "top_logprobs": [{_text(token_bytes(t)): _logprob(v) for t, v in x.top} for x in lps],
            "text_offset": offsets}


def requested_max_tokens(req: _GenerationRequest) -> int | None:
    """The client's max_tokens (chat: max_completion_tokens first), None when it gave none. With
    None the server's default applies, which the scheduler may lower to fit the KV-cache budget."""
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        return req.max_completion_tokens
    return req.max_tokens


def sampling_params(req: _GenerationRequest, limits: Limits, default_max_tokens: int,
                    tools: ToolSpec | None = None) -> SamplingParams:
    """The request's sampling fields, range-checked, as SamplingParams (with the grammar of its
    tools where they constrain the answer)."""
    _reject_unsupported(req)
    max_tokens = requested_max_tokens(req)
    param = "max_tokens"
    if max_tokens is None:
        max_tokens = default_max_tokens
    elif max_tokens < 1:
        raise bad_request(f"max_tokens must be at least 1, got {max_tokens}", param)
    elif max_tokens > limits.max_tokens_limit:
        raise bad_request(f"max_tokens must be at most {limits.max_tokens_limit} on this server, got {max_tokens}", param)
    temperature = 1.0 if req.temperature is None else req.temperature
    if not (math.isfinite(temperature) and 0.0 <= temperature <= 2.0):
        raise bad_request(f"temperature must be between 0 and 2, got {temperature}", "temperature")
    top_p = 1.0 if req.top_p is None else req.top_p
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise bad_request(f"top_p must be in (0, 1], got {top_p}", "top_p")
    top_k = 0 if req.top_k in (None, -1) else req.top_k
    if top_k < 0:
        raise bad_request(f"top_k must be >= 0 (or -1 for off), got {top_k}", "top_k")
    top_k = min(top_k, limits.vocab_size)
    if req.seed is not None and not -(2**63) <= req.seed < 2**64:
        raise bad_request("seed must fit in 64 bits", "seed")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP_STRINGS:
        raise bad_request(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}", "stop")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stop):
        raise bad_request(f"stop strings must be non-empty and at most {MAX_STOP_CHARS} characters", "stop")
    penalties = {}
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(req, name)
        if value is not None and not (math.isfinite(value) and -2.0 <= value <= 2.0):
            raise bad_request(f"{name} must be between -2 and 2, got {value}", name)
        penalties[name] = float(value or 0.0)
    grammar = tools.grammar() if tools is not None else None
    if grammar is not None and response_schema(req) is not None:
        raise bad_request("response_format json_object / json_schema cannot be combined with tool_choice "
                          '"required", a named function or strict tools', "response_format")
    try:
        return SamplingParams(temperature=float(temperature), top_k=top_k, top_p=float(top_p),
                              max_new_tokens=max_tokens, seed=req.seed, stop=stop, ignore_eos=bool(req.ignore_eos),
                              json_schema=response_schema(req), logprobs=requested_logprobs(req), grammar=grammar,
                              logit_bias=_logit_bias(req, limits.vocab_size), **penalties)
    except InvalidParameterError as e:  # a combination the fields' own checks above let through
        raise bad_request(str(e)) from None


def completion_prompt(req: CompletionRequest, limits: Limits) -> str | list[int]:
    """A text prompt, or token ids checked against the vocabulary; batches are refused."""
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) > 1:
            raise bad_request("batched prompts are not supported: send one prompt per request", "prompt")
        prompt = prompt[0]
    if not prompt:
        raise bad_request("the prompt is empty", "prompt")
    if isinstance(prompt, list) and not all(0 <= t < limits.vocab_size for t in prompt):
        raise bad_request(f"prompt token ids must be in [0, {limits.vocab_size})", "prompt")
    return prompt


def chat_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as the chat template wants them: {role, content} with text content, an assistant's
    tool calls with their arguments as objects, a tool message's tool_call_id."""
    if not req.messages:
        raise bad_request("messages must not be empty", "messages")
    out = []
    for i, m in enumerate(req.messages):
        if m.role not in CHAT_ROLES:
            raise bad_request(f"messages[{i}].role must be one of {sorted(CHAT_ROLES)}, got {clip(m.role)!r}", "messages")
        if m.tool_calls and m.role != "assistant":
            raise bad_request(f"messages[{i}]: only assistant messages carry tool_calls", "messages")
        content = m.content
        if isinstance(content, list):
            if any(p.type != "text" or p.text is None for p in content):
                raise bad_request(f"messages[{i}].content: only text parts are supported", "messages")
            content = "\n".join(p.text for p in content)
        if content is None:
            if m.role != "assistant":
                raise bad_request(f"messages[{i}].content is required", "messages")
            content = ""
        message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content}
        if m.tool_calls:
            message["tool_calls"] = m.tool_calls
        if m.role == "tool" and m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    try:
        return template_messages(out)
    except InvalidParameterError as e:
        raise bad_request(str(e), "messages") from None


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage object; cached_tokens: prompt tokens whose KV rows came from the prefix cache."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion_body(rid: str, created: int, model: str, text: str | None, finish: str | None,
                    logprobs: dict | None = None, **extra) -> dict:
    """A /v1/completions response (text = the whole text) or stream chunk (text = the delta)."""
    choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [choice] if text is not None else [], **extra}


def chat_body(rid: str, created: int, model: str, text: str | None, finish: str | None, logprobs: dict | None = None,
              tool_calls: list | None = None, **extra) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = [c.to_openai() for c in tool_calls]
    choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}
    return {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": [choice], **extra}


def chat_chunk(rid: str, created: int, model: str, delta: dict | None, finish: str | None,
               logprobs: dict | None = None, **extra) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices, **extra}


def raise_for_model(requested: str, served: str) -> None:
    if requested != served:
        raise APIError(404, f"the model {clip(requested)!r} does not exist; this server serves {served!r}",
                       "invalid_request_error", "model", "model_not_found")
