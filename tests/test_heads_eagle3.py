"""Published EAGLE-3 heads (heads/eagle3.py): a checkpoint in EAGLE-3's layout loads, reads the
inputs of the target layers it names (handed over by the target's own passes, bit for bit a plain
forward's), drafts in every round exactly what an independent re-implementation of EAGLE-3 drafts
from the whole context, and the output stays the target's (greedy, trees, batches, seeded
sampling). Foreign or inconsistent files are clear errors."""

import json

import pytest
import torch
import torch.nn.functional as F

import specdecode.drafters.head as head_module
from conftest import native_from_hf, tiny_hf_model
from specdecode import SamplingParams
from specdecode.drafters.head import HeadDrafter
from specdecode.engine import Engine
from specdecode.heads.model import bind
from specdecode.heads.store import HeadFileError, load_head
from specdecode.ragged import Segment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V, D, LAYERS = 97, 64, 8  # the tiny target: EAGLE-3's default layers on 8 are 2, 4 and 5
H, HKV, HD, FFN, VD = 4, 2, 16, 96, 48  # the head's own shape (its attention need not be the target's)
PROMPTS = [[5, 17, 33, 8, 60, 21, 9], [40, 3, 77, 12], [11, 11, 50, 64, 3, 90, 7, 25, 31]]


@pytest.fixture(scope="module")
def target():
    return native_from_hf(tiny_hf_model("llama", seed=4, layers=LAYERS, vocab=V))


def eagle3_state(seed: int = 0, bias: bool = False) -> dict[str, torch.Tensor]:
    """Random weights under EAGLE-3's published names (SpecForge / vLLM), d2t as offsets."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=0.25):
        return torch.randn(*shape, generator=g) * scale

    ids = torch.sort(torch.randperm(V, generator=g)[:VD]).values  # the draft vocabulary's target ids
    state = {
        "fc.weight": w(D, 3 * D, scale=0.1),
        "midlayer.input_layernorm.weight": 1 + w(D, scale=0.1),
        "midlayer.hidden_norm.weight": 1 + w(D, scale=0.1),
        "midlayer.post_attention_layernorm.weight": 1 + w(D, scale=0.1),
        "midlayer.self_attn.q_proj.weight": w(H * HD, 2 * D),
        "midlayer.self_attn.k_proj.weight": w(HKV * HD, 2 * D),
        "midlayer.self_attn.v_proj.weight": w(HKV * HD, 2 * D),
        "midlayer.self_attn.o_proj.weight": w(D, H * HD),
        "midlayer.mlp.gate_proj.weight": w(FFN, D),
        "midlayer.mlp.up_proj.weight": w(FFN, D),
        "midlayer.mlp.down_proj.weight": w(D, FFN),
        "norm.weight": 1 + w(D, scale=0.1),
        "lm_head.weight": w(VD, D, scale=1.0),
        "d2t": ids - torch.arange(VD),
        "t2d": torch.zeros(V, dtype=torch.bool).index_fill_(0, ids, True),
    }
    if bias:
        for p in ("q", "k", "v"):
            state[f"midlayer.self_attn.{p}_proj.bias"] = w(state[f"midlayer.self_attn.{p}_proj.weight"].shape[0])
    return state


def save_eagle3(directory, state, **config) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], "hidden_size": D, "intermediate_size": FFN,
           "num_attention_heads": H, "num_key_value_heads": HKV, "head_dim": HD, "vocab_size": V,
           "draft_vocab_size": VD, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 512,
           **config}
    (directory / "config.json").write_text(json.dumps(cfg))


# -- an independent EAGLE-3 forward (from the paper's and vLLM's description, on the raw tensors) --

def _rms(x, w, eps=1e-6):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, positions, theta=10000.0):  # x (heads, T, HD)
    inv = 1.0 / theta ** (torch.arange(0, HD, 2, dtype=torch.float32) / HD)
    f = positions[:, None].float() * inv[None]  # (T, HD / 2)
    cos, sin = torch.cat([f, f], -1).cos(), torch.cat([f, f], -1).sin()
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def reference_head(s, embeds, hidden, positions, norm_before_residual=False, theta=10000.0):
    """EAGLE-3's layer over a whole sequence: embeds, hidden (T, D) -> (pre-norm out (T, D), logits (T, VD))."""
    def lin(name, x):
        return x @ s[f"{name}.weight"].T + s.get(f"{name}.bias", 0)

    normed = _rms(hidden, s["midlayer.hidden_norm.weight"])
    residual = normed if norm_before_residual else hidden
    x = torch.cat([_rms(embeds, s["midlayer.input_layernorm.weight"]), normed], -1)  # (T, 2 D)
    T = x.shape[0]
    q = _rope(lin("midlayer.self_attn.q_proj", x).view(T, H, HD).transpose(0, 1), positions, theta)
    k = _rope(lin("midlayer.self_attn.k_proj", x).view(T, HKV, HD).transpose(0, 1), positions, theta)
    v = lin("midlayer.self_attn.v_proj", x).view(T, HKV, HD).transpose(0, 1)
    k, v = k.repeat_interleave(H // HKV, 0), v.repeat_interleave(H // HKV, 0)
    att = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]  # (H, T, HD)
    residual = residual + lin("midlayer.self_attn.o_proj", att.transpose(0, 1).reshape(T, H * HD))
    h = _rms(residual, s["midlayer.post_attention_layernorm.weight"])
    gated = F.silu(lin("midlayer.mlp.gate_proj", h)) * lin("midlayer.mlp.up_proj", h)
    out = residual + lin("midlayer.mlp.down_proj", gated)
    return out, _rms(out, s["norm.weight"]) @ s["lm_head.weight"].T


