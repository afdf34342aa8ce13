"""`specdecode chat`: the conversation (history resent every turn, /reset, a stopped answer kept,
errors that leave the chat alive) on the in-process tiny model, then the real command in a
pseudo-terminal: two turns, /stats, /reset, Ctrl-C during an answer, /exit with code 0."""

from __future__ import annotations

import io
import os
import pty
import select
import signal
import sys
import time

import pytest

import specdecode
from specdecode.chat import COMMANDS, Chat, run_chat
from specdecode.cli import main
from specdecode.config import SamplingParams
from specdecode.errors import ContextLengthError

TINY = ["--model", "tiny-random", "--dtype", "float32", "--threads", "1"]


@pytest.fixture(scope="module")
def engine():
    return specdecode.Engine(specdecode.load("tiny-random", dtype="float32", threads=1), None)


def recording(engine, monkeypatch) -> list[list[dict]]:
    """The conversations the chat hands to engine.stream, one per turn."""
    sent: list[list[dict]] = []
    real = engine.stream

    def stream(prompt, params=None, **kw):
        sent.append([dict(m) for m in prompt])
        return real(prompt, params, **kw)

    monkeypatch.setattr(engine, "stream", stream)
    return sent


def lines(*items: str):
    """A read() for run_chat that gives these lines, then EOF."""
    it = iter(items)

    def read(prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


def test_each_turn_resends_the_whole_conversation(engine, monkeypatch):
    sent = recording(engine, monkeypatch)
    chat = Chat(engine, SamplingParams(max_new_tokens=8), system="Be brief.")
    first = chat.ask("hello")
    second = chat.ask("and then?")
    assert first.text and second.text and first.tokens == second.tokens == 8
    system = {"role": "system", "content": "Be brief."}
    assert sent[0] == [system, {"role": "user", "content": "hello"}]
    assert sent[1] == [system, {"role": "user", "content": "hello"},
                       {"role": "assistant", "content": first.text}, {"role": "user", "content": "and then?"}]
    assert chat.messages == sent[1] + [{"role": "assistant", "content": second.text}]
    # The engine saw the longer prompt, and its prefix cache reused the first turn's rows.
    assert second.stats.prompt_tokens > first.stats.prompt_tokens + first.tokens
    assert second.stats.cached_tokens >= first.stats.prompt_tokens


def test_reset_keeps_only_the_system_message(engine):
    chat = Chat(engine, SamplingParams(max_new_tokens=4), system="sys")
    chat.ask("hello")
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "sys"}] and chat.answers == []
    plain = Chat(engine, SamplingParams(max_new_tokens=4))
    plain.ask("hello")
    plain.reset()
    assert plain.messages == []


def test_a_stopped_answer_stays_in_the_history_and_the_engine_moves_on(engine, monkeypatch):
    sent = recording(engine, monkeypatch)
    chat = Chat(engine, SamplingParams(max_new_tokens=200))
    seen: list[str] = []
    answer = chat.ask("hello", on_text=seen.append, should_stop=lambda: len(seen) >= 2)
    assert answer.stopped and answer.stats is None and 0 < answer.tokens < 200
    assert answer.text == "".join(seen) and chat.messages[-1] == {"role": "assistant", "content": answer.text}
    nxt = chat.ask("go on")
    assert nxt.finish_reason == "length" and nxt.tokens == 200
    assert sent[1][-2:] == [{"role": "assistant", "content": answer.text}, {"role": "user", "content": "go on"}]
    # The stopped request was released: its rows went to the prefix cache and served this turn.
    assert nxt.stats.cached_tokens > len(engine.encode(sent[0]))


