"""The whole decoder layer in one C++ call (specdecode.kernels.fused_layer): it gives the bits of
the Python layer for every weight format and dtype, in prefill, decode and verify passes, in
ragged batches with token trees, writes the same KV cache, notices layers replaced after its
first call, and leaves what it does not take to the Python layer."""

import pytest
import torch
from torch import nn

from conftest import native_from_hf, tiny_hf_model
from specdecode.cache import KVCache
from specdecode.kernels import fused_layer
from specdecode.quant import quantize_linear, quantize_model
from specdecode.ragged import Segment

pytestmark = pytest.mark.usefixtures("kernels", "one_torch_thread")


def run_passes(model, tokens: torch.Tensor, monkeypatch, fused: bool) -> tuple[list[torch.Tensor], KVCache]:
    """Prefill 7 tokens, verify a chain of 4, decode 1: the logits of each pass and the cache."""
    monkeypatch.setattr(fused_layer, "enabled", fused)
    cache = model.new_cache(32)
    out = []
    for a, b in ((0, 7), (7, 11), (11, 12)):
        out.append(model(tokens[None, a:b], torch.arange(a, b)[None], cache))
    return out, cache


def count_fused_calls(monkeypatch) -> list[int]:
    """[layers run by the C++ layer or stack so far, passes run by the stack]."""
    calls = [0, 0]
    real, real_stack = fused_layer.forward, fused_layer.forward_stack

    def counting(*args):
        y = real(*args)
        calls[0] += y is not None
        return y

    def counting_stack(model, layers, *args):
        y = real_stack(model, layers, *args)
        calls[0] += len(layers) if y is not None else 0
        calls[1] += y is not None
        return y

    monkeypatch.setattr(fused_layer, "forward", counting)
    monkeypatch.setattr(fused_layer, "forward_stack", counting_stack)
    return calls


