"""The prefix cache changes no output bit (specdecode.prefix_cache).

Proven here on tiny random models, in fp32, bf16, int8 and int4:
- the foundation: a KV row's bits do not depend on how it was computed (one prefill pass, chunks
  of any size, one token at a time, a verify pass), so a copied row is the row a prefill makes;
- a three-turn conversation, each turn resending the whole history, gives the same tokens with
  the cache on and off: greedy and seeded sampling, for the target alone, the n-gram drafter and
  a draft model (whose rows are reused too);
- prefixes that end inside a prefill chunk, inside a verify pass and at a rejected draft (every
  cut point of an earlier request's tokens), a batch of requests sharing a prefix, a cancelled
  request's rows, eviction under a small budget (bytes held stay within it);
- where rows are not exact (kernels off, tensor parallelism) the cache says why and reuses nothing.
"""

import pytest
import torch

from specdecode import SamplingParams
from specdecode.drafters import ModelDrafter, NgramDrafter
from specdecode.engine import Engine
from specdecode.errors import SpecdecodeError
from specdecode.kernels import kernels_available
from specdecode.loading.tiny import tiny_args, tiny_state_dict
from specdecode.model import build_transformer
from specdecode.prefix_cache import PrefixCache
from specdecode.quant import quantize_model

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not kernels_available(), reason="the prefix cache reuses rows only on the CPU kernels")]

V = 300
PROMPT = [5, 17, 33, 5, 17, 40, 8, 9, 5, 17, 60, 61, 62, 5, 17, 33, 70, 71, 72, 73, 5, 17]  # 22: two chunks of 16
CHUNK = 16
GREEDY = SamplingParams(max_new_tokens=24, temperature=0)
SEEDED = SamplingParams(max_new_tokens=24, temperature=1.0, seed=1234)


def build(kind: str, noise: float = 0.0):
    args = tiny_args(V)
    dtype = torch.bfloat16 if kind != "fp32" else torch.float32
    model = build_transformer(args, tiny_state_dict(args, noise), dtype=dtype)
    if kind in ("int8", "int4"):
        model = quantize_model(model, kind, group_size=32, head="int8")
    return model


@pytest.fixture(scope="module", params=["fp32", "bf16", "int8", "int4"])
def pair(request):
    return build(request.param), build(request.param, noise=0.02)


DRAFTERS = {
    "none": lambda d: (None, {}),
    "ngram": lambda d: (NgramDrafter(), {"num_draft_tokens": 3}),
    "model": lambda d: (ModelDrafter(d), {"num_draft_tokens": 3}),
}


def engine(target, draft, drafter: str, prefix_cache):
    d, options = DRAFTERS[drafter](draft)
    return Engine(target, d, prefill_chunk=CHUNK, prefix_cache=prefix_cache, **options)


def rows(cache, n):
    return [t[:, :, :n].clone() for t in (*cache.keys, *cache.values)]


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8", "int4"])
def test_a_rows_bits_do_not_depend_on_how_it_was_computed(kind):
    model = build(kind)
    tokens = torch.tensor(PROMPT * 3)  # 66 positions
    n = len(tokens)

    def fill(sizes):
        cache, pos = model.new_cache(n + 1), 0
        for size in sizes:
            part = tokens[pos : pos + size]
            model(part[None], torch.arange(pos, pos + len(part))[None], cache)
            pos += len(part)
        assert pos == n
        return rows(cache, n)

    whole = fill([n])
    for sizes in ([16] * 4 + [2], [1] * n, [5, 40, 3, 1, 17], [33, 33]):
        assert all(torch.equal(a, b) for a, b in zip(whole, fill(sizes))), sizes


def conversation(eng, params, turns=3):
    """Each turn resends the whole history: the previous prompt, its answer and a new message."""
    prompt, outputs, cached = list(PROMPT), [], []
    for turn in range(turns):
        ids, stats = eng.generate_ids(prompt, params)
        outputs.append(ids)
        cached.append(stats.cached_tokens)
        prompt = prompt + ids + [90 + turn, 91, 92, 93, 94 + turn]
    return outputs, cached


@pytest.mark.parametrize("drafter", list(DRAFTERS))
@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_conversation_is_the_same_with_the_cache_on_and_off(pair, drafter, params):
    target, draft = pair
    off, cached_off = conversation(engine(target, draft, drafter, None), params)
    eng = engine(target, draft, drafter, 1.0)
    on, cached_on = conversation(eng, params)
    assert on == off
    assert cached_off == [0, 0, 0]
    assert cached_on[0] == 0 and all(c > len(PROMPT) for c in cached_on[1:])  # turns 2+ reuse the history
    if drafter == "model":  # the draft model reused its rows as well
        assert eng.prefix_cache.stats.hits >= 4


