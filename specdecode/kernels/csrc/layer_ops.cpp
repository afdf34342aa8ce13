// The small per-token steps of a decoder layer (RMSNorm with the residual add, rotary embedding)
// as one call each instead of the eight to twelve PyTorch ops the Python versions take: at decode
// sizes those ops cost microseconds of dispatch each, several milliseconds per step over 28
// layers, while their arithmetic costs nanoseconds.
//
// Plain C++ compiled for the baseline x86-64 (no ISA pragma, -ffp-contract=off): the same code
// runs whatever kernel path is active, so these steps give the same bits on every path. Each
// output row depends on its own input row only (row-invariant). The roundings are those of the
// Python versions (model.py): bf16 values are rounded to nearest even after each op PyTorch
// would round after.
#include <torch/extension.h>

#include <cmath>
#include <cstring>

#include "layer_ops.h"

namespace skinny {
namespace {

inline float bf16_to_float(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, as c10::BFloat16 does (NaN stays a quiet NaN).
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7FC0;
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

// Rounds like a tensor of the layer's dtype: bf16 values to bf16, fp32 values unchanged.
template <typename T> struct Io;
template <> struct Io<float> {
  static float load(const float* p, int64_t i) { return p[i]; }
  static void store(float* p, int64_t i, float v) { p[i] = v; }
  static float round(float v) { return v; }
};
template <> struct Io<at::BFloat16> {
  static float load(const at::BFloat16* p, int64_t i) { return bf16_to_float(p[i].x); }
  static void store(at::BFloat16* p, int64_t i, float v) { p[i].x = float_to_bf16(v); }
  static float round(float v) { return bf16_to_float(float_to_bf16(v)); }
};

// Sum of squares in a fixed order (8 interleaved float64 partial sums, then added in order): the
// result depends on the row alone, and float64 keeps it as exact as fp32's mean or better.
template <typename T>
double sum_squares(const T* x, int64_t D) {
  double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int j = 0; j < 8; ++j) {
      const double v = Io<T>::load(x, d + j);
      part[j] += v * v;
    }
  for (; d < D; ++d) {
    const double v = Io<T>::load(x, d);
    part[0] += v * v;
  }
  double s = 0;
  for (int j = 0; j < 8; ++j) s += part[j];
  return s;
}

// out = w * T(x * rsqrt(mean(x^2) + eps)), the products rounded to T (model.py's RMSNorm).
template <typename T>
void rms_norm_rows(const T* x, const T* w, T* out, int64_t rows, int64_t D, double eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * D;
    T* o = out + r * D;
    const float inv = static_cast<float>(1.0 / std::sqrt(sum_squares(xr, D) / double(D) + eps));
    for (int64_t d = 0; d < D; ++d) Io<T>::store(o, d, Io<T>::load(w, d) * Io<T>::round(Io<T>::load(xr, d) * inv));
  }
}

// sum = T(x + delta) (the residual stream), then the RMSNorm of the sum.
template <typename T>
void add_rms_norm_rows(const T* x, const T* delta, const T* w, T* sum, T* out, int64_t rows, int64_t D, double eps) {
  for (int64_t i = 0; i < rows * D; ++i) Io<T>::store(sum, i, Io<T>::load(x, i) + Io<T>::load(delta, i));
  rms_norm_rows(sum, w, out, rows, D, eps);
}

// In place on x (rows, heads, hd), rows = B * T: x = T(T(x * cos) + T(rotate_half(x) * sin)), with
// cos/sin (rows, hd) already rounded to T, rotate_half(x) = [-x2, x1] (exact).
template <typename T>
void rope_rows(T* x, const T* cos, const T* sin, int64_t rows, int64_t heads, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const T* c = cos + r * hd;
    const T* s = sin + r * hd;
    for (int64_t h = 0; h < heads; ++h) {
      T* v = x + (r * heads + h) * hd;
      for (int64_t d = 0; d < half; ++d) {
        const float x1 = Io<T>::load(v, d), x2 = Io<T>::load(v, d + half);
        const float lo = Io<T>::round(Io<T>::round(x1 * Io<T>::load(c, d)) + Io<T>::round(-x2 * Io<T>::load(s, d)));
        const float hi = Io<T>::round(Io<T>::round(x2 * Io<T>::load(c, d + half)) + Io<T>::round(x1 * Io<T>::load(s, d + half)));
        Io<T>::store(v, d, lo);
        Io<T>::store(v, d + half, hi);
      }
    }
  }
}

void check_rows(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() &&
                  (t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kBFloat16),
              name, " must be a contiguous CPU float32 or bf16 tensor");
}

}  // namespace

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  check_rows(x, "x");
  check_rows(weight, "weight");
  const int64_t D = x.size(-1), rows = D ? x.numel() / D : 0;
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == D && weight.scalar_type() == x.scalar_type(),
              "weight must be (D,) in x's dtype");
  auto out = torch::empty_like(x);
  if (x.scalar_type() == torch::kFloat32)
    rms_norm_rows(x.data_ptr<float>(), weight.data_ptr<float>(), out.data_ptr<float>(), rows, D, eps);
  else
    rms_norm_rows(x.data_ptr<at::BFloat16>(), weight.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), rows, D, eps);
  return out;
}

std::vector<torch::Tensor> add_rms_norm(torch::Tensor x, torch::Tensor delta, torch::Tensor weight, double eps) {
  check_rows(x, "x");
  check_rows(delta, "delta");
  check_rows(weight, "weight");
  const int64_t D = x.size(-1), rows = D ? x.numel() / D : 0;
  TORCH_CHECK(delta.sizes() == x.sizes() && delta.scalar_type() == x.scalar_type(), "delta must match x");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == D && weight.scalar_type() == x.scalar_type(),
              "weight must be (D,) in x's dtype");
  auto sum = torch::empty_like(x), out = torch::empty_like(x);
  if (x.scalar_type() == torch::kFloat32)
    add_rms_norm_rows(x.data_ptr<float>(), delta.data_ptr<float>(), weight.data_ptr<float>(), sum.data_ptr<float>(),
                      out.data_ptr<float>(), rows, D, eps);
  else
    add_rms_norm_rows(x.data_ptr<at::BFloat16>(), delta.data_ptr<at::BFloat16>(), weight.data_ptr<at::BFloat16>(),
                      sum.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), rows, D, eps);
  return {sum, out};
}

void rope_(torch::Tensor x, torch::Tensor cos, torch::Tensor sin, int64_t heads) {
  check_rows(x, "x");
  check_rows(cos, "cos");
  check_rows(sin, "sin");
  const int64_t hd = cos.size(-1), rows = hd ? cos.numel() / hd : 0;
  TORCH_CHECK(hd % 2 == 0 && sin.sizes() == cos.sizes() && x.numel() == rows * heads * hd &&
                  cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(),
              "x must be (rows, heads, hd) and cos/sin (rows, hd), all in one dtype");
  if (x.scalar_type() == torch::kFloat32)
    rope_rows(x.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), rows, heads, hd);
  else
    rope_rows(x.data_ptr<at::BFloat16>(), cos.data_ptr<at::BFloat16>(), sin.data_ptr<at::BFloat16>(), rows, heads, hd);
}

}  // namespace skinny
