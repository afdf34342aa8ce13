// A whole decoder layer in one call, and a model's whole stack of layers in one call: the Python
// layer (model.py's DecoderLayer) makes about thirty calls per layer around its four matmuls
// (norms, RoPE, the cache write, attention, conversions, SiLU), and at decode sizes their dispatch
// costs about as much as a third of a small model's step (measured on a Zen 3: 8 of 21 ms per step
// of Qwen2.5-0.5B int4, 9 of 46 for the 1.5B). One call per layer still left ~60 us of tensor ops
// and ~35 us of Python and argument conversion per layer (Zen 4, Qwen2.5-Coder-1.5B: ~2.7 ms of a
// 30-39 ms step), so the stack runs every layer from weights it converted once, and the layer does
// the cache write, the attention's conversions and the residual add in plain loops.
//
// Same bits as the Python layer by construction: it calls the very functions that path ends in,
// in the same order, with the same roundings (linear, rms_norm, rope_, the cache write, the
// attention kernel, the float32 -> dtype conversion of the attention output (round to nearest
// even, as Tensor::to), add_rms_norm, at::silu, at::mul, the residual add in float rounded once).
// Each request (segment) writes its own cache and attends alone, as in a ragged pass; every row's
// result depends on its own request only.
#include <torch/extension.h>

#include <cstring>

#include "attention.h"
#include "layer_ops.h"
#include "ops.h"

namespace skinny {
namespace {

// One request's rows of a layer's pass: its layer's key/value buffers, the cache's length before
// the pass, its rows [a, b), its tree (null: a chain).
struct SegmentView {
  torch::Tensor kc, vc;
  int64_t length, a, b;
  const int64_t* parents;
};

// The cache write, the attention and its conversions for one segment, on raw buffers: q/k/v
// (N, heads * hd), (N, kv_heads * hd) x 2 in the layer's dtype T; attn (N, heads * hd) in T.
template <typename T>
void attend_segment(const SegmentView& s, const T* q, const T* k, const T* v, T* attn, int64_t heads,
                    int64_t kv_heads, int64_t hd, float scale, int64_t isa) {
  const int64_t n = s.b - s.a, end = s.length + n;
  const int64_t sh = s.kc.stride(1), sl = s.kc.stride(2);
  T* kc = static_cast<T*>(s.kc.data_ptr());
  T* vc = static_cast<T*>(s.vc.data_ptr());
  for (int64_t t = 0; t < n; ++t)  // cache.update: row a + t into slot length + t of every kv head
    for (int64_t h = 0; h < kv_heads; ++h) {
      const int64_t src = (s.a + t) * kv_heads * hd + h * hd, dst = h * sh + (s.length + t) * sl;
      std::memcpy(kc + dst, k + src, hd * sizeof(T));
      std::memcpy(vc + dst, v + src, hd * sizeof(T));
    }
  std::vector<float> qs(heads * n * hd), out(heads * n * hd);  // (1, H, n, hd): the kernel's layout
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t d = 0; d < hd; ++d)
        qs[(h * n + t) * hd + d] = static_cast<float>(q[(s.a + t) * heads * hd + h * hd + d]);
  ChainAttention att{qs.data(), kc, vc, std::is_same<T, at::BFloat16>::value, 1, heads, kv_heads, n, end, hd,
                     s.kc.stride(0), sh, sl, scale, out.data(), s.parents};
  attend_into(att, isa);
  for (int64_t t = 0; t < n; ++t)  // out.to(dtype), (n, H, hd) rows a.. of attn
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t d = 0; d < hd; ++d) attn[(s.a + t) * heads * hd + h * hd + d] = T(out[(h * n + t) * hd + d]);
}

template <typename T>
torch::Tensor residual_add(const torch::Tensor& x, const torch::Tensor& y) {  // T(x + y), as at::add
  auto out = torch::empty_like(x);
  const T* a = x.data_ptr<T>();
  const T* b = y.data_ptr<T>();
  T* o = out.data_ptr<T>();
  for (int64_t i = 0; i < x.numel(); ++i) o[i] = T(static_cast<float>(a[i]) + static_cast<float>(b[i]));
  return out;
}

}  // namespace

