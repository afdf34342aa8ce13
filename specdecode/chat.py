"""`specdecode chat`: a conversation in the terminal, as llama.cpp's `llama-cli -cnv`, `ollama run`
and `mlx_lm.chat` offer.

The history is a list of chat messages, resent whole every turn through `Engine.stream`: the
engine applies the chat template, and its prefix cache prefills only what the last turn added
(docs/prefix-cache.md), so the chat keeps no KV state of its own. stdout carries the answers
only; the banner, statistics, notices and errors go to stderr, so `... | specdecode chat > out`
keeps just the answers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from .cli_common import add_model_options, add_sampling_options, build_engine, describe_drafter
from .errors import SpecdecodeError

if TYPE_CHECKING:
    from .config import SamplingParams
    from .engine import Engine
    from .metrics import SpecStats

__all__ = ["COMMANDS", "Answer", "Chat", "add_parser", "cmd_chat", "run_chat", "summary"]

DEFAULT_MAX_NEW_TOKENS = 512  # per answer: long enough for a code snippet, short enough to wait for

COMMANDS = """commands:
  /reset         forget the conversation (the system prompt stays)
  /stats         statistics of the last answer and of the conversation so far
  /help          this list
  /exit, /quit   leave (so do Ctrl-D and Ctrl-C at the prompt)
Ctrl-C while an answer streams stops it; the part already written stays in the conversation."""


@dataclass
class Answer:
    """One answer: its text, and how it was made."""

    text: str
    tokens: int  # generated, counted as SpecStats counts them (the EOS that ended the answer too)
    finish_reason: str | None  # "stop" | "length"; None when the user stopped it
    stats: SpecStats | None  # the engine's counters; None for a stopped answer (the engine sends them last)
    first_token_seconds: float | None  # from sending the conversation to the first chunk
    seconds: float

    @property
    def stopped(self) -> bool:
        return self.finish_reason is None


class Chat:
    """A conversation with an engine: the history, and one answer per user message."""

    def __init__(self, engine: Engine, params: SamplingParams, system: str | None = None) -> None:
        self.engine = engine
        self.params = params
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.answers: list[Answer] = []  # of the conversation since the last reset
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.answers = []

    def ask(self, text: str, on_text: Callable[[str], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Answer:
        """Add `text` as the user's message, stream the answer (each piece to `on_text`) and add it.

        `should_stop` is asked after each piece; True (or a KeyboardInterrupt) ends the answer
        there, and the part already streamed stays in the history, as the user saw it. A
        SpecdecodeError (e.g. ContextLengthError) leaves the history as it was before the call.
        """
        self.messages.append({"role": "user", "content": text})
        parts: list[str] = []
        tokens, finish, stats, first = 0, None, None, None
        start = time.perf_counter()
        # A copy: the engine encodes lazily, at the first chunk; later edits must not reach it.
        stream = self.engine.stream(list(self.messages), self.params)
        try:
            for chunk in stream:
                if first is None:
                    first = time.perf_counter() - start
                tokens += len(chunk.token_ids)
                parts.append(chunk.text)
                if on_text is not None and chunk.text:
                    on_text(chunk.text)
                if chunk.finish_reason:
                    finish, stats = chunk.finish_reason, chunk.stats
                elif should_stop is not None and should_stop():
                    break
        except KeyboardInterrupt:
            pass  # a hard stop (see _ctrl_c_stops_the_answer): the answer ends here, as with should_stop
        except SpecdecodeError:
            self.messages.pop()  # the turn never happened: what follows must not inherit a history that fails
            raise
        finally:
            stream.close()  # an answer stopped early: Engine.stream's finally releases the request
        if stats is not None:
            tokens = stats.generated_tokens  # chunks carry no EOS; keep the count /stats shows
        answer = Answer("".join(parts), tokens, finish, stats, first, time.perf_counter() - start)
        self.messages.append({"role": "assistant", "content": answer.text})
        self.answers.append(answer)
        return answer

    def totals(self) -> str:
        """The conversation so far, in one line."""
        done = [a.stats for a in self.answers if a.stats is not None]
        tokens = sum(a.tokens for a in self.answers)
        stopped = sum(a.stopped for a in self.answers)
        # The first token of each answer comes from the prefill, not from decoding.
        decoded = sum(s.generated_tokens - 1 for s in done)
        decode_s = sum(s.decode_seconds for s in done)
        drafted = sum(s.drafted_tokens for s in done)
        accepted = sum(s.accepted_tokens for s in done)
        n = len(self.answers)
        line = (f"conversation: {n} answer{'' if n == 1 else 's'} ({stopped} stopped), {tokens} tokens generated, "
                f"{len(self.messages)} messages in the history")
        if decode_s > 0:
            line += f"; decode {decoded / decode_s:.1f} tok/s"
        if drafted:
            line += f"; acceptance {accepted / drafted:.1%} ({accepted}/{drafted})"
        prompt = sum(s.prompt_tokens for s in done)
        cached = [getattr(s, "cached_tokens", None) for s in done]
        if prompt and None not in cached:
            line += f"; {sum(cached)} of {prompt} prompt tokens from the prefix cache"
        return line


def summary(answer: Answer, params: SamplingParams | None = None) -> str:
    """The one line printed after an answer: tokens, decode speed, time to first token, acceptance."""
    ttft = f"{answer.first_token_seconds:.2f} s" if answer.first_token_seconds is not None else "-"
    s = answer.stats
    if s is None:
        return f"[stopped: {answer.tokens} tokens in {answer.seconds:.2f} s, first token {ttft}; kept in the history]"
    parts = [f"{answer.tokens} tokens", f"{s.decode_tokens_per_second:.1f} tok/s", f"first token {ttft}"]
    parts.append(f"acceptance {s.acceptance_rate:.0%} ({s.accepted_tokens}/{s.drafted_tokens})"
                 if s.drafted_tokens else "no drafts")
    cached = getattr(s, "cached_tokens", None)  # the prefix cache's count, where the engine has one
    if cached is not None:
        parts.append(f"{cached}/{s.prompt_tokens} prompt tokens cached")
    line = "[" + ", ".join(parts) + "]"
    if params is not None and answer.finish_reason == "length" and s.generated_tokens < params.max_new_tokens:
        line += " the context is full: /reset starts over"
    return line


def run_chat(chat: Chat, read: Callable[[str], str] = input, out: TextIO | None = None,
             err: TextIO | None = None, interactive: bool = False, title: str = "") -> int:
    """The read-answer loop until /exit, EOF or Ctrl-C at the prompt; returns the exit code (0).

    `read(prompt)` gives one user line (input() by default) and raises EOFError at the end.
    `interactive` shows a banner and a prompt; piped input gets neither.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    dim = _dimmer(err)

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    if interactive:
        err.write(f"{title}{' ' if title else ''}/help for commands, /exit or Ctrl-D to leave, "
                  "Ctrl-C stops an answer.\n")
    while True:
        try:
            line = read(">>> " if interactive else "")
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt: leave quietly
            if interactive:
                out.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if _command(chat, text, err):
                return 0
            continue
        try:
            with _ctrl_c_stops_the_answer() as stop:
                answer = chat.ask(text, on_text=write, should_stop=stop.is_set)
        except SpecdecodeError as e:
            err.write(f"specdecode: error: {e} (the message was not added; /reset starts over)\n")
            continue
        write("\n")
        err.write(dim(summary(answer, chat.params)) + "\n")
        err.flush()


