"""The skinny CPU kernels (specdecode.kernels): every ISA path this CPU runs, against a float64
reference, and bit for bit row-invariant (row i's result does not depend on how many rows are
computed with it) at the real models' shapes. Paths the CPU lacks are reported as skipped.

Tolerances against float64 (relative to the output's largest value): the kernels accumulate in
float32 over K <= 8960 terms, so about K * 2^-24 in the worst case; 2e-5 holds with margin at
every shape here (measured: <= 2e-6). The integer formats are compared with the dequantized
weights and the dequantized int8 activations, which is exactly what they compute.
"""

import pytest
import torch

from specdecode.errors import SpecdecodeError
from specdecode.kernels import ISA_NAMES, PackedFloatLinear, PackedInt4Linear, PackedInt8Linear, best_isa, build, pack, project

pytestmark = pytest.mark.usefixtures("kernels")  # skip or fail without them: conftest.kernels
FORMATS = ("f32", "bf16", "int8", "int4")
TOL = 2e-5


def isa_param(isa: int):
    have = best_isa()  # -1 without kernels: then the kernels fixture skips or fails, not this mark
    return pytest.param(isa, id=ISA_NAMES[isa], marks=pytest.mark.skipif(
        0 <= have < isa, reason=f"this CPU lacks the {ISA_NAMES[isa]} path (best: {ISA_NAMES[max(have, 0)]})"))


ISAS = [isa_param(i) for i in range(len(ISA_NAMES))]


def make_layer(fmt: str, w: torch.Tensor):
    if fmt == "f32":
        return PackedFloatLinear(w.float())
    if fmt == "bf16":
        return PackedFloatLinear(w.bfloat16())
    return (PackedInt8Linear if fmt == "int8" else PackedInt4Linear)(w.float(), None, torch.float32)


def run(layer, x: torch.Tensor, isa: int) -> torch.Tensor:
    """The layer's kernel on an explicit ISA path, no bias: (m, K) -> (m, N) float32."""
    fmt, packed, scales, _, n = layer.spec()
    return build.extension().linear(x.to(layer.act_dtype), [(fmt, packed, scales, None, n)], isa, torch.float32)[0]


def reference(layer, x: torch.Tensor) -> torch.Tensor:
    """float64: what the kernel computes, summed exactly."""
    W = layer.dequantized_weight().double()
    if layer.mode == "float":
        return x.to(layer.act_dtype).double() @ W.T
    xq, sx, _ = build.extension().quantize_act(x.float().contiguous(), build.active_isa())
    return pack.dequantized_act(xq, sx) @ W.T


def random_case(N: int, K: int, m: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * 0.05
    x = torch.randn(m, K, generator=g)
    x[:, 5] *= 40.0  # an outlier channel, as real activations have
    if m > 2:
        x[1, :32] = 0.0  # an all-zero activation block
    return w, x


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(97, 64), (1536, 1536), (256, 8960)], ids=["tiny-odd-N", "1536x1536", "256x8960"])
def test_matches_float64_reference_and_is_row_invariant(fmt, isa, shape):
    N, K = shape
    w, x = random_case(N, K, 16)
    layer = make_layer(fmt, w)
    y = run(layer, x, isa)
    ref = reference(layer, x)
    assert y.shape == (16, N) and y.dtype == torch.float32
    assert float((y.double() - ref).abs().max() / ref.abs().max()) <= TOL
    for m in (1, 2, 3, 5, 8, 9):  # every row block split the kernel can take
        part = run(layer, x[:m], isa)
        assert torch.equal(part, y[:m]), f"rows change with m = {m}"
    for i in range(16):
        assert torch.equal(run(layer, x[i : i + 1], isa)[0], y[i]), f"row {i} alone differs"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(8960, 1536), (1536, 8960), (151936, 1536)], ids=["up-8960x1536", "down-1536x8960", "lm_head-151936x1536"])
def test_row_invariant_at_real_model_shapes(fmt, shape):
    """Qwen2.5-1.5B's MLP and its 151,936-row lm_head, on the path in use: rows of a 9-token
    verify pass are bit-identical to one-token steps."""
    N, K = shape
    w, x = random_case(N, K, 9, seed=1)
    layer = make_layer(fmt, w)
    del w
    isa = build.active_isa()
    y = run(layer, x, isa)
    for i in (0, 4, 8):
        assert torch.equal(run(layer, x[i : i + 1], isa)[0], y[i])
    rows = torch.randint(0, N, (256,), generator=torch.Generator().manual_seed(2))
    W = layer.dequantized_weight()[rows].double()
    if layer.mode == "float":
        xd = x.to(layer.act_dtype).double()
    else:
        xq, sx, _ = build.extension().quantize_act(x.float().contiguous(), isa)
        xd = pack.dequantized_act(xq, sx)
    ref = xd @ W.T
    assert float((y[:, rows].double() - ref).abs().max() / ref.abs().max()) <= TOL