// x (N, D) contiguous in float32 or bf16 -> the layer's output (N, D); writes each segment's keys
// and values at [length, length + b - a) of its buffers.
torch::Tensor layer_forward(const torch::Tensor& x, const LayerWeights& w, const torch::Tensor& cos2,
                            const torch::Tensor& sin2, const std::vector<SegmentView>& segments, int64_t isa) {
  const int64_t N = x.size(0), hd = cos2.size(1), H = w.heads, Hkv = w.kv_heads;
  const auto dtype = x.scalar_type();
  // Attention block: norm, q/k/v in one call, RoPE in place.
  // An empty input_norm: none (EAGLE's head layer feeds its fc output straight in).
  const auto h = w.input_norm.numel() ? rms_norm(x, w.input_norm, w.eps) : x;
  auto q_k_v = linear(h, w.qkv, isa, dtype);  // (N, H*hd), (N, Hkv*hd) x 2
  rope_(q_k_v[0], cos2, sin2, H);
  rope_(q_k_v[1], cos2, sin2, Hkv);
  auto attn = torch::empty({N, H * hd}, x.options());  // each segment's rows, in x's dtype
  int64_t covered = 0;
  for (const auto& s : segments) {
    TORCH_CHECK(s.a == covered && s.b > s.a && s.b <= N, "segments must cover the rows in order");
    covered = s.b;
    const int64_t end = s.length + s.b - s.a;
    TORCH_CHECK(s.kc.dim() == 4 && s.kc.size(0) == 1 && s.kc.size(1) == Hkv && s.kc.size(3) == hd &&
                    s.vc.sizes() == s.kc.sizes() && s.vc.strides() == s.kc.strides() && s.kc.stride(3) == 1 &&
                    s.kc.scalar_type() == dtype && s.vc.scalar_type() == dtype,
                "cache buffers must be (1, Hkv, S, hd) in x's dtype");
    TORCH_CHECK(s.length >= 0 && end <= s.kc.size(2), "KV cache overflow: ", end, " > ", s.kc.size(2), " slots");
    if (dtype == torch::kBFloat16)
      attend_segment(s, q_k_v[0].data_ptr<at::BFloat16>(), q_k_v[1].data_ptr<at::BFloat16>(),
                     q_k_v[2].data_ptr<at::BFloat16>(), attn.data_ptr<at::BFloat16>(), H, Hkv, hd, float(w.scale), isa);
    else
      attend_segment(s, q_k_v[0].data_ptr<float>(), q_k_v[1].data_ptr<float>(), q_k_v[2].data_ptr<float>(),
                     attn.data_ptr<float>(), H, Hkv, hd, float(w.scale), isa);
  }
  TORCH_CHECK(covered == N, "segments must cover every row");
  const auto delta = linear(attn, w.o, isa, dtype)[0];  // (N, D)

  // MLP block: residual add and norm in one call, gate/up in one call, SiLU(gate) * up, down.
  const auto x_h = add_rms_norm(x, delta, w.post_norm, w.eps);  // [x + delta, norm(x + delta)]
  auto g_u = linear(x_h[1], w.gate_up, isa, dtype);  // (N, I) x 2
  at::silu_(g_u[0]).mul_(g_u[1]);  // in place: the bits of at::mul(at::silu(gate), up)
  const auto mlp = linear(g_u[0], w.down, isa, dtype)[0];  // (N, D)
  return dtype == torch::kBFloat16 ? residual_add<at::BFloat16>(x_h[0], mlp) : residual_add<float>(x_h[0], mlp);
}

namespace {

LayerWeights layer_weights(const LayerArgs& args) {
  const auto& [input_norm, post_norm, eps, qkv, o, gate_up, down, heads, kv_heads, scale] = args;
  TORCH_CHECK(qkv.size() == 3 && o.size() == 1 && gate_up.size() == 2 && down.size() == 1, "bad layer specs");
  TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && heads / kv_heads <= kMaxGroup, "bad head counts");
  return LayerWeights{input_norm, post_norm, eps, qkv, o, gate_up, down, heads, kv_heads, scale};
}

