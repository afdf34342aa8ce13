"""GGUF block formats on the skinny kernels (kernels/gguf_pack.py, csrc/gguf*.cpp): the repacked
tiles hold exactly the file's weights (the `gguf` package's de-quantization, bit for bit), every
ISA path this CPU runs matches a float64 reference and gives the same bits as the others, and
rows are bit-identical whatever the number of rows (at the real models' shapes too). Paths the
CPU lacks are reported as skipped.

Blocks are random bytes (every bit pattern of values and 6-bit scales occurs) with sane fp16
factors, so no quantizer is needed for the K-quants.
"""

import numpy as np
import pytest
import torch

from specdecode.kernels import GGUF_LINEARS, best_isa, build, gguf_pack, pack, project

from test_kernels import ISAS, TOL, assert_same_bits_under_every_tile_split, outputs_by_one_pass_rows

pytestmark = pytest.mark.usefixtures("kernels")
TYPES = {f.name: t for t, f in gguf_pack.FORMATS.items()}
NAMES = sorted(TYPES)


def random_blocks(name: str, N: int, K: int, seed: int = 0) -> torch.Tensor:
    """(N, K) weight as a file would hold it: (N, row bytes) uint8."""
    fmt = gguf_pack.FORMATS[TYPES[name]]
    g = torch.Generator().manual_seed(seed)
    nb = K // fmt.block_k
    b = torch.randint(0, 256, (N, nb, fmt.file_bytes), dtype=torch.uint8, generator=g)

    def f16(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(N, nb, 1, generator=g) * (hi - lo) + lo).half().view(torch.uint8)

    if name == "Q4_K":
        b[..., 0:2], b[..., 2:4] = f16(1e-4, 2e-3), f16(1e-4, 2e-3)
    elif name == "Q6_K":
        b[..., 208:210] = f16(1e-4, 2e-3)
    else:
        b[..., 0:2] = f16(1e-3, 2e-2)
    if N > 3:
        b[3, 0] = 0  # a block of zeros (d = 0)
    return b.reshape(N, nb * fmt.file_bytes)


def layer_for(name: str, N: int, K: int, seed: int = 0, bias=None):
    raw = random_blocks(name, N, K, seed)
    return GGUF_LINEARS[TYPES[name]](raw, N, K, bias, torch.float32), raw


def run(layer, x: torch.Tensor, isa: int) -> torch.Tensor:
    fmt, packed, scales, _, n = layer.spec()
    return build.extension().linear(x.float(), [(fmt, packed, scales, None, n)], isa, torch.float32)[0]


def kernel_act(name: str, x: torch.Tensor, isa: int) -> torch.Tensor:
    """The activations the kernels multiply by for this format, (m, K) float64: a scale per block
    of 32, or per super-block of 256 for the K-quants."""
    xq, sx, _ = build.extension().quantize_act(x.float().contiguous(), isa, gguf_pack.FORMATS[TYPES[name]].act_group)
    return pack.dequantized_act(xq, sx)


def reference(layer, x: torch.Tensor, isa: int) -> torch.Tensor:
    return kernel_act(layer.gguf.name, x, isa) @ layer.dequantized_weight().double().T


def activations(m: int, K: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, K, generator=g)
    x[:, 5] *= 40.0  # an outlier channel
    if m > 2:
        x[1, :32] = 0.0  # an all-zero activation block
    return x


