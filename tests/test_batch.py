"""The batch-first engine API: Engine.start / step / release over a ragged batch.

Proven here, on tiny random llama models (specdecode.loading.tiny) in float32 and bfloat16:
- greedy: each request's output inside a batch equals its output alone and the target-only
  output, token for token, with mixed prompt lengths (chunked prefill, a pass-size limit), EOS
  and max_new_tokens inside one batch, requests joining and others cancelled mid-run; for no
  drafter, a draft model (fixed k and auto), n-gram and a DrafterSet;
- every pass holds exactly each decoding request's 1 + k tokens plus the prompt chunks, and with
  auto, requests in one pass draft different k;
- Transformer.forward_ragged gives each segment bit for bit the logits of a pass of it alone;
- propose_batch gives each drafter exactly its own propose (tokens and q);
- sampling: a seeded request samples the same in a batch as alone, and the first two tokens of
  batched speculative requests follow the target's exact distribution (the chi-square and
  total-variation bounds of test_engine_sampling.py);
- requests share no state, release frees it, bad input is a SpecdecodeError.
"""

import numpy as np
import pytest
import torch
from scipy import stats as st

import test_engine_sampling as ts
from conftest import native_from_hf, tiny_hf_model
from specdecode import SamplingParams
from specdecode.drafters import DrafterSet, ModelDrafter, NgramDrafter
from specdecode.drafters.model import propose_batch
from specdecode.engine import Engine
from specdecode.errors import SpecdecodeError
from specdecode.loading.tiny import tiny_args, tiny_state_dict
from specdecode.model import build_transformer
from specdecode.ragged import Segment
from specdecode.sampling import make_generator
from test_engine_greedy import PROMPT
from test_policy import FLAT, MIDDLE

V = 300
P1, P5, P7 = [42], [1, 2, 3, 4, 5], [9, 8, 7, 100, 200, 9, 8]
P40 = PROMPT * 4  # > prefill_chunk=16: three chunks
CHUNKED = dict(prefill_chunk=16, max_batch_tokens=24)  # three fresh prompts never fit one pass

DRAFTERS = {  # name -> (drafter from the draft model, engine options); no timing anywhere
    "none": (lambda d: None, {}),
    "model-k3": (lambda d: ModelDrafter(d), {"num_draft_tokens": 3}),
    "model-auto": (lambda d: ModelDrafter(d), {"cost_model": FLAT}),
    "ngram": (lambda d: NgramDrafter(), {"num_draft_tokens": 3}),
    "set-auto": (lambda d: [ModelDrafter(d), NgramDrafter()], {"cost_model": FLAT}),
}


def build(dtype, noise=0.0):
    args = tiny_args(V)
    return build_transformer(args, tiny_state_dict(args, noise), dtype=dtype)


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def models(request):
    """(target, draft): the draft a noisy copy that agrees often but not always."""
    return build(request.param), build(request.param, noise=0.02)


def run_batch(engine, requests, join_at=None, cancel_at=None):
    """Step requests [(prompt_ids, params)] together. Request i starts before step join_at[i]
    (default 0) and is released (cancelled) before step cancel_at[i]. Checks that each pass holds
    exactly 1 + k tokens per decoding request plus the prompt chunks. Returns each request's
    tokens from .new_tokens, its state, and per step (StepInfo, {request: k it drafted}) for the
    requests that were decoding."""
    join_at, cancel_at = join_at or {}, cancel_at or {}
    states, outputs, steps = [None] * len(requests), [[] for _ in requests], []
    while True:
        step = len(steps)
        for i, (prompt, params) in enumerate(requests):
            if states[i] is None and join_at.get(i, 0) <= step:
                states[i] = engine.start(prompt, params)
            if cancel_at.get(i) == step:
                engine.release(states[i])
        started = [s for s in states if s is not None]
        live = [s for s in started if not s.finished and not s.released]
        if not live and len(started) == len(requests):
            return outputs, states, steps
        before = {id(s): (s.prefilling, s.prefilled, s.stats.drafted_tokens) for s in live}
        info = engine.step(started)  # finished and released states are passed too: step skips them
        k, tokens, batch = {}, 0, 0
        for i, s in enumerate(states):
            if s is None:
                continue
            outputs[i].extend(s.new_tokens)
            if id(s) not in before:
                assert s.new_tokens == []
                continue
            prefilling, prefilled, drafted = before[id(s)]
            if not prefilling:
                k[i] = s.stats.drafted_tokens - drafted
                tokens, batch = tokens + 1 + k[i], batch + 1
            elif s.prefilled > prefilled:
                tokens, batch = tokens + s.prefilled - prefilled, batch + 1
            if s.finished:
                assert s.released and s.cache is None
        assert (info.batch_size, info.tokens) == (batch, tokens)
        steps.append((info, k))


