"""Draft heads: a tiny head trained in seconds on the tiny target's own answers learns to draft
(acceptance far above an untrained head's), and speculative output with it is the target's: greedy
token for token alone, batched and beside other drafters, seeded replays, and sampled output with
the target's exact distribution (chi-square). Also the features the engine hands the head, the
head store (our format, EAGLE-1 checkpoints, damaged files), resuming, and the command line."""

import json

import pytest
import torch

import specdecode
from conftest import float_weight, pooled_chisquare_pvalue
from specdecode import SamplingParams
from specdecode.drafters import NgramDrafter
from specdecode.drafters.head import HeadDrafter
from specdecode.engine import Engine
from specdecode.errors import SpecdecodeError
from specdecode.heads.data import FeatureRecorder, benchmark_overlap, default_prompts
from specdecode.heads.model import HeadConfig, bind, lm_head_weight
from specdecode.heads.pipeline import CorpusSpec, HeadShape, head_drafter_for, train_for_target
from specdecode.heads.store import HeadFileError, load_corpus, load_head, save_head
from specdecode.heads.train import TrainConfig, new_head, pick_draft_vocab, split_held_out
from specdecode.sampling import logits_to_probs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# For the tiny target (hidden 64): a high learning rate learns its near-deterministic answers in seconds.
TINY_TRAIN = TrainConfig(epochs=20, lr=1e-2, unroll=2, batch_tokens=256)
TINY_CORPUS = CorpusSpec(num_prompts=24, max_new_tokens=48, self_written=0)
HELD_OUT = ["Explain what a dictionary is, briefly.", "def add(x, y):\n    return", "hello there, the weather",
            "Write a loop that prints ten numbers."]


@pytest.fixture(scope="module")
def target():
    """The tiny target with its layers' outputs damped (o_proj, down_proj x 0.002): its next token
    depends mostly on the current one, as a real model's depends mostly on the last few, so a head
    trained on a few thousand tokens drafts well on prompts it never saw. (The plain tiny-random
    model is chaotic: a head can only memorize its training answers.)"""
    import specdecode.loading.tiny as tiny

    plain = tiny.tiny_state_dict

    def damped(args, noise=0.0):
        return {k: v * 0.002 if k.endswith(("o_proj.weight", "down_proj.weight")) else v
                for k, v in plain(args, noise).items()}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiny, "tiny_state_dict", damped)
        return specdecode.load("tiny-random", dtype="float32")


@pytest.fixture(scope="module")
def trained(target, tmp_path_factory):
    """(head directory, training info): a head trained on the tiny target's answers."""
    out = tmp_path_factory.mktemp("head")
    return train_for_target(target, TINY_CORPUS, HeadShape(256, 128), TINY_TRAIN, out=out)


def acceptance(engine, prompts, n=40) -> tuple[float, list[list[int]]]:
    drafted = accepted = 0
    outs = []
    for p in prompts:
        out, stats = engine.generate_ids(engine.encode(p), SamplingParams(max_new_tokens=n, ignore_eos=True))
        drafted += stats.drafted_tokens
        accepted += stats.accepted_tokens
        outs.append(out)
    return accepted / max(drafted, 1), outs


def test_the_engine_hands_the_head_the_features_a_plain_forward_computes(target):
    """The features come out of the target's own passes (prefill and decode), bit for bit the
    final-normed hidden states of one plain forward over the whole text."""
    sink = []
    engine = Engine(target, FeatureRecorder(sink), num_draft_tokens=1, prefix_cache=None)
    engine.generate_ids(engine.encode("hello there"), SamplingParams(max_new_tokens=12, ignore_eos=True))
    tokens, feats = sink[0]
    lm = target.lm
    captured = {}
    handle = lm.model.norm.register_forward_hook(lambda m, i, o: captured.setdefault("normed", o))
    n = tokens.shape[0]
    lm(tokens[None].long(), torch.arange(n)[None], lm.new_cache(n + 1))
    handle.remove()
    assert feats.shape == (n, lm.args.hidden_size)
    torch.testing.assert_close(feats.float(), captured["normed"][0].to(torch.bfloat16).float(), rtol=0, atol=0)