def assert_same_passes(model, monkeypatch, seed: int = 0) -> None:
    tokens = torch.randint(3, 97, (12,), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        want, want_cache = run_passes(model, tokens, monkeypatch, fused=False)
        calls = count_fused_calls(monkeypatch)
        got, got_cache = run_passes(model, tokens, monkeypatch, fused=True)
    assert calls == [3 * len(model.model.layers), 3]  # every pass ran the C++ stack
    for w, g in zip(want, got):
        assert torch.equal(w, g)
    for layer in range(len(model.model.layers)):
        assert torch.equal(want_cache.keys[layer][:, :, :12], got_cache.keys[layer][:, :, :12])
        assert torch.equal(want_cache.values[layer][:, :, :12], got_cache.values[layer][:, :, :12])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: q/k/v biases
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
def test_the_fused_layer_gives_the_bits_of_the_python_layer(arch, dtype, quantize, monkeypatch):
    model = native_from_hf(tiny_hf_model(arch), dtype=dtype)
    if quantize:
        quantize_model(model, quantize)
    assert_same_passes(model, monkeypatch)


def test_integer_formats_mixed_in_one_call(monkeypatch):
    # As a GGUF file mixes Q4_K and Q6_K: q/k/v and gate/up of different integer formats share a call.
    model = native_from_hf(tiny_hf_model("qwen2"), dtype=torch.bfloat16)
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        for j, (parent, name) in enumerate([(attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj"),
                                            (mlp, "gate_proj"), (mlp, "up_proj"), (mlp, "down_proj")]):
            setattr(parent, name, quantize_linear(getattr(parent, name), "int8" if (i + j) % 2 else "int4"))
    assert_same_passes(model, monkeypatch, seed=1)


def test_a_ragged_batch_with_a_tree_gives_each_request_its_bits(monkeypatch):
    model = native_from_hf(tiny_hf_model("qwen2"), dtype=torch.bfloat16)
    quantize_model(model, "int4")

    def passes(fused: bool):
        monkeypatch.setattr(fused_layer, "enabled", fused)
        caches = [model.new_cache(32), model.new_cache(32)]
        with torch.inference_mode():
            first = model.forward_ragged([Segment(caches[0], list(range(5, 14)), num_logits=1),
                                          Segment(caches[1], list(range(20, 25)), num_logits=1)])
            # Request 0 verifies a tree (two branches), request 1 a chain of 3.
            second = model.forward_ragged([Segment(caches[0], [40, 41, 42, 43], parents=[-1, 0, -1, 2]),
                                           Segment(caches[1], [50, 51, 52])])
        return [*first, *second], caches

    want, want_caches = passes(False)
    calls = count_fused_calls(monkeypatch)
    got, got_caches = passes(True)
    assert calls == [2 * len(model.model.layers), 2]
    for w, g in zip(want, got):
        assert torch.equal(w, g)
    for wc, gc in zip(want_caches, got_caches):
        assert wc.length == gc.length
        for layer in range(len(model.model.layers)):
            assert torch.equal(wc.keys[layer][:, :, : wc.length], gc.keys[layer][:, :, : gc.length])
            assert torch.equal(wc.values[layer][:, :, : wc.length], gc.values[layer][:, :, : gc.length])


def test_the_stack_hands_over_the_hidden_states_entering_the_layers_asked_for(monkeypatch):
    # An EAGLE-3 head reads the inputs of some layers (Segment.want_features): the stack's copies
    # are the Python layers' bits, and the pass's logits are unchanged by asking.
    model = native_from_hf(tiny_hf_model("qwen2"), dtype=torch.bfloat16)
    quantize_model(model, "int4")

    def passes(fused: bool):
        monkeypatch.setattr(fused_layer, "enabled", fused)
        cache = model.new_cache(32)
        seg = Segment(cache, list(range(5, 14)), want_features=(0, 1))
        with torch.inference_mode():
            logits = model.forward_ragged([seg])
        return logits[0], seg.features

    want_logits, want = passes(False)
    calls = count_fused_calls(monkeypatch)
    got_logits, got = passes(True)
    assert calls[1] == 1
    assert got.shape == (9, 2 * model.args.hidden_size)
    assert torch.equal(want, got) and torch.equal(want_logits, got_logits)
    assert not torch.equal(got[:, : model.args.hidden_size], got[:, model.args.hidden_size :])


def test_a_layer_with_hooks_runs_as_a_module_and_gives_the_same_bits(monkeypatch):
    model = native_from_hf(tiny_hf_model("llama"), dtype=torch.bfloat16)
    quantize_model(model, "int4")
    tokens = torch.arange(3, 15)
    with torch.inference_mode():
        want, _ = run_passes(model, tokens, monkeypatch, fused=True)
    seen = []
    hook = model.model.layers[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    calls = count_fused_calls(monkeypatch)
    try:
        with torch.inference_mode():
            got, _ = run_passes(model, tokens, monkeypatch, fused=True)
    finally:
        hook.remove()
    assert seen == [(1, 7, 64), (1, 4, 64), (1, 1, 64)]  # the hook saw every pass
    assert calls == [3 * len(model.model.layers), 0]  # layer by layer, each still the C++ layer
    assert all(torch.equal(w, g) for w, g in zip(want, got))


def test_layers_replaced_after_the_first_call_are_used(monkeypatch):
    # The weights' specs are cached per layer: re-quantizing the model must not leave them stale.
    model = native_from_hf(tiny_hf_model("llama"), dtype=torch.float32)
    tokens = torch.arange(3, 15)
    with torch.inference_mode():
        run_passes(model, tokens, monkeypatch, fused=True)  # caches the float layers' specs
    quantize_model(model, "int8")
    assert_same_passes(model, monkeypatch)
    with torch.inference_mode():
        got, _ = run_passes(model, tokens, monkeypatch, fused=True)
    float_model = native_from_hf(tiny_hf_model("llama"), dtype=torch.float32)
    with torch.inference_mode():
        float_out, _ = run_passes(float_model, tokens, monkeypatch, fused=True)
    assert not torch.equal(got[0], float_out[0])  # the int8 weights ran, not the cached float ones


def test_what_the_fused_layer_does_not_take_goes_to_the_python_layer(monkeypatch):
    model = native_from_hf(tiny_hf_model("llama"), dtype=torch.float32)
    layer = model.model.layers[0]
    x = torch.randn(1, 3, 64)
    cos, sin = model.rope(torch.arange(3)[None], x.dtype)
    with torch.inference_mode():
        assert fused_layer.forward(layer, x, cos, sin, model.new_cache(8)) is not None
        assert fused_layer.forward(layer, x, cos, sin, model.new_cache(8, batch_size=2)) is None  # a batched cache
        assert fused_layer.forward(layer, x.to(torch.float16), cos, sin, model.new_cache(8)) is None

        class OtherCache(KVCache):
            pass

        assert fused_layer.forward(layer, x, cos, sin, OtherCache(2, 2, 16, 8)) is None
        layer.mlp.down_proj = nn.Linear(128, 64)  # e.g. tensor parallelism's wrapped layers
        assert fused_layer.forward(layer, x, cos, sin, model.new_cache(8)) is None
    assert fused_layer.forward(layer, x, cos, sin, model.new_cache(8)) is None  # gradients on
    monkeypatch.setattr(fused_layer, "enabled", False)
    with torch.inference_mode():
        assert fused_layer.forward(model.model.layers[1], x, cos, sin, model.new_cache(8)) is None


def test_a_full_cache_is_refused_as_the_python_layer_refuses_it():
    model = native_from_hf(tiny_hf_model("llama"), dtype=torch.float32)
    cache = model.new_cache(4)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="KV cache overflow"):
        model(torch.arange(3, 9)[None], torch.arange(6)[None], cache)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_a_draft_heads_layer_without_an_input_norm_gives_its_bits(quantize, monkeypatch):
    from specdecode.heads.model import DraftHead, HeadConfig, bind

    target = native_from_hf(tiny_hf_model("qwen2"), dtype=torch.bfloat16)
    torch.manual_seed(3)
    head = DraftHead(HeadConfig.for_target(target.args, 50, 96))
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.2)
    model = bind(head, target, quantize=quantize)
    assert isinstance(model.head.layers[0].input_layernorm, nn.Identity)
    feats = torch.randn(9, 64).to(torch.bfloat16)
    tokens = torch.randint(3, 97, (9,))

    def steps(fused: bool):
        monkeypatch.setattr(fused_layer, "enabled", fused)
        cache = model.new_cache(16)
        out = []
        for a, b in ((0, 6), (6, 9)):
            out.extend(model.step(tokens[a:b], feats[a:b], torch.arange(a, b), cache))
            cache.advance(b - a)
        return out

    want = steps(False)
    calls = count_fused_calls(monkeypatch)
    got = steps(True)
    assert calls[0] == 2
    for w, g in zip(want, got):
        assert torch.equal(w, g)