# -- greedy: batched == alone == target only -------------------------------------------------------


def greedy_requests(target, eos_from=PROMPT):
    """Requests of every length, all but #1 ignoring EOS; EOS is a token deep in #1's output alone,
    so #1 stops there inside the batch. Returns (requests, eos, #1's expected output)."""
    ref = Engine(target, **CHUNKED).generate_ids(eos_from, SamplingParams(max_new_tokens=40))[0]
    cut = next(i for i in range(8, len(ref)) if ref.index(ref[i]) == i)
    g = lambda n: SamplingParams(max_new_tokens=n, ignore_eos=True)  # noqa: E731
    requests = [(P1, g(30)), (PROMPT, SamplingParams(max_new_tokens=40)), (P40, g(20)), (P7, g(15)),
                (P5, g(60)), (PROMPT, g(1))]
    return requests, ref[cut], ref[:cut]


JOIN, CANCEL = {3: 3, 5: 2}, {4: 8}  # #3 and #5 join mid-run, #4 is cancelled mid-run


@pytest.mark.parametrize("drafter", list(DRAFTERS))
def test_greedy_batch_equals_alone_and_target_only(models, drafter):
    target, draft = models
    requests, eos, stopped = greedy_requests(target)
    make, options = DRAFTERS[drafter]
    engine = Engine(target, make(draft), eos_token_ids=[eos], **CHUNKED, **options)
    target_only = Engine(target, eos_token_ids=[eos], **CHUNKED)
    outputs, states, _ = run_batch(engine, requests, JOIN, CANCEL)
    assert outputs[1] == stopped
    assert [s.finish_reason for s in states] == ["length", "stop", "length", "length", None, "length"]
    assert all(s.released and s.cache is None for s in states)
    for i, (prompt, params) in enumerate(requests):
        alone = engine.generate_ids(prompt, params)[0]
        assert alone == target_only.generate_ids(prompt, params)[0]
        if i in CANCEL:
            assert 0 < len(outputs[i]) < len(alone) and outputs[i] == alone[: len(outputs[i])]
        else:
            assert outputs[i] == alone, f"request {i}"
    if drafter != "none":
        assert sum(s.stats.drafted_tokens for s in states) > 0


def test_generated_is_the_output_so_far(models):
    """`.generated` after every step == the tokens the steps reported (EOS excluded)."""
    target, draft = models
    requests, eos, stopped = greedy_requests(target)
    engine = Engine(target, ModelDrafter(draft), num_draft_tokens=3, eos_token_ids=[eos], **CHUNKED)
    states = [engine.start(p, params) for p, params in requests[:3]]
    outputs = [[] for _ in states]
    while not all(s.finished for s in states):
        engine.step(states)
        for s, out in zip(states, outputs):
            out.extend(s.new_tokens)
            assert s.generated == out
    assert outputs[1] == stopped and states[1].finish_reason == "stop"


def test_auto_drafts_different_k_in_one_pass():
    target, draft = build(torch.float32), build(torch.float32, noise=0.02)
    requests = [(p, SamplingParams(max_new_tokens=40, ignore_eos=True)) for p in (PROMPT, P1, P7, P5)]
    for drafters, costs in ((ModelDrafter(draft), MIDDLE), ([ModelDrafter(draft), NgramDrafter()], FLAT)):
        engine = Engine(target, drafters, cost_model=costs)
        outputs, _, steps = run_batch(engine, requests)
        assert any(len(set(k.values())) >= 2 for _, k in steps), steps  # different k in the same pass
        decode_only = [info for info, k in steps if len(k) == info.batch_size]
        assert any(info.tokens > info.batch_size for info in decode_only)  # drafts in the pass
        assert outputs == [Engine(target).generate_ids(p, params)[0] for p, params in requests]


