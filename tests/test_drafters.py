"""The drafters on their own: n-gram lookup, the draft model's cache discipline, DrafterSet routing.

Losslessness never depends on a drafter (tests/test_engine_*.py prove that); these pin down what
each drafter promises, so a regression shows up here rather than as a silent slow-down.
"""

from __future__ import annotations

import pytest
import torch

from specdecode import SamplingParams
from specdecode.drafters import Drafter, DrafterSet, ModelDrafter, NgramDrafter
from specdecode.drafters.base import Draft
from specdecode.errors import SpecdecodeError
from specdecode.loading.tiny import tiny_args, tiny_state_dict
from specdecode.model import build_transformer

GREEDY = SamplingParams()
CPU = torch.device("cpu")


# -- n-gram --------------------------------------------------------------------------------------


def _ngram(context, **kw) -> NgramDrafter:
    d = NgramDrafter(**kw)
    d.begin(context, 1024, CPU)
    return d


def test_ngram_copies_what_followed_the_longest_matching_suffix():
    #          0  1  2  3  4  5  6  7  8  9
    context = [1, 2, 3, 9, 9, 7, 2, 3, 4, 2, 3]
    d = _ngram(context)
    # suffix (2, 3) occurred at 1..2 (then 9) and at 6..7 (then 4): the latest occurrence wins
    assert d.match(context, 3) == (2, [4, 2, 3])
    draft = d.propose(context, 2, GREEDY, None)
    assert draft.tokens == [4, 2] and draft.token_tensor.tolist() == [4, 2] and draft.q is None
    context3 = [5, 6, 7, 1, 2, 6, 7, 8, 5, 6, 7]  # (5, 6, 7) beats the more recent (6, 7)
    assert _ngram(context3).match(context3, 2) == (3, [1, 2])


def test_ngram_without_a_match_or_with_k_0_drafts_nothing():
    d = _ngram([1, 2, 3, 4])
    assert d.match([1, 2, 3, 4], 4) == (0, [])
    assert len(d.propose([1, 2, 3, 4], 4, GREEDY, None)) == 0
    assert len(d.propose([1, 2, 1, 2], 0, GREEDY, None)) == 0
    assert _ngram([7]).match([7], 3) == (0, [])


def test_ngram_continuation_stops_at_the_end_of_the_context():
    context = [1, 2, 3, 1, 2]
    assert _ngram(context).propose(context, 5, GREEDY, None).tokens == [3, 1, 2]


def test_ngram_min_and_max_ngram():
    context = [4, 8, 1, 2, 9, 9, 8, 1, 2]
    assert _ngram(context, max_ngram=1).match(context, 1) == (1, [9])  # only the last token: 2 -> 9
    assert _ngram([5, 1, 9, 9, 1], min_ngram=2).match([5, 1, 9, 9, 1], 2) == (0, [])  # 1-gram not enough
    with pytest.raises(ValueError):
        NgramDrafter(max_ngram=1, min_ngram=2)


def test_ngram_incremental_index_equals_a_fresh_lookup():
    """Growing the context round by round (the engine's use) gives a fresh drafter's answers,
    also for a lookup that is asked twice with different k (the policy's memo)."""
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(0, 6, (200,), generator=g).tolist()
    grown = _ngram(stream[:10])
    for end in range(10, 200, 7):
        ctx = stream[:end]
        assert grown.match(ctx, 2) == _ngram(ctx).match(ctx, 2)
        assert grown.propose(ctx, 4, GREEDY, None).tokens == _ngram(ctx).propose(ctx, 4, GREEDY, None).tokens
        grown.on_verified(1)


def test_ngram_begin_and_end_reset_the_index():
    d = _ngram([1, 2, 3, 1, 2])
    assert d.match([1, 2, 3, 1, 2], 1) == (2, [3])
    d.end()
    d.begin([7, 8], 100, CPU)
    assert d.match([7, 8], 2) == (0, [])  # nothing of the previous request is left


def test_ngram_evidence_buckets():
    context = [1, 2, 3, 4, 1, 2, 3]
    assert _ngram(context).evidence(context, 3) == ("ngram:3", 3)
    assert _ngram([1, 2, 1], max_ngram=3).evidence([1, 2, 1], 3) == ("ngram:1", 2)
    assert _ngram([1, 2, 3]).evidence([1, 2, 3], 3) == ("ngram:0", 0)


# -- draft model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    args = tiny_args(300)
    return build_transformer(args, tiny_state_dict(args), dtype=torch.float32)


def _greedy_continuation(model, context: list[int], k: int) -> list[int]:
    out = list(context)
    for _ in range(k):
        cache = model.new_cache(len(out) + 1)
        logits = model(torch.tensor([out]), torch.arange(len(out))[None], cache)[0, -1]
        out.append(int(logits.argmax()))
    return out[len(context):]


