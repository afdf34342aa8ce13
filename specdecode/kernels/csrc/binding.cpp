// PyTorch entry points: activation quantization, CPU feature probe, and the skinny matmuls,
// threaded over tiles of 16 output columns (each thread streams its own contiguous weights).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <tuple>

#include "attention.h"
#include "gguf.h"
#include "layer_ops.h"
#include "ops.h"
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
  // F16C: the GGUF formats' fp16 scales (every AVX2 CPU has it; checked all the same).
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return kAvx2;
  return kScalar;
}

void check_isa(int64_t isa) {
  TORCH_CHECK(isa >= kScalar && isa <= best_isa(), "kernel path ", isa, " is not supported by this CPU");
}

// x (m, K) float32 -> xq (K/32, m, 32) int8, sx and sxs (K/32, m) into the given buffers, one scale
// per `group` blocks of a row, threaded over (row, block) pairs.
void quantize_into(const float* xp, int64_t m, int64_t K, int64_t isa, int8_t* qp, float* sp, float* ssp, int group) {
  auto f = isa == kAvx512 ? quantize_avx512 : isa == kAvx2 ? quantize_avx2 : quantize_scalar;
  at::parallel_for(0, m * (K / kBlock), 512, [&](int64_t r0, int64_t r1) { f(xp, m, K, r0, r1, qp, sp, ssp, group); });
}

// x (m, K) float32 -> xq (K/32, m, 32) int8, sx and sxs (K/32, m): x ~ sx * xq per row and block
// of 32 (one scale per `group` blocks: 1, or 8 as the K-quant kernels take them), sxs = sx *
// sum(xq); block-major (see QuantAct). Every ISA path gives the same bits.
std::vector<torch::Tensor> quantize_act(torch::Tensor x, int64_t isa, int64_t group) {
  check_isa(isa);
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "x must be (m, K) float32");
  TORCH_CHECK(group == 1 || group == kActGroupK, "group must be 1 or ", kActGroupK);
  const int64_t m = x.size(0), K = x.size(1);
  TORCH_CHECK(K % (kBlock * group) == 0, "K must be a multiple of ", kBlock * group);
  const int64_t nb = K / kBlock;
  auto xq = torch::empty({nb, m, kBlock}, x.options().dtype(torch::kInt8));
  auto sx = torch::empty({nb, m}, x.options());
  auto sxs = torch::empty({nb, m}, x.options());
  quantize_into(x.data_ptr<float>(), m, K, isa, xq.data_ptr<int8_t>(), sx.data_ptr<float>(), sxs.data_ptr<float>(),
                static_cast<int>(group));
  return {xq, sx, sxs};
}

// kernels/linear.py's FORMAT_CODES. The integer formats (int8, int4 and the GGUF blocks) take int8
// activations, so layers of different integer formats can share a call: it quantizes x once per
// kind its layers read (a scale per block of 32; per super-block of 256 for the K-quants).
enum Format : int64_t { kF32 = 0, kBf16 = 1, kInt8 = 2, kInt4 = 3, kQ4K = 4, kQ6K = 5, kQ5_0 = 6, kQ4_0 = 7, kQ8_0 = 8 };

bool integer_format(int64_t fmt) { return fmt >= kInt8 && fmt <= kQ8_0; }
bool k_quant(int64_t fmt) { return fmt == kQ4K || fmt == kQ6K; }

// Bytes of one tile (16 columns) of a GGUF format for K inputs.
int64_t gguf_tile_bytes(int64_t fmt, int64_t K) {
  switch (fmt) {
    case kQ4K: return K / kSuperK * kQ4KBytes;
    case kQ6K: return K / kSuperK * kQ6KBytes;
    case kQ5_0: return K / kBlock * kQ5_0Bytes;
    case kQ4_0: return K / kBlock * kQ4_0Bytes;
    case kQ8_0: return K / kBlock * kQ8_0Bytes;
    default: return -1;
  }
}