def layer_inputs(target, tokens: list[int], layers: list[int]) -> torch.Tensor:
    """The hidden states entering `layers` over `tokens`, from one plain forward: (T, len * D)."""
    seen = {}

    def keep(i):
        def hook(module, args):
            seen[i] = args[0][0].clone()  # (T, D); returns None: the layer's input stays as it is
        return hook

    hooks = [target.model.layers[i].register_forward_pre_hook(keep(i)) for i in layers]
    try:
        target(torch.tensor([tokens]), torch.arange(len(tokens))[None], target.new_cache(len(tokens) + 1))
    finally:
        for h in hooks:
            h.remove()
    return torch.cat([seen[i] for i in layers], -1)


def reference_draft(s, target, context: list[int], k: int, layers: list[int], norm_before_residual=False,
                    theta=10000.0) -> list[int]:
    """EAGLE-3's greedy draft of k tokens after `context`, recomputed from scratch every step."""
    ids = s["d2t"] + torch.arange(VD)
    g = layer_inputs(target, context, layers)[:-1] @ s["fc.weight"].T  # g_t for the pairs (g_t, x_{t+1})
    embed = target.model.embed_tokens.weight
    hidden, tokens, draft = list(g), list(context[1:]), []
    for _ in range(k):
        out, logits = reference_head(s, embed[torch.tensor(tokens)], torch.stack(hidden), torch.arange(len(tokens)),
                                     norm_before_residual, theta)
        draft.append(int(ids[int(logits[-1].argmax())]))
        hidden.append(out[-1])  # further on, the head's own output stands in for g
        tokens.append(draft[-1])
    return draft


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("eagle3")
    save_eagle3(d, eagle3_state())
    return d


