"""The fused per-token steps of a decoder layer (specdecode.kernels.layer_ops): RoPE gives the bits
of the Python version, RMSNorm stays within one rounding of it, every row's result depends on
that row alone, and a whole model gives the same tokens with them as without them."""

import pytest
import torch

from specdecode.kernels import layer_ops
from specdecode.model import RMSNorm, rotate_half

pytestmark = pytest.mark.usefixtures("kernels")  # skip or fail without them: conftest.kernels
DTYPES = [torch.float32, torch.bfloat16]


def python_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def rope_tables(T: int, hd: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(1, 1, T, hd // 2, generator=g) * 100
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)  # (1, 1, T, hd)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_gives_the_bits_of_the_python_version(dtype):
    T, H, hd = 5, 12, 128
    x = torch.randn(1, T, H * hd).to(dtype)
    cos, sin = rope_tables(T, hd, dtype)
    q = x.view(1, T, H, hd).transpose(1, 2)
    want = (q * cos + rotate_half(q) * sin).transpose(1, 2).reshape(1, T, H * hd)
    got = x.clone()
    with torch.inference_mode():
        layer_ops.rope_(got, cos, sin, H)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_is_within_one_rounding_of_the_python_version(dtype):
    torch.manual_seed(0)
    x = (torch.randn(7, 1536) * 3).to(dtype)
    w = (torch.rand(1536) + 0.5).to(dtype)
    with torch.inference_mode():
        got = layer_ops.rms_norm(x, w, 1e-6)
    want = python_rms_norm(x, w, 1e-6)
    assert got.dtype == dtype and got.shape == x.shape
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-22
    # The row's scale may differ in its last bit (the sum of squares is taken in another order).
    assert torch.allclose(got.float(), want.float(), rtol=2 * ulp, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_rounds_the_sum_as_an_add_does(dtype):
    torch.manual_seed(1)
    x, delta = torch.randn(3, 4, 256).to(dtype), torch.randn(3, 4, 256).to(dtype)
    w = torch.rand(256).to(dtype)
    with torch.inference_mode():
        s, out = layer_ops.add_rms_norm(x, delta, w, 1e-5)
        assert torch.equal(s, x + delta)
        assert torch.equal(out, layer_ops.rms_norm(x + delta, w, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_row_depends_on_itself_alone(dtype):
    torch.manual_seed(2)
    x = torch.randn(16, 1536).to(dtype)
    w = torch.rand(1536).to(dtype)
    cos, sin = rope_tables(16, 128, dtype)
    with torch.inference_mode():
        whole = layer_ops.rms_norm(x, w, 1e-6)
        roped = x.clone()[None]
        layer_ops.rope_(roped, cos, sin, 12)
        for i in (0, 5, 15):
            assert torch.equal(layer_ops.rms_norm(x[i : i + 1], w, 1e-6), whole[i : i + 1])
            one = x[i : i + 1].clone()[None]
            layer_ops.rope_(one, cos[:, :, i : i + 1], sin[:, :, i : i + 1], 12)
            assert torch.equal(one, roped[:, i : i + 1])


def test_used_only_without_gradients():
    norm = RMSNorm(64, 1e-6)
    x = torch.randn(2, 64, requires_grad=True)
    assert not layer_ops.applies(x, norm.weight)  # autograd on: the Python version, with gradients
    norm(x).sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        assert layer_ops.applies(x, norm.weight)
        assert not layer_ops.applies(x, norm.weight.to(torch.float64))  # mixed dtypes: Python version


def test_bad_shapes_are_refused():
    with torch.inference_mode(), pytest.raises(RuntimeError, match="weight must be"):
        layer_ops.rms_norm(torch.randn(2, 64), torch.randn(32), 1e-6)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="cos/sin"):
        layer_ops.rope_(torch.randn(1, 3, 64), *rope_tables(3, 16, torch.float32), 3)