@pytest.mark.parametrize("fmt", FORMATS)
def test_several_layers_in_one_call_equal_one_at_a_time(fmt):
    """project(): q/k/v or gate/up share one call (one activation pass, one parallel region)."""
    w, x = random_case(96, 256, 7, seed=10)
    layers = [make_layer(fmt, w[:64]), make_layer(fmt, w[64:80]), make_layer(fmt, w[80:])]
    xx = x.to(layers[0].act_dtype)
    together = project(xx, *layers)
    for layer, y in zip(layers, together):
        assert torch.equal(y, layer(xx)) and y.dtype == xx.dtype


@pytest.mark.parametrize("fmt", ["f32", "int8", "int4"])
def test_every_path_gives_the_same_bits(fmt):
    """The integer formats and fp32 run the same float operations on every path (lanes are
    columns), so an AVX2 machine and an AVX-512 one produce identical outputs."""
    if best_isa() < 1:
        pytest.skip("only the scalar path runs here")
    w, x = random_case(200, 1536, 7, seed=3)
    layer = make_layer(fmt, w)
    outs = [run(layer, x, isa) for isa in range(best_isa() + 1)]
    for other in outs[1:]:
        assert torch.equal(outs[0], other)


def outputs_by_one_pass_rows(run, layer, x: torch.Tensor) -> dict[int, list[torch.Tensor]]:
    """run(layer, x[:m], AVX2) for m = 3, 4, 11 under the AVX2 kernels' one-pass row limits 2 (a
    pass per half past two rows) and 4; the setting is restored after."""
    ext = build.extension()
    before = ext.one_pass_rows()
    try:
        outs = {}
        for limit in (2, 4):
            ext.set_one_pass_rows(limit)
            outs[limit] = [run(layer, x[:m], 1) for m in (3, 4, 11)]
    finally:
        ext.set_one_pass_rows(before)
    assert ext.one_pass_rows() == before
    return outs


def test_one_pass_and_pass_per_half_give_the_same_bits():
    """The AVX2 kernels' order over a tile's two halves (set_one_pass_rows) is a schedule only."""
    if best_isa() < 1:
        pytest.skip("the setting concerns the AVX2 path, which this CPU lacks")
    w, x = random_case(200, 1536, 11, seed=12)
    layer = make_layer("int4", w)  # int8 keeps a pass per half past two rows (not measured both ways)
    outs = outputs_by_one_pass_rows(run, layer, x)
    for a, b in zip(outs[2], outs[4]):
        assert torch.equal(a, b)


def test_bf16_fma_paths_agree_with_each_other():
    if best_isa() < 1:
        pytest.skip("only the scalar path runs here")
    w, x = random_case(200, 1536, 5, seed=4)
    layer = make_layer("bf16", w)
    assert torch.equal(run(layer, x, 0), run(layer, x, 1))  # scalar and AVX2: the same FMAs in order


@pytest.mark.parametrize("isa", ISAS)
def test_activation_quantization_matches_its_pytorch_statement(isa):
    _, x = random_case(1, 8960, 12, seed=5)
    x[3, 64:96] = 1e-30  # tiny but non-zero block
    x[4, 96:128] = 0.5  # exact ties of rounding: 63.5 -> 64 (to even)
    got = pack.act_rows(*build.extension().quantize_act(x.contiguous(), isa))
    want = pack.quantize_act_reference(x)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    xq, sx, sxs = got
    assert int(xq.abs().max()) == 127 and bool((sx[1, 0] == 0) & (sxs[1, 0] == 0))
    # one scale per super-block of 256 (the K-quant kernels'): the 8 blocks share it; an all-zero
    # super-block gets a zero scale
    x[5, 256:512] = 0.0
    got = pack.act_rows(*build.extension().quantize_act(x.contiguous(), isa, 8))
    for a, b in zip(got, pack.quantize_act_reference(x, group=8)):
        assert torch.equal(a, b)
    sx8 = got[1].reshape(12, -1, 8)
    assert torch.equal(sx8, sx8[..., :1].expand_as(sx8)) and not torch.equal(got[1], sx)
    assert bool((got[1][5, 8:16] == 0).all() & (got[0][5, 256:512] == 0).all())


def test_activation_quantization_refuses_groups_it_does_not_have():
    x = torch.randn(2, 288)
    with pytest.raises(RuntimeError, match="group must be 1 or 8"):
        build.extension().quantize_act(x, build.active_isa(), 3)
    with pytest.raises(RuntimeError, match="multiple of 256"):  # 9 blocks: no whole super-block
        build.extension().quantize_act(x, build.active_isa(), 8)


