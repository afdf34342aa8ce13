"""Tool calls: parsing, streaming, the chat template, and the grammar, exact with speculation.

A tiny random model with a tokenizer that has `<tool_call>` / `</tool_call>` tokens and a
Qwen2.5-style template stands in for a real model: it writes gibberish, so the grammar is what
makes its calls well-formed, and every drafter must give the constrained target-only tokens.
"""

import json

import jsonschema
import torch
import pytest

from specdecode import SamplingParams
from specdecode.drafters import ModelDrafter, NgramDrafter, SuffixDrafter
from specdecode.engine import Engine
from specdecode.errors import InvalidParameterError, SpecdecodeError
from specdecode.loading.tiny import tiny_args, tiny_state_dict, tiny_tokenizer
from specdecode.model import build_transformer
from specdecode.tokenizer import Tokenizer
from specdecode.tools import ToolCallStream, ToolSpec, template_messages

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                            "unit": {"enum": ["C", "F"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER,
                                      "strict": True}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                         "b": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["a", "b"], "additionalProperties": False}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

# Qwen2.5's template in miniature: tools in the system turn, calls and tool results as it renders them
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools>\n"
    "Call as <tool_call>\n{\"name\": ..., \"arguments\": ...}\n</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% elif m.tool_calls %}<|im_start|>assistant{% for c in m.tool_calls %}\n<tool_call>\n"
    "{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tool_tokenizer():
    tok = tiny_tokenizer()
    tok.add_tokens(["<tool_call>", "</tool_call>"])  # ordinary added tokens, as in Qwen2.5's vocabulary
    tok.chat_template = TOOL_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def tool_models():
    """(target, draft) LanguageModels over the tool tokenizer's vocabulary, and a Tokenizer."""
    hf = tool_tokenizer()
    args = tiny_args(len(hf))
    target = build_transformer(args, tiny_state_dict(args), dtype=torch.float32, device=torch.device("cpu"))
    draft = build_transformer(args, tiny_state_dict(args, noise=0.02), dtype=torch.float32, device=torch.device("cpu"))
    return target, draft, Tokenizer(hf, [hf.convert_tokens_to_ids("<|im_end|>")])


def engines(tool_models):
    target, draft, tok = tool_models
    return {
        "target": Engine(target, tokenizer=tok),
        "ngram": Engine(target, NgramDrafter(), num_draft_tokens=3, tokenizer=tok),
        "suffix": Engine(target, SuffixDrafter(), num_draft_tokens=2, tokenizer=tok),
        "model-k3": Engine(target, ModelDrafter(draft), num_draft_tokens=3, tokenizer=tok),
        "auto": Engine(target, [NgramDrafter(), ModelDrafter(draft)], tokenizer=tok),
    }


MESSAGES = [{"role": "user", "content": "What's the weather in Paris?"}]


# -- parsing and streaming ---------------------------------------------------------------------


