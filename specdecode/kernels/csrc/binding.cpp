// PyTorch entry points: activation quantization, CPU feature probe, and the skinny matmuls,
// threaded over tiles of 16 output columns (each thread streams its own contiguous weights).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>

#include "attention.h"
#include "skinny.h"

namespace skinny {
namespace {

enum Isa : int64_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// Rows per pass over the weights: the activations of a chunk stay in L2 while each weight
// tile is read once for all of them; prefill-sized inputs are walked chunk by chunk.
constexpr int64_t kRowChunk = 32;

int64_t best_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni") &&
      __builtin_cpu_supports("avx512bf16"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
  return kScalar;
}

void check_isa(int64_t isa) {
  TORCH_CHECK(isa >= kScalar && isa <= best_isa(), "kernel path ", isa, " is not supported by this CPU");
}

// x (m, K) float32 -> xq (m, K) int8, sx (m, K/32), sxs (m, K/32): x ~ sx * xq per block of 32,
// sxs = sx * sum(xq). Scalar on purpose: it is O(m K), and every ISA path must see the same bits.
std::vector<torch::Tensor> quantize_act(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "x must be (m, K) float32");
  const int64_t m = x.size(0), K = x.size(1);
  TORCH_CHECK(K % kBlock == 0, "K must be a multiple of 32");
  const int64_t nb = K / kBlock;
  auto xq = torch::empty({m, K}, x.options().dtype(torch::kInt8));
  auto sx = torch::empty({m, nb}, x.options());
  auto sxs = torch::empty({m, nb}, x.options());
  const float* xp = x.data_ptr<float>();
  int8_t* qp = xq.data_ptr<int8_t>();
  float* sp = sx.data_ptr<float>();
  float* ssp = sxs.data_ptr<float>();
  for (int64_t rb = 0; rb < m * nb; ++rb) {
    const float* v = xp + rb * kBlock;
    float amax = 0.f;
    for (int k = 0; k < kBlock; ++k) amax = std::fmax(amax, std::fabs(v[k]));
    const float scale = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
    int32_t sum = 0;
    for (int k = 0; k < kBlock; ++k) {
      const float r = std::nearbyint(v[k] * inv);
      const int32_t q = r > 127.f ? 127 : (r < -127.f ? -127 : int32_t(r));
      qp[rb * kBlock + k] = int8_t(q);
      sum += q;
    }
    sp[rb] = scale;
    ssp[rb] = scale * float(sum);
  }
  return {xq, sx, sxs};
}

template <typename Fn>
torch::Tensor run_tiles(int64_t m, int64_t n_valid, int64_t tiles, const torch::TensorOptions& opts, Fn fn) {
  auto y = torch::empty({m, n_valid}, opts.dtype(torch::kFloat32));
  float* yp = y.data_ptr<float>();
  for (int64_t r0 = 0; r0 < m; r0 += kRowChunk) {
    const int64_t rows = std::min(kRowChunk, m - r0);
    at::parallel_for(0, tiles, 4, [&](int64_t t0, int64_t t1) { fn(r0, rows, t0, t1, yp + r0 * n_valid); });
  }
  return y;
}

void check_x(const torch::Tensor& x, torch::ScalarType t, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == t && x.is_contiguous() && x.size(1) == K,
              "x must be a contiguous (m, K) tensor of the kernel's dtype");
}

torch::Tensor mm_f32(torch::Tensor x, torch::Tensor w, int64_t n_valid, int64_t isa) {
  check_isa(isa);
  const int64_t m = x.size(0), K = x.size(1), tiles = w.size(0);
  check_x(x, torch::kFloat32, K);
  TORCH_CHECK(w.numel() == tiles * K * kTile && w.scalar_type() == torch::kFloat32, "bad packed f32 weight");
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  return run_tiles(m, n_valid, tiles, x.options(), [&](int64_t r0, int64_t rows, int64_t t0, int64_t t1, float* y) {
    auto f = isa == kAvx512 ? f32_avx512 : isa == kAvx2 ? f32_avx2 : f32_scalar;
    f(xp + r0 * K, rows, K, wp, t0, t1, y, n_valid, n_valid);
  });
}

torch::Tensor mm_bf16(torch::Tensor x, torch::Tensor w, int64_t n_valid, int64_t isa) {
  check_isa(isa);
  const int64_t m = x.size(0), K = x.size(1), tiles = w.size(0);
  check_x(x, torch::kBFloat16, K);
  TORCH_CHECK(K % 2 == 0 && w.numel() == tiles * K * kTile && w.scalar_type() == torch::kBFloat16, "bad packed bf16 weight");
  torch::Tensor xf;  // the FMA paths read fp32 activations (exact conversion)
  if (isa != kAvx512) xf = x.to(torch::kFloat32);
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const float* xfp = xf.defined() ? xf.data_ptr<float>() : nullptr;
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr());
  return run_tiles(m, n_valid, tiles, x.options(), [&](int64_t r0, int64_t rows, int64_t t0, int64_t t1, float* y) {
    auto f = isa == kAvx512 ? bf16_avx512 : isa == kAvx2 ? bf16_avx2 : bf16_scalar;
    f(xp + r0 * K, xfp ? xfp + r0 * K : nullptr, rows, K, wp, t0, t1, y, n_valid, n_valid);
  });
}