@pytest.mark.parametrize("fmt", FORMATS)
def test_pack_round_trips(fmt):
    w, _ = random_case(50, 96, 1, seed=6)
    layer = make_layer(fmt, w)
    back = layer.dequantized_weight()
    assert back.shape == (50, 96)
    if fmt in ("f32", "bf16"):
        assert torch.equal(back, w.to(layer.act_dtype).float())
    else:  # the quantization step bounds the error: int8 amax/254 per row, int4 range/30 per block
        assert float((back - w).abs().max()) <= (w.abs().max() / 127 if fmt == "int8" else (w.max() - w.min()) / 15)
    q, s, d = pack.quantize_int4_blocks(w)
    assert all(torch.equal(a, b) for a, b in zip(pack.unpack_int4(pack.pack_int4(q, s, d), 50), (q, s, d)))


def test_layer_forward_keeps_dtype_bias_and_leading_dims():
    w, x = random_case(40, 64, 6, seed=7)
    bias = torch.randn(40)
    for layer in (PackedFloatLinear(w.bfloat16(), bias.bfloat16()), PackedInt8Linear(w, bias), PackedInt4Linear(w, bias)):
        xx = x.to(layer.act_dtype).view(2, 3, 64)
        y = layer(xx)
        assert y.shape == (2, 3, 40) and y.dtype == layer.act_dtype
        expected = (run(layer, x.to(layer.act_dtype), build.active_isa()) + layer.bias.float()).to(layer.act_dtype).view(2, 3, 40)
        assert torch.equal(y, expected)


def test_bf16_outputs_finished_in_the_kernel_call_equal_add_then_round():
    """A bf16 call adds each layer's bias and rounds inside the parallel region; the result must
    be exactly the fp32 output plus the bias, rounded by Tensor.to (NaN and infinities too), for
    every bias dtype (fp16: the fallback), several layers in one call and more rows than one row
    chunk (32)."""
    ext, isa = build.extension(), build.active_isa()
    w, x = random_case(40, 64, 37, seed=11)
    x[3, :] = float("nan")  # a NaN row
    x[4, 7] = float("inf")
    layers = [PackedInt4Linear(w, None, torch.bfloat16), PackedInt8Linear(w[:23], None, torch.bfloat16),
              PackedInt4Linear(w[:17], None, torch.bfloat16)]
    g = torch.Generator().manual_seed(12)
    biases = [torch.randn(40, generator=g).bfloat16(), torch.randn(23, generator=g), torch.randn(17, generator=g).half()]
    specs = [(l.format_code, l.packed, getattr(l, "scales", None), b, l.out_features) for l, b in zip(layers, biases)]
    got = ext.linear(x.bfloat16(), specs, isa, torch.bfloat16)
    plain = ext.linear(x.bfloat16(), [(f, p, s, None, n) for f, p, s, _, n in specs], isa, torch.float32)
    for y, y32, b in zip(got, plain, biases):
        assert y.dtype == torch.bfloat16
        expected = (y32 + b).to(torch.bfloat16)
        same = (y.view(torch.int16) == expected.view(torch.int16)) | (y.isnan() & expected.isnan())
        assert bool(same.all())


def test_state_dict_shows_plain_weights():
    w, _ = random_case(40, 64, 1, seed=8)
    sd = PackedFloatLinear(w.bfloat16(), torch.zeros(40, dtype=torch.bfloat16)).state_dict()
    assert set(sd) == {"weight", "bias"} and torch.equal(sd["weight"], w.bfloat16())


def test_forced_isa_and_bad_override(monkeypatch):
    monkeypatch.setenv(build.ISA_ENV, "scalar")
    assert build.active_isa() == 0
    monkeypatch.setenv(build.ISA_ENV, "avx9000")
    with pytest.raises(SpecdecodeError, match="avx9000"):
        build.active_isa()