void check_layer(const LayerSpec& l, int64_t first_fmt, int64_t K) {
  const auto& w = std::get<1>(l);
  const int64_t tiles = w.size(0), nb = K / kBlock, fmt = std::get<0>(l);
  TORCH_CHECK(fmt == first_fmt || (integer_format(fmt) && integer_format(first_fmt)),
              "layers of one call must share a format (or all be integer formats)");
  TORCH_CHECK(w.is_contiguous() && std::get<4>(l) <= tiles * kTile, "bad packed weight");
  switch (fmt) {
    case kF32: TORCH_CHECK(w.scalar_type() == torch::kFloat32 && w.numel() == tiles * K * kTile, "bad packed f32 weight"); break;
    case kBf16: TORCH_CHECK(w.scalar_type() == torch::kBFloat16 && w.numel() == tiles * K * kTile, "bad packed bf16 weight"); break;
    case kInt8:
      TORCH_CHECK(w.scalar_type() == torch::kInt8 && w.numel() == tiles * nb * kInt8BlockBytes, "bad packed int8 weight");
      TORCH_CHECK(std::get<2>(l).has_value() && std::get<2>(l)->scalar_type() == torch::kFloat32 &&
                  std::get<2>(l)->numel() == tiles * kTile, "bad int8 scales");
      break;
    case kInt4: TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.numel() == tiles * nb * kInt4BlockBytes, "bad packed int4 weight"); break;
    case kQ4K: case kQ6K: case kQ5_0: case kQ4_0: case kQ8_0:
      TORCH_CHECK(!k_quant(fmt) || K % kSuperK == 0, "K-quant weights need K a multiple of 256");
      TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.numel() == tiles * gguf_tile_bytes(fmt, K), "bad packed GGUF weight");
      break;
    default: TORCH_CHECK(false, "unknown format ", fmt);
  }
}

// Buffers a call of linear() needs only while it runs (the activations in fp32 and quantized,
// fp32 results that are rounded to bf16): kept per thread and reused, where allocating them as
// tensors cost ~25 allocations a decoder layer (~0.5 ms of a 1.5B model's decode step).
struct LinearScratch {
  std::vector<float> xf, y;
  struct Act {  // one quantization of the activations (QuantAct's buffers)
    std::vector<float> sx, sxs;
    std::vector<int8_t> xq;
    std::vector<uint8_t> xu;
    std::vector<int32_t> xhalves, xpairs;
  } block, super;  // a scale per block of 32 / per super-block of 256 (the K-quants)
};