def test_a_trained_head_drafts_far_better_than_an_untrained_one(target, trained):
    directory, info = trained
    assert info["corpus"]["tokens"] > 1000 and info["epochs"][-1]["top1_by_step"][0] > 0.5
    head, _ = load_head(directory)
    untrained = new_head(head.config, lm_head_weight(target.lm), head.d2t, seed=1)
    ref = Engine(target)
    want = [ref.generate_ids(ref.encode(p), SamplingParams(max_new_tokens=40, ignore_eos=True))[0] for p in HELD_OUT]
    rate, outs = acceptance(Engine(target, head_drafter_for(target, directory), num_draft_tokens=3), HELD_OUT)
    base, base_outs = acceptance(Engine(target, HeadDrafter(bind(untrained, target.lm)), num_draft_tokens=3), HELD_OUT)
    assert outs == want and base_outs == want
    assert rate > 0.5 and rate > base + 0.3, (rate, base)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_greedy_output_with_a_head_is_the_target_output(target, trained, k):
    ref = Engine(target)
    engine = Engine(target, head_drafter_for(target, trained[0]), num_draft_tokens=k)
    for p in HELD_OUT:
        ids = ref.encode(p)
        params = SamplingParams(max_new_tokens=30, ignore_eos=True)
        assert engine.generate_ids(ids, params)[0] == ref.generate_ids(ids, params)[0]


def test_a_batch_of_requests_and_the_auto_set_give_the_target_output(target, trained):
    ref = Engine(target)
    prompts = [ref.encode(p) for p in HELD_OUT]
    params = [SamplingParams(max_new_tokens=24, ignore_eos=True),
              SamplingParams(max_new_tokens=30, temperature=0.8, seed=5, ignore_eos=True)] * 2
    want = [ref.generate_ids(p, q)[0] for p, q in zip(prompts, params)]
    for drafter, k in ((head_drafter_for(target, trained[0]), 4),
                       ([head_drafter_for(target, trained[0]), NgramDrafter()], "auto")):
        engine = Engine(target, drafter, num_draft_tokens=k)
        states = [engine.start(p, q) for p, q in zip(prompts, params)]
        while not all(s.finished for s in states):
            engine.step(states)
        assert [s.generated for s in states] == want
        assert sum(s.stats.accepted_tokens for s in states) > 0


