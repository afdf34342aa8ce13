"""Structured output (a JSON schema) with speculation: the constrained target's output, exactly.

The tiny random model writes gibberish, which is the point: whatever it would say, the grammar
holds it to the schema, and every drafter (none, n-gram, suffix, the draft model, auto, fixed k)
gives the constrained target-only output token for token (greedy and seeded), in a batch too;
sampled output follows the constrained distribution (chi-square against the distribution
enumerated through the grammar); forced tokens are drafted for free.
"""

import json

import pytest
import torch

import specdecode
from conftest import pooled_chisquare_pvalue
from specdecode import SamplingParams
from specdecode.constraint import Constraint, GrammarVocabulary, json_schema_grammar
from specdecode.drafters import ModelDrafter, NgramDrafter, SuffixDrafter
from specdecode.engine import Engine
from specdecode.errors import InvalidParameterError
from specdecode.sampling import logits_to_probs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 4},
        "kind": {"enum": ["cat", "dog", "fox"]},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["name", "kind", "ok", "tags"],
    "additionalProperties": False,
}
PROMPTS = ["Describe a pet as JSON.", "hello there", "def add(x, y):"]


@pytest.fixture(scope="module")
def models():
    return specdecode.load("tiny-random", dtype="float32"), specdecode.load("tiny-random-draft", dtype="float32")


def follows_person(text: str) -> bool:
    d = json.loads(text)
    return (set(d) == {"name", "kind", "ok", "tags"} and isinstance(d["name"], str) and len(d["name"]) <= 4
            and d["kind"] in ("cat", "dog", "fox") and isinstance(d["ok"], bool)
            and isinstance(d["tags"], list) and len(d["tags"]) <= 2 and all(t in ("a", "b") for t in d["tags"]))


def engines(models):
    target, draft = models
    return {
        "target": Engine(target),
        "ngram": Engine(target, NgramDrafter(), num_draft_tokens=3),
        "suffix": Engine(target, SuffixDrafter(), num_draft_tokens=2),
        "model-k1": Engine(target, ModelDrafter(draft.lm), num_draft_tokens=1),
        "model-k4": Engine(target, ModelDrafter(draft.lm), num_draft_tokens=4),
        "auto": Engine(target, [NgramDrafter(), ModelDrafter(draft.lm)]),
    }


@pytest.mark.parametrize("seed", [None, 7], ids=["greedy", "seeded"])
def test_every_drafter_gives_the_constrained_target_output(models, seed):
    params = SamplingParams(max_new_tokens=150, json_schema=PERSON, temperature=0.0 if seed is None else 0.9,
                            seed=seed)
    outs = {name: [e.generate(p, params, chat=True) for p in PROMPTS] for name, e in engines(models).items()}
    for r in outs["target"]:
        assert r.finish_reason == "stop" and follows_person(r.text), r.text
    for name, rs in outs.items():
        assert [r.token_ids for r in rs] == [r.token_ids for r in outs["target"]], name
    # the schema's fixed parts ({"name": ", ", "kind": "...) were drafted for free
    assert all(r.stats.forced_tokens >= 8 for r in outs["target"])
    assert all(r.stats.tokens_per_pass > 1.2 for r in outs["target"])


def test_a_batch_of_constrained_and_free_requests_matches_each_alone(models):
    target, draft = models
    engine = Engine(target, ModelDrafter(draft.lm), num_draft_tokens=3)
    plain = SamplingParams(max_new_tokens=20)
    schema = SamplingParams(max_new_tokens=150, json_schema=PERSON)
    prompts = [engine.encode(p, chat=True) for p in PROMPTS]
    jobs = [(ids, schema if i % 2 == 0 else plain) for i, ids in enumerate(prompts + prompts)]
    alone = [engine.generate_ids(ids, p)[0] for ids, p in jobs]
    states = [engine.start(ids, p) for ids, p in jobs]
    while not all(s.finished for s in states):
        engine.step([s for s in states if not s.finished])
    assert [s.generated for s in states] == alone


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_the_draft_model_drafts_under_the_mask_with_the_forced_tokens_free(models, temperature):
    """propose_batch with a grammar state: every drafted token is allowed where it stands, the
    forced ones join the draft without a draft step (q one-hot there when sampling), and the
    grammar state is left where it was."""
    from specdecode.drafters.model import propose_batch

    target, draft = models
    engine = Engine(target)
    ids = engine.encode("Describe a pet as JSON.", chat=True)
    c = Constraint(GrammarVocabulary.of(engine.tokenizer, target.lm.vocab_size, sorted(engine.eos_token_ids)),
                   json_schema_grammar(PERSON))
    d = ModelDrafter(draft.lm)
    d.begin(ids, len(ids) + 64, torch.device("cpu"))
    params = SamplingParams(temperature=temperature)
    before = c.allowed()
    out = propose_batch([d], [ids], [12], [params], [torch.Generator().manual_seed(0)], constraints=[c])[0]
    assert torch.equal(c.allowed(), before)  # rolled back
    masks, usable = c.masks(out.tokens)
    assert usable == len(out.tokens) == 12  # nothing the grammar forbids
    assert out.forced_at  # after the model's first token, '"name": "' and the like are forced
    for p in out.forced_at:
        assert masks[p].sum() == 1 and masks[p][out.tokens[p]]
        if out.q is not None:
            assert out.q[p][out.tokens[p]] == 1.0 and out.q[p].sum() == 1.0
    assert len(out.forced_at) < len(out.tokens)  # and the model drafted the rest