template <typename V>
typename V::value_type* sized(V& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

// x (m, K) quantized into `buf` with one scale per `group` blocks; for the K-quants (group 8) also
// the sums of xq over each half block and over each pair of blocks, as int16 pairs (QuantAct).
// With `biased`, also xq + 128 as unsigned bytes (the AVX-512 int8 and Q8_0 kernels' operand).
QuantAct quantize_scratch(const float* xp, int64_t m, int64_t K, int64_t isa, int group, bool biased,
                          LinearScratch::Act& buf) {
  const int64_t nb = K / kBlock;
  int8_t* qp = sized(buf.xq, nb * m * kBlock);
  float* sp = sized(buf.sx, nb * m);
  float* ssp = sized(buf.sxs, nb * m);
  quantize_into(xp, m, K, isa, qp, sp, ssp, group);
  QuantAct act{qp, sp, ssp, m};
  if (biased) {
    uint8_t* up = sized(buf.xu, nb * m * kBlock);
    for (int64_t i = 0; i < nb * m * kBlock; ++i) up[i] = uint8_t(qp[i]) ^ 0x80;
    act.xu = up;
  }
  if (group == 1) return act;
  auto int16_pair = [](int32_t lo, int32_t hi) { return int32_t(uint32_t(uint16_t(lo)) | (uint32_t(uint16_t(hi)) << 16)); };
  int32_t* halves = sized(buf.xhalves, nb * m);  // (nb, m)
  for (int64_t r = 0; r < nb * m; ++r) {  // r = b * m + i: (block, row), block-major as xq
    int32_t sum[2] = {0, 0};
    for (int64_t k = 0; k < kBlock; ++k) sum[k / (kBlock / 2)] += qp[r * kBlock + k];
    halves[r] = int16_pair(sum[0], sum[1]);
  }
  act.xhalves = halves;
  int32_t* pairs = sized(buf.xpairs, nb / 2 * m);  // (nb / 2, m)
  for (int64_t p = 0; p < nb / 2; ++p)
    for (int64_t i = 0; i < m; ++i) pairs[p * m + i] = int16_pair(act.block_sum(2 * p, i), act.block_sum(2 * p + 1, i));
  act.xpairs = pairs;
  return act;
}

// x (m, K) as contiguous fp32: x itself, or converted into `buf` (bf16: exact).
const float* fp32_rows(const torch::Tensor& x, std::vector<float>& buf, torch::Tensor& keep) {
  if (x.scalar_type() == torch::kFloat32 && x.is_contiguous()) return x.data_ptr<float>();
  if (x.scalar_type() == torch::kBFloat16 && x.is_contiguous()) {
    const c10::BFloat16* p = x.data_ptr<c10::BFloat16>();
    float* f = sized(buf, x.numel());
    for (int64_t i = 0; i < x.numel(); ++i) f[i] = static_cast<float>(p[i]);
    return f;
  }
  keep = x.to(torch::kFloat32).contiguous();
  return keep.data_ptr<float>();
}

// Runs body(t0, t1) over tiles [0, total) on the intra-op threads, every tile exactly once. Each
// thread owns a contiguous share (it streams its own weights, prefetching ahead within them) and
// takes it from the front steal_tiles at a time (skinny.h); a thread done with its share takes
// tiles from the back of the others' shares. A static split made each thread wait for the slower
// one at every product's end: on a 2-core Zen 4 at m = 1, 16% of the main thread's time was
// spent there (perf), as the two cores do not stream at the same rate from one product to the
// next. Which thread computes a tile changes nothing in it: the same bits either way.

template <class Body>
void for_tiles(int64_t total, const Body& body) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), (total + 3) / 4);
  const int64_t chunk = steal_tiles;  // read once: a claim of 0 tiles would never end a share
  TORCH_CHECK(total < (int64_t(1) << 31), "too many output tiles for one product: ", total);
  if (chunk <= 0 || threads <= 1 || at::in_parallel_region()) {
    at::parallel_for(0, total, 4, body);
    return;
  }
  // share s: tiles [front, back) still to do, packed in one word (back << 32 | front) so that the
  // owner (from the front) and thieves (from the back) claim tiles with one compare-and-swap
  struct alignas(64) Share {
    std::atomic<uint64_t> v;
  };
  std::vector<Share> shares(threads);
  for (int64_t s = 0; s < threads; ++s) {
    const uint64_t lo = total * s / threads, hi = total * (s + 1) / threads;
    shares[s].v.store(hi << 32 | lo, std::memory_order_relaxed);
  }
  auto claim = [&](Share& sh, bool front, int64_t* t0, int64_t* t1) {
    uint64_t old = sh.v.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t lo = int64_t(old & 0xFFFFFFFFu), hi = int64_t(old >> 32);
      if (lo >= hi) return false;
      const int64_t n = std::min(chunk, hi - lo);
      const uint64_t next = front ? uint64_t(hi) << 32 | uint64_t(lo + n) : uint64_t(hi - n) << 32 | uint64_t(lo);
      if (sh.v.compare_exchange_weak(old, next, std::memory_order_relaxed)) {
        *t0 = front ? lo : hi - n;
        *t1 = front ? lo + n : hi;
        return true;
      }
    }
  };
  at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t s = b; s < e; ++s) {
      int64_t t0, t1;
      while (claim(shares[s], true, &t0, &t1)) body(t0, t1);
      for (int64_t o = 1; o < threads; ++o) {
        Share& other = shares[(s + o) % threads];
        while (claim(other, false, &t0, &t1)) body(t0, t1);
      }
    }
  });
}

}  // namespace