def test_every_cut_point_of_an_earlier_request_gives_the_same_tokens(pair):
    """Cuts fall inside prefill chunks, inside verify passes and at rejected drafts (greedy, a
    draft model that agrees often but not always)."""
    target, draft = pair
    eng = engine(target, draft, "model", 1.0)
    first, stats = eng.generate_ids(PROMPT, GREEDY)
    assert 0 < stats.accepted_tokens < stats.drafted_tokens  # some drafts were rejected
    history = PROMPT + first
    reference = engine(target, draft, "none", None)
    for cut in range(3, len(history), 3):
        prompt = history[:cut] + [99]
        ids, st = eng.generate_ids(prompt, GREEDY)
        assert ids == reference.generate_ids(prompt, GREEDY)[0], cut
        assert st.cached_tokens == cut  # every earlier row up to the cut was reused


def test_a_batch_sharing_a_prefix_is_the_same_as_without_the_cache(pair):
    target, draft = pair
    prompts = [PROMPT + [i, i + 1] for i in range(100, 104)]

    def run(prefix_cache):
        eng = engine(target, draft, "ngram", prefix_cache)
        eng.generate_ids(PROMPT, GREEDY)  # leaves the shared prefix behind (or not)
        states = [eng.start(p, GREEDY) for p in prompts]
        while not all(s.finished for s in states):
            eng.step(states)
        return [s.generated for s in states], [s.stats.cached_tokens for s in states]

    on, cached = run(1.0)
    off, _ = run(None)
    assert on == off
    assert all(c >= len(PROMPT) for c in cached)  # each started from the first request's rows


def test_a_cancelled_request_leaves_its_rows_and_the_next_one_is_unchanged(pair):
    target, draft = pair
    eng = engine(target, draft, "model", 1.0)
    stream = eng.stream_tokens(PROMPT, GREEDY)
    partial = next(stream) + next(stream)
    stream.close()  # a client that went away
    ids, stats = eng.generate_ids(PROMPT + partial[0], GREEDY)
    assert stats.cached_tokens >= len(PROMPT)
    assert ids == engine(target, draft, "none", None).generate_ids(PROMPT + partial[0], GREEDY)[0]


def test_a_small_budget_evicts_least_recently_used_rows_and_stays_within_it():
    target = build("bf16")
    per_token = 2 * len(target.model.layers) * target.args.num_key_value_heads * target.args.head_dim * 2
    cache = PrefixCache(60 * per_token)  # room for 60 positions
    eng = Engine(target, None, prefill_chunk=CHUNK, prefix_cache=cache)
    reference = Engine(target, None, prefill_chunk=CHUNK, prefix_cache=None)
    prompts = [[i] + PROMPT for i in range(1, 6)]  # distinct first tokens: nothing shared
    for p in prompts:
        assert eng.generate_ids(p, GREEDY)[0] == reference.generate_ids(p, GREEDY)[0]
        assert cache.bytes_held <= cache.budget_bytes
    assert cache.stats.evicted_tokens > 0
    assert cache.tokens_held() * per_token == cache.bytes_held
    # the most recent request is still there, the oldest is gone
    assert eng.generate_ids(prompts[-1], GREEDY)[1].cached_tokens == len(prompts[-1]) - 1
    assert eng.generate_ids(prompts[0], GREEDY)[1].cached_tokens == 0


def test_shared_prefixes_are_held_once():
    target = build("bf16")
    cache = PrefixCache(2**30)
    eng = Engine(target, None, prefill_chunk=CHUNK, prefix_cache=cache)
    a = eng.generate_ids(PROMPT + [1, 2, 3], GREEDY)[0]
    b = eng.generate_ids(PROMPT + [7, 8, 9], GREEDY)[0]
    # both requests' rows minus the shared prompt: the radix tree split at the divergence
    expected = (len(PROMPT) + 3 + len(a) - 1) + (3 + len(b) - 1)
    assert cache.tokens_held() == expected


def test_rows_are_not_reused_where_they_are_not_exact(monkeypatch):
    target = build("bf16")
    cache = PrefixCache(2**30)
    target.tp = object()  # what parallel/shard.py sets on a sharded model
    try:
        assert "tensor parallelism" in cache.why_not(target)
        eng = Engine(target, None, prefix_cache=cache)
        eng.generate_ids(PROMPT, GREEDY)
        assert eng.generate_ids(PROMPT, GREEDY)[1].cached_tokens == 0
        assert eng.prefix_cache_status.startswith("off (tensor parallelism")
    finally:
        del target.tp
    assert PrefixCache(0).why_not(target) == "off (budget 0)"
    assert PrefixCache(2**30).why_not(object()).startswith("off (only the native")


def test_bad_budgets_are_clear_errors():
    for bad in (-1, float("inf"), "lots", True):
        with pytest.raises(SpecdecodeError):
            PrefixCache.of_gb(bad)