def test_json_object_mode_gives_a_json_object(models):
    target, _ = models
    r = Engine(target, NgramDrafter()).generate("hello", SamplingParams(max_new_tokens=80, json_schema={"type": "object"}))
    if r.finish_reason == "stop":  # a random model may still be inside a string at the budget
        assert isinstance(json.loads(r.text), dict)
    assert r.text.startswith("{")


def test_an_invalid_schema_is_a_clear_error(models):
    target, _ = models
    engine = Engine(target)
    with pytest.raises(InvalidParameterError, match="JSON schema"):
        engine.generate("hi", SamplingParams(json_schema={"type": "no-such-type"}))
    with pytest.raises(InvalidParameterError, match="json_schema"):
        SamplingParams(json_schema="{}")


# -- the sampled distribution ------------------------------------------------------------------

CHOICE = {"enum": ["ab", "ba", "hello", "the", "fox", "dog"]}
N = 2000


def constrained_sequence_probs(target, tokenizer, eos, params, prompt):
    """P(output) of every output the grammar allows, by walking the grammar: the constrained
    target's probability of each token is its masked, renormalised softmax."""
    vocab = GrammarVocabulary.of(tokenizer, target.vocab_size, sorted(eos))
    c = Constraint(vocab, json_schema_grammar(CHOICE))
    probs = {}

    def walk(tokens, p):
        allowed = c.allowed()
        ids = torch.tensor([prompt + tokens])
        logits = target(ids, torch.arange(ids.shape[1])[None], target.new_cache(ids.shape[1] + 1))[0, -1]
        dist = logits_to_probs(logits.masked_fill(~allowed, float("-inf")).unsqueeze(0), params)[0]
        for t in allowed.nonzero().flatten().tolist():
            if dist[t] <= 0:
                continue
            if t in eos:
                probs[tuple(tokens)] = probs.get(tuple(tokens), 0.0) + p * float(dist[t])
                continue
            c.advance([t])
            walk(tokens + [t], p * float(dist[t]))
            c.matcher.rollback(1)

    walk([], 1.0)
    return probs


@pytest.mark.parametrize("seeded", [True, False], ids=["shared-noise", "rejection-sampling"])
def test_sampling_with_a_grammar_follows_the_constrained_distribution(models, seeded):
    """Seeded requests take the shared-noise coupling, unseeded ones rejection sampling against
    the draft model's unconstrained q (its forbidden tokens cut from the draft)."""
    target, draft = models
    params = SamplingParams(temperature=1.0, max_new_tokens=12, json_schema=CHOICE)
    engine = Engine(target, ModelDrafter(draft.lm), num_draft_tokens=3)
    prompt = engine.encode("pick one", chat=True)
    exact = constrained_sequence_probs(target.lm, engine.tokenizer, engine.eos_token_ids, params, prompt)
    assert abs(sum(exact.values()) - 1.0) < 1e-4 and len(exact) >= 6
    counts = dict.fromkeys(exact, 0)
    for i in range(N):
        out, _ = engine.generate_ids(prompt, SamplingParams(**{**params.__dict__, "seed": 1000 + i if seeded else None}))
        assert tuple(out) in counts, f"an output the grammar forbids: {out}"
        counts[tuple(out)] += 1
    pvalue = pooled_chisquare_pvalue(exact, counts)
    assert pvalue > 1e-4, f"p={pvalue:.2e}"