def test_a_catch_up_longer_than_the_window_feeds_only_its_last_pairs(target, trained):
    """window=W: a first draft after more than W pairs feeds the head only the last W (older pairs
    leave its attention; the planner is told W): the draft is a fresh head's over those W pairs
    alone. Without a window it is over every pair. Either way the output is the target's."""
    sink = []
    recorder = Engine(target, FeatureRecorder(sink), num_draft_tokens=1, prefix_cache=None)
    recorder.generate_ids(recorder.encode(HELD_OUT[0]), SamplingParams(max_new_tokens=30, ignore_eos=True))
    tokens, feats = sink[0]
    ctx, n, W = tokens.tolist(), tokens.shape[0], 6
    head, _ = load_head(trained[0])

    def first_draft(window):
        d = HeadDrafter(bind(head, target.lm, quantize=None), window=window)
        d.begin(ctx, n + 8, torch.device("cpu"))
        d.add_features(0, feats[: n - 1])  # f_t for t < n - 1: every pair (f_t, x_{t+1}) of ctx
        behind = d.catch_up_tokens(ctx)
        assert d.catch_up_context(ctx) == 0  # an empty cache (and, windowed, a fresh start)
        draft = d.propose(ctx, 1, SamplingParams(max_new_tokens=4), None)
        return d, behind, draft.tokens

    def fresh(d, start):  # a new cache fed the pairs t in [start, n - 1) only
        m = d.model
        _, logits = m.step(torch.tensor(ctx[start + 1 :]), d.features[start : n - 1], torch.arange(start, n - 1),
                           m.new_cache(n + 8))  # (n - 1 - start, V_d)
        return [int(m.head.d2t[int(logits[-1].argmax())])]

    windowed, behind, drafted = first_draft(W)
    assert behind == W and windowed.base == n - 1 - W and windowed.cache.length == W
    assert windowed.catch_up_context(ctx) == W  # nothing to feed: it attends its cache (W pairs)
    assert drafted == fresh(windowed, n - 1 - W)
    later = HeadDrafter(bind(head, target.lm, quantize=None), window=W)  # a sit-out longer than the window
    later.begin(ctx, n + 8, torch.device("cpu"))
    later.add_features(0, feats[:4])
    later.propose(ctx[:5], 1, SamplingParams(max_new_tokens=4), None)
    later.on_verified(0)
    assert later.cache.length == 4 and later.catch_up_context(ctx[:5]) == 4
    later.add_features(4, feats[4 : n - 1])  # n - 5 > W pairs behind: the next draft starts again
    assert later.catch_up_tokens(ctx) == W and later.catch_up_context(ctx) == 0
    assert later.propose(ctx, 1, SamplingParams(max_new_tokens=4), None).tokens == fresh(later, n - 1 - W)
    whole, behind, drafted = first_draft(None)
    assert behind == n - 1 and whole.base == 0 and whole.cache.length == n - 1
    assert drafted == fresh(whole, 0)
    with pytest.raises(ValueError, match="at least one pair"):
        HeadDrafter(bind(head, target.lm, quantize=None), window=0)

    ref = Engine(target)
    for window in (2, 5):
        engine = Engine(target, HeadDrafter(bind(head, target.lm), window=window), num_draft_tokens=3)
        params = SamplingParams(max_new_tokens=30, ignore_eos=True)
        outs, drafted = [], 0
        for p in HELD_OUT:
            out, stats = engine.generate_ids(engine.encode(p), params)
            outs.append(out)
            drafted += stats.drafted_tokens
        assert outs == [ref.generate_ids(ref.encode(p), params)[0] for p in HELD_OUT] and drafted > 0


