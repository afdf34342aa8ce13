"""logprobs: the target's log-probability of each emitted token, the same with speculation.

Every drafter (none, n-gram, the draft model at k = 1 and 4, auto), greedy and seeded, gives
bit-identical logprobs and top alternatives; they equal a direct log-softmax over a one-pass
forward of prompt + output; a JSON schema's mask is inside them (a forbidden token has none).
"""

import math

import pytest
import torch

import specdecode
from specdecode import SamplingParams
from specdecode.drafters import ModelDrafter, NgramDrafter
from specdecode.engine import Engine
from specdecode.errors import InvalidParameterError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models():
    return specdecode.load("tiny-random", dtype="float32"), specdecode.load("tiny-random-draft", dtype="float32")


@pytest.mark.parametrize("seed", [None, 3], ids=["greedy", "seeded"])
def test_logprobs_are_the_targets_whatever_the_drafter(models, seed):
    target, draft = models
    params = SamplingParams(max_new_tokens=40, logprobs=3, temperature=0.0 if seed is None else 1.0, seed=seed)
    engines = [Engine(target), Engine(target, NgramDrafter(), num_draft_tokens=3),
               Engine(target, ModelDrafter(draft.lm), num_draft_tokens=1),
               Engine(target, ModelDrafter(draft.lm), num_draft_tokens=4),
               Engine(target, [NgramDrafter(), ModelDrafter(draft.lm)])]
    runs = [e.generate("def add(x, y):", params, chat=False) for e in engines]
    ref = runs[0]
    assert len(ref.logprobs) == len(ref.token_ids) > 10
    assert [lp.token for lp in ref.logprobs] == ref.token_ids
    for r in runs[1:]:
        assert r.token_ids == ref.token_ids
        assert [(lp.logprob, lp.top) for lp in r.logprobs] == [(lp.logprob, lp.top) for lp in ref.logprobs]
    assert any(r.stats.accepted_tokens for r in runs[1:])  # speculation did happen
    # what a single forward over prompt + output says
    lm = target.lm
    prompt = engines[0].encode("def add(x, y):", chat=False)
    seq = prompt + ref.token_ids
    logits = lm(torch.tensor([seq]), torch.arange(len(seq))[None], lm.new_cache(len(seq) + 1))[0]
    direct = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), -1)
    for i, lp in enumerate(ref.logprobs):
        assert math.isclose(lp.logprob, float(direct[i, lp.token]), abs_tol=1e-4)
        assert len(lp.top) == 3 and lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
        if seed is None:
            assert lp.top[0][0] == lp.token  # greedy: the chosen token is the most likely


def test_logprobs_under_a_schema_and_bad_values(models):
    target, _ = models
    schema = {"enum": ["cat", "dog"]}
    r = Engine(target, NgramDrafter()).generate("pick", SamplingParams(max_new_tokens=20, json_schema=schema, logprobs=5))
    for lp in r.logprobs:  # the mask is in: forbidden alternatives have no probability
        assert all(v == -math.inf or v <= 0 for _, v in lp.top)
        assert lp.logprob > -math.inf
    assert Engine(target).generate("pick", SamplingParams(max_new_tokens=3)).logprobs is None
    for bad in (-1, 21, 2.5, True):
        with pytest.raises(InvalidParameterError, match="logprobs"):
            SamplingParams(logprobs=bad)
