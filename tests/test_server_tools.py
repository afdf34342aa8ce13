"""Tool calls and penalties through the server, with the official openai client.

The tool-capable tiny model of test_tools.py behind a real uvicorn: calls come back as OpenAI
`tool_calls` (JSON and streamed, the same calls as the Python API's), an assistant's calls and
the tool's answer go back in as messages, and penalties / logit_bias give the Python API's text.
"""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from specdecode import Engine, SamplingParams  # noqa: E402
from specdecode.drafters import ModelDrafter  # noqa: E402
from specdecode.server import ServerConfig, create_app  # noqa: E402
from test_server import ServerThread  # noqa: E402
from test_tools import MESSAGES, SCHEMAS, TOOLS, tool_models  # noqa: E402,F401  (tool_models: a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = "tiny-tools"


@pytest.fixture(scope="module")
def tool_server(tool_models):
    target, draft, tok = tool_models
    engine = Engine(target, ModelDrafter(draft), num_draft_tokens=3, tokenizer=tok)
    with ServerThread(create_app(engine, ServerConfig(MODEL, max_tokens_limit=512))) as s:
        yield s


@pytest.fixture(scope="module")
def ref(tool_models):
    target, _, tok = tool_models
    return Engine(target, tokenizer=tok)  # target-only: what the speculating server must give


def test_tool_calls_come_back_as_openai_tool_calls(tool_server, ref):
    client = tool_server.client()
    choice = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=choice,
                                       parallel_tool_calls=False, temperature=0, max_tokens=200)
    want = ref.generate(MESSAGES, SamplingParams(max_new_tokens=200), chat=True, tools=TOOLS, tool_choice=choice,
                        parallel_tool_calls=False)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content is None
    assert [(c.function.name, c.function.arguments) for c in msg.tool_calls] == \
        [(c.name, c.arguments) for c in want.tool_calls]
    assert msg.tool_calls[0].type == "function" and msg.tool_calls[0].id.startswith("call_")
    args = json.loads(msg.tool_calls[0].function.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("C", "F")
    assert r.usage.completion_tokens == want.stats.generated_tokens

    # streamed: the deltas add up to the same calls, the last chunk says tool_calls
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                            temperature=0, max_tokens=200, stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for d in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"name": "", "arguments": "", "id": None})
            entry["id"] = d.id or entry["id"]
            entry["name"] += (d.function.name or "") if d.function else ""
            entry["arguments"] += (d.function.arguments or "") if d.function else ""
    full = ref.generate(MESSAGES, SamplingParams(max_new_tokens=200), chat=True, tools=TOOLS, tool_choice="required")
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [(c.name, c.arguments) for c in full.tool_calls]
    assert finish == full.finish_reason and all(c["id"] for c in calls.values())
    for c in calls.values():
        assert set(json.loads(c["arguments"])) <= set(SCHEMAS[c["name"]]["properties"])


def test_a_tool_result_goes_back_in_the_conversation(tool_server, ref):
    client = tool_server.client()
    first = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, temperature=0, max_tokens=200)
    call = first.choices[0].message.tool_calls[0]
    history = MESSAGES + [first.choices[0].message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": "21 degrees and sunny"}]
    r = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, temperature=0, max_tokens=16)
    want = ref.generate(history, SamplingParams(max_new_tokens=16), chat=True, tools=TOOLS)
    assert r.choices[0].message.content == want.content and r.choices[0].message.tool_calls is None
    prompt = ref.tokenizer.hf.decode(ref.encode(history, True, [t for t in TOOLS]))
    assert "21 degrees and sunny" in prompt and call.function.arguments in prompt
    assert r.usage.prompt_tokens == want.stats.prompt_tokens


def test_tool_choice_none_is_plain_text_and_tools_need_a_template_for_them(tool_server, ref):
    client = tool_server.client()
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="none",
                                       temperature=0, max_tokens=12)
    want = ref.generate(MESSAGES, SamplingParams(max_new_tokens=12), chat=True)  # "none": the tools are not shown
    assert r.choices[0].message.content == want.text and r.choices[0].message.tool_calls is None


def test_penalties_and_logit_bias_through_the_server(tool_server, ref):
    client = tool_server.client()
    bias = {5: 4.0, 6: -100.0}
    r = client.completions.create(model=MODEL, prompt="def add(x, y):", max_tokens=30, temperature=0,
                                  frequency_penalty=1.2, presence_penalty=0.4,
                                  logit_bias={str(k): v for k, v in bias.items()})
    want = ref.generate("def add(x, y):", SamplingParams(max_new_tokens=30, frequency_penalty=1.2,
                                                         presence_penalty=0.4, logit_bias=bias), chat=False)
    plain = ref.generate("def add(x, y):", SamplingParams(max_new_tokens=30), chat=False)
    assert r.choices[0].text == want.text != plain.text
    assert 6 not in want.token_ids