def attention_reference(q, k, v, scale):
    """float64 causal-chain attention: query t of T attends keys [0, L - T + t]."""
    B, H, T, hd = q.shape
    L, rep = k.shape[2], q.shape[1] // k.shape[1]
    kk, vv = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    s = (q.double() @ kk.transpose(-1, -2)) * scale  # (B, H, T, L)
    allowed = torch.arange(L)[None, :] <= (L - T + torch.arange(T))[:, None]
    return s.masked_fill(~allowed, float("-inf")).softmax(-1) @ vv


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16], ids=["kv-fp32", "kv-bf16"])
def test_chain_attention_matches_reference_and_is_row_invariant(isa, kv_dtype):
    g = torch.Generator().manual_seed(9)
    B, H, Hkv, T, hd, max_len, L = 2, 12, 2, 9, 128, 300, 200
    cache_k = torch.randn(B, Hkv, max_len, hd, generator=g).to(kv_dtype)
    cache_v = torch.randn(B, Hkv, max_len, hd, generator=g).to(kv_dtype)
    k, v = cache_k[:, :, :L], cache_v[:, :, :L]  # strided views, as the KV cache hands them out
    q = torch.randn(B, H, T, hd, generator=g)
    ext, scale = build.extension(), hd**-0.5
    out = ext.attend_chain(q, k, v, scale, isa)
    ref = attention_reference(q, k, v, scale)
    assert float((out.double() - ref).abs().max()) <= 1e-5
    for t in range(T):  # query t alone, over the prefix a one-token step would see
        alone = ext.attend_chain(q[:, :, t : t + 1].contiguous(), k[:, :, : L - T + t + 1], v[:, :, : L - T + t + 1], scale, isa)
        assert torch.equal(alone[:, :, 0], out[:, :, t])
    assert torch.equal(out, ext.attend_chain(q, k, v, scale, 0))  # every path: the same bits


TREE = [-1, 0, 0, 1, 1, 2, -1, 6, 3, 8]  # two roots, branches at nodes 0, 1 and a 4-deep path


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16], ids=["kv-fp32", "kv-bf16"])
def test_tree_attention_gives_each_node_the_bits_of_a_chain_along_its_path(isa, kv_dtype):
    """Each node of a tree pass attends the context and its root-to-node path: its output equals,
    bit for bit, the last row of a chain pass over exactly that path (and hence a decode step)."""
    g = torch.Generator().manual_seed(5)
    B, H, Hkv, hd, context = 1, 12, 2, 128, 37  # 37 + up to 4 path keys: the 16-key chunks split unevenly
    T = len(TREE)
    keys = torch.randn(B, Hkv, context + T, hd, generator=g).to(kv_dtype)
    values = torch.randn(B, Hkv, context + T, hd, generator=g).to(kv_dtype)
    q = torch.randn(B, H, T, hd, generator=g)
    ext, scale = build.extension(), hd**-0.5
    parents = torch.tensor(TREE, dtype=torch.long)
    out = ext.attend_tree(q, keys, values, scale, parents, isa)
    for t in range(T):
        path = [t]
        while TREE[path[-1]] >= 0:
            path.append(TREE[path[-1]])
        path = path[::-1]
        slots = torch.cat([torch.arange(context), context + torch.tensor(path)])
        k, v = keys[:, :, slots], values[:, :, slots]
        chain = ext.attend_chain(q[:, :, path].contiguous(), k, v, scale, isa)
        assert torch.equal(chain[:, :, -1], out[:, :, t]), t
    assert torch.equal(out, ext.attend_tree(q, keys, values, scale, parents, 0))  # every path: the same bits
    chain = ext.attend_chain(q, keys, values, scale, isa)  # a tree that is a chain is the chain
    assert torch.equal(ext.attend_tree(q, keys, values, scale, torch.arange(-1, T - 1), isa), chain)
    with pytest.raises(RuntimeError, match="parents"):
        ext.attend_tree(q, keys, values, scale, torch.tensor([0] * T), isa)  # a node its own parent


def assert_same_bits_under_every_tile_split(fn) -> None:
    """fn() (a list of lists of tensors) gives the same bits under a static split of the tiles
    between threads (0) and with threads taking the rest of each other's shares in chunks of 1, 3
    and 8 tiles, on 2 and on 3 threads (3 on a 2-core machine: a thread left waiting for a core
    has its tiles taken); settings restored."""
    ext = build.extension()
    before, threads = ext.steal_tiles(), torch.get_num_threads()
    outs = {}
    try:
        for n_threads in (2, 3):
            torch.set_num_threads(n_threads)
            for chunk in (0, 1, 3, 8):
                ext.set_steal_tiles(chunk)
                outs[n_threads * 100 + chunk] = fn()
    finally:
        ext.set_steal_tiles(before)
        torch.set_num_threads(threads)
    assert ext.steal_tiles() == before
    first = outs[200]
    for got in outs.values():
        for a, b in zip(got, first):
            assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("fmt", ["int4", "int8", "bf16"])
def test_threads_taking_each_others_tiles_give_the_same_bits(fmt):
    """Which thread computes a tile (set_steal_tiles) is a schedule only: every tile is computed
    once, in one order, whatever the split; q/k/v-like layers of odd tile counts share one call."""
    g = torch.Generator().manual_seed(21)
    layers = [make_layer(fmt, torch.randn(n, 512, generator=g) * 0.05) for n in (400, 48, 40)]
    x = torch.randn(5, 512, generator=g).to(torch.bfloat16)
    assert_same_bits_under_every_tile_split(lambda: [project(x[:m], *layers) for m in (1, 5)])
