"""Seeded sampling replays exactly, whatever the drafter, k, batch or history (sampling.PositionNoise:
drafter-invariant speculative sampling, Daliri, Musco, Suresh 2024), and still follows the
target's distribution."""

import pytest
import torch

import test_engine_sampling
from conftest import native_from_hf, tiny_hf_model
from specdecode import SamplingParams
from specdecode.cost_model import CostModel
from specdecode.drafters import ModelDrafter, NgramDrafter
from specdecode.engine import Engine
from specdecode.policy import AdaptiveK
from specdecode.sampling import PositionNoise, draw, logits_to_probs

PROMPT = [5, 6, 7, 8, 9, 10, 5, 6, 7, 8]
FLAT = CostModel.from_function(lambda m: 0.01, {"model": lambda m: 0.001})
MIDDLE = CostModel.from_function(lambda m: 0.01 * (1 + 0.15 * (m - 1)), {"model": lambda m: 0.001 * m})


@pytest.fixture(scope="module")
def models():
    target = native_from_hf(tiny_hf_model("llama", seed=0))
    draft = native_from_hf(tiny_hf_model("llama", seed=0, layers=1))  # agrees with the target often
    return target, draft


def seeded(seed: int, n: int = 40, **kw) -> SamplingParams:
    return SamplingParams(temperature=kw.pop("temperature", 1.0), max_new_tokens=n, seed=seed, ignore_eos=True, **kw)


def test_position_noise_is_a_function_of_seed_and_position():
    a, b = PositionNoise(3, 1000), PositionNoise(3, 1000)
    assert torch.equal(a.at(17), b.at(17)) and not torch.equal(a.at(17), a.at(18))
    assert not torch.equal(a.at(17), PositionNoise(4, 1000).at(17))
    assert bool((a.at(5) > 0).all())
    a.forget_before(18)
    assert torch.equal(a.at(17), b.at(17))  # recomputed, the same bits
    p = torch.tensor([0.0, 0.5, 0.5, 0.0])
    assert all(int(draw(p, PositionNoise(s, 4), 0)) in (1, 2) for s in range(50))  # never a zero-probability token


@pytest.mark.parametrize("params", [seeded(11), seeded(12, temperature=0.8, top_k=20, top_p=0.9)], ids=["plain", "topk_topp"])
def test_the_same_seed_gives_the_same_text_with_every_drafter_and_k(models, params):
    target, draft = models
    want, _ = Engine(target).generate_ids(PROMPT, params)
    engines = {
        "ngram auto": Engine(target, NgramDrafter(), cost_model=FLAT),
        "model auto": Engine(target, ModelDrafter(draft), cost_model=FLAT),
        "both auto": Engine(target, [ModelDrafter(draft), NgramDrafter()], cost_model=MIDDLE),
        "adaptive": Engine(target, ModelDrafter(draft), policy=AdaptiveK(2, 1, 8)),
        **{f"model k={k}": Engine(target, ModelDrafter(draft), num_draft_tokens=k) for k in range(1, 9)},
        "ngram k=4": Engine(target, NgramDrafter(), num_draft_tokens=4),
    }
    accepted = 0
    for name, engine in engines.items():
        out, stats = engine.generate_ids(PROMPT, params)
        assert out == want, name
        accepted += stats.accepted_tokens
    assert accepted > 0  # speculation did happen (the outputs were not all target-only)


def test_the_same_seed_gives_the_same_text_in_a_batch_and_after_other_traffic(models):
    target, draft = models
    params = seeded(21)
    want, _ = Engine(target).generate_ids(PROMPT, params)
    engine = Engine(target, [ModelDrafter(draft), NgramDrafter()], cost_model=MIDDLE)
    for s in range(5):  # other traffic teaches the planner's history
        engine.generate_ids([9, 8, 7, 6, 5, 4], seeded(100 + s, n=30))
    assert engine.planner.book.counts
    prompts = [PROMPT, [3, 4, 5], PROMPT, [7] * 12, PROMPT, [1, 2, 3, 1, 2], PROMPT, [4, 4]]
    plist = [params, seeded(1), params, SamplingParams(max_new_tokens=25), params, seeded(2), params, seeded(3)]
    states = [engine.start(p, q) for p, q in zip(prompts, plist)]
    outs = [[] for _ in states]
    while not all(s.finished for s in states):
        engine.step(states)
        for i, s in enumerate(states):
            outs[i].extend(s.new_tokens)
    for i in (0, 2, 4, 6):
        assert outs[i] == want
    assert sum(s.stats.accepted_tokens for s in states) > 0


def test_seeded_draft_model_proposes_from_the_shared_noise(models):
    """The draft races q against the target's noise: with draft == target every token is accepted."""
    target, _ = models
    engine = Engine(target, ModelDrafter(target), num_draft_tokens=4)
    out, stats = engine.generate_ids(PROMPT, seeded(5))
    assert out == Engine(target).generate_ids(PROMPT, seeded(5))[0]
    assert stats.drafted_tokens > 0 and stats.accepted_tokens == stats.drafted_tokens


def test_seeded_prefill_token_is_the_target_only_one(models):
    target, _ = models
    params = seeded(9)
    logits = target(torch.tensor([PROMPT]), torch.arange(len(PROMPT))[None], target.new_cache(32))[0, -1]
    first = int(draw(logits_to_probs(logits, params), PositionNoise(9, target.vocab_size), len(PROMPT)))
    assert Engine(target).generate_ids(PROMPT, params)[0][0] == first


def test_seeded_speculative_sampling_follows_the_target_distribution(monkeypatch):
    """Over many seeds, seeded speculative output has the target's distribution (the same
    chi-square and total-variation bounds as test_engine_sampling.py, 2,000 seeds)."""
    from test_engine_sampling import LENGTH, V, check_distribution, exact_sequence_probs

    monkeypatch.setattr(test_engine_sampling, "N", 2000)
    target = native_from_hf(tiny_hf_model("llama", seed=1, vocab=V))
    draft = native_from_hf(tiny_hf_model("llama", seed=2, vocab=V))
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH, ignore_eos=True)
    engine = Engine(target, [ModelDrafter(draft), NgramDrafter(max_ngram=2)], cost_model=FLAT)
    check_distribution(engine, exact_sequence_probs(target, params), params, seed=3)


def test_server_seeded_requests_give_one_text_after_other_traffic():
    """The server with its defaults (auto planner, history shared by requests): identical seeded
    requests, sent after other traffic and concurrently, all give the target-only seeded text."""
    from concurrent.futures import ThreadPoolExecutor

    import specdecode
    from specdecode.server import ServerConfig, create_app
    from test_server import MODEL, ServerThread

    target, draft = specdecode.load(MODEL), specdecode.load("tiny-random-draft")
    prompt = "def add(x, y):"
    want = Engine(target).generate(prompt, temperature=1.0, max_new_tokens=24, seed=77, chat=False).text
    config = ServerConfig(MODEL, max_batch=4, max_queue=64, max_body_bytes=64 * 1024, max_tokens_limit=512)
    engine = Engine(target, [draft, NgramDrafter()], cost_model=MIDDLE)
    with ServerThread(create_app(engine, config)) as s:
        client = s.client()
        kw = dict(model=MODEL, max_tokens=24, temperature=1.0)
        for i in range(4):
            client.completions.create(prompt=f"for i in range({i}):", seed=i, **kw)
        with ThreadPoolExecutor(4) as pool:
            texts = list(pool.map(lambda _: client.completions.create(prompt=prompt, seed=77, **kw).choices[0].text,
                                  range(8)))
    assert texts == [want] * 8