# -- forward_ragged and propose_batch ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_forward_ragged_equals_separate_passes(dtype):
    target = build(dtype)
    g = torch.Generator().manual_seed(0)
    lengths, prefixes, num_logits = [1, 5, 33, 100, 7, 4], [9, 0, 12, 3, 6, 2], [None, None, None, None, 1, 0]
    toks = [torch.randint(V, (T,), generator=g) for T in lengths]
    ragged_caches, alone_caches = [], []
    for P in prefixes:
        prefix = torch.randint(V, (1, P), generator=g)
        caches = target.new_cache(256), target.new_cache(256)
        for c in caches:
            if P:
                target(prefix, torch.arange(P)[None], c)
        ragged_caches.append(caches[0])
        alone_caches.append(caches[1])
    out = target.forward_ragged([Segment(c, t, n) for c, t, n in zip(ragged_caches, toks, num_logits)])
    for t, n, rc, ac, lg in zip(toks, num_logits, ragged_caches, alone_caches, out):
        T = len(t)
        alone = target(t[None], torch.arange(ac.length, ac.length + T)[None], ac)[0]  # (T, V)
        rows = T if n is None else n
        assert lg.shape == (rows, V) and lg.dtype == torch.float32
        assert torch.equal(lg, alone[T - rows :]), f"segment of {T} tokens"
        assert rc.length == ac.length
        assert all(torch.equal(a[..., : rc.length, :], b[..., : rc.length, :]) for a, b in zip(rc.keys, ac.keys))
    empty = target.forward_ragged([Segment(target.new_cache(8), [3, 4], 0), Segment(target.new_cache(8), [5], 0)])
    assert [e.shape for e in empty] == [(0, V), (0, V)]  # no logits wanted at all


def test_propose_batch_equals_each_propose():
    draft = build(torch.float32, noise=0.02)
    contexts = [PROMPT, P1, P40, P7, P5]
    ks = [3, 5, 0, 4, 6]
    params = [SamplingParams(), SamplingParams(temperature=1.0, seed=1), SamplingParams(temperature=1.0, seed=2),
              SamplingParams(temperature=0.7, top_k=20, top_p=0.9, seed=3), SamplingParams(temperature=1.0, seed=4)]
    confidence = [0.0, 0.0, 0.0, 0.0, 0.3]  # the last one stops drafting early, below this confidence

    def stops():  # a stop rule per request, as the planner gives (True: draft another)
        return [(lambda c, bar=bar: c >= bar) if bar else None for bar in confidence]

    def fresh():
        drafters = [ModelDrafter(draft) for _ in confidence]
        for d, ctx in zip(drafters, contexts):
            d.begin(ctx, 128, torch.device("cpu"))
        return drafters, [make_generator(p.seed) for p in params]

    (batched, gb), (single, gs) = fresh(), fresh()
    contexts, cut = [list(c) for c in contexts], False
    for rnd in range(3):
        out = propose_batch(batched, contexts, ks, params, gb, stops())
        for i, (d, ctx, k, p, g) in enumerate(zip(single, contexts, ks, params, gs)):
            own = propose_batch([d], [ctx], [k], [p], [g], [stops()[i]])[0]
            assert out[i].tokens == own.tokens, f"round {rnd} request {i}"
            assert (out[i].q is None) == (own.q is None) == (p.greedy or not own.tokens)
            assert own.q is None or torch.equal(out[i].q, own.q)
            cut |= confidence[i] > 0 and len(own.tokens) < k
            n = min(rnd, len(own.tokens))  # accept 0, then 1, then 2 drafts: catch-up of 1..3 tokens
            for dd in (batched[i], d):
                dd.on_verified(n)
            ctx.extend(own.tokens[:n] + [(7 * rnd + i) % V])
        ks = [k + 1 for k in ks]
    assert cut  # the stop rule ended a draft early
    with pytest.raises(ValueError, match="share"):
        propose_batch([ModelDrafter(draft), ModelDrafter(build(torch.float32))], [P1, P1], [1, 1], params[:2], gb[:2])


# -- sampling -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("drafter", ["model-k3", "ngram", "set-auto"])
def test_seeded_sampling_in_a_batch_equals_alone(models, drafter):
    """A seeded request draws each token from its position's noise (sampling.PositionNoise), so the
    same seed gives the same text in a batch as alone, even with auto, where k depends on the batch."""
    target, draft = models
    make, options = DRAFTERS[drafter]
    engine = Engine(target, make(draft), **CHUNKED, **options)
    s = lambda seed, **kw: SamplingParams(seed=seed, max_new_tokens=25, ignore_eos=True, **kw)  # noqa: E731
    requests = [(PROMPT, s(1, temperature=1.0)), (PROMPT, s(2, temperature=1.0)),
                (P40, s(3, temperature=0.8, top_p=0.9)), (P7, s(4, temperature=1.0, top_k=30)),
                (P1, s(None))]  # the last one greedy
    outputs, _, _ = run_batch(engine, requests, join_at={3: 2})
    assert outputs[0] != outputs[1]  # same prompt, own generators
    assert outputs == [engine.generate_ids(p, params)[0] for p, params in requests]


