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
std::vector<torch::Tensor> linear(torch::Tensor x, std::vector<LayerSpec> layers, int64_t isa, c10::ScalarType out_dtype);

// q (B, H, T, hd) float32; k, v (B, Hkv, L, hd) float32 or bf16 (strided views of the cache)
// -> (B, H, T, hd) float32, query t attending keys [0, L - T + t] (parents null: a chain) or the
// context and its path in the tree `parents` (T entries, checked by attend_tree).
torch::Tensor attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale, int64_t isa,
                     const int64_t* parents);
torch::Tensor attend_tree(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale, torch::Tensor parents,
                          int64_t isa);

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

}  // namespace skinny