// y_l = x @ W_l.T (+ bias_l) for every layer l, in out_dtype: the activations are converted or
// quantized once, and one parallel region walks the tiles of all layers (q/k/v, gate/up).
std::vector<torch::Tensor> linear(const torch::Tensor& x, const std::vector<LayerSpec>& layers, int64_t isa,
                                  c10::ScalarType out_dtype) {
  check_isa(isa);
  TORCH_CHECK(x.dim() == 2 && !layers.empty(), "x must be (m, K) and at least one layer given");
  const int64_t m = x.size(0), K = x.size(1), fmt = std::get<0>(layers[0]);
  TORCH_CHECK(fmt == kF32 || fmt == kBf16 ? K % 2 == 0 : K % kBlock == 0, "K does not fit the format");
  bool per_block = false, per_super = false, biased = false;  // which activations the layers read
  for (const auto& l : layers) {
    check_layer(l, fmt, K);
    per_block = per_block || (integer_format(std::get<0>(l)) && !k_quant(std::get<0>(l)));
    per_super = per_super || k_quant(std::get<0>(l));
    biased = biased || std::get<0>(l) == kInt8 || std::get<0>(l) == kQ8_0;
  }
  thread_local LinearScratch scratch;
  torch::Tensor xa, xf, keep;  // the activations in the kernel's type
  if (fmt == kF32) xa = x.to(torch::kFloat32).contiguous();
  if (fmt == kBf16) {
    xa = x.to(torch::kBFloat16).contiguous();
    if (isa != kAvx512) xf = xa.to(torch::kFloat32);  // the FMA paths read fp32 activations (exact)
  }
  QuantAct act{nullptr, nullptr, nullptr, m}, act_super{nullptr, nullptr, nullptr, m};
  if (integer_format(fmt)) {
    const float* xp = fp32_rows(x, scratch.xf, keep);
    if (per_block) act = quantize_scratch(xp, m, K, isa, 1, biased, scratch.block);
    if (per_super) act_super = quantize_scratch(xp, m, K, isa, kActGroupK, false, scratch.super);
  }
  // bf16 outputs are finished inside the parallel region: each thread adds the bias to the fp32
  // columns it just computed and rounds them (c10::BFloat16: round to nearest even, as
  // Tensor::to does), instead of an add_ and a to() per layer after it; their fp32 results live
  // in the scratch buffer. Other outputs are the fp32 tensors themselves.
  const bool finish_bf16 = out_dtype == torch::kBFloat16;
  std::vector<torch::Tensor> ys, outs;
  std::vector<float*> yp;  // per layer: its fp32 results (m, N)
  std::vector<int64_t> first_tile{0}, y_offset{0};
  std::vector<const float*> bias_f32;  // per layer: the fp32 bias the finishing pass adds, or none
  std::vector<const c10::BFloat16*> bias_bf16;
  for (const auto& l : layers) y_offset.push_back(y_offset.back() + m * std::get<4>(l));
  float* ybuf = finish_bf16 ? sized(scratch.y, y_offset.back()) : nullptr;
  for (size_t li = 0; li < layers.size(); ++li) {
    const auto& l = layers[li];
    if (finish_bf16) {
      yp.push_back(ybuf + y_offset[li]);
      outs.push_back(torch::empty({m, std::get<4>(l)}, x.options().dtype(torch::kBFloat16)));
    } else {
      ys.push_back(torch::empty({m, std::get<4>(l)}, x.options().dtype(torch::kFloat32)));
      yp.push_back(ys.back().data_ptr<float>());
    }
    first_tile.push_back(first_tile.back() + std::get<1>(l).size(0));
    const auto& b = std::get<3>(l);
    const bool fused_bias = finish_bf16 && b.has_value() && b->is_contiguous() && b->numel() == std::get<4>(l);
    bias_f32.push_back(fused_bias && b->scalar_type() == torch::kFloat32 ? b->data_ptr<float>() : nullptr);
    bias_bf16.push_back(fused_bias && b->scalar_type() == torch::kBFloat16 ? b->data_ptr<c10::BFloat16>() : nullptr);
  }
  const int64_t total = first_tile.back();
  auto run = [&](size_t li, int64_t r0, int64_t rows, int64_t t0, int64_t t1) {
    const auto& l = layers[li];
    const int64_t N = std::get<4>(l);
    float* y = yp[li] + r0 * N;
    const void* w = std::get<1>(l).data_ptr();
    if (fmt == kF32) {
      auto f = isa == kAvx512 ? f32_avx512 : isa == kAvx2 ? f32_avx2 : f32_scalar;
      f(xa.data_ptr<float>() + r0 * K, rows, K, static_cast<const float*>(w), t0, t1, y, N, N);
    } else if (fmt == kBf16) {
      auto f = isa == kAvx512 ? bf16_avx512 : isa == kAvx2 ? bf16_avx2 : bf16_scalar;
      f(reinterpret_cast<const uint16_t*>(xa.data_ptr()) + r0 * K, xf.defined() ? xf.data_ptr<float>() + r0 * K : nullptr,
        rows, K, static_cast<const uint16_t*>(w), t0, t1, y, N, N);
    } else {
      const int64_t lf = std::get<0>(l);
      const QuantAct a = (k_quant(lf) ? act_super : act).rows_from(r0);
      using GgufKernel = void (*)(const QuantAct&, int64_t, int64_t, const uint8_t*, int64_t, int64_t, float*, int64_t, int64_t);
      GgufKernel g = nullptr;
      switch (lf) {
        case kQ4K: g = isa == kAvx512 ? q4k_avx512 : isa == kAvx2 ? q4k_avx2 : q4k_scalar; break;
        case kQ6K: g = isa == kAvx512 ? q6k_avx512 : isa == kAvx2 ? q6k_avx2 : q6k_scalar; break;
        case kQ5_0: g = isa == kAvx512 ? q5_0_avx512 : isa == kAvx2 ? q5_0_avx2 : q5_0_scalar; break;
        case kQ4_0: g = isa == kAvx512 ? q4_0_avx512 : isa == kAvx2 ? q4_0_avx2 : q4_0_scalar; break;
        case kQ8_0: g = isa == kAvx512 ? q8_0_avx512 : isa == kAvx2 ? q8_0_avx2 : q8_0_scalar; break;
        default: break;
      }
      if (g != nullptr) {
        g(a, rows, K, static_cast<const uint8_t*>(w), t0, t1, y, N, N);
      } else if (lf == kInt8) {
        auto f = isa == kAvx512 ? int8_avx512 : isa == kAvx2 ? int8_avx2 : int8_scalar;
        f(a, rows, K, static_cast<const int8_t*>(w), std::get<2>(l)->data_ptr<float>(), t0, t1, y, N, N);
      } else {
        auto f = isa == kAvx512 ? int4_avx512 : isa == kAvx2 ? int4_avx2 : int4_scalar;
        f(a, rows, K, static_cast<const uint8_t*>(w), t0, t1, y, N, N);
      }
    }
  };
  for (int64_t r0 = 0; r0 < m; r0 += kRowChunk) {
    const int64_t rows = std::min(kRowChunk, m - r0);
    for_tiles(total, [&](int64_t t0, int64_t t1) {
      for (size_t li = 0; li < layers.size(); ++li) {  // split [t0, t1) at layer boundaries
        const int64_t lo = std::max(t0, first_tile[li]), hi = std::min(t1, first_tile[li + 1]);
        if (lo >= hi) continue;
        run(li, r0, rows, lo - first_tile[li], hi - first_tile[li]);
        if (finish_bf16) {  // rows [r0, r0 + rows) x this thread's columns, while still in cache
          const int64_t N = std::get<4>(layers[li]), c0 = (lo - first_tile[li]) * kTile;
          const int64_t c1 = std::min(N, (hi - first_tile[li]) * kTile);
          const float* bf = bias_f32[li];
          const c10::BFloat16* bb = bias_bf16[li];
          const float* y = yp[li];
          c10::BFloat16* out = outs[li].data_ptr<c10::BFloat16>();
          for (int64_t i = r0; i < r0 + rows; ++i) {
            const float* yi = y + i * N;
            c10::BFloat16* oi = out + i * N;
            for (int64_t c = c0; c < c1; ++c)
              oi[c] = c10::BFloat16(bf ? yi[c] + bf[c] : bb ? yi[c] + static_cast<float>(bb[c]) : yi[c]);
          }
        }
      }
    });
  }
  for (size_t li = 0; li < layers.size(); ++li) {
    const auto& b = std::get<3>(layers[li]);
    if (finish_bf16) {
      if (b.has_value() && !bias_f32[li] && !bias_bf16[li]) {  // a bias of another dtype: as before
        const auto y = torch::from_blob(yp[li], {m, std::get<4>(layers[li])}, x.options().dtype(torch::kFloat32));
        outs[li] = y.clone().add_(*b).to(out_dtype);
      }
      continue;
    }
    if (b.has_value()) ys[li].add_(*b);
    if (out_dtype != torch::kFloat32) ys[li] = ys[li].to(out_dtype);
  }
  return finish_bf16 ? outs : ys;
}