def _command(chat: Chat, text: str, err: TextIO) -> bool:
    """Run a /command; True means leave."""
    name = text.split()[0].lower()
    if name in ("/exit", "/quit"):
        return True
    if name == "/reset":
        chat.reset()
        err.write("conversation cleared\n")
    elif name == "/stats":
        if not chat.answers:
            err.write("no answer yet\n")
        else:
            last = chat.answers[-1]
            err.write(("last answer:\n" + last.stats.format()) if last.stats is not None else summary(last))
            err.write("\n" + chat.totals() + "\n")
    elif name == "/help":
        err.write(COMMANDS + "\n")
    else:
        err.write(f"unknown command {name} (/help lists them)\n")
    err.flush()
    return False


@contextlib.contextmanager
def _ctrl_c_stops_the_answer() -> Iterator[threading.Event]:
    """While an answer streams, the first Ctrl-C sets the event: the answer ends after the piece
    being decoded, with no exception thrown into the middle of an engine step. A second Ctrl-C
    raises KeyboardInterrupt, for a step that takes long (a long conversation's prefill)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers are the main thread's only; Ctrl-C then stays a KeyboardInterrupt
        return

    def on_sigint(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _dimmer(stream: TextIO) -> Callable[[str], str]:
    """Faint text on a terminal (ANSI SGR 2), plain text elsewhere or with NO_COLOR set."""
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty() and not os.environ.get("NO_COLOR"):
        return lambda text: f"\x1b[2m{text}\x1b[0m"
    return lambda text: text


def _enable_line_editing() -> None:
    """Arrow keys and history for input(): importing readline is what turns them on."""
    try:
        import readline  # noqa: F401
    except ImportError:
        return  # no readline here (Windows): input() still works, without editing


def cmd_chat(args: argparse.Namespace) -> int:
    from .config import SamplingParams

    if getattr(args, "tp", 1) > 1:
        raise SpecdecodeError("chat runs in one process and does not support --tp; "
                              "use `specdecode serve --tp N` with a chat client")
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=args.seed, stop=args.stop)
    engine = build_engine(args)
    if engine.tokenizer is None or not engine.tokenizer.has_chat_template:
        raise SpecdecodeError(f"{args.model} has no chat template, so it cannot hold a conversation; "
                              "use `specdecode generate --raw` for plain completion")
    interactive = sys.stdin.isatty()
    if interactive:
        _enable_line_editing()
    title = f"chatting with {args.model} (drafter: {describe_drafter(engine)})."
    return run_chat(Chat(engine, params, system=args.system), interactive=interactive, title=title)


def add_parser(sub) -> argparse.ArgumentParser:  # noqa: ANN001 - argparse's private subparsers type
    p = sub.add_parser(
        "chat", help="talk with a model in the terminal, turn by turn, streaming each answer",
        description="An interactive conversation with the target model, speculatively if a drafter is set. "
                    "Each line you type is a message; the whole conversation is sent every turn (the prefix "
                    "cache prefills only the new part). Answers go to stdout, statistics to stderr; piped "
                    "stdin works too, one message per line. Example: specdecode chat --model smollm2-135m "
                    "--system 'You are terse.'",
        epilog=COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    add_sampling_options(p, default_max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--system", metavar="TEXT", default=None,
                   help="a system message that opens the conversation (kept by /reset)")
    p.set_defaults(func=cmd_chat)
    return p