def test_a_keyboard_interrupt_inside_the_stream_ends_only_the_answer(engine, monkeypatch):
    closed = []
    real = engine.stream

    def interrupted(prompt, params=None, **kw):
        inner = real(prompt, params, **kw)
        try:
            yield next(inner)
            raise KeyboardInterrupt  # as a second Ctrl-C raises it in the middle of a step
        finally:
            inner.close()
            closed.append(True)

    monkeypatch.setattr(engine, "stream", interrupted)
    chat = Chat(engine, SamplingParams(max_new_tokens=50))
    answer = chat.ask("hello")
    assert answer.stopped and closed == [True] and chat.messages[-1]["role"] == "assistant"


def test_too_long_a_conversation_is_an_error_that_leaves_the_history_as_it_was(engine):
    chat = Chat(engine, SamplingParams(max_new_tokens=4))
    chat.ask("hello")
    before = list(chat.messages)
    with pytest.raises(ContextLengthError):
        chat.ask("word " * 5000)
    assert chat.messages == before
    out, err = io.StringIO(), io.StringIO()
    assert run_chat(chat, lines("word " * 5000, "hi"), out, err) == 0
    assert "context" in err.getvalue() and "/reset" in err.getvalue() and "Traceback" not in err.getvalue()
    assert out.getvalue().strip() and len(chat.answers) == 2  # "hi" was still answered


def test_the_loop_runs_commands_and_answers_lines(engine, monkeypatch):
    sent = recording(engine, monkeypatch)
    chat = Chat(engine, SamplingParams(max_new_tokens=6))
    out, err = io.StringIO(), io.StringIO()
    rc = run_chat(chat, lines("/stats", "hello", "  ", "/stats", "/help", "/bogus", "/reset", "hi", "/exit", "never"),
                  out, err)
    assert rc == 0 and len(sent) == 2  # "never" came after /exit; the blank line is skipped
    assert sent[1] == [{"role": "user", "content": "hi"}]  # /reset forgot "hello"
    assert out.getvalue().endswith(chat.answers[0].text + "\n") and out.getvalue().count("\n") >= 2
    e = err.getvalue()
    assert "no answer yet" in e
    assert e.count("tok/s, first token") == 2 and "no drafts" in e
    assert "last answer:\nprompt tokens" in e and "conversation: 1 answer (0 stopped), 6 tokens" in e
    assert COMMANDS in e and "unknown command /bogus" in e and "conversation cleared" in e
    assert "\x1b[" not in e  # no colour codes when stderr is not a terminal
    for end in (EOFError, KeyboardInterrupt):  # Ctrl-D and Ctrl-C at the prompt leave quietly
        def read(prompt, end=end):
            raise end
        assert run_chat(chat, read, io.StringIO(), io.StringIO(), interactive=True) == 0


def test_ctrl_c_while_an_answer_streams_stops_it(engine):
    """The real SIGINT handler: a Ctrl-C delivered while the answer is written."""
    class Out(io.StringIO):
        def write(self, text):
            if not self.getvalue():
                os.kill(os.getpid(), signal.SIGINT)
            return super().write(text)

    chat = Chat(engine, SamplingParams(max_new_tokens=300))
    out, err = Out(), io.StringIO()
    before = signal.getsignal(signal.SIGINT)
    assert run_chat(chat, lines("hello", "hi"), out, err) == 0
    assert signal.getsignal(signal.SIGINT) is before  # the prompt's Ctrl-C behaves as before again
    assert chat.answers[0].stopped and chat.answers[0].tokens < 300 and not chat.answers[1].stopped
    assert "[stopped:" in err.getvalue() and "kept in the history" in err.getvalue()