def test_head_trees_give_the_target_output_and_their_second_choices_are_taken(target, trained, monkeypatch, leaf_takes):
    """branches=2: greedy rounds draft the chain plus the head's second choices as leaves (k // 2 of
    them at a fixed k); the output is the target's, alone and batched beside a seeded request (which
    drafts chains), and some rounds gain a token through a leaf."""
    import specdecode.drafters.head as head_module

    shapes = {"trees": 0, "chains": 0}
    original = head_module.propose_batch

    def counted(drafters, contexts, ks, params, *args, **kwargs):
        out = original(drafters, contexts, ks, params, *args, **kwargs)
        for p, k, draft in zip(params, ks, out):
            if draft.tokens:
                shapes["trees" if draft.parents is not None else "chains"] += 1
                if draft.parents is not None:  # the chain, then 1 .. max(1, k // 2) leaves
                    assert p.greedy and 1 <= len(draft.tokens) - len(draft.main_path()) <= max(1, k // 2)
        return out

    monkeypatch.setattr(head_module, "propose_batch", counted)
    ref = Engine(target)
    prompts = [ref.encode(p) for p in HELD_OUT]
    for k in (2, 4):
        engine = Engine(target, head_drafter_for(target, trained[0], branches=2), num_draft_tokens=k)
        for p in prompts:
            params = SamplingParams(max_new_tokens=30, ignore_eos=True)
            assert engine.generate_ids(p, params)[0] == ref.generate_ids(p, params)[0]
    assert shapes["trees"] > 10 and shapes["chains"] == 0 and any(leaf_takes), shapes
    params = [SamplingParams(max_new_tokens=24, ignore_eos=True),
              SamplingParams(max_new_tokens=24, temperature=0.8, seed=5, ignore_eos=True)]
    want = [ref.generate_ids(p, q)[0] for p, q in zip(prompts[:2], params)]
    engine = Engine(target, head_drafter_for(target, trained[0], branches=2), num_draft_tokens=3)
    states = [engine.start(p, q) for p, q in zip(prompts[:2], params)]
    while not all(s.finished for s in states):
        engine.step(states)
    assert [s.generated for s in states] == want
    assert shapes["chains"] > 0  # the seeded request drafted chains


@pytest.mark.parametrize("seeded", [True, False], ids=["shared-noise", "rejection-sampling"])
def test_sampling_with_a_head_follows_the_target_distribution(target, trained, seeded):
    lm = target.lm
    params = dict(temperature=1.0, top_k=3, max_new_tokens=3, ignore_eos=True)
    ref = Engine(target)
    prompt = ref.encode("hello there")

    def dist(out):
        seq = prompt + out
        logits = lm(torch.tensor([seq]), torch.arange(len(seq))[None], lm.new_cache(len(seq) + 1))[0, -1:]
        return logits_to_probs(logits, SamplingParams(**params))[0]

    exact = {}
    p1 = dist([])
    for t1 in p1.nonzero().flatten().tolist():
        p2 = dist([t1])
        for t2 in p2.nonzero().flatten().tolist():
            p3 = dist([t1, t2])
            for t3 in p3.nonzero().flatten().tolist():
                exact[t1, t2, t3] = float(p1[t1] * p2[t2] * p3[t3])
    engine = Engine(target, head_drafter_for(target, trained[0]), num_draft_tokens=2)
    counts = dict.fromkeys(exact, 0)
    accepted = 0
    for i in range(1500):
        out, stats = engine.generate_ids(prompt, SamplingParams(**params, seed=7000 + i if seeded else None))
        counts[tuple(out)] += 1
        accepted += stats.accepted_tokens
    assert accepted > 300  # the head's drafts were tested, not all rejected
    pvalue = pooled_chisquare_pvalue(exact, counts)
    assert pvalue > 1e-4, f"p={pvalue:.2e}"


def test_a_seed_gives_the_same_text_with_or_without_the_head(target, trained):
    ref = Engine(target)
    engine = Engine(target, head_drafter_for(target, trained[0]), num_draft_tokens=3)
    for seed in (1, 2, 3):
        params = SamplingParams(max_new_tokens=30, temperature=0.9, seed=seed, ignore_eos=True)
        ids = ref.encode(HELD_OUT[seed])
        assert engine.generate_ids(ids, params)[0] == ref.generate_ids(ids, params)[0]


def test_the_draft_vocabulary_is_the_most_frequent_tokens_with_the_specials():
    seqs = [torch.tensor([5, 5, 5, 7, 7, 9, 1]), torch.tensor([7, 5, 3])]
    assert pick_draft_vocab(seqs, 12, 3, always=[11]).tolist() == [5, 7, 11]
    assert pick_draft_vocab(seqs, 12, 4).tolist() == [1, 3, 5, 7]  # ties: the lower id first


def test_training_reports_agreement_on_held_out_answers_it_never_trained_on(trained):
    """A share of the corpus's answers is held out (chosen by the seed, disjoint from the rest);
    after every epoch the head's agreement on them is reported, and it learns there too."""
    seqs = [torch.tensor([i]) for i in range(40)]
    train, held = split_held_out(seqs, 0.1, seed=0)
    assert len(held) == 4 and len(train) == 36 and {int(t) for t in train}.isdisjoint({int(t) for t in held})
    assert split_held_out(seqs, 0.1, seed=0)[1] == held and split_held_out(seqs, 0.0, seed=0)[1] == []
    epochs = trained[1]["epochs"]
    assert all(e["held_out"]["pairs"] > 0 for e in epochs)
    first, last = epochs[0]["held_out"]["top1_by_step"][0], epochs[-1]["held_out"]["top1_by_step"][0]
    assert last > first + 0.2 and last > 0.5, (first, last)


def test_feature_noise_perturbs_only_the_training_inputs(target):
    """feature_noise adds uniform noise to the true features fed to the head (EAGLE's augmentation):
    the loss moves with it, and without it the loss is deterministic."""
    from specdecode.heads.train import _batch_loss

    lm = target.lm
    d2t = torch.arange(64)
    head = new_head(HeadConfig.for_target(lm.args, 64, 64), lm_head_weight(lm), d2t)
    toks = torch.randint(0, 64, (20,))
    feats = torch.randn(20, lm.args.hidden_size)
    batch = [(toks, feats)]
    embed, rope = lm.model.embed_tokens, lm.rope
    quiet = TrainConfig()
    noisy = TrainConfig(feature_noise=0.5)
    a, b = _batch_loss(head, embed, rope, batch, quiet)[0], _batch_loss(head, embed, rope, batch, quiet)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(_batch_loss(head, embed, rope, batch, noisy)[0], a)
    assert torch.equal(_batch_loss(head, embed, rope, batch, noisy, noise=0.0)[0], a)  # evaluation: none


def test_an_interrupted_training_resumes_where_it_stopped(target, tmp_path):
    """A run stopped after its first epoch (the checkpoint is kept), started again, ends with the
    very head an unbroken run trains; the corpus is collected once and read back."""
    spec = CorpusSpec(num_prompts=6, max_new_tokens=24, self_written=0)
    config = TrainConfig(epochs=3, lr=5e-3, batch_tokens=128)
    whole, _ = train_for_target(target, spec, HeadShape(64, 64), config, out=tmp_path / "whole")

    import specdecode.heads.pipeline as pipeline

    real = pipeline.save_checkpoint

    def stop_after_first(directory, head, opt, epoch, info):
        real(directory, head, opt, epoch, info)
        raise KeyboardInterrupt

    pipeline.save_checkpoint = stop_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            train_for_target(target, spec, HeadShape(64, 64), config, out=tmp_path / "broken")
    finally:
        pipeline.save_checkpoint = real
    assert (tmp_path / "broken" / "checkpoint.json").is_file()
    assert json.loads((tmp_path / "broken" / "checkpoint.json").read_text())["epoch"] == 1
    resumed, info = train_for_target(target, spec, HeadShape(64, 64), config, out=tmp_path / "broken")
    assert [e["epoch"] for e in info["epochs"]] == [2, 3] and not (resumed / "checkpoint.json").exists()
    a, b = load_head(whole)[0].state_dict(), load_head(resumed)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corpus_parts_are_kept_and_read_back(target, tmp_path):
    spec = CorpusSpec(num_prompts=5, max_new_tokens=16, self_written=0)
    from specdecode.heads.pipeline import collect_corpus

    first, info = collect_corpus(target, spec, tmp_path, part_size=2)
    assert len(list(tmp_path.glob("part-*.safetensors"))) == 3 and info["sequences"] == 5
    again, _ = collect_corpus(target, spec, tmp_path, part_size=2)  # read back, not regenerated
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    seqs, meta = load_corpus(sorted(tmp_path.glob("part-*.safetensors"))[0])
    assert meta["spec"]["num_prompts"] == 5 and seqs[0][1].dtype == torch.bfloat16


def test_prompts_files_take_what_openai_messages_allow_and_refuse_empty_ones(tmp_path):
    from specdecode.heads.data import read_prompts

    tool_turns = [{"role": "user", "content": "zqxv weather in Qwertyville?"},
                  {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {}}]},
                  {"role": "user", "content": [{"type": "text", "text": "zqxv and tomorrow?"}]}]
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in ["zqxv plain", {"prompt": "zqxv a prompt"}, {"messages": tool_turns},
                                                    {"prompt": None, "messages": tool_turns[:1]}]) + "\n")
    got = read_prompts(f)
    assert got == ["zqxv plain", "zqxv a prompt", tool_turns, tool_turns[:1]]
    assert benchmark_overlap(got) == 0  # text parts and null content are no benchmark prompt
    for bad in ({"prompt": ""}, {"prompt": "  "}, {"messages": []}, {"messages": ["hello"]}, {"messages": [{"content": "x"}]},
                {"messages": [{"role": "user", "content": 5}]},
                {"prompt": 5}, [1]):
        f.write_text(json.dumps(bad) + "\n")
        with pytest.raises(SpecdecodeError, match="p.jsonl:1: expected a non-empty"):
            read_prompts(f)
    f.write_bytes(b"\xff\n")
    with pytest.raises(SpecdecodeError, match="is not UTF-8 text"):
        read_prompts(f)