def test_model_drafter_greedy_draft_is_the_models_greedy_continuation(tiny):
    context = [5, 17, 42, 8, 99, 3]
    d = ModelDrafter(tiny)
    assert isinstance(d, Drafter) and d.vocab_size == 300
    d.begin(context, 64, CPU)
    draft = d.propose(context, 4, GREEDY, None)
    assert draft.tokens == _greedy_continuation(tiny, context, 4) and draft.q is None
    d.end()
    assert d.cache is None


def test_model_drafter_cache_follows_the_verified_context(tiny):
    """Invariant: after on_verified the cache holds at most the context plus accepted drafts; the
    next proposal catches up on the rest, so every draft equals a from-scratch one."""
    context = [5, 17, 42, 8, 99, 3]
    d = ModelDrafter(tiny)
    d.begin(context, 128, CPU)
    assert d.catch_up_tokens(context) == len(context)  # the prompt, fed with the first draft
    for accepted in (0, 2, 4, 1):
        draft = d.propose(context, 4, GREEDY, None)
        assert draft.tokens == _greedy_continuation(tiny, context, 4)
        d.on_verified(accepted)
        assert d.cache.length <= len(context) + accepted
        context = context + draft.tokens[:accepted] + [7]  # the target's own next token
        assert d.catch_up_tokens(context) == len(context) - d.cache.length
    d.end()


def test_model_drafter_sampling_returns_q_and_replays_with_the_seed(tiny):
    params = SamplingParams(temperature=0.8, top_k=20)
    context = [5, 17, 42, 8]

    def draw(seed):
        d = ModelDrafter(tiny)
        d.begin(context, 64, CPU)
        return d.propose(context, 3, params, torch.Generator().manual_seed(seed))

    a, b = draw(1), draw(1)
    assert a.tokens == b.tokens and torch.equal(a.q, b.q)
    assert a.q.shape == (3, 300)
    torch.testing.assert_close(a.q.sum(-1), torch.ones(3))
    assert ((a.q > 0).sum(-1) <= 20).all()  # top-k applied by the shared logits_to_probs
    assert all(a.q[i, t] > 0 for i, t in enumerate(a.tokens))  # each token came from its row


def test_model_drafter_stop_rule_ends_a_draft_early(tiny):
    from specdecode.drafters.model import propose_batch

    context = [5, 17, 42, 8]
    d = ModelDrafter(tiny)
    d.begin(context, 64, CPU)
    heard = []

    def stop_after_two(confidence):  # the planner's stop rule hears each drafted token's confidence
        heard.append(confidence)
        return len(heard) < 2

    out = propose_batch([d], [context], [5], [GREEDY], [None], [stop_after_two])[0]
    assert len(out) == 2 and len(heard) == 2 and all(0.0 < c <= 1.0 for c in heard)
    assert len(d.propose(context, 0, GREEDY, None)) == 0


# -- DrafterSet ----------------------------------------------------------------------------------


class Recorder:
    """A drafter that drafts `token` k times and records every call."""

    def __init__(self, name: str, token: int) -> None:
        self.name, self.token, self.calls = name, token, []

    def begin(self, prompt, max_len, device):
        self.calls.append(("begin", len(prompt), max_len))

    def propose(self, context, k, params, generator):
        self.calls.append(("propose", len(context), k))
        return Draft([self.token] * k, torch.full((k,), self.token, dtype=torch.long), None)

    def on_verified(self, num_accepted):
        self.calls.append(("verified", num_accepted))

    def end(self):
        self.calls.append(("end",))


def test_drafter_set_routes_to_the_chosen_member_and_keeps_the_others_in_step():
    a, b = Recorder("a", 1), Recorder("b", 2)
    s = DrafterSet([a, b])
    assert s.names == ["a", "b"] and isinstance(s, Drafter)
    s.begin([0, 0, 0], 50, CPU)
    assert s.propose([0] * 4, 3, GREEDY, None, which=1).tokens == [2, 2, 2]
    s.on_verified(2)
    assert s.propose([0] * 7, 2, GREEDY, None, which=0).tokens == [1, 1]
    s.on_verified(1)
    s.end()
    assert a.calls == [("begin", 3, 50), ("propose", 4, 0), ("verified", 0), ("propose", 7, 2), ("verified", 1),
                       ("end",)]
    assert b.calls == [("begin", 3, 50), ("propose", 4, 3), ("verified", 2), ("propose", 7, 0), ("verified", 0),
                       ("end",)]


def test_drafter_set_needs_distinct_members():
    with pytest.raises(SpecdecodeError):
        DrafterSet([])
    with pytest.raises(SpecdecodeError, match="distinct"):
        DrafterSet([Recorder("a", 1), Recorder("a", 2)])