def test_parse_calls_content_and_what_is_not_a_call():
    spec = ToolSpec.of(TOOLS)
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n'
            '</tool_call>\n<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}\n</tool_call>\n')
    content, calls = spec.parse(text)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris", "unit": "C"}),
                                                                  ("add", {"a": 1, "b": 2})]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    for not_a_call in ['<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',  # no such tool
                       '<tool_call>\n{"name": "add", "arguments": {"a": 1\n</tool_call>',  # broken JSON
                       '<tool_call>\n{"name": "add", "arguments": {"a": 1}}']:  # never closed
        assert spec.parse(not_a_call) == (not_a_call, [])
    assert ToolSpec.of(TOOLS, "none").parse(text) == (text, [])
    named = ToolSpec.of(TOOLS, {"type": "function", "function": {"name": "add"}})
    assert [c.name for c in named.parse(text)[1]] == ["add"]  # only the named function is callable


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_streamed_deltas_add_up_to_the_parse(piece):
    spec = ToolSpec.of(TOOLS)
    text = ('Sure <b>bold</b> <tool_ <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "F"}}\n</tool_call>')
    stream = ToolCallStream(spec)
    deltas = []
    for i in range(0, len(text), piece):
        deltas += stream.feed(text[i : i + piece])
    deltas += stream.finish()
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict] = {}
    for d in deltas:
        for c in d.get("tool_calls", []):
            entry = calls.setdefault(c["index"], {"name": "", "arguments": ""})
            entry["name"] += c.get("function", {}).get("name", "")
            entry["arguments"] += c["function"].get("arguments", "")
            if "id" in c:
                entry["id"] = c["id"]
    want_content, want_calls = spec.parse(text)
    assert content.strip() == want_content
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == \
        [(c.name, json.loads(c.arguments)) for c in want_calls]
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_bad_tools_and_choices_are_clear_errors():
    for bad, what in [([], "non-empty"), ([{"type": "function"}], r"tools\[0\]"),
                      ([{"type": "function", "function": {"name": "a b"}}], "name"),
                      ([{"type": "function", "function": {"name": "f", "parameters": []}}], "parameters"),
                      ([{"type": "function", "function": {"name": "f", "strict": "yes"}}], "strict"),
                      (TOOLS + TOOLS[:1], "distinct")]:
        with pytest.raises(InvalidParameterError, match=what):
            ToolSpec.of(bad)
    for choice in ["maybe", {"type": "function"}, {"type": "function", "function": {"name": "nope"}},
                   {"type": "function", "function": "f"}, {"type": "function", "function": None}, ["auto"]]:
        with pytest.raises(InvalidParameterError, match="tool_choice"):
            ToolSpec.of(TOOLS, choice)
    with pytest.raises(InvalidParameterError, match="arguments is not JSON"):
        template_messages([{"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}])


def test_the_template_shows_tools_calls_and_results(tool_models):
    _, _, tok = tool_models
    engine = Engine(tool_models[0], tokenizer=tok)
    history = MESSAGES + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "Paris", "unit": "C"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"}]
    spec = ToolSpec.of(TOOLS)
    text = tok.hf.decode(engine.encode(history, True, spec.template_tools))
    assert '"name": "get_weather"' in text and "<tools>" in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>' in text
    assert "<tool_response>\n21 degrees\n</tool_response>" in text
    assert "<tools>" not in tok.hf.decode(engine.encode(MESSAGES, True, ToolSpec.of(TOOLS, "none").template_tools))
    plain = Engine(tool_models[0], tokenizer=Tokenizer(tiny_tokenizer(), tok.eos_token_ids))
    with pytest.raises(SpecdecodeError, match="tool calls"):
        plain.generate(MESSAGES, SamplingParams(max_new_tokens=4), tools=TOOLS)


# -- the grammar, exact with speculation -------------------------------------------------------


def check_calls(result, allowed_names, finished=True):
    """Every call is of an allowed function with arguments valid for its schema; finished: the
    answer ended after its calls (the random model, free to add calls, may go on to the length)."""
    if finished:
        assert result.finish_reason == "tool_calls", result.text
        assert result.content is None
    assert result.tool_calls
    for call in result.tool_calls:
        assert call.name in allowed_names
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


@pytest.mark.parametrize("seed", [None, 11], ids=["greedy", "seeded"])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}],
                         ids=["required", "named"])
def test_forced_calls_are_well_formed_and_every_drafter_gives_the_target_tokens(tool_models, seed, choice):
    params = SamplingParams(max_new_tokens=120, temperature=0.0 if seed is None else 0.9, seed=seed)
    names = {"add"} if isinstance(choice, dict) else set(SCHEMAS)
    runs = {name: e.generate(MESSAGES, params, chat=True, tools=TOOLS, tool_choice=choice)
            for name, e in engines(tool_models).items()}
    ref = runs["target"]
    check_calls(ref, names, finished=False)
    one = {name: e.generate(MESSAGES, params, chat=True, tools=TOOLS, tool_choice=choice, parallel_tool_calls=False)
           for name, e in engines(tool_models).items()}
    check_calls(one["target"], names)
    assert len(one["target"].tool_calls) == 1
    assert all(r.token_ids == one["target"].token_ids for r in one.values())
    assert ref.stats.forced_tokens >= 10  # <tool_call>, {"name": ", the name, ", "arguments": {"...
    for name, r in runs.items():
        assert r.token_ids == ref.token_ids, name
        assert [(c.name, c.arguments) for c in r.tool_calls] == [(c.name, c.arguments) for c in ref.tool_calls]


def test_auto_with_a_strict_tool_lets_text_through_and_holds_a_call_to_its_schema(tool_models):
    target, _, tok = tool_models
    engine = Engine(target, NgramDrafter(), tokenizer=tok)
    spec = ToolSpec.of(TOOLS, "auto")
    assert spec.grammar() is not None and ToolSpec.of(TOOLS[1:], "auto").grammar() is None  # strict only
    free = engine.generate(MESSAGES, SamplingParams(max_new_tokens=20), chat=True, tools=TOOLS)
    assert free.tool_calls == [] and free.content == free.text  # gibberish, no call: all content
    # steer the random model into a call: once <tool_call> is written the grammar takes over
    open_id = tok.hf.convert_tokens_to_ids("<tool_call>")
    steered = engine.generate(MESSAGES, SamplingParams(max_new_tokens=120, logit_bias={open_id: 100.0}),
                              chat=True, tools=TOOLS)
    check_calls(steered, set(SCHEMAS), finished=False)
    alone = Engine(target, tokenizer=tok).generate(MESSAGES, SamplingParams(max_new_tokens=120,
                                                                            logit_bias={open_id: 100.0}),
                                                    chat=True, tools=TOOLS)
    assert alone.token_ids == steered.token_ids