def test_a_self_written_request_ends_where_the_user_turn_ends():
    from specdecode.heads.data import finish_request

    assert finish_request("How do I", " bake bread at home?<|im_end|>\n<|im_start|>assistant") == \
        "How do I bake bread at home?"
    assert finish_request("Can you explain", " what DNS is?\n\nSure! DNS is the phone book...") == \
        "Can you explain what DNS is?"
    passage = finish_request("Summarize the following news story:", "\n\nThe council voted on Monday to close the "
                             "old bridge for repairs.\n\nSummary: the bridge")
    assert passage == "Summarize the following news story:\n\nThe council voted on Monday to close the old bridge " \
        "for repairs."  # an opening that ends with a colon keeps the passage it introduces
    assert finish_request("Why do", "\n\n") == "Why do" and finish_request("", "\n\n") == ""


def test_the_target_writes_requests_of_its_own_the_same_ones_again(target, tmp_path):
    """self_written_prompts: the chat template opened at a user turn and a request's opening,
    continued by the target with a seed per request; the corpus keeps them and answers them."""
    from specdecode.heads.data import CHAT_OPENERS, self_written_prompts
    from specdecode.heads.pipeline import collect_corpus

    written = self_written_prompts(target, 6, max_new_tokens=12)
    assert 1 <= len(written) <= 6 and all(any(w.startswith(o) for o in CHAT_OPENERS) for w in written)
    assert any(len(w) > len(o) + 5 for w in written for o in CHAT_OPENERS if w.startswith(o))  # it wrote more
    assert self_written_prompts(target, 6, max_new_tokens=12) == written  # seeded: the same requests again
    assert self_written_prompts(target, 6, max_new_tokens=12, seed=1) != written
    spec = CorpusSpec(num_prompts=2, max_new_tokens=8, self_written=3)
    seqs, info = collect_corpus(target, spec, tmp_path)
    saved = list(tmp_path.glob("requests-*.jsonl"))
    assert len(saved) == 1 and info["sequences"] == 2 + len(saved[0].read_text().splitlines())
    import copy
    from types import SimpleNamespace

    from specdecode.heads.pipeline import written_requests

    base = SimpleNamespace(tokenizer=SimpleNamespace(has_chat_template=False, open_user_turn=None))
    assert written_requests(base, CorpusSpec(), tmp_path / "base") == []  # a base model: none by default
    with pytest.raises(SpecdecodeError, match="chat template"):  # ... and a clear error when asked for
        plain = copy.deepcopy(target.tokenizer.hf)
        plain.chat_template = None
        self_written_prompts(SimpleNamespace(tokenizer=type(target.tokenizer)(plain, [])), 1)