// cos/sin (..., N, hd) -> (N, hd) contiguous, checked against x (N, D).
std::pair<torch::Tensor, torch::Tensor> rope_tables(const torch::Tensor& x, const torch::Tensor& cos,
                                                    const torch::Tensor& sin) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu() &&
                  (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16),
              "x must be a contiguous (N, D) CPU float32 or bf16 tensor");
  const int64_t N = x.size(0), hd = cos.size(-1);
  TORCH_CHECK(hd > 0 && hd % 16 == 0 && cos.numel() == N * hd && sin.sizes() == cos.sizes() &&
                  cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(),
              "cos/sin must hold one row per input row, in x's dtype");
  return {cos.reshape({N, hd}).contiguous(), sin.reshape({N, hd}).contiguous()};
}

}  // namespace

torch::Tensor decoder_layer(torch::Tensor x, torch::Tensor input_norm, torch::Tensor post_norm, double eps,
                            std::vector<LayerSpec> qkv, std::vector<LayerSpec> o, std::vector<LayerSpec> gate_up,
                            std::vector<LayerSpec> down, torch::Tensor cos, torch::Tensor sin,
                            std::vector<LayerSegment> segments, int64_t heads, int64_t kv_heads, double scale,
                            int64_t isa) {
  const auto w = layer_weights({input_norm, post_norm, eps, qkv, o, gate_up, down, heads, kv_heads, scale});
  const auto [cos2, sin2] = rope_tables(x, cos, sin);
  std::vector<SegmentView> views;
  for (const auto& [kc, vc, length, a, b, parents] : segments)
    views.push_back({kc, vc, length, a, b, parents.has_value() ? checked_parents(*parents, b - a) : nullptr});
  return layer_forward(x, w, cos2, sin2, views, isa);
}

LayerStack::LayerStack(std::vector<LayerArgs> layers) {
  TORCH_CHECK(!layers.empty(), "a stack needs at least one layer");
  for (const auto& l : layers) layers_.push_back(layer_weights(l));
}

std::vector<torch::Tensor> LayerStack::forward(torch::Tensor x, torch::Tensor cos, torch::Tensor sin,
                                               std::vector<StackSegment> segments, int64_t isa,
                                               std::vector<int64_t> capture) const {
  const auto [cos2, sin2] = rope_tables(x, cos, sin);
  const int64_t n_layers = static_cast<int64_t>(layers_.size());
  for (const auto& [keys, values, length, a, b, parents] : segments)
    TORCH_CHECK(static_cast<int64_t>(keys.size()) == n_layers && static_cast<int64_t>(values.size()) == n_layers,
                "each segment needs one key and one value buffer per layer");
  std::vector<const int64_t*> trees;
  for (const auto& [keys, values, length, a, b, parents] : segments)
    trees.push_back(parents.has_value() ? checked_parents(*parents, b - a) : nullptr);
  std::vector<torch::Tensor> out{x}, captured(capture.size());
  for (int64_t i = 0; i < n_layers; ++i) {
    for (size_t c = 0; c < capture.size(); ++c)
      if (capture[c] == i) captured[c] = out[0].clone();  // the hidden states entering layer i
    std::vector<SegmentView> views;
    for (size_t s = 0; s < segments.size(); ++s) {
      const auto& [keys, values, length, a, b, parents] = segments[s];
      views.push_back({keys[i], values[i], length, a, b, trees[s]});
    }
    out[0] = layer_forward(out[0], layers_[i], cos2, sin2, views, isa);
  }
  for (size_t c = 0; c < capture.size(); ++c)
    TORCH_CHECK(captured[c].defined(), "capture: no layer ", capture[c]);
  out.insert(out.end(), captured.begin(), captured.end());
  return out;
}

}  // namespace skinny
