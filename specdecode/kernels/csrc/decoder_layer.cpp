// A whole decoder layer in one call: the Python layer (model.py's DecoderLayer) makes about thirty
// calls per layer around its four matmuls (norms, RoPE, the cache write, attention, conversions,
// SiLU), and at decode sizes their dispatch costs about as much as a third of a small model's step
// (measured on a Zen 3: 8 of 21 ms per step of Qwen2.5-0.5B int4, 9 of 46 for the 1.5B).
//
// Same bits as the Python layer by construction: it calls the very functions that path ends in,
// in the same order, with the same roundings (linear, rms_norm, rope_, the cache write, attend /
// attend_tree, the float32 -> dtype conversion of the attention output, add_rms_norm, at::silu,
// at::mul, at::add). Each request (segment) writes its own cache and attends alone, as in a ragged
// pass; every row's result depends on its own request only.
#include <torch/extension.h>

#include "layer_ops.h"
#include "ops.h"

namespace skinny {

// x (N, D) in the model's dtype (float32 or bf16) -> the layer's output (N, D); writes each
// segment's keys and values at [length, length + end - start) of its buffers.
torch::Tensor decoder_layer(torch::Tensor x, torch::Tensor input_norm, torch::Tensor post_norm, double eps,
                            std::vector<LayerSpec> qkv, std::vector<LayerSpec> o, std::vector<LayerSpec> gate_up,
                            std::vector<LayerSpec> down, torch::Tensor cos, torch::Tensor sin,
                            std::vector<LayerSegment> segments, int64_t heads, int64_t kv_heads, double scale,
                            int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be contiguous (N, D)");
  TORCH_CHECK(qkv.size() == 3 && o.size() == 1 && gate_up.size() == 2 && down.size() == 1, "bad layer specs");
  const int64_t N = x.size(0), hd = cos.size(-1);
  const auto dtype = x.scalar_type();
  TORCH_CHECK(hd > 0 && cos.numel() == N * hd && sin.sizes() == cos.sizes(), "cos/sin must hold one row per input row");
  const auto cos2 = cos.reshape({N, hd}).contiguous(), sin2 = sin.reshape({N, hd}).contiguous();

  // Attention block: norm, q/k/v in one call, RoPE in place.
  // An empty input_norm: none (EAGLE's head layer feeds its fc output straight in).
  const auto h = input_norm.numel() ? rms_norm(x, input_norm, eps) : x;
  auto q_k_v = linear(h, qkv, isa, dtype);  // (N, H*hd), (N, Hkv*hd) x 2
  rope_(q_k_v[0], cos2, sin2, heads);
  rope_(q_k_v[1], cos2, sin2, kv_heads);
  const auto q = q_k_v[0].view({1, N, heads, hd}).transpose(1, 2);  // (1, H, N, hd)
  const auto k = q_k_v[1].view({1, N, kv_heads, hd}).transpose(1, 2);  // (1, Hkv, N, hd)
  const auto v = q_k_v[2].view({1, N, kv_heads, hd}).transpose(1, 2);
  auto attn = torch::empty({N, heads, hd}, x.options());  // each segment's rows, in x's dtype
  int64_t covered = 0;
  for (const auto& seg : segments) {
    const auto& [kc, vc, length, a, b, parents] = seg;
    TORCH_CHECK(a == covered && b > a && b <= N, "segments must cover the rows in order");
    covered = b;
    const int64_t T = b - a, end = length + T;
    TORCH_CHECK(kc.dim() == 4 && kc.size(0) == 1 && kc.size(1) == kv_heads && kc.size(3) == hd &&
                    vc.sizes() == kc.sizes() && kc.scalar_type() == dtype && vc.scalar_type() == dtype,
                "cache buffers must be (1, Hkv, S, hd) in x's dtype");
    TORCH_CHECK(length >= 0 && end <= kc.size(2), "KV cache overflow: ", end, " > ", kc.size(2), " slots");
    kc.narrow(2, length, T).copy_(k.narrow(2, a, T));  // cache.update
    vc.narrow(2, length, T).copy_(v.narrow(2, a, T));
    const auto qs = q.narrow(2, a, T).to(torch::kFloat32).contiguous();  // (1, H, T, hd)
    const auto keys = kc.narrow(2, 0, end), values = vc.narrow(2, 0, end);
    const auto out = parents.has_value() ? attend_tree(qs, keys, values, scale, *parents, isa)
                                         : attend(qs, keys, values, scale, isa, nullptr);  // (1, H, T, hd) f32
    attn.narrow(0, a, T).copy_(out.to(dtype)[0].transpose(0, 1));  // (T, H, hd)
  }
  TORCH_CHECK(covered == N, "segments must cover every row");
  const auto delta = linear(attn.view({N, heads * hd}), o, isa, dtype)[0];  // (N, D)

  // MLP block: residual add and norm in one call, gate/up in one call, SiLU(gate) * up, down.
  const auto x_h = add_rms_norm(x, delta, post_norm, eps);  // [x + delta, norm(x + delta)]
  const auto g_u = linear(x_h[1], gate_up, isa, dtype);  // (N, I) x 2
  const auto mlp = linear(at::mul(at::silu(g_u[0]), g_u[1]), down, isa, dtype)[0];  // (N, D)
  return at::add(x_h[0], mlp);
}

}  // namespace skinny