@pytest.mark.parametrize("name", NAMES)
def test_packed_tiles_hold_exactly_the_files_weights(name):
    """De-quantizing the repacked tiles gives the `gguf` package's de-quantization of the file's
    bytes, bit for bit (N not a multiple of 16: padding columns are dropped)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    N, K = 37, 512
    layer, raw = layer_for(name, N, K)
    expected = torch.from_numpy(np.asarray(dequantize(raw.numpy(), GGMLQuantizationType(TYPES[name])), dtype=np.float32))
    got = layer.dequantized_weight()
    assert got.shape == (N, K) and torch.equal(got, expected.reshape(N, K))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", NAMES)
def test_matches_float64_reference_and_is_row_invariant(name, isa):
    N, K = 70, 768
    layer, _ = layer_for(name, N, K, seed=2)
    x = activations(9, K)
    y = run(layer, x, isa)
    ref = reference(layer, x, isa)
    assert float((y.double() - ref).abs().max() / ref.abs().max()) <= TOL
    for i in range(9):
        assert torch.equal(run(layer, x[i : i + 1], isa)[0], y[i])


@pytest.mark.parametrize("name", NAMES)
def test_every_path_gives_the_same_bits(name):
    """Integer block sums are exact and the float steps are the same on every path, so an AVX2
    machine and an AVX-512 one give identical outputs."""
    if best_isa() < 1:
        pytest.skip("only the scalar path runs here")
    layer, _ = layer_for(name, 48, 1024, seed=3)
    # every row block of the SIMD paths (AVX2: one pass over both halves or a pass per half;
    # AVX-512: up to 8 rows), and past 32 rows a second chunk of the call (rows_from)
    for m in (1, 2, 3, 4, 5, 6, 7, 11, 35):
        x = activations(m, 1024, seed=4 + m)
        outs = [run(layer, x, isa) for isa in range(best_isa() + 1)]
        for other in outs[1:]:
            assert torch.equal(outs[0], other)


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K"])
def test_k_quant_sums_at_their_largest_give_the_same_bits_on_every_path(name):
    """Every weight and scale at its extreme and every activation at 127: a super-block's int32
    sums pass 2^24 (float() of them rounds) and reach their bounds (csrc/gguf.h); every path gives
    the same bits, close to float64."""
    N, K = 32, 512
    fmt = gguf_pack.FORMATS[TYPES[name]]
    raw = torch.full((N, K // fmt.block_k, fmt.file_bytes), 0xFF, dtype=torch.uint8)
    if name == "Q4_K":  # d, dmin (fp16): small; scales and mins all 63, values all 15
        raw[..., 0:2] = torch.tensor([1e-3], dtype=torch.float16).view(torch.uint8)
        raw[..., 2:4] = torch.tensor([1e-3], dtype=torch.float16).view(torch.uint8)
    else:  # values all 63; scales -128 in half the rows, 127 in the rest; d small
        raw[..., 192:208] = 0x80
        raw[N // 2 :, :, 192:208] = 0x7F
        raw[..., 208:210] = torch.tensor([1e-3], dtype=torch.float16).view(torch.uint8)
    layer = GGUF_LINEARS[TYPES[name]](raw.reshape(N, -1), N, K, None, torch.float32)
    x = torch.ones(3, K)
    x[1] = -1.0
    x[2, ::2] = -1.0
    isas = list(range(best_isa() + 1))
    outs = [run(layer, x, isa) for isa in isas]
    for other in outs[1:]:
        assert torch.equal(outs[0], other)
    ref = reference(layer, x, isas[-1])
    assert float(ref.abs().max()) > 0
    assert float((outs[0].double() - ref).abs().max() / ref.abs().max()) <= TOL


@pytest.mark.parametrize("name", NAMES)
def test_one_pass_and_pass_per_half_give_the_same_bits(name):
    """The AVX2 kernels' order over a tile's two halves (set_one_pass_rows) is a schedule only."""
    if best_isa() < 1:
        pytest.skip("the setting concerns the AVX2 path, which this CPU lacks")
    layer, _ = layer_for(name, 48, 1024, seed=8)
    outs = outputs_by_one_pass_rows(run, layer, activations(11, 1024, seed=9))
    for a, b in zip(outs[2], outs[4]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K"])
@pytest.mark.parametrize("shape", [(8960, 1536), (1536, 8960), (151936, 1536)],
                         ids=["up-8960x1536", "down-1536x8960", "lm_head-151936x1536"])
def test_row_invariant_at_real_model_shapes(name, shape):
    """Qwen2.5-Coder-1.5B's shapes in its file's formats, on the path in use: rows of a 9-token
    verify pass are bit-identical to one-token steps, and close to float64."""
    N, K = shape
    layer, raw = layer_for(name, N, K, seed=5)
    del raw
    isa = build.active_isa()
    x = activations(9, K, seed=6)
    y = run(layer, x, isa)
    for i in (0, 4, 8):
        assert torch.equal(run(layer, x[i : i + 1], isa)[0], y[i])
    rows = torch.randint(0, N, (128,), generator=torch.Generator().manual_seed(7))
    W = layer.dequantized_weight()[rows].double()
    ref = kernel_act(name, x, isa) @ W.T
    assert float((y[:, rows].double() - ref).abs().max() / ref.abs().max()) <= TOL


def test_mixed_formats_share_one_call():
    """q/k/v with v in Q6_K and q/k in Q4_K (as the 1.5B file has them), plus an int8 layer: one
    call, each layer's own format, the same bits as one layer at a time."""
    from specdecode.kernels import PackedInt8Linear

    K = 512
    layers = [layer_for("Q4_K", 64, K, 8)[0], layer_for("Q6_K", 32, K, 9)[0], layer_for("Q8_0", 16, K, 10)[0],
              PackedInt8Linear(torch.randn(20, K), None, torch.float32)]
    x = activations(5, K, seed=11)
    together = project(x, *layers)
    for layer, y in zip(layers, together):
        assert torch.equal(y, layer(x))


def test_layer_adds_bias_keeps_dtype_and_refuses_wrong_bytes():
    N, K = 40, 256
    bias = torch.randn(N).bfloat16()
    raw = random_blocks("Q4_K", N, K, 12)
    layer = GGUF_LINEARS[TYPES["Q4_K"]](raw, N, K, bias, torch.bfloat16)
    x = activations(3, K).bfloat16()
    y = layer(x[None])  # (1, 3, N)
    assert y.dtype == torch.bfloat16 and y.shape == (1, 3, N)
    plain = run(GGUF_LINEARS[TYPES["Q4_K"]](raw, N, K, None, torch.bfloat16), x, build.active_isa())  # fp32
    assert torch.equal(y[0], (plain + bias.float()).bfloat16())
    with pytest.raises(ValueError, match="expected"):
        GGUF_LINEARS[TYPES["Q4_K"]](raw[:, :-1], N, K, None, torch.float32)
    with pytest.raises(ValueError, match="multiple of 256"):
        GGUF_LINEARS[TYPES["Q6_K"]](raw, N, 96, None, torch.float32)
    sd = layer.state_dict()
    assert torch.equal(sd["weight"], layer.dequantized_weight().bfloat16()) and set(sd) == {"weight", "bias"}


def test_threads_taking_each_others_tiles_give_the_same_bits():
    """A Q4_K q/k and a Q6_K v in one call (its tiles of different costs): the same bits whatever
    split of the tiles between threads (test_kernels.assert_same_bits_under_every_tile_split)."""
    layers = [layer_for("Q4_K", 272, 512, seed=31)[0], layer_for("Q4_K", 48, 512, seed=32)[0],
              layer_for("Q6_K", 48, 512, seed=33)[0]]
    x = activations(6, 512, seed=34)
    assert_same_bits_under_every_tile_split(lambda: [project(x[:m], *layers) for m in (1, 6)])