torch::Tensor attend_chain(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale, int64_t isa) {
  return attend(q, k, v, scale, isa, nullptr);
}

// The T queries form a tree (parents (T,) int64: each node's parent among them, -1 for the
// context's last token, parents before children): each node attends the context and its path.
const int64_t* checked_parents(const torch::Tensor& parents, int64_t T) {
  TORCH_CHECK(parents.dim() == 1 && parents.scalar_type() == torch::kInt64 && parents.is_contiguous() &&
                  parents.device().is_cpu() && parents.size(0) == T,
              "parents must be a contiguous CPU int64 tensor with one entry per query");
  const int64_t* p = parents.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(p[t] >= -1 && p[t] < t, "parents[", t, "] must be in [-1, ", t, ")");
  }
  int64_t longest = 0;
  for (int64_t t = 0; t < T; ++t) {
    int64_t d = 0;
    for (int64_t u = t; u >= 0; u = p[u]) ++d;
    longest = d > longest ? d : longest;
  }
  TORCH_CHECK(longest <= kMaxTreeDepth, "a tree path may hold at most ", kMaxTreeDepth, " nodes");
  return p;
}

// The T queries form a tree (parents (T,) int64: each node's parent among them, -1 for the
// context's last token, parents before children): each node attends the context and its path.
torch::Tensor attend_tree(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale, torch::Tensor parents,
                          int64_t isa) {
  return attend(q, k, v, scale, isa, checked_parents(parents, q.size(2)));
}