def test_the_default_prompts_hold_no_benchmark_prompt():
    prompts = default_prompts(200)
    assert len(prompts) == 200 and len(set(prompts)) == 200
    assert benchmark_overlap(prompts) == 0
    from specdecode.bench.datasets import spec_bench_prompts

    assert benchmark_overlap([spec_bench_prompts()[0].text]) == 1


def test_a_corpus_with_benchmark_prompts_is_refused(target, tmp_path):
    from specdecode.bench.datasets import spec_bench_prompts

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": spec_bench_prompts()[3].text}) + "\n" + json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(SpecdecodeError, match="benchmark prompts"):
        train_for_target(target, CorpusSpec(prompts_file=str(f), self_written=0), HeadShape(64, 64), TINY_TRAIN, out=tmp_path / "h")


def test_an_eagle_checkpoint_loads_and_drafts_with_the_target_lm_head(target, trained, tmp_path):
    """EAGLE-1's layout: fc.*, layers.0.* (no input norm), no lm_head (the target's is shared),
    a config.json beside model.safetensors."""
    from safetensors.torch import save_file

    ours, _ = load_head(trained[0])
    cfg = HeadConfig.for_target(target.lm.args, target.lm.args.vocab_size, 128)
    full = new_head(cfg, lm_head_weight(target.lm), torch.arange(cfg.draft_vocab_size))
    state = {k: v.float().contiguous() for k, v in full.state_dict().items() if k not in ("lm_head.weight", "d2t")}
    save_file(state, str(tmp_path / "model.safetensors"))
    a = target.lm.args
    (tmp_path / "config.json").write_text(json.dumps({
        "vocab_size": a.vocab_size, "num_attention_heads": a.num_attention_heads,
        "num_key_value_heads": a.num_key_value_heads, "rope_theta": a.rope_theta, "rms_norm_eps": a.rms_norm_eps}))
    head, meta = load_head(tmp_path)
    assert meta["format"] == "eagle" and head.shares_target_lm_head and ours.config.hidden_size == head.config.hidden_size
    drafter = HeadDrafter(bind(head, target.lm, quantize=None))
    torch.testing.assert_close(float_weight(drafter.model.head.lm_head), lm_head_weight(target.lm))
    ref = Engine(target)
    ids = ref.encode(HELD_OUT[0])
    params = SamplingParams(max_new_tokens=20, ignore_eos=True)
    assert Engine(target, drafter, num_draft_tokens=3).generate_ids(ids, params)[0] == ref.generate_ids(ids, params)[0]


