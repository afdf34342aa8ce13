"""Which errors the client sees as its own: a SpecdecodeError (and request validation) is a 400;
any other exception, a ValueError included, is a bug on our side: 500 with a generic OpenAI-style
error body and the traceback in the server's log (DESIGN.md, habit 13)."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import specdecode  # noqa: E402
from specdecode import Engine, SamplingParams  # noqa: E402
from specdecode.errors import InvalidParameterError, SpecdecodeError  # noqa: E402
from specdecode.server import ServerConfig, create_app  # noqa: E402

COMPLETION = {"model": "tiny-random", "prompt": "def add(x, y):", "max_tokens": 4}
CHAT = {"model": "tiny-random", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
SECRET = "internal detail 0xdeadbeef"


class FailingEngine(Engine):
    """Raises `exc` in a generation's first step, or after `after` steps."""

    exc: BaseException = ValueError(SECRET)
    after = 0

    def step(self, states):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps > self.after:
            raise self.exc
        return super().step(states)


@pytest.fixture(scope="module")
def target():
    import torch

    torch.set_num_threads(1)
    return specdecode.load("tiny-random", dtype="float32")


@pytest.fixture
def client_for(target):
    clients = []

    def make(exc: BaseException | None = None, after: int = 0, **config):
        engine = FailingEngine(target, None) if exc is not None else Engine(target, None)
        if exc is not None:
            engine.exc, engine.after = exc, after
        app = create_app(engine, ServerConfig("tiny-random", allowed_hosts=("testserver",), **config))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def _error(resp, status: int, type_: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_
    return body["error"]


@pytest.mark.parametrize("path,body", [("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)])
def test_value_error_inside_the_engine_is_a_500_with_a_logged_traceback(client_for, caplog, path, body):
    client = client_for(ValueError(SECRET))
    with caplog.at_level(logging.ERROR, logger="specdecode.server"):
        err = _error(client.post(path, json=body), 500, "server_error")
    assert SECRET not in err["message"]  # no internals in the answer...
    logged = [r for r in caplog.records if r.exc_info and SECRET in str(r.exc_info[1])]
    assert logged, "the traceback must be in the log"  # ...but in the log


def test_specdecode_error_inside_the_engine_is_a_400(client_for):
    client = client_for(SpecdecodeError("your prompt is not acceptable"))
    err = _error(client.post("/v1/completions", json=COMPLETION), 400, "invalid_request_error")
    assert err["message"] == "your prompt is not acceptable"


def test_invalid_parameter_is_a_400_and_still_a_value_error(client_for):
    assert issubclass(InvalidParameterError, SpecdecodeError) and issubclass(InvalidParameterError, ValueError)
    with pytest.raises(InvalidParameterError):
        SamplingParams(top_p=0.0)
    client = client_for(InvalidParameterError("top_p must be in (0, 1], got 0"))
    _error(client.post("/v1/completions", json=COMPLETION), 400, "invalid_request_error")


def test_request_validation_is_still_a_400(client_for):
    client = client_for()
    _error(client.post("/v1/completions", json={**COMPLETION, "temperature": -1}), 400, "invalid_request_error")
    _error(client.post("/v1/completions", json={**COMPLETION, "max_tokens": "many"}), 400, "invalid_request_error")
    assert client.post("/v1/completions", json=COMPLETION).status_code == 200


def test_value_error_mid_stream_ends_the_stream_with_a_server_error(client_for):
    client = client_for(ValueError(SECRET), after=1)
    with client.stream("POST", "/v1/completions", json={**COMPLETION, "max_tokens": 8, "stream": True}) as resp:
        assert resp.status_code == 200  # the answer had started
        text = "".join(resp.iter_text())
    assert '"type": "server_error"' in text and SECRET not in text
    assert '"finish_reason": "abort"' in text and text.rstrip().endswith("data: [DONE]")


def test_a_bug_in_the_worker_itself_is_a_500(client_for, monkeypatch, caplog):
    """Outside the engine (here the metrics), the worker fails the job: a 500, not a 400."""
    client = client_for()
    metrics = client.app.state.metrics

    def broken(*a, **k):
        raise KeyError(SECRET)

    monkeypatch.setattr(metrics, "record_first_token", broken)
    with caplog.at_level(logging.ERROR, logger="specdecode.server"):
        err = _error(client.post("/v1/completions", json=COMPLETION), 500, "server_error")
    assert SECRET not in err["message"]
    assert any(r.exc_info and SECRET in str(r.exc_info[1]) for r in caplog.records)
    monkeypatch.undo()
    assert client.post("/v1/completions", json=COMPLETION).status_code == 200  # the worker kept serving


# -- the KV-cache budget (--kv-cache-gb) ------------------------------------------------------

def _kv_budget(target, positions: int) -> int:
    """A budget of exactly `positions` KV rows of the target (no drafter here)."""
    return positions * Engine(target, None).kv_bytes(1, 1) // 3  # kv_bytes(1, 1): prompt + 1 + 1 rows


def test_a_prompt_past_the_context_is_a_400_even_under_a_small_kv_budget(client_for, target):
    """The context is checked before the memory: a prompt that fills it is the client's to fix."""
    client = client_for(kv_budget_bytes=_kv_budget(target, 60))
    context = Engine(target, None).target.max_context
    for ids in ([5] * context, [5] * (context + 1)):
        err = _error(client.post("/v1/completions", json={**COMPLETION, "prompt": ids}), 400, "invalid_request_error")
        assert err["code"] == "context_length_exceeded" and err["param"] == "prompt", err
    long_chat = {**CHAT, "messages": [{"role": "user", "content": "hello " * context}]}
    err = _error(client.post("/v1/chat/completions", json=long_chat), 400, "invalid_request_error")
    assert err["code"] == "context_length_exceeded"


def test_a_chat_without_max_tokens_gets_the_most_the_kv_budget_holds(client_for, target):
    """Chat's default max_tokens (--max-tokens-limit, 4096) would not fit 60 KV rows; without a
    max_tokens from the client the default shrinks to fit them instead of a 503."""
    client = client_for(kv_budget_bytes=_kv_budget(target, 60))
    body = {k: v for k, v in CHAT.items() if k != "max_tokens"} | {"temperature": 0, "ignore_eos": True}
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    usage = resp.json()["usage"]
    assert usage["completion_tokens"] == 60 - usage["prompt_tokens"] - 1  # the last row: the next input
    assert resp.json()["choices"][0]["finish_reason"] == "length"
    # max_completion_tokens is the client's own choice too: kept, so refused
    explicit = {**body, "max_completion_tokens": 100}
    err = _error(client.post("/v1/chat/completions", json=explicit), 503, "server_error")
    assert err["code"] == "kv_cache_budget" and f"up to {usage['completion_tokens']} would fit" in err["message"]
    # a completion's default of 16 fits: unchanged
    resp = client.post("/v1/completions", json={"model": "tiny-random", "prompt": "hi", "ignore_eos": True})
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 16


def test_an_explicit_max_tokens_or_a_prompt_too_big_for_the_kv_budget_is_still_a_503(client_for, target):
    client = client_for(kv_budget_bytes=_kv_budget(target, 60))
    err = _error(client.post("/v1/completions", json={**COMPLETION, "max_tokens": 100}), 503, "server_error")
    assert err["code"] == "kv_cache_budget" and "--kv-cache-gb" in err["message"]
    no_room = {"model": "tiny-random", "prompt": [5] * 59}  # 59 + 1 token + the next input = 61 rows
    err = _error(client.post("/v1/completions", json=no_room), 503, "server_error")
    assert err["code"] == "kv_cache_budget" and "one generated token" in err["message"], err
    err = _error(client.post("/v1/completions", json={**no_room, "max_tokens": 1}), 503, "server_error")
    assert err["code"] == "kv_cache_budget" and "prompt alone does not fit" in err["message"], err


def test_a_failed_step_shared_by_two_requests_is_a_500_for_both_with_no_ones_message(target, caplog):
    """A step of several requests cannot say whose it was: neither client gets the other's error
    (a 400 with someone else's grammar or prompt); both get a 500, the cause in the log."""
    import threading
    import time

    stepped, go = threading.Event(), threading.Event()

    class FailingInABatch(Engine):
        def step(self, states):
            if len(states) > 1:
                raise SpecdecodeError(f"the other request's grammar failed: {SECRET}")
            stepped.set()
            go.wait(10)  # the first request waits here until the second is queued
            return super().step(states)

    app = create_app(FailingInABatch(target, None), ServerConfig("tiny-random", allowed_hosts=("testserver",)))
    answers = {}
    with TestClient(app, raise_server_exceptions=False) as client, \
            caplog.at_level(logging.ERROR, logger="specdecode.server"):
        def post(name):
            answers[name] = client.post("/v1/completions", json={**COMPLETION, "max_tokens": 50})

        first = threading.Thread(target=post, args=("first",))
        first.start()
        assert stepped.wait(10)
        second = threading.Thread(target=post, args=("second",))
        second.start()
        time.sleep(0.5)  # the second request is queued; the next round takes both
        go.set()
        first.join(20)
        second.join(20)
    for name in ("first", "second"):
        err = _error(answers[name], 500, "server_error")
        assert SECRET not in err["message"], name
    assert any(r.exc_info and SECRET in str(r.exc_info[1]) for r in caplog.records)