def test_batched_speculative_sampling_follows_the_target():
    """First two tokens of requests sampled three to a batch, the second through rejection
    sampling of a k=3 draft from an unrelated model: the exact P(t1, t2) of the target (V = 5)."""
    target = native_from_hf(tiny_hf_model("llama", seed=1, vocab=ts.V))
    draft = native_from_hf(tiny_hf_model("llama", seed=2, vocab=ts.V))
    params = SamplingParams(temperature=1.0, max_new_tokens=2, ignore_eos=True)
    exact = {}
    for seq, p in ts.exact_sequence_probs(target, params).items():  # P(t1, t2, t3), summed over t3
        exact[seq[:2]] = exact.get(seq[:2], 0.0) + p
    engine = Engine(target, ModelDrafter(draft), num_draft_tokens=3)
    N, counts, drafted = 3000, dict.fromkeys(exact, 0), 0
    for b in range(0, N, 3):
        reqs = [(ts.PROMPT, SamplingParams(**{**params.__dict__, "seed": b + i})) for i in range(3)]
        outputs, states, _ = run_batch(engine, reqs)
        for out, s in zip(outputs, states):
            counts[tuple(out)] += 1
            drafted += s.stats.drafted_tokens
    assert drafted == 3 * N  # every second token went through verification of a 3-token draft
    keys = sorted(exact)
    expected = np.array([exact[k] for k in keys]) * N
    observed = np.array([counts[k] for k in keys], dtype=float)
    assert observed.sum() == N and abs(expected.sum() - N) < 1e-3 * N
    assert observed[expected == 0].sum() == 0, "sampled a pair of probability zero"
    big, small = expected >= 5, (expected < 5) & (expected > 0)
    exp_cells, obs_cells = expected[big], observed[big]
    if small.any():  # cells too small for chi-square are pooled into one
        exp_cells, obs_cells = np.append(exp_cells, expected[small].sum()), np.append(obs_cells, observed[small].sum())
    _, pvalue = st.chisquare(obs_cells, exp_cells * N / exp_cells.sum())
    tv = 0.5 * np.abs(observed - expected).sum() / N
    noise_tv = 0.5 * np.sqrt(2 * (expected / N) * (1 - expected / N) / (np.pi * N)).sum()
    assert pvalue > 1e-4 and tv < 2.5 * noise_tv, f"p={pvalue:.2e} tv={tv:.3f} noise tv={noise_tv:.3f}"


# -- isolation, release, errors --------------------------------------------------------------------


def test_requests_share_no_state_and_release_frees_it():
    target, draft = build(torch.float32), build(torch.float32, noise=0.02)
    engine = Engine(target, [ModelDrafter(draft), NgramDrafter()], cost_model=FLAT)
    prompt = list(P7)
    params = SamplingParams(max_new_tokens=20, ignore_eos=True)
    s1, s2 = engine.start(prompt, params), engine.start(PROMPT, params)
    prompt.append(1)  # the caller's list is not the request's
    assert s1.drafter is not s2.drafter and engine.drafter not in (s1.drafter, s2.drafter)
    assert isinstance(s1.drafter, DrafterSet) and isinstance(s2.drafter, DrafterSet)
    for a, b, shared in zip(s1.drafter.drafters, s2.drafter.drafters, engine.drafter.drafters):
        assert a is not b and shared not in (a, b)
    m1, m2 = s1.drafter.drafters[0], s2.drafter.drafters[0]
    assert m1.cache is not m2.cache and m1.model is m2.model  # own caches, one shared draft model
    assert s1.cache is not s2.cache and s1.plan_state is not s2.plan_state and s1.generator is not s2.generator
    for _ in range(3):
        engine.step([s1, s2])
    assert s1.tokens[: len(P7)] == P7 == s1.prompt_ids and s2.tokens[: len(PROMPT)] == PROMPT
    assert len(s1.generated) > 1 and len(s2.generated) > 1
    engine.release(s1)
    engine.release(s1)  # idempotent
    assert s1.released and s1.cache is None and m1.cache is None and not s1.finished
    assert engine.step([s1]).batch_size == 0 and s1.new_tokens == []
    out = list(s2.generated)
    while not s2.finished:
        engine.step([s1, s2])
        out += s2.new_tokens
    assert out == engine.generate_ids(PROMPT, params)[0]
    assert s2.released and s2.cache is None and m2.cache is None


def test_errors():
    target = build(torch.float32)
    engine = Engine(target)
    with pytest.raises(SpecdecodeError, match="empty"):
        engine.start([], SamplingParams())
    for bad in ({"prefill_chunk": 0}, {"prefill_chunk": -3}, {"max_batch_tokens": 0}):
        with pytest.raises(SpecdecodeError):
            Engine(target, **bad)