void attend_into(const ChainAttention& a, int64_t isa) {
  check_isa(isa);
  at::parallel_for(0, a.B * a.Hkv * a.T, 1, [&](int64_t r0, int64_t r1) {
    auto f = isa == kAvx512 ? attend_rows_avx512 : isa == kAvx2 ? attend_rows_avx2 : attend_rows_scalar;
    f(a, r0, r1);
  });
}

torch::Tensor attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale, int64_t isa,
                     const int64_t* parents) {
  check_isa(isa);
  TORCH_CHECK(q.dim() == 4 && q.scalar_type() == torch::kFloat32 && q.is_contiguous(), "q must be contiguous float32 (B, H, T, hd)");
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes() && k.strides() == v.strides() && k.scalar_type() == v.scalar_type(),
              "k and v must be (B, Hkv, L, hd) views of the same layout");
  TORCH_CHECK(k.scalar_type() == torch::kFloat32 || k.scalar_type() == torch::kBFloat16, "k/v must be float32 or bf16");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3), Hkv = k.size(1), L = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(3) == hd && k.stride(3) == 1 && H % Hkv == 0 && hd % 16 == 0 && L >= T,
              "shapes do not match");
  TORCH_CHECK(H / Hkv <= kMaxGroup, "at most ", kMaxGroup, " query heads per kv head");
  auto out = torch::empty_like(q);
  ChainAttention a{q.data_ptr<float>(), k.data_ptr(), v.data_ptr(), k.scalar_type() == torch::kBFloat16,
                   B, H, Hkv, T, L, hd, k.stride(0), k.stride(1), k.stride(2), float(scale), out.data_ptr<float>(),
                   parents};
  attend_into(a, isa);
  return out;
}

}  // namespace skinny

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("best_isa", &skinny::best_isa, "0 scalar, 1 AVX2+FMA, 2 AVX-512 with VNNI and BF16");
  m.def("quantize_act", &skinny::quantize_act, "per-row int8 activation quantization in blocks of 32 (block-major), "
        "one scale per `group` blocks (1, or 8: the K-quants' super-blocks)",
        pybind11::arg("x"), pybind11::arg("isa"), pybind11::arg("group") = 1);
  m.def("linear", &skinny::linear, "y_l = x @ W_l.T (+ b_l) for layers (format, packed, scales, bias, N) sharing x");
  m.def("attend_chain", &skinny::attend_chain, "row-invariant attention of a chain of queries over a KV prefix");
  m.def("attend_tree", &skinny::attend_tree, "row-invariant attention of a tree of queries over a KV prefix");
  m.def("set_prefetch_distance",
        [](int64_t bytes) { skinny::prefetch_distance = static_cast<int>(std::clamp<int64_t>(bytes, 0, 1 << 20)); },
        "bytes ahead the integer kernels prefetch their weights (0: none)");
  m.def("prefetch_distance", []() { return static_cast<int64_t>(skinny::prefetch_distance); });
  m.def("set_one_pass_rows", [](int64_t rows) { skinny::one_pass_rows = static_cast<int>(rows); },
        "Most rows the AVX2 kernels take in one pass over both halves of a tile (2: two passes past m = 2).");
  m.def("set_steal_tiles",
        [](int64_t tiles) { skinny::steal_tiles = static_cast<int>(std::clamp<int64_t>(tiles, 0, 1 << 20)); },
        "threads done with their share of a product's tiles take the rest of the others' (default on)");
  m.def("steal_tiles", []() { return skinny::steal_tiles; });
  m.def("one_pass_rows", []() { return static_cast<int64_t>(skinny::one_pass_rows); });
  m.def("rms_norm", &skinny::rms_norm, "RMSNorm of each row, in the input's dtype");
  m.def("add_rms_norm", &skinny::add_rms_norm, "[x + delta, RMSNorm(x + delta)]");
  m.def("rope_", &skinny::rope_, "rotate-half rotary embedding in place on (rows, heads, hd)");
  m.def("decoder_layer", &skinny::decoder_layer, "a whole decoder layer (norms, q/k/v, RoPE, cache write, attention, "
        "o_proj, SwiGLU MLP, residuals) in one call, with the bits of the Python layer");
  pybind11::class_<skinny::LayerStack>(m, "LayerStack", "a model's decoder layers, converted once; a pass is one call")
      .def(pybind11::init<std::vector<skinny::LayerArgs>>())
      .def("forward", &skinny::LayerStack::forward,
           "x (N, D), cos, sin, segments (keys, values, length, start, end, parents), isa, capture -> "
           "[output, the inputs of the captured layers]")
      .def("__len__", &skinny::LayerStack::size);
}
