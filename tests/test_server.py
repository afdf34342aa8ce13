"""The OpenAI-compatible server, end to end: real uvicorn on a free port, the official client.

Tiny random models (target + noisy draft, or n-gram drafting) keep it fast; the text is
gibberish but deterministic, so server outputs are compared with Engine.generate exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

import specdecode  # noqa: E402
from specdecode import Engine, NgramDrafter, SamplingParams  # noqa: E402
from specdecode.server import ServerConfig, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = "tiny-random"


class ServerThread:
    """uvicorn serving `app` from a background thread, on a port the OS picked."""

    def __init__(self, app, **uvicorn_kw) -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, **uvicorn_kw))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    @property
    def scheduler(self):
        return self.app.state.scheduler

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kw)


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def target():
    return specdecode.load(MODEL)


@pytest.fixture(scope="module")
def draft():
    return specdecode.load("tiny-random-draft")


@pytest.fixture(scope="module")
def ref(target, draft):
    """The Python API with the same models and drafter as `server`: the expected outputs."""
    return Engine(target, draft, num_draft_tokens=2)  # fixed k: the tests check drafting happened


@pytest.fixture(scope="module")
def server(target, draft):
    config = ServerConfig(MODEL, max_batch=4, max_queue=64, max_body_bytes=64 * 1024, max_tokens_limit=512)
    with ServerThread(create_app(Engine(target, draft, num_draft_tokens=2), config)) as s:
        yield s


# -- outputs --------------------------------------------------------------------------------------

PROMPTS = ["def add(x, y):", "hello there, the weather", "for i in range(10):", "The quick brown fox"]


def test_completion_greedy_equals_python_api(server, ref):
    client = server.client()
    for prompt in PROMPTS[:2]:
        want = ref.generate(prompt, temperature=0, max_new_tokens=24, chat=False)
        r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
        assert r.choices[0].text == want.text
        assert r.choices[0].finish_reason == want.finish_reason
        assert r.usage.prompt_tokens == want.stats.prompt_tokens
        assert r.usage.completion_tokens == want.stats.generated_tokens
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        spec = r.model_extra["specdecode"]
        assert spec["drafted_tokens"] > 0 and spec["accepted_tokens"] == want.stats.accepted_tokens


def test_completion_token_id_prompt(server, ref, target):
    ids = target.tokenizer.encode("def add(x, y):")
    want = ref.generate(ids, temperature=0, max_new_tokens=12)
    r = server.client().completions.create(model=MODEL, prompt=ids, max_tokens=12, temperature=0)
    assert r.choices[0].text == want.text


def test_completion_stream(server, ref):
    want = ref.generate(PROMPTS[2], temperature=0, max_new_tokens=30, chat=False)
    stream = server.client().completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=30, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == want.text
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == want.finish_reason
    assert finish[0].model_extra["specdecode"]["generated_tokens"] == want.stats.generated_tokens
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == want.stats.generated_tokens


def test_chat_greedy_and_stream(server, ref):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello there"}]
    want = ref.generate(messages, temperature=0, max_new_tokens=20)
    client = server.client()
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == want.stats.prompt_tokens
    assert r.model_extra["specdecode"]["target_passes"] == want.stats.target_passes

    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == want.finish_reason
    assert chunks[-1].model_extra["specdecode"]["accepted_tokens"] == want.stats.accepted_tokens
    # Text content parts and the "developer" role are accepted too.
    parts = [{"role": "developer", "content": "You are terse."},
             {"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    r = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=20, temperature=0)
    assert r.choices[0].message.content == want.text


def test_a_conversation_reuses_its_history_and_says_so(server, target, draft):
    """Each turn resends the conversation: turns 2+ start from the prefix cache (usage's
    cached_tokens, /metrics), and every answer is the one an engine without a cache gives."""
    no_cache = Engine(target, draft, num_draft_tokens=2, prefix_cache=None)
    client = server.client()
    messages = [{"role": "user", "content": "tell me about the weather in spring"}]
    before = httpx.get(server.url + "/metrics").text
    hits_before = _metric(before, "specdecode_prefix_cache_hits_total")
    for turn in range(3):
        want = no_cache.generate(messages, temperature=0, max_new_tokens=16)
        r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
        assert r.choices[0].message.content == want.text
        cached = r.usage.prompt_tokens_details.cached_tokens
        assert (cached > 0) if turn else True
        assert cached < r.usage.prompt_tokens
        messages += [{"role": "assistant", "content": want.text}, {"role": "user", "content": f"and then {turn}?"}]
    metrics = httpx.get(server.url + "/metrics").text
    assert _metric(metrics, "specdecode_prefix_cache_hits_total") >= hits_before + 2
    assert 0 < _metric(metrics, "specdecode_prefix_cache_bytes") <= _metric(metrics, "specdecode_prefix_cache_budget_bytes")
    assert server.client().models.list().data[0].model_extra["specdecode"]["prefix_cache"].startswith("on")


def _metric(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def _ascii_stop(text: str, start: int = 6) -> str:
    m = re.search(r"[A-Za-z]{2}", text[start:])
    assert m, f"no ASCII pair to stop at in {text!r}"
    return m.group()


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings(server, ref, stream):
    full = ref.generate(PROMPTS[0], temperature=0, max_new_tokens=40, chat=False).text
    stop = _ascii_stop(full)
    client = server.client()
    for stops in (stop, ["\x00never", stop]):
        r = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=40, temperature=0, stop=stops,
                                      stream=stream)
        if stream:
            chunks = list(r)
            text = "".join(c.choices[0].text for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            text, finish = r.choices[0].text, r.choices[0].finish_reason
        assert text == full[: full.index(stop)]
        assert finish == "stop"


def test_seeded_sampling_is_reproducible(server, ref):
    client = server.client()
    kw = dict(model=MODEL, prompt=PROMPTS[1], max_tokens=24, temperature=1.0, top_p=0.95)
    a = client.completions.create(seed=1234, **kw).choices[0].text
    b = client.completions.create(seed=1234, **kw, stream=True)
    b = "".join(c.choices[0].text for c in b)
    assert a == b
    want = ref.generate(PROMPTS[1], temperature=1.0, top_p=0.95, max_new_tokens=24, seed=1234, chat=False)
    assert a == want.text  # the same generator stream as the Python API
    others = {client.completions.create(seed=s, **kw).choices[0].text for s in range(1, 6)}
    assert len(others) > 1


def test_models_and_health(server):
    client = server.client()
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].model_extra["specdecode"]["drafter"] == "model"
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok"
    # the probe ran on the served target: its layers must be row-invariant (packed kernels or not)
    assert health["kernels"]["row_invariant"] is True and health["kernels"]["path"] in ("avx512", "avx2", "scalar", "PyTorch")


# -- concurrency ----------------------------------------------------------------------------------

def test_16_concurrent_requests(server, ref):
    jobs = [(f"{PROMPTS[i % 4]} {i}", 16 + i % 5, i % 2 == 1) for i in range(16)]
    wants = [ref.generate(p, temperature=0, max_new_tokens=n, chat=False).text for p, n, _ in jobs]
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)

    async def one(prompt, n, stream):
        r = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=n, temperature=0, stream=stream)
        if not stream:
            return r.choices[0].text
        return "".join([c.choices[0].text async for c in r])

    async def all_of_them():
        try:
            return await asyncio.gather(*(one(*j) for j in jobs))
        finally:
            await client.close()

    assert asyncio.run(all_of_them()) == wants
    wait_for(lambda: server.scheduler.active == 0 and server.scheduler.queue_length == 0)


class GatedEngine(Engine):
    """Holds every generation at a gate until the test opens it."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.gate = threading.Event()

    def step(self, states):
        assert self.gate.wait(20)
        return super().step(states)