def test_damaged_or_foreign_head_files_are_clear_errors(target, trained, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "head.json").write_text((trained[0] / "head.json").read_text())
    (bad / "head.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(HeadFileError, match="cannot read"):
        load_head(bad)
    eagle3 = tmp_path / "e3"
    eagle3.mkdir()
    save_file({"midlayer.self_attn.q_proj.weight": torch.zeros(2, 2), "fc.weight": torch.zeros(2, 6)},
              str(eagle3 / "model.safetensors"))
    with pytest.raises(HeadFileError, match="needs its config.json"):  # EAGLE-3 heads: tests/test_heads_eagle3.py
        load_head(eagle3)
    with pytest.raises(HeadFileError, match="no draft head"):
        load_head(tmp_path / "nothing")
    (bad / "head.json").write_text(json.dumps({"format": "specdecode-head"}))  # no config
    with pytest.raises(HeadFileError, match="does not hold a head this version can read: KeyError"):
        load_head(bad)
    (bad / "head.json").write_text("[1]")
    with pytest.raises(HeadFileError, match="is not a JSON object"):
        load_head(bad)
    eagle1 = tmp_path / "e1"
    eagle1.mkdir()
    (eagle1 / "config.json").write_text(json.dumps({"vocab_size": 8, "num_attention_heads": 1}))
    save_file({"fc.weight": torch.zeros(4, 8), "layers.0.self_attn.q_proj.weight": torch.zeros(4, 4)},
              str(eagle1 / "model.safetensors"))  # no MLP
    with pytest.raises(HeadFileError, match="does not hold a head this version can read"):
        load_head(eagle1)
    head, _ = load_head(trained[0])
    state = {k: v.float().contiguous() for k, v in head.state_dict().items() if k not in ("lm_head.weight", "d2t")}
    state["layers.0.mlp.up_proj.weight"] = state["layers.0.mlp.up_proj.weight"][:-1].contiguous()  # a wrong shape
    save_file(state, str(eagle1 / "model.safetensors"))
    a = target.lm.args
    (eagle1 / "config.json").write_text(json.dumps({"vocab_size": a.vocab_size, "num_attention_heads": a.num_attention_heads,
                                                    "num_key_value_heads": a.num_key_value_heads}))
    with pytest.raises(HeadFileError, match="tensors do not match .*size mismatch for layers.0.mlp.up_proj.weight"):
        load_head(eagle1)
    wrong = HeadConfig(**{**head.config.to_dict(), "target_vocab_size": 99})
    with pytest.raises(ValueError, match="made for hidden size"):
        bind(type(head)(wrong), target.lm)


def test_save_and_load_keep_the_head(target, trained, tmp_path):
    head, meta = load_head(trained[0])
    save_head(head, tmp_path, {"note": "copy"})
    again, meta2 = load_head(tmp_path)
    assert meta2["note"] == "copy" and again.config == head.config
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), again.state_dict().values()))
    assert "corpus" in meta and meta["draft_vocab_coverage"] > 0.5


