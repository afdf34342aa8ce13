"""Tool calls (OpenAI's `tools` / `tool_choice`): the functions a model may call, the grammar that
holds it to them, and the parsing of its answer into calls.

The format is Hermes / Qwen2.5's, which the chat template itself teaches the model:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

(one block per call, parallel calls one after another). `<tool_call>` and `</tool_call>` are
single tokens of the vocabulary. The grammar (llguidance's Lark dialect, specdecode/constraint.py)
depends on `tool_choice`:

- "none": the tools are left out of the prompt and nothing is constrained;
- "auto": free text, or text and then calls; once the model writes `<tool_call>` the name must be
  one of the tools and the arguments follow its parameters schema. Without any `strict` tool
  nothing is constrained (as OpenAI: the model may write anything);
- "required" / a named function: calls only (of that function), arguments per schema.

A grammar is the constrained target the engine speculates on exactly (greedy output identical,
sampling the same distribution), and its fixed parts (`{"name": "`, `", "arguments": `, a
function's name once its first tokens single it out) are forced tokens, drafted for free.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .constraint import JSON_OPTIONS, json_schema_grammar
from .errors import InvalidParameterError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
TOOL_CHOICES = ("none", "auto", "required")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule for function names
_CALL_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)
ANY_ARGUMENTS: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class Tool:
    """One function the model may call."""

    name: str
    parameters: dict[str, Any]
    description: str | None = None
    strict: bool = False

    def for_template(self) -> dict[str, Any]:
        """The OpenAI tool object chat templates render into the prompt."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass
class ToolCall:
    """A call the model made: `arguments` is JSON text, as OpenAI sends it."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def parse_tools(tools: Any) -> list[Tool]:
    """OpenAI's `tools` list -> Tools; InvalidParameterError (a 400) names what is wrong."""
    if not isinstance(tools, list) or not tools:
        raise InvalidParameterError("tools must be a non-empty list of {\"type\": \"function\", \"function\": {...}}")
    out: list[Tool] = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict):
            raise InvalidParameterError(f'tools[{i}] must be {{"type": "function", "function": {{...}}}}')
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidParameterError(f"tools[{i}].function.name must be 1-64 letters, digits, '_', '.' or '-'")
        parameters = fn.get("parameters", ANY_ARGUMENTS)
        if not isinstance(parameters, dict):
            raise InvalidParameterError(f"tools[{i}].function.parameters must be a JSON schema object")
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidParameterError(f"tools[{i}].function.description must be a string")
        strict = fn.get("strict") or False
        if not isinstance(strict, bool):
            raise InvalidParameterError(f"tools[{i}].function.strict must be true or false")
        try:
            json_schema_grammar(parameters)  # a schema the grammar engine cannot compile is the client's to fix
        except InvalidParameterError as e:
            raise InvalidParameterError(f"tools[{i}].function.parameters: {e}") from None
        out.append(Tool(name, parameters, description, strict))
    if len({t.name for t in out}) != len(out):
        raise InvalidParameterError("tools: function names must be distinct")
    return out


def parse_tool_choice(choice: Any, tools: Sequence[Tool]) -> str:
    """"none" | "auto" | "required" | a function's name (OpenAI's {"type": "function", ...})."""
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise InvalidParameterError(f'tool_choice must be "none", "auto", "required" or a function, got {choice!r}')
        return choice
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise InvalidParameterError('tool_choice must be "none", "auto", "required" or '
                                    '{"type": "function", "function": {"name": ...}}')
    if name not in {t.name for t in tools}:
        raise InvalidParameterError(f"tool_choice names the function {name!r}, which is not in tools")
    return name


