"""The native Transformer equals transformers' implementation of the same weights."""

import torch

from conftest import native_from_hf, tiny_hf_model

# float32 on CPU: both implementations do the same math in a slightly different order.
ATOL = 1e-4


def test_logits_match_transformers(arch):
    hf = tiny_hf_model(arch, tie=(arch == "qwen2"))
    native = native_from_hf(hf)
    tokens = torch.randint(0, 97, (1, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(tokens).logits
    cache = native.new_cache(64)
    got = native(tokens, torch.arange(23)[None], cache)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=1e-4)


def test_cached_decode_equals_full_recompute(arch):
    native = native_from_hf(tiny_hf_model(arch))
    tokens = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(2))
    full = native(tokens, torch.arange(30)[None], native.new_cache(64))
    cache = native.new_cache(64)
    parts = [native(tokens[:, :10], torch.arange(10)[None], cache)]
    for i in range(10, 20):
        parts.append(native(tokens[:, i : i + 1], torch.tensor([[i]]), cache))
    parts.append(native(tokens[:, 20:30], torch.arange(20, 30)[None], cache))  # a 10-token "verify" chunk
    stepwise = torch.cat(parts, dim=1)
    torch.testing.assert_close(stepwise, full, atol=ATOL, rtol=1e-4)
    assert cache.length == 30


def test_trim_then_rewrite_equals_fresh(arch):
    native = native_from_hf(tiny_hf_model(arch))
    tokens = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(3))
    cache = native.new_cache(32)
    native(tokens[:, :8], torch.arange(8)[None], cache)
    native(torch.tensor([[5, 6, 7]]), torch.arange(8, 11)[None], cache)  # rejected drafts
    cache.trim(8)
    got = native(tokens[:, 8:], torch.arange(8, 12)[None], cache)
    ref = native(tokens, torch.arange(12)[None], native.new_cache(32))[:, 8:]
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=1e-4)


def test_explicit_mask_equals_default_causal(arch):
    native = native_from_hf(tiny_hf_model(arch))
    tokens = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(4))
    c1, c2 = native.new_cache(16), native.new_cache(16)
    native(tokens[:, :4], torch.arange(4)[None], c1)
    native(tokens[:, :4], torch.arange(4)[None], c2)
    mask = torch.ones(5, 9, dtype=torch.bool).tril(diagonal=4)[None]
    a = native(tokens[:, 4:], torch.arange(4, 9)[None], c1)
    b = native(tokens[:, 4:], torch.arange(4, 9)[None], c2, mask=mask)
    torch.testing.assert_close(a, b)


def test_bf16_verify_pass_is_bitwise_equal_to_single_steps(arch):
    """A k+1-token verification pass rounds exactly like k+1 one-token steps (see Attention)."""
    native = native_from_hf(tiny_hf_model(arch, vocab=300, layers=3), dtype=torch.bfloat16)
    tokens = torch.randint(0, 300, (1, 60), generator=torch.Generator().manual_seed(5))
    c1, c2 = native.new_cache(80), native.new_cache(80)
    native(tokens[:, :50], torch.arange(50)[None], c1)
    native(tokens[:, :50], torch.arange(50)[None], c2)
    single = torch.cat([native(tokens[:, i : i + 1], torch.tensor([[i]]), c1) for i in range(50, 59)], dim=1)
    chunk = native(tokens[:, 50:59], torch.arange(50, 59)[None], c2)
    assert torch.equal(single, chunk)