class SlowEngine(Engine):
    """Sleeps after every step: a long generation stays in progress for seconds."""

    def step(self, states):
        info = super().step(states)
        time.sleep(0.01)
        return info


def test_disconnect_mid_stream_cancels_and_frees_the_slot(target):
    engine = SlowEngine(target, NgramDrafter())
    with ServerThread(create_app(engine, ServerConfig(MODEL, max_batch=1))) as s:
        metrics = s.app.state.metrics
        body = {"model": MODEL, "prompt": PROMPTS[3], "max_tokens": 2000, "ignore_eos": True, "stream": True}
        with httpx.Client(timeout=30) as c, c.stream("POST", s.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        # The worker closes the generation (2000 tokens would take 10+ s) and takes the next request.
        wait_for(lambda: s.scheduler.active == 0, timeout=5)
        assert metrics.cancelled == 1 and metrics.generated_tokens < 2000
        want = Engine(target, NgramDrafter()).generate(PROMPTS[3], temperature=0, max_new_tokens=16, chat=False).text
        t0 = time.time()
        r = s.client().completions.create(model=MODEL, prompt=PROMPTS[3], max_tokens=16, temperature=0)
        assert r.choices[0].text == want and time.time() - t0 < 5


def test_round_robin_lets_a_short_request_pass_a_long_one(target):
    with ServerThread(create_app(SlowEngine(target, NgramDrafter()), ServerConfig(MODEL, max_batch=2))) as s:
        client, done = s.client(), []

        def long_request():  # ignore_eos is an extension: raw HTTP
            r = s.post("/v1/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 150, "ignore_eos": True})
            assert r.json()["usage"]["completion_tokens"] == 150
            done.append("long")

        t = threading.Thread(target=long_request)
        t.start()
        wait_for(lambda: s.scheduler.active == 1)
        client.completions.create(model=MODEL, prompt="hi", max_tokens=4, temperature=0)
        done.append("short")
        t.join(60)
        assert done == ["short", "long"]


def test_queue_full_429_and_waiting_disconnect_frees_place(target):
    engine = GatedEngine(target, NgramDrafter())
    config = ServerConfig(MODEL, max_batch=1, max_queue=1)
    with ServerThread(create_app(engine, config)) as s:
        sched, client = s.scheduler, s.client()
        results = []

        def request():
            r = client.completions.create(model=MODEL, prompt="hello", max_tokens=4, temperature=0)
            results.append(r.choices[0].text)

        first = threading.Thread(target=request)
        first.start()
        wait_for(lambda: sched.active == 1)
        # A waiting request whose client gives up leaves the queue at once.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(s.url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 4}, timeout=0.5)
        wait_for(lambda: sched.queue_length == 0)
        second = threading.Thread(target=request)
        second.start()
        wait_for(lambda: sched.queue_length == 1)

        t0 = time.time()
        r = s.post("/v1/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 4})
        assert r.status_code == 429 and time.time() - t0 < 2
        assert r.json()["error"]["code"] == "queue_full"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2)

        engine.gate.set()
        first.join(20)
        second.join(20)
        assert len(results) == 2 and results[0] == results[1]
        again = client.completions.create(model=MODEL, prompt="hello", max_tokens=4, temperature=0)
        assert again.choices[0].text == results[0]
        metrics = httpx.get(s.url + "/metrics").text
        assert 'specdecode_requests_total{endpoint="/v1/completions",status="429"} 1' in metrics


def test_ngram_drafter_server(target):
    ref = Engine(target, NgramDrafter())
    with ServerThread(create_app(Engine(target, NgramDrafter()), ServerConfig(MODEL))) as s:
        client = s.client()
        prompt = "def add(x, y):\n    return x + y\ndef add(x, y):"
        want = ref.generate(prompt, temperature=0, max_new_tokens=32, chat=False)
        r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=32, temperature=0)
        assert r.choices[0].text == want.text
        assert r.model_extra["specdecode"]["drafted_tokens"] == want.stats.drafted_tokens
        messages = [{"role": "user", "content": prompt}]
        want = ref.generate(messages, temperature=0, max_new_tokens=16)
        chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0,
                                                     stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
        assert client.models.list().data[0].model_extra["specdecode"]["drafter"] == "ngram"


# -- bad input ------------------------------------------------------------------------------------

C, CH = "/v1/completions", "/v1/chat/completions"
OK_C = {"model": MODEL, "prompt": "hello", "max_tokens": 4}
OK_CH = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
LONG = "hello " * 3000  # > 2048 tokens, < 64 KiB

BAD = [
    (C, b"{not json", 400, None, "invalid_json"),
    (C, b"", 400, None, "invalid_json"),
    (C, b"[1, 2]", 400, None, None),
    (C, b'"just a string"', 400, None, None),
    (C, {"prompt": "x"}, 400, "model", None),
    (C, {"model": MODEL}, 400, "prompt", None),
    (CH, {"model": MODEL}, 400, "messages", None),
    (C, {**OK_C, "model": "gpt-4"}, 404, "model", "model_not_found"),
    (CH, {**OK_CH, "model": 5}, 400, "model", None),
    (C, {**OK_C, "max_tokens": "10"}, 400, "max_tokens", None),
    (C, {**OK_C, "max_tokens": 1.5}, 400, "max_tokens", None),
    (C, {**OK_C, "max_tokens": -3}, 400, "max_tokens", None),
    (C, {**OK_C, "max_tokens": 0}, 400, "max_tokens", None),
    (C, {**OK_C, "max_tokens": 10**30}, 400, "max_tokens", None),
    (C, {**OK_C, "max_tokens": 513}, 400, "max_tokens", None),
    (CH, {**OK_CH, "max_completion_tokens": 10**6}, 400, "max_tokens", None),
    (C, {**OK_C, "temperature": "hot"}, 400, "temperature", None),
    (C, {**OK_C, "temperature": -1}, 400, "temperature", None),
    (C, {**OK_C, "temperature": 1e400}, 400, "temperature", None),
    (C, {**OK_C, "top_p": 0}, 400, "top_p", None),
    (C, {**OK_C, "top_p": 1.5}, 400, "top_p", None),
    (C, {**OK_C, "top_k": -5}, 400, "top_k", None),
    (C, {**OK_C, "seed": 2**70}, 400, "seed", None),
    (C, {**OK_C, "seed": "x"}, 400, "seed", None),
    (C, {**OK_C, "stop": 5}, 400, "stop", None),
    (C, {**OK_C, "stop": [""]}, 400, "stop", None),
    (C, {**OK_C, "stop": ["a"] * 17}, 400, "stop", None),
    (C, {**OK_C, "stream": "yes"}, 400, "stream", None),
    (C, {**OK_C, "n": 2}, 400, "n", "unsupported_parameter"),
    (CH, {**OK_CH, "n": 3}, 400, "n", "unsupported_parameter"),
    (C, {**OK_C, "logprobs": 6}, 400, "logprobs", None),
    (C, {**OK_C, "echo": True}, 400, "echo", "unsupported_parameter"),
    (CH, {**OK_CH, "functions": [{"name": "f"}]}, 400, "functions", "unsupported_parameter"),
    (CH, {**OK_CH, "tools": [{"type": "function", "function": {"name": "no spaces"}}]}, 400, "tools", None),
    (CH, {**OK_CH, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]},
     400, "tools", None),
    (CH, {**OK_CH, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}, 400,
     "tool_choice", None),
    (CH, {**OK_CH, "tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400, "tool_choice", None),
    (CH, {**OK_CH, "tool_choice": "required"}, 400, "tool_choice", None),
    (CH, {**OK_CH, "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}, 400, "messages", None),
    (C, {**OK_C, "presence_penalty": 2.5}, 400, "presence_penalty", None),
    (C, {**OK_C, "frequency_penalty": "high"}, 400, "frequency_penalty", None),
    (C, {**OK_C, "logit_bias": {"abc": 1}}, 400, "logit_bias", None),
    (C, {**OK_C, "logit_bias": {"5": 150}}, 400, "logit_bias", None),
    (C, {**OK_C, "logit_bias": {"999999": 1}}, 400, "logit_bias", None),
    (C, {**OK_C, "logit_bias": {"\u00b2": 1}}, 400, "logit_bias", None),  # a digit to str.isdigit, not to int()
    (C, {**OK_C, "logit_bias": {"1" * 5000: 1}}, 400, "logit_bias", None),  # past int()'s digit limit
    (CH, {**OK_CH, "tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": {"type": "function", "function": "f"}}, 400, "tool_choice", None),
    (CH, {**OK_CH, "tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": {"type": "function", "function": None}}, 400, "tool_choice", None),
    (C, {**OK_C, "prompt": ""}, 400, "prompt", None),
    (C, {**OK_C, "prompt": []}, 400, "prompt", None),
    (C, {**OK_C, "prompt": ["a", "b"]}, 400, "prompt", None),
    (C, {**OK_C, "prompt": [1, "a"]}, 400, "prompt", None),
    (C, {**OK_C, "prompt": [10**9]}, 400, "prompt", None),
    (C, {**OK_C, "prompt": [-1]}, 400, "prompt", None),
    (C, {**OK_C, "prompt": 5}, 400, "prompt", None),
    (C, {**OK_C, "prompt": {"$ref": "/etc/passwd"}}, 400, "prompt", None),
    (CH, {**OK_CH, "messages": []}, 400, "messages", None),
    (CH, {**OK_CH, "messages": "hi"}, 400, "messages", None),
    (CH, {**OK_CH, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages", None),
    (CH, {**OK_CH, "messages": [{"content": "hi"}]}, 400, "messages", None),
    (CH, {**OK_CH, "messages": [{"role": "user", "content": None}]}, 400, "messages", None),
    (CH, {**OK_CH, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, 400, "messages", None),
    (C, {**OK_C, "prompt": LONG}, 400, "prompt", "context_length_exceeded"),
    (C, {**OK_C, "prompt": [5] * 2100}, 400, "prompt", "context_length_exceeded"),
    (CH, {**OK_CH, "messages": [{"role": "user", "content": LONG}]}, 400, "messages", "context_length_exceeded"),
    (CH, {**OK_CH, "messages": [{"role": "user", "content": LONG}], "stream": True}, 400, "messages",
     "context_length_exceeded"),
]


def _check_error(r: httpx.Response, status: int, param=None, code=None) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err


def test_bad_inputs_get_openai_errors(server):
    import json

    with httpx.Client(base_url=server.url, timeout=30) as c:
        for path, body, status, param, code in BAD:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = c.post(path, content=content, headers={"content-type": "application/json"})
            _check_error(r, status, param, code)
        _check_error(c.get("/v1/nope"), 404, code="not_found")
        _check_error(c.get(C), 405)
        # Oversized bodies: declared, and chunked without a length.
        big = b'{"model": "tiny-random", "prompt": "' + b"a" * (100 * 1024) + b'"}'
        json_type = {"content-type": "application/json"}
        _check_error(c.post(C, content=big, headers=json_type), 413, code="request_too_large")
        _check_error(c.post(C, content=iter([big[i:i + 8192] for i in range(0, len(big), 8192)]), headers=json_type),
                     413)
        # ... and the server still serves.
        assert c.get("/health").status_code == 200
        assert c.post(C, json=OK_C).status_code == 200
        assert c.post(CH, json=OK_CH).status_code == 200
    with pytest.raises(openai.BadRequestError, match="n > 1"):
        server.client().completions.create(model=MODEL, prompt="hi", n=2)
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_metrics_after_requests(server):
    client = server.client()
    client.completions.create(model=MODEL, prompt="hello", max_tokens=8, temperature=0)
    server.post(C, content=b"{oops")
    text = httpx.get(server.url + "/metrics").text
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? \S+', line), line
    values = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['specdecode_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert values['specdecode_requests_total{endpoint="/v1/completions",status="400"}'] >= 1
    assert values["specdecode_prompt_tokens_total"] > 0 and values["specdecode_generation_tokens_total"] > 0
    assert values["specdecode_draft_tokens_total"] > 0
    assert 0 < values["specdecode_accepted_tokens_total"] <= values["specdecode_draft_tokens_total"]
    assert values['specdecode_drafted_by_position_total{position="0"}'] > 0
    assert 0 <= values['specdecode_acceptance_rate_by_position{position="0"}'] <= 1
    assert values["specdecode_queue_length"] == 0
    assert values["specdecode_time_to_first_token_seconds_count"] > 0
    ttft = "specdecode_time_to_first_token_seconds"
    assert values[ttft + '_bucket{le="+Inf"}'] == values[ttft + "_count"]
    assert values["specdecode_time_per_output_token_seconds_count"] > 0
    assert "specdecode_time_per_output_token_seconds_sum" in values


# -- security -------------------------------------------------------------------------------------

def test_api_key(target):
    config = ServerConfig(MODEL, api_key="s3cret")
    with ServerThread(create_app(Engine(target, NgramDrafter()), config)) as s:
        for method, path in (("POST", C), ("POST", CH), ("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/nope")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = httpx.request(method, s.url + path, json=OK_C, headers=headers)
                _check_error(r, 401, code="invalid_api_key")
        assert httpx.get(s.url + "/health").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        good = s.client(api_key="s3cret")
        assert good.completions.create(model=MODEL, prompt="hi", max_tokens=3).usage.completion_tokens >= 1
        assert httpx.get(s.url + "/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


# -- command line and load test -------------------------------------------------------------------

def spawn_server(*options: str, env: dict | None = None) -> tuple[subprocess.Popen, str, int]:
    """`specdecode serve` (tiny model, n-gram drafter, one thread) in a subprocess on a free port,
    with `options`; returns once /health answers: (process, base URL, port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "specdecode", "serve", "--model", MODEL, "--drafter", "ngram",
                             "--port", str(port), "--threads", "1", *options],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    try:
        while True:
            assert proc.poll() is None, proc.stdout.read()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health").status_code == 200:
                    return proc, url, port
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.2)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def test_cli_serve_subprocess():
    env = {**os.environ, "SPECDECODE_API_KEY": "envkey"}
    proc, url, port = spawn_server("--max-queue", "2", "--log-level", "warning", "--allowed-hosts", "box.lan",
                                   "--read-timeout", "1", env=env)
    try:
        assert httpx.get(url + "/v1/models").status_code == 401
        auth = {"Authorization": "Bearer envkey"}
        assert httpx.get(url + "/v1/models", headers=auth).json()["data"][0]["id"] == MODEL
        assert httpx.get(url + "/v1/models", headers={**auth, "host": "box.lan"}).status_code == 200
        assert httpx.get(url + "/v1/models", headers={**auth, "host": "evil.example"}).status_code == 421
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # --read-timeout 1
            t0 = time.time()
            assert sock.recv(10) == b"" and time.time() - t0 < 5
        client = openai.OpenAI(base_url=url + "/v1", api_key="envkey", max_retries=0)
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert r.choices[0].finish_reason in ("stop", "length")
    finally:
        proc.terminate()
        proc.wait(20)


def test_loadtest_script(server, capsys, tmp_path):
    from specdecode.server import loadtest

    out = tmp_path / "load.json"
    rc = loadtest.main(["--url", server.url, "--concurrency", "1,3", "--requests", "3", "--max-tokens", "8",
                        "--warmup", "0", "--json", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "total tok/s" in table and "mixed" in table
    import json

    levels = json.loads(out.read_text())["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 3]
    for lv in levels:
        assert lv["errors"] == 0 and lv["completion_tokens"] == 3 * 8 and lv["mismatched"] == 0
        assert lv["ttft_p50_s"] > 0 and lv["total_tok_s"] > 0 and lv["acceptance_rate"] is not None
        # the caches' memory, watched during the level, stayed within the budgets
        assert 0 < lv["peak_specdecode_prefix_cache_bytes"] <= lv["peak_specdecode_prefix_cache_budget_bytes"]
    assert "prefix cache peak" in table
    # three distinct prompts per level; the same three answers at both levels (one batched, one not)
    texts = [{r["prompt_index"]: r["text"] for r in lv["results"]} for lv in levels]
    assert texts[0] == texts[1] and len(set(texts[0].values())) == 3


def test_loadtest_counts_a_mixed_up_answer(monkeypatch):
    """The "mixed" check itself: a server that answers one prompt differently the second time is caught."""
    import asyncio

    from specdecode.server import loadtest

    calls = []

    async def fake_request(client, url, body, headers):
        calls.append(body["prompt"])
        text = body["prompt"] + ("!" if len(calls) == 3 else "")  # the third answer is wrong
        return loadtest.RequestResult(True, ttft=0.1, total=0.2, completion_tokens=4, text=text)

    monkeypatch.setattr(loadtest, "one_request", fake_request)
    args = loadtest.argparse.Namespace(url="http://x", chat=False, api_key=None, requests=2, max_tokens=4,
                                       temperature=0.0, ignore_eos=True, timeout=5, prompts=["a", "b"])
    answers = {}
    first = asyncio.run(loadtest.run_level(args, "m", 1, answers))
    second = asyncio.run(loadtest.run_level(args, "m", 2, answers))
    assert first["mismatched"] == 0 and second["mismatched"] == 1


# -- sampling edges -------------------------------------------------------------------------------

@pytest.mark.parametrize("edge", [{"temperature": 1e-45}, {"temperature": 5e-324}, {"temperature": 1e-38},
                                  {"temperature": 1, "top_p": 1e-46}, {"temperature": 1, "top_k": 1}])
def test_tiny_temperature_and_top_p_give_the_greedy_text(server, ref, edge):
    """Not NaN (which sampled token 0 over and over: an empty text) but the greedy limit; with top_p
    or top_k the bfloat16 logits of the tiny model can tie at the top, so those are compared with
    the Python API under the same seed (test_sampling.py checks them against greedy in float32)."""
    greedy = ref.generate(PROMPTS[0], temperature=0, max_new_tokens=16, chat=False, ignore_eos=True)
    want = ref.generate(PROMPTS[0], max_new_tokens=16, chat=False, ignore_eos=True, seed=5, **edge)
    assert len(set(want.token_ids)) > 1
    if "top_p" not in edge and "top_k" not in edge:
        assert want.text == greedy.text
    body = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 16, "ignore_eos": True, "seed": 5, **edge}
    r = server.post(C, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == want.text
    with httpx.stream("POST", server.url + C, json={**body, "stream": True}, timeout=30) as s:
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    import json

    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == want.text


# -- local-server safety: Host, Origin, Content-Type ---------------------------------------------

def test_post_must_be_declared_json(server):
    body = b'{"model": "tiny-random", "prompt": "hello", "max_tokens": 2}'
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                         "application/jsonx", "text/json"):
        headers = {} if content_type is None else {"content-type": content_type}
        for path in (C, CH):
            _check_error(server.post(path, content=body, headers=headers), 415, code="unsupported_media_type")
    ok = server.post(C, content=body, headers={"content-type": "Application/JSON; charset=utf-8"})
    assert ok.status_code == 200, ok.text


def test_host_header_must_name_this_server(server):
    for host in ("localhost", f"localhost:{server.port}", "127.0.0.1", f"127.0.0.1:{server.port}", "[::1]",
                 f"[::1]:{server.port}", "LocalHost"):
        assert httpx.get(server.url + "/v1/models", headers={"host": host}).status_code == 200, host
    for host in ("evil.example", f"evil.example:{server.port}", "localhost.evil.example", "127.0.0.1.nip.io",
                 "localhost:abc", "[::1", ""):
        r = httpx.get(server.url + "/v1/models", headers={"host": host})
        _check_error(r, 421, code="invalid_host")
    # The rebinding attack proper: a POST that names the attacker's host.
    _check_error(server.post(C, json=OK_C, headers={"host": "evil.example"}), 421, code="invalid_host")
    # HTTP/1.0 without a Host header at all.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 421")


def _asgi_client(target, **config):
    from starlette.testclient import TestClient

    return TestClient(create_app(Engine(target, NgramDrafter()), ServerConfig(MODEL, **config)),
                      base_url="http://127.0.0.1")


def test_allowed_hosts_and_wildcard_bind(target):
    from specdecode.server.guard import allowed_host_names

    def status(client, host):
        return client.get("/v1/models", headers={"host": host}).status_code

    named = _asgi_client(target, allowed_hosts=("Box.LAN",))
    assert [status(named, h) for h in ("box.lan:8000", "localhost", "evil.example")] == [200, 200, 421]
    anywhere = _asgi_client(target, host="0.0.0.0")  # the names clients use cannot be known
    assert status(anywhere, "evil.example") == 200 and status(anywhere, "192.168.1.5:8000") == 200
    listed = _asgi_client(target, host="0.0.0.0", allowed_hosts=("box.lan", "192.168.1.5"))
    assert [status(listed, h) for h in ("box.lan", "192.168.1.5:8000", "127.0.0.1", "evil.example")] == \
        [200, 200, 200, 421]
    bound = _asgi_client(target, host="192.168.1.5")
    assert [status(bound, h) for h in ("192.168.1.5:8000", "localhost", "box.lan")] == [200, 200, 421]
    assert status(_asgi_client(target, allowed_hosts=("*",)), "x.y") == 200
    assert allowed_host_names("::", ["*"]) is None and "::1" in allowed_host_names("[::1]")


def test_browser_origins_refused_unless_allowed(server, target):
    # Default: no origin is allowed, whatever the method; the 403 carries no CORS header.
    for method, path in (("GET", "/v1/models"), ("POST", C), ("GET", "/health"), ("OPTIONS", C)):
        r = httpx.request(method, server.url + path, json=OK_C,
                          headers={"origin": "http://evil.example", "access-control-request-method": "POST"})
        _check_error(r, 403, code="origin_not_allowed")
        assert "access-control-allow-origin" not in r.headers
    _check_error(server.post(C, json=OK_C, headers={"origin": "null"}), 403)

    page = "http://localhost:3000"
    client = _asgi_client(target, api_key="k", allowed_origins=(page, "https://app.example/"))
    pre = client.options(C, headers={"origin": page, "access-control-request-method": "POST",
                                     "access-control-request-headers": "authorization, content-type"})
    assert pre.status_code == 204  # preflights carry no credentials: answered before the key check
    assert pre.headers["access-control-allow-origin"] == page and pre.headers["vary"] == "Origin"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert pre.headers["access-control-allow-headers"] == "authorization, content-type"
    r = client.get("/v1/models", headers={"origin": page, "authorization": "Bearer k"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
    r = client.get("/v1/models", headers={"origin": page})  # the page can read why it failed
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == page
    r = client.get("/v1/models", headers={"origin": "https://app.example", "authorization": "Bearer k"})
    assert r.status_code == 200
    r = client.get("/v1/models", headers={"origin": "http://localhost:3001", "authorization": "Bearer k"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    assert client.get("/v1/models", headers={"authorization": "Bearer k"}).status_code == 200  # no Origin: not a page


# -- smaller points: served name, echoed strings, timeouts ----------------------------------------

def test_default_served_name_is_never_a_path(tmp_path):
    from specdecode.server.cli import default_served_name

    gguf = tmp_path / "qwen2.5-coder-1.5b-q8_0.gguf"
    gguf.write_bytes(b"")
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert default_served_name(str(gguf)) == "qwen2.5-coder-1.5b-q8_0"
    assert default_served_name(str(folder)) == "my-model"
    assert default_served_name(str(folder) + "/") == "my-model"
    assert default_served_name("qwen2.5-coder-1.5b") == "qwen2.5-coder-1.5b"
    assert default_served_name("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"  # a hub id
    assert str(tmp_path) not in default_served_name(str(tmp_path / "missing.gguf"))


def test_echoed_user_strings_are_cut(server):
    huge = "m" * 50_000
    for path, body in ((C, {**OK_C, "model": huge}), (CH, {**OK_CH, "messages": [{"role": huge, "content": "x"}]})):
        r = server.post(path, json=body)
        assert r.status_code in (400, 404)
        message = r.json()["error"]["message"]
        assert len(message) < 500 and "m" * 200 + "..." in message
    _check_error(server.post(C, json=OK_C, headers={"origin": "http://" + "o" * 5000}), 403)
    assert len(server.post(C, json=OK_C, headers={"origin": "http://" + "o" * 5000}).text) < 500


def test_idle_and_slow_connections_time_out(target):
    from specdecode.server.protocol import header_timeout_protocol

    engine = SlowEngine(target, NgramDrafter())
    with ServerThread(create_app(engine, ServerConfig(MODEL, read_timeout=0.5)),
                      http=header_timeout_protocol(0.5)) as s:
        def closed_after(payload: bytes) -> float:
            with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
                t0 = time.time()
                sock.sendall(payload)
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
                return time.time() - t0, data

        elapsed, data = closed_after(b"")  # connects, says nothing
        assert 0.4 < elapsed < 5 and data == b""
        elapsed, data = closed_after(b"GET /health HTTP/1.1\r\nHost: localh")  # headers never end
        assert 0.4 < elapsed < 5 and data == b""
        # Headers complete, body never comes: 408 in OpenAI's shape.
        elapsed, data = closed_after(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"")
        assert 0.4 < elapsed < 5 and data.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in data
        # A keep-alive connection, idle after its answer, is closed too.
        elapsed, data = closed_after(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 200") and elapsed < 3  # uvicorn's own keep-alive limit is 5 s
        # A generation that takes longer than the timeout is not cut: only reading the request is timed.
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 120, "ignore_eos": True}
        t0 = time.time()
        r = s.post(C, json=body)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 120
        assert time.time() - t0 > 0.5, "the generation was too quick to show anything"


# -- graceful shutdown ----------------------------------------------------------------------------

def test_sigterm_ends_streams_answers_waiting_requests_and_exits_0():
    import json
    import signal

    proc, url, _ = spawn_server("--max-batch", "1", "--log-level", "info", "--shutdown-timeout", "1")
    try:
        long = {"model": MODEL, "prompt": "hello", "max_tokens": 2000, "ignore_eos": True}
        waiting, events = [], []

        def wait_in_queue():  # --max-active 1: queued behind the stream
            waiting.append(httpx.post(url + C, json=long, timeout=30))

        with httpx.stream("POST", url + C, json={**long, "stream": True}, timeout=30) as r:
            lines = r.iter_lines()
            events.append(next(lines))
            waiter = threading.Thread(target=wait_in_queue)
            waiter.start()
            wait_for(lambda: "specdecode_queue_length 1" in httpx.get(url + "/metrics").text)
            t0 = time.time()
            proc.send_signal(signal.SIGTERM)
            events += [line for line in lines if line]
        waiter.join(10)
        elapsed = time.time() - t0
        rc = proc.wait(20)
        log = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, log
    assert "Traceback" not in log and "CancelledError" not in log, log
    # The stream ran on through the 1 s grace, then ended: final chunk, error event, [DONE].
    assert 0.9 < elapsed < 10
    assert events[-1] == "data: [DONE]"
    final, error = json.loads(events[-3][6:]), json.loads(events[-2][6:])
    assert final["choices"][0]["finish_reason"] == "abort"
    assert error["error"]["code"] == "shutting_down" and set(error["error"]) == {"message", "type", "param", "code"}
    assert all(json.loads(e[6:])["choices"][0]["finish_reason"] is None for e in events[:-3])
    # The queued non-streamed request got a 503 in OpenAI's shape at once.
    assert waiting and waiting[0].status_code == 503
    assert waiting[0].json()["error"]["code"] == "shutting_down"


def test_draining_scheduler_refuses_new_requests(server, target):
    """drain() in-process: new requests get 503 `shutting_down`, /health says so too."""
    with ServerThread(create_app(Engine(target, NgramDrafter()), ServerConfig(MODEL))) as s:
        assert s.post(C, json=OK_C).status_code == 200
        s.scheduler.drain()
        _check_error(s.post(C, json=OK_C), 503, code="shutting_down")
        r = httpx.get(s.url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "shutting_down"


# -- structured output ------------------------------------------------------------------------------


def test_structured_output_through_the_openai_client(server, ref):
    """client.beta.chat.completions.parse with a pydantic model: the answer parses into the model
    (the random model says gibberish inside the schema's fixed parts), equals the Python API's
    constrained greedy answer, and streams to the same text; json_object gives a JSON object."""
    import json

    from pydantic import BaseModel, Field

    class Pet(BaseModel):
        kind: str = Field(json_schema_extra={"enum": ["cat", "dog"]})
        legs: int = Field(ge=0, le=8)
        friendly: bool

    client = server.client()
    messages = [{"role": "user", "content": "describe a pet"}]
    parsed = client.beta.chat.completions.parse(model=MODEL, messages=messages, response_format=Pet,
                                                temperature=0, max_tokens=200)
    pet = parsed.choices[0].message.parsed
    assert isinstance(pet, Pet) and pet.kind in ("cat", "dog") and 0 <= pet.legs <= 8
    schema = openai.lib._pydantic.to_strict_json_schema(Pet)
    expected = ref.generate(messages, SamplingParams(max_new_tokens=200, json_schema=schema), chat=True)
    assert parsed.choices[0].message.content == expected.text
    fmt = {"type": "json_schema", "json_schema": {"name": "Pet", "schema": schema, "strict": True}}
    stream = client.chat.completions.create(model=MODEL, messages=messages, response_format=fmt, temperature=0,
                                            max_tokens=200, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected.text
    r = client.chat.completions.create(model=MODEL, messages=messages, response_format={"type": "json_object"},
                                       temperature=0, max_tokens=200)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    assert r.choices[0].message.content.startswith("{")


def test_a_bad_response_format_is_a_400(server):
    for fmt, what in [({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such"}}}, "JSON schema"),
                      ({"type": "json_schema", "json_schema": {"name": "x"}}, "schema"),
                      ({"type": "yaml"}, "response_format.type")]:
        r = server.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                      "response_format": fmt})
        assert r.status_code == 400 and what in r.json()["error"]["message"], r.text
        assert r.json()["error"]["param"] == "response_format"


# -- logprobs -----------------------------------------------------------------------------------


def test_logprobs_through_the_openai_client(server, target):
    """Chat (JSON and streamed) and completions logprobs are the target's: those of the Python
    API's target-only run, though the server speculates (k = 2 with the draft model)."""
    client = server.client()
    messages = [{"role": "user", "content": "hello there"}]
    alone = Engine(target).generate(messages, SamplingParams(max_new_tokens=16, logprobs=2), chat=True)
    want = [(round(lp.logprob, 6), [t for t, _ in lp.top]) for lp in alone.logprobs]
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16,
                                       logprobs=True, top_logprobs=2)
    got = r.choices[0].logprobs.content
    assert [(round(c.logprob, 6), len(c.top_logprobs)) for c in got] == [(w[0], 2) for w in want]
    assert "".join(c.token for c in got) == r.choices[0].message.content == alone.text
    assert all(bytes(c.bytes).decode("utf-8", "replace") == c.token for c in got)
    stream = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16,
                                            logprobs=True, top_logprobs=2, stream=True)
    streamed = [c for ch in stream if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [round(c.logprob, 6) for c in streamed] == [w[0] for w in want]
    plain = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=4)
    assert plain.choices[0].logprobs is None
    comp = client.completions.create(model=MODEL, prompt="def add(x, y):", temperature=0, max_tokens=12, logprobs=3)
    lp = comp.choices[0].logprobs
    ref = Engine(target).generate("def add(x, y):", SamplingParams(max_new_tokens=12, logprobs=3), chat=False)
    assert [round(v, 6) for v in lp.token_logprobs] == [round(x.logprob, 6) for x in ref.logprobs]
    # (tokens that print alike, such as two halves of a UTF-8 character, share one key of the dict)
    assert all(1 <= len(t) <= 3 for t in lp.top_logprobs) and lp.text_offset[0] == 0
    for body, param in [({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                        ({"top_logprobs": 2}, "top_logprobs"), ({"logprobs": 3}, "logprobs"), ({"logprobs": 1}, "logprobs")]:
        r = server.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = server.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "logprobs": 6})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