def test_training_from_the_command_line_then_drafting_with_the_head(capsys, tmp_path, monkeypatch):
    from specdecode.cli import main

    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    tiny = ["--model", "tiny-random", "--dtype", "float32", "--threads", "1"]
    assert main(["generate", "hi", *tiny, "--drafter", "head", "-n", "4"]) == 2
    assert "no draft head trained for tiny-random" in capsys.readouterr().err
    assert main(["heads", "train", *tiny, "--quantize", "none", "--epochs", "0"]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
    assert main(["heads", "train", *tiny, "--quantize", "none", "--holdout", "1"]) == 2
    assert "--holdout must be a share in [0, 1)" in capsys.readouterr().err
    rc = main(["heads", "train", *tiny, "--quantize", "none", "--num-prompts", "8", "-n", "24", "--epochs", "2",
               "--draft-vocab", "128", "--intermediate-size", "64", "--holdout", "0.25", "--self-written", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and "head saved in" in out and "top-1 agreement" in out
    assert "held-out positions" in out and "held out (" in out and "the target writes 3 requests of its own" in out
    assert CorpusSpec().write_count() == 256 and CorpusSpec(prompts_file="p.jsonl").write_count() == 0
    assert CorpusSpec(text_files=["t.txt"], self_written=5).write_count() == 5
    assert main(["heads", "show", *tiny, "--quantize", "none"]) == 0
    assert '"draft_vocab_size": 128' in capsys.readouterr().out
    rc = main(["generate", "def add(x, y):", *tiny, "--drafter", "head", "--raw", "-n", "12", "-k", "3", "--compare"])
    err = capsys.readouterr().err
    assert rc == 0 and "draft head: 128-token vocabulary" in err and "output identical to the target-only output" in err
    rc = main(["generate", "def add(x, y):", *tiny, "--raw", "-n", "12", "--stats"])  # auto takes the head
    assert rc == 0 and "head" in capsys.readouterr().err


def test_the_bench_runs_the_head_methods_and_auto_takes_the_head(target, trained, tmp_path):
    from specdecode.bench.harness import BenchConfig, run_bench

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "category": c}) + "\n"
                               for p, c in zip(HELD_OUT, ["chat", "code", "chat", "code"])))
    names = ["spec-head", "target-int4", "spec-int4-head", "spec-int4-head-tree", "spec-int4-auto",
             "spec-int4-auto-tree"]  # k fixed: the tiny head is not
    # cheap beside a tiny target, and the planner would rightly leave it out
    results = run_bench(BenchConfig(target="tiny-random", methods=names, dataset=str(prompts), head=str(trained[0]),
                                    out=str(tmp_path / "out"), max_new_tokens=16, warmup=0, progress=False, num_draft_tokens=3,
                                    dtype="float32"), target=target)
    for p in results["prompts"]:
        assert p["results"]["spec-head"]["equal_to_target"] is True, p["id"]
        for name in names[2:]:  # checked against the int4 target's own output
            assert p["results"][name]["equal_to_reference"] is True, (name, p["id"])
    overall = results["summary"]["by_category"]["overall"]
    assert overall["spec-head"]["acceptance_by_position"] and overall["spec-int4-head"]["acceptance_by_position"]
    from specdecode.bench.methods import METHODS, BenchContext

    auto = METHODS["spec-int4-auto"].build(BenchContext(target, None, [2], head_path=str(trained[0])))
    assert auto.drafter.names == ["head", "ngram", "suffix"]  # the planner prices it beside the others
    trees = METHODS["spec-int4-auto-tree"].build(BenchContext(target, None, [2], head_path=str(trained[0])))
    assert [d.branches for d in trees.drafter.drafters] == [2, 3, 2]