torch::Tensor mm_int8(torch::Tensor x, torch::Tensor w, torch::Tensor scales, int64_t n_valid, int64_t isa) {
  check_isa(isa);
  const int64_t m = x.size(0), K = x.size(1), tiles = w.size(0), nb = K / kBlock;
  TORCH_CHECK(w.scalar_type() == torch::kInt8 && w.numel() == tiles * nb * kInt8BlockBytes, "bad packed int8 weight");
  TORCH_CHECK(scales.scalar_type() == torch::kFloat32 && scales.numel() == tiles * kTile, "bad int8 scales");
  auto q = quantize_act(x);
  const QuantAct a{q[0].data_ptr<int8_t>(), q[1].data_ptr<float>(), q[2].data_ptr<float>()};
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scales.data_ptr<float>();
  return run_tiles(m, n_valid, tiles, x.options(), [&](int64_t r0, int64_t rows, int64_t t0, int64_t t1, float* y) {
    const QuantAct ar{a.xq + r0 * K, a.sx + r0 * nb, a.sxs + r0 * nb};
    auto f = isa == kAvx512 ? int8_avx512 : isa == kAvx2 ? int8_avx2 : int8_scalar;
    f(ar, rows, K, wp, sp, t0, t1, y, n_valid, n_valid);
  });
}

torch::Tensor mm_int4(torch::Tensor x, torch::Tensor w, int64_t n_valid, int64_t isa) {
  check_isa(isa);
  const int64_t m = x.size(0), K = x.size(1), tiles = w.size(0), nb = K / kBlock;
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.numel() == tiles * nb * kInt4BlockBytes, "bad packed int4 weight");
  auto q = quantize_act(x);
  const QuantAct a{q[0].data_ptr<int8_t>(), q[1].data_ptr<float>(), q[2].data_ptr<float>()};
  const uint8_t* wp = w.data_ptr<uint8_t>();
  return run_tiles(m, n_valid, tiles, x.options(), [&](int64_t r0, int64_t rows, int64_t t0, int64_t t1, float* y) {
    const QuantAct ar{a.xq + r0 * K, a.sx + r0 * nb, a.sxs + r0 * nb};
    auto f = isa == kAvx512 ? int4_avx512 : isa == kAvx2 ? int4_avx2 : int4_scalar;
    f(ar, rows, K, wp, t0, t1, y, n_valid, n_valid);
  });
}

// q (B, H, T, hd) float32; k, v (B, Hkv, L, hd) float32 or bf16 (strided views of the cache)
// -> (B, H, T, hd) float32, query t attending keys [0, L - T + t].
torch::Tensor attend_chain(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale, int64_t isa) {
  check_isa(isa);
  TORCH_CHECK(q.dim() == 4 && q.scalar_type() == torch::kFloat32 && q.is_contiguous(), "q must be contiguous float32 (B, H, T, hd)");
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes() && k.strides() == v.strides() && k.scalar_type() == v.scalar_type(),
              "k and v must be (B, Hkv, L, hd) views of the same layout");
  TORCH_CHECK(k.scalar_type() == torch::kFloat32 || k.scalar_type() == torch::kBFloat16, "k/v must be float32 or bf16");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3), Hkv = k.size(1), L = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(3) == hd && k.stride(3) == 1 && H % Hkv == 0 && hd % 16 == 0 && L >= T,
              "shapes do not match");
  auto out = torch::empty_like(q);
  ChainAttention a{q.data_ptr<float>(), k.data_ptr(), v.data_ptr(), k.scalar_type() == torch::kBFloat16,
                   B, H, Hkv, T, L, hd, k.stride(0), k.stride(1), k.stride(2), float(scale), out.data_ptr<float>()};
  at::parallel_for(0, B * H * T, 1, [&](int64_t r0, int64_t r1) {
    auto f = isa == kAvx512 ? attend_rows_avx512 : isa == kAvx2 ? attend_rows_avx2 : attend_rows_scalar;
    f(a, r0, r1);
  });
  return out;
}

}  // namespace
}  // namespace skinny

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("best_isa", &skinny::best_isa, "0 scalar, 1 AVX2+FMA, 2 AVX-512 with VNNI and BF16");
  m.def("quantize_act", &skinny::quantize_act, "per-row, per-32 block int8 activation quantization");
  m.def("mm_f32", &skinny::mm_f32);
  m.def("mm_bf16", &skinny::mm_bf16);
  m.def("mm_int8", &skinny::mm_int8);
  m.def("mm_int4", &skinny::mm_int4);
  m.def("attend_chain", &skinny::attend_chain, "row-invariant attention of a chain of queries over a KV prefix");
}