def test_the_target_hands_over_the_inputs_of_the_layers_a_head_reads(target):
    """A ragged pass's features for (2, 5, 4) are the hidden states entering those layers in that
    order, bit for bit those of a plain forward, for a prefill and then a decode row."""
    tokens = PROMPTS[0] + [44]
    want = layer_inputs(target, tokens, [2, 5, 4])
    cache = target.new_cache(16)
    first = Segment(cache, torch.tensor(tokens[:-1]), 1, want_features=(2, 5, 4))
    plain = Segment(target.new_cache(16), torch.tensor(tokens[:-1]), 1, want_features=True)
    target.forward_ragged([first, plain])
    nxt = Segment(cache, torch.tensor(tokens[-1:]), 1, want_features=(2, 5, 4))
    target.forward_ragged([nxt])
    got = torch.cat([first.features, nxt.features])
    assert got.shape == (len(tokens), 3 * D) and plain.features.shape == (len(tokens) - 1, D)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_an_eagle3_checkpoint_loads_with_its_layout_and_the_default_layers(target, head_dir):
    head, meta = load_head(head_dir)
    assert meta["format"] == "eagle3" and head.config.kind == "eagle3" and head.config.feature_layers is None
    ids = eagle3_state()["d2t"] + torch.arange(VD)
    assert torch.equal(head.d2t, ids)  # offsets in the file, target ids here
    drafter = HeadDrafter(bind(head, target, quantize=None))
    assert drafter.feature_layers == [2, LAYERS // 2, LAYERS - 3]
    assert "EAGLE-3" in drafter.describe()


@pytest.mark.parametrize("k", [1, 3])
def test_every_draft_is_what_eagle3_drafts_from_the_whole_context(target, head_dir, monkeypatch, k):
    """Through the engine (prefill, catch-up after accepted and rejected drafts, trims), each round's
    draft equals a from-scratch EAGLE-3 forward over the context; the output is the target's."""
    rounds = []
    real = head_module.propose_batch

    def watched(drafters, contexts, ks, *a, **kw):
        out = real(drafters, contexts, ks, *a, **kw)
        rounds.extend((list(c), d.tokens) for c, d in zip(contexts, out))
        return out

    monkeypatch.setattr(head_module, "propose_batch", watched)
    head, _ = load_head(head_dir)
    s = eagle3_state()
    layers = [2, LAYERS // 2, LAYERS - 3]
    engine = Engine(target, HeadDrafter(bind(head, target, quantize=None)), num_draft_tokens=k, prefix_cache=None)
    ref = Engine(target, prefix_cache=None)
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    for p in PROMPTS:
        assert engine.generate_ids(p, params)[0] == ref.generate_ids(p, params)[0]
    drafted = [r for r in rounds if r[1]]
    assert len(drafted) >= 24
    for context, draft in drafted:
        assert draft == reference_draft(s, target, context, len(draft), layers)[: len(draft)], context


def test_named_layers_biases_and_vllm_names_load_and_draft_alike(target, tmp_path):
    """`eagle_aux_hidden_state_layer_ids` picks the layers; q/k/v biases load; `norm_before_residual`
    holds; a file written with vLLM's names (layers.0.* with a hidden_norm, a model. prefix) is the
    same head."""
    s = eagle3_state(seed=1, bias=True)
    config = {"eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 3, 6]}, "norm_before_residual": True}
    save_eagle3(tmp_path / "a", s, **config)
    renamed = {("model.layers.0." + k[len("midlayer."):] if k.startswith("midlayer.") else k): v for k, v in s.items()}
    save_eagle3(tmp_path / "b", renamed, **config)
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    outs = []
    for name in ("a", "b"):
        head, _ = load_head(tmp_path / name)
        c = head.config
        assert c.feature_layers == [1, 3, 6] and c.attention_bias and c.norm_before_residual
        drafter = HeadDrafter(bind(head, target, quantize=None))
        drafter.begin(PROMPTS[2], 64, torch.device("cpu"))
        drafter.add_features(0, layer_inputs(target, PROMPTS[2], [1, 3, 6]))
        outs.append(drafter.propose(PROMPTS[2], 3, params, None).tokens)
    assert outs[0] == outs[1] == reference_draft(s, target, PROMPTS[2], 3, [1, 3, 6], norm_before_residual=True)
    assert outs[0] != reference_draft(s, target, PROMPTS[2], 3, [1, 3, 6])  # the flag changes the drafts


def test_a_head_with_its_own_rope_drafts_past_its_configured_length(target, tmp_path):
    """A head whose RoPE base differs from the target's gets its own tables, as long as the
    target's context (its config says 16 positions; it drafts at 40 and more)."""
    s = eagle3_state(seed=2)
    save_eagle3(tmp_path, s, rope_theta=500000.0, max_position_embeddings=16)
    head, _ = load_head(tmp_path)
    drafter = HeadDrafter(bind(head, target, quantize=None))
    context = PROMPTS[2] * 5  # 45 tokens
    drafter.begin(context, 64, torch.device("cpu"))
    drafter.add_features(0, layer_inputs(target, context, [2, 4, 5]))
    got = drafter.propose(context, 3, SamplingParams(max_new_tokens=8), None).tokens
    assert got == reference_draft(s, target, context, 3, [2, 4, 5], theta=500000.0)
    assert got != reference_draft(s, target, context, 3, [2, 4, 5])  # the base matters


def test_trees_batches_and_seeded_sampling_give_the_target_output(target, head_dir):
    head, _ = load_head(head_dir)
    ref = Engine(target, prefix_cache=None)
    params = [SamplingParams(max_new_tokens=20, ignore_eos=True),
              SamplingParams(max_new_tokens=20, temperature=0.9, seed=7, ignore_eos=True),
              SamplingParams(max_new_tokens=14, ignore_eos=True)]
    want = [ref.generate_ids(x, p)[0] for x, p in zip(PROMPTS, params)]
    for branches, quantize in ((1, "int8"), (2, "int8"), (1, "int4")):
        engine = Engine(target, HeadDrafter(bind(head, target, quantize=quantize), branches), num_draft_tokens=4,
                        prefix_cache=None)
        assert [engine.generate_ids(x, p)[0] for x, p in zip(PROMPTS, params)] == want
        states = [engine.start(list(x), p) for x, p in zip(PROMPTS, params)]  # one batch: a ragged head pass
        while not all(s.finished for s in states):
            engine.step(states)
        assert [s.generated for s in states] == want


def test_inconsistent_eagle3_files_are_clear_errors(target, tmp_path):
    s = eagle3_state()
    save_eagle3(tmp_path / "layers", s, eagle_config={"eagle_aux_hidden_state_layer_ids": [1, 3]})
    with pytest.raises(HeadFileError, match="fc reads 3 hidden states"):
        load_head(tmp_path / "layers")
    save_eagle3(tmp_path / "far", s, eagle_config={"eagle_aux_hidden_state_layer_ids": [1, 3, 8]})
    head, _ = load_head(tmp_path / "far")
    with pytest.raises(ValueError, match="target layers \\[1, 3, 8\\]; the target has 8 layers"):
        bind(head, target)
    save_eagle3(tmp_path / "wide", s, target_hidden_size=128)
    with pytest.raises(HeadFileError, match="as wide as their target"):
        load_head(tmp_path / "wide")
    bad = dict(s, d2t=s["d2t"] + V)
    save_eagle3(tmp_path / "d2t", bad)
    with pytest.raises(HeadFileError, match="d2t does not map"):
        load_head(tmp_path / "d2t")
    save_eagle3(tmp_path / "nolm", {k: v for k, v in s.items() if k != "lm_head.weight"})
    with pytest.raises(HeadFileError, match="no lm_head"):
        load_head(tmp_path / "nolm")
    save_eagle3(tmp_path / "short", {k: v for k, v in s.items() if k != "midlayer.mlp.up_proj.weight"})
    with pytest.raises(HeadFileError, match="EAGLE-3's layout"):
        load_head(tmp_path / "short")


def test_the_command_line_drafts_with_an_eagle3_checkpoint(capsys, tmp_path, monkeypatch):
    """`--head DIR` takes an EAGLE-3 directory: generate --compare and `heads show` (tiny-random:
    hidden 64, 2 layers, so the file names layers 0 and 1); a head for another target is one line."""
    import specdecode
    from specdecode.cli import main

    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path / "cache"))
    args = specdecode.load("tiny-random", dtype="float32").lm.args
    s = {k: v for k, v in eagle3_state().items() if k != "t2d"}
    s["fc.weight"] = s["fc.weight"][:, : 2 * D]  # two layers' inputs
    ids = torch.arange(VD) * 2  # draft ids -> even target ids, as offsets
    s["d2t"] = ids - torch.arange(VD)
    layers = {"eagle_aux_hidden_state_layer_ids": [0, 1]}
    save_eagle3(tmp_path / "e3", s, vocab_size=args.vocab_size, eagle_config=layers)
    tiny = ["--model", "tiny-random", "--dtype", "float32", "--threads", "1"]
    rc = main(["generate", "def add(x, y):", *tiny, "--drafter", "head", "--head", str(tmp_path / "e3"), "--raw",
               "-n", "12", "-k", "3", "--compare"])
    err = capsys.readouterr().err
    assert rc == 0 and "EAGLE-3 on the inputs of target layers [0, 1]" in err
    assert "output identical to the target-only output" in err
    assert main(["heads", "show", *tiny, "--head", str(tmp_path / "e3")]) == 0
    out = capsys.readouterr().out
    assert '"format": "eagle3"' in out and '"feature_layers": [\n   0,\n   1\n  ]' in out
    save_eagle3(tmp_path / "other", s, vocab_size=args.vocab_size + 1, eagle_config=layers)
    assert main(["generate", "hi", *tiny, "--drafter", "head", "--head", str(tmp_path / "other"), "-n", "4"]) == 2
    assert "cannot draft with the head at" in capsys.readouterr().err
