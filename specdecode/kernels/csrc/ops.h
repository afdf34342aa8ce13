// The extension's entry points that its other files call too (binding.cpp defines them, but for
// decoder_layer: decoder_layer.cpp).
#pragma once
#include <torch/extension.h>

#include <tuple>
#include <vector>

namespace skinny {

// One linear layer as the kernels see it: (format, packed weight, int8 scales or None, bias or None, N).
using LayerSpec = std::tuple<int64_t, torch::Tensor, c10::optional<torch::Tensor>, c10::optional<torch::Tensor>, int64_t>;

// y_l = x (m, K) @ W_l.T (+ bias_l) for every layer l, in out_dtype (one call for q/k/v, gate/up).
std::vector<torch::Tensor> linear(const torch::Tensor& x, const std::vector<LayerSpec>& layers, int64_t isa,
                                  c10::ScalarType out_dtype);

// q (B, H, T, hd) float32; k, v (B, Hkv, L, hd) float32 or bf16 (strided views of the cache)
// -> (B, H, T, hd) float32, query t attending keys [0, L - T + t] (parents null: a chain) or the
// context and its path in the tree `parents` (T entries, checked by attend_tree).
torch::Tensor attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale, int64_t isa,
                     const int64_t* parents);
torch::Tensor attend_tree(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale, torch::Tensor parents,
                          int64_t isa);

struct ChainAttention;
// The attention kernel on the buffers `a` describes, threaded over its (batch, kv head, query) tasks.
void attend_into(const ChainAttention& a, int64_t isa);
// parents (T,) checked as a tree of T queries (each parent earlier, paths at most kMaxTreeDepth).
const int64_t* checked_parents(const torch::Tensor& parents, int64_t T);

// A request's rows in a decoder layer's pass: its layer's key and value buffers (1, Hkv, S, hd),
// the cache's length before the pass, its rows [start, end), and its tree's parents (None: a chain).
using LayerSegment = std::tuple<torch::Tensor, torch::Tensor, int64_t, int64_t, int64_t, c10::optional<torch::Tensor>>;

// A whole decoder layer (model.py's DecoderLayer on the kernels) in one call, with its bits; an
// empty input_norm: no norm before the attention (a draft head's layer).
torch::Tensor decoder_layer(torch::Tensor x, torch::Tensor input_norm, torch::Tensor post_norm, double eps,
                            std::vector<LayerSpec> qkv, std::vector<LayerSpec> o, std::vector<LayerSpec> gate_up,
                            std::vector<LayerSpec> down, torch::Tensor cos, torch::Tensor sin,
                            std::vector<LayerSegment> segments, int64_t heads, int64_t kv_heads, double scale,
                            int64_t isa);

// A layer's weights as the Python side hands them over once (fused_layer.py's _static_args):
// (input_norm, post_norm, eps, qkv, o, gate_up, down, heads, kv_heads, scale).
using LayerArgs = std::tuple<torch::Tensor, torch::Tensor, double, std::vector<LayerSpec>, std::vector<LayerSpec>,
                             std::vector<LayerSpec>, std::vector<LayerSpec>, int64_t, int64_t, double>;
struct LayerWeights {
  torch::Tensor input_norm, post_norm;
  double eps;
  std::vector<LayerSpec> qkv, o, gate_up, down;
  int64_t heads, kv_heads;
  double scale;
};

// A request's rows in a pass of the whole stack: its cache's key and value buffers of every layer,
// the cache's length before the pass, its rows [start, end), its tree's parents (None: a chain).
using StackSegment = std::tuple<std::vector<torch::Tensor>, std::vector<torch::Tensor>, int64_t, int64_t, int64_t,
                                c10::optional<torch::Tensor>>;

// Every decoder layer of a model, converted from Python once: a pass is then one call.
class LayerStack {
 public:
  explicit LayerStack(std::vector<LayerArgs> layers);
  // x (N, D) -> [the last layer's output (N, D), then a copy of the hidden states entering each
  // layer listed in `capture`, in that order].
  std::vector<torch::Tensor> forward(torch::Tensor x, torch::Tensor cos, torch::Tensor sin,
                                     std::vector<StackSegment> segments, int64_t isa,
                                     std::vector<int64_t> capture) const;
  int64_t size() const { return static_cast<int64_t>(layers_.size()); }

 private:
  std::vector<LayerWeights> layers_;
};

}  // namespace skinny