@dataclass
class ToolSpec:
    """A request's tools and tool_choice: what the prompt shows, the grammar, the parsing."""

    tools: list[Tool]
    choice: str = "auto"
    parallel: bool = True  # OpenAI's parallel_tool_calls

    @classmethod
    def of(cls, tools: Any, tool_choice: Any = None, parallel_tool_calls: Any = None) -> ToolSpec:
        parsed = parse_tools(tools)
        if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
            raise InvalidParameterError("parallel_tool_calls must be true or false")
        return cls(parsed, parse_tool_choice(tool_choice, parsed), parallel_tool_calls is not False)

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools the prompt shows the model (none for tool_choice "none")."""
        return None if self.choice == "none" else [t.for_template() for t in self.tools]

    @property
    def callable(self) -> list[Tool]:
        return [t for t in self.tools if self.choice in ("auto", "required") or t.name == self.choice]

    def grammar(self) -> str | None:
        """The Lark grammar the answer must follow, None where the model is free."""
        if self.choice == "none" or (self.choice == "auto" and not any(t.strict for t in self.tools)):
            return None
        lines = ["%llguidance {}"]
        # (Qwen2.5 ends its calls with a newline before the end of text more often than not)
        calls = ('call ("\\n" call)*' if self.parallel else "call") + ' "\\n"?'
        lines.append("start: TEXT | TEXT calls" if self.choice == "auto" else "start: calls")
        lines.append(f"calls: {calls}")
        # <tool_call> / </tool_call> as the special tokens they are: free text (TEXT) never
        # contains them, so the call starts exactly where the model writes the token.
        lines.append('call: <tool_call> "\\n{\\"name\\": " function "}\\n" </tool_call>')
        options = []
        for i, tool in enumerate(self.callable):
            options.append(f"f{i}")
            head = json.dumps(json.dumps(tool.name) + ', "arguments": ')
            lines.append(f"f{i}: {head} a{i}")
            schema = {**tool.parameters, "x-guidance": JSON_OPTIONS}
            lines.append(f"a{i}: %json {json.dumps(schema)}")
        lines.append("function: " + " | ".join(options))
        lines.append(r"TEXT: /(.|\n)*/")
        return "\n".join(lines)

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, calls) of a finished answer: every well-formed call block of a known function
        becomes a ToolCall; the rest of the text (stripped) is the content, None if empty."""
        if self.choice == "none":
            return text, []
        calls: list[ToolCall] = []
        rest: list[str] = []
        last = 0
        for m in _CALL_BLOCK.finditer(text):
            call = self.parse_block(m.group(1))
            if call is None:
                continue  # not a call we can make: it stays in the text
            rest.append(text[last : m.start()])
            last = m.end()
            calls.append(call)
        rest.append(text[last:])
        if not calls:
            return text, []
        return "".join(rest).strip() or None, calls

    def parse_block(self, body: str) -> ToolCall | None:
        """The ToolCall of one block's JSON ({"name": ..., "arguments": {...}}), None if it is not one."""
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            return None
        if not isinstance(obj, dict) or obj.get("name") not in {t.name for t in self.callable}:
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments as a JSON string already
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        if not isinstance(args, dict):
            return None
        return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


class ToolCallStream:
    """Streams an answer as OpenAI streams tool calls: content deltas as text arrives (holding back
    what may be the start of `<tool_call>`), and each call, once its block is complete, as one delta
    with its id and name and one with its arguments."""

    def __init__(self, spec: ToolSpec) -> None:
        self.spec = spec
        self.buffer = ""
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Deltas (OpenAI chat.completion.chunk `delta` objects) for the text that arrived."""
        self.buffer += text
        out: list[dict[str, Any]] = []
        while True:
            start = self.buffer.find(OPEN)
            if start < 0:
                keep = _partial_suffix(self.buffer, OPEN)
                self._content(self.buffer[: len(self.buffer) - keep], out)
                self.buffer = self.buffer[len(self.buffer) - keep :]
                return out
            end = self.buffer.find(CLOSE, start)
            if end < 0:  # a call in progress: its content so far goes out, the call waits
                self._content(self.buffer[:start], out)
                self.buffer = self.buffer[start:]
                return out
            self._content(self.buffer[:start], out)
            block = self.buffer[start : end + len(CLOSE)]
            self.buffer = self.buffer[end + len(CLOSE) :]
            call = self.spec.parse_block(block[len(OPEN) : -len(CLOSE)])
            if call is None:
                self._content(block, out)
                continue
            index = len(self.calls)
            self.calls.append(call)
            out.append({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                        "function": {"name": call.name, "arguments": ""}}]})
            out.append({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]})

    def finish(self) -> list[dict[str, Any]]:
        """The deltas of what is still held back (an unfinished block is plain content)."""
        out: list[dict[str, Any]] = []
        self._content(self.buffer, out)
        self.buffer = ""
        return out

    def _content(self, text: str, out: list[dict[str, Any]]) -> None:
        if text and not (self.calls and not text.strip()):  # (the newlines between calls are not content)
            out.append({"content": text})


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages with tool calls -> what chat templates expect: an assistant's calls with
    their arguments as objects (OpenAI sends JSON text), tool results as `tool` messages."""
    out = []
    for i, m in enumerate(messages):
        calls = m.get("tool_calls")
        if not calls:
            out.append(m)
            continue
        converted = []
        for j, c in enumerate(calls):
            fn = c.get("function") if isinstance(c, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise InvalidParameterError(f"messages[{i}].tool_calls[{j}] must be "
                                            '{"type": "function", "function": {"name": ..., "arguments": ...}}')
            args = fn.get("arguments", "{}")
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    raise InvalidParameterError(f"messages[{i}].tool_calls[{j}].function.arguments is not JSON") from None
            converted.append({"id": c.get("id"), "type": "function", "function": {"name": fn["name"], "arguments": args}})
        out.append({**m, "content": m.get("content") or "", "tool_calls": converted})  # (a call's content may be null)
    return out