def test_piped_stdin_through_main(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/stats\nhi\n"))
    rc = main(["chat", *TINY, "--drafter", "ngram", "-k", "3", "-n", "8", "--system", "Be brief."])
    out, err = capsys.readouterr()
    assert rc == 0 and out.count("\n") >= 2 and ">>>" not in out
    assert err.count("tok/s, first token") == 2 and "drafted / accepted" in err and "conversation: 1 answer" in err


def test_help_and_refusals(capsys):
    with pytest.raises(SystemExit) as e:
        main(["chat", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "/reset" in out and "--system" in out and "default 512" in out
    assert main(["chat", *TINY, "--tp", "2"]) == 2
    assert "does not support --tp" in capsys.readouterr().err


class Terminal:
    """A child process on a pseudo-terminal (its controlling terminal: Ctrl-C is a real SIGINT)."""

    def __init__(self, argv: list[str]) -> None:
        env = dict(os.environ, TERM="dumb", NO_COLOR="1")
        pid, fd = pty.fork()
        if pid == 0:  # the child: become the command, or report why not
            try:
                # A terminal's Ctrl-C must reach the chat as it would from a shell, whatever the test
                # process inherited: an ignored or blocked SIGINT survives fork and exec (and the
                # chat would then never see it), a Python handler does not.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd, self.seen, self.pos, self.returncode = pid, fd, b"", 0, None

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        self.seen += data
        return bool(data)

    def expect(self, pattern: str, timeout: float = 120) -> str:
        """Wait for `pattern` after what earlier calls matched; return the text up to it."""
        want, deadline = pattern.encode(), time.monotonic() + timeout
        while (at := self.seen.find(want, self.pos)) < 0:
            if time.monotonic() > deadline or not self._read(0.1):
                raise AssertionError(f"no {pattern!r} in:\n{self.seen[self.pos:].decode(errors='replace')}")
        before, self.pos = self.seen[self.pos:at], at + len(want)
        return before.decode(errors="replace")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode
            self._read(0.1)  # keep the terminal drained so the child never blocks on output
        raise AssertionError("the chat did not exit")

    def close(self) -> None:
        if self.returncode is None:  # a failed test: do not leave the chat running
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def test_the_command_in_a_terminal():
    # 1000 tokens per answer (about 1.5 s on the tiny model): room to press Ctrl-C mid-answer.
    term = Terminal([sys.executable, "-m", "specdecode", "chat", *TINY, "--drafter", "ngram", "-k", "3",
                     "-n", "1000"])
    try:
        assert "/help for commands" in term.expect(">>> ")
        term.send("hello\r")
        term.expect("hello")
        while len(term.seen) < term.pos + 40:  # the answer has begun (some 20 tokens written)
            assert term._read(30), "no answer"
        term.send("\x03")
        assert "kept in the history" in term.expect("[stopped:", 30) + term.expect(">>> ")
        term.send("/stats\r")
        assert "conversation: 1 answer (1 stopped)" in term.expect(">>> ")
        term.send("/reset\r")
        assert "conversation cleared" in term.expect(">>> ")
        for message in ("hi", "and then?"):  # two full turns, the second one after the first's answer
            term.send(message + "\r")
            assert "tok/s, first token" in term.expect(">>> ")
        term.send("/stats\r")
        stats = term.expect(">>> ")
        assert "last answer:" in stats and "conversation: 2 answers (0 stopped)" in stats
        term.send("/exit\r")
        assert term.wait() == 0
        assert b"Traceback" not in term.seen
    finally:
        term.close()


def test_ctrl_c_at_the_prompt_leaves_cleanly():
    term = Terminal([sys.executable, "-m", "specdecode", "chat", *TINY, "--drafter", "none"])
    try:
        term.expect(">>> ")
        # CPython's readline sees a SIGINT only once it waits for keys: one that lands between the
        # prompt being drawn and that wait is held until the next key. A person is never that fast.
        time.sleep(0.5)
        term.send("\x03")
        try:
            code = term.wait(timeout=5)
        except AssertionError:
            # On a loaded machine the SIGINT can land before readline waits for keys: its flag is
            # then set but readline's wait was never interrupted, and a plain key would only be
            # typed into the line (CI saw that too). A second Ctrl-C, as a person would press,
            # interrupts the wait itself.
            term.send("\x03")
            code = term.wait()
        assert code == 0
        assert b"Traceback" not in term.seen and b"interrupted" not in term.seen
    finally:
        term.close()
