// The per-token steps of a decoder layer around the matmuls (layer_ops.cpp).
#pragma once
#include <torch/extension.h>

#include <vector>

namespace skinny {

// x (..., D) -> the RMSNorm of each row times weight (D,), in x's dtype (float32 or bf16).
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);
// [x + delta, rms_norm(x + delta)]: the residual add and the next norm in one call.
std::vector<torch::Tensor> add_rms_norm(torch::Tensor x, torch::Tensor delta, torch::Tensor weight, double eps);
// Rotary embedding (rotate-half layout) in place on x (rows, heads, hd), cos/sin (rows, hd).
void rope_(torch::Tensor x, torch::Tensor cos, torch::Tensor sin, int64_t heads);

}  // namespace skinny
