// Portable path: the reference order of operations every SIMD path follows (lanes = columns).
#include <cmath>
#include <cstring>

#include "skinny.h"
#include "attention.h"

namespace skinny {

void f32_scalar(const float* x, int64_t m, int64_t K, const float* w, int64_t t0, int64_t t1,
                float* y, int64_t ldy, int64_t n_valid) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* wt = w + t * K * kTile;
    for (int64_t i = 0; i < m; ++i) {
      float acc[kTile] = {0};
      const float* xi = x + i * K;
      for (int64_t k = 0; k < K; ++k)
        for (int c = 0; c < kTile; ++c) acc[c] = std::fma(wt[k * kTile + c], xi[k], acc[c]);
      store_tile_row(acc, y + i * ldy, t * kTile, n_valid);
    }
  }
}

void bf16_scalar(const uint16_t* /*x*/, const float* xf, int64_t m, int64_t K, const uint16_t* w,
                 int64_t t0, int64_t t1, float* y, int64_t ldy, int64_t n_valid) {
  for (int64_t t = t0; t < t1; ++t) {
    const uint16_t* wt = w + t * K * kTile;
    for (int64_t i = 0; i < m; ++i) {
      float acc[kTile] = {0};
      const float* xi = xf + i * K;
      for (int64_t p = 0; p < K / 2; ++p) {
        const uint16_t* wp = wt + p * 2 * kTile;
        for (int c = 0; c < kTile; ++c) {
          acc[c] = std::fma(bf16_to_f32(wp[2 * c]), xi[2 * p], acc[c]);
          acc[c] = std::fma(bf16_to_f32(wp[2 * c + 1]), xi[2 * p + 1], acc[c]);
        }
      }
      store_tile_row(acc, y + i * ldy, t * kTile, n_valid);
    }
  }
}

void int8_scalar(const QuantAct& a, int64_t m, int64_t K, const int8_t* w, const float* scales,
                 int64_t t0, int64_t t1, float* y, int64_t ldy, int64_t n_valid) {
  const int64_t nb = K / kBlock;
  for (int64_t t = t0; t < t1; ++t) {
    const int8_t* wt = w + t * nb * kInt8BlockBytes;
    for (int64_t i = 0; i < m; ++i) {
      float acc[kTile] = {0};
      for (int64_t b = 0; b < nb; ++b) {
        const int8_t* blk = wt + b * kInt8BlockBytes;
        const int8_t* xb = a.x(b, i);
        const float sx = a.scale(b, i);
        for (int c = 0; c < kTile; ++c) {
          int32_t s = 0;
          for (int j = 0; j < 8; ++j)
            for (int r = 0; r < 4; ++r) s += int32_t(blk[j * 64 + c * 4 + r]) * int32_t(xb[4 * j + r]);
          acc[c] = std::fma(float(s), sx, acc[c]);
        }
      }
      for (int c = 0; c < kTile; ++c) acc[c] = acc[c] * scales[t * kTile + c];
      store_tile_row(acc, y + i * ldy, t * kTile, n_valid);
    }
  }
}

void int4_scalar(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1,
                 float* y, int64_t ldy, int64_t n_valid) {
  const int64_t nb = K / kBlock;
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* wt = w + t * nb * kInt4BlockBytes;
    for (int64_t i = 0; i < m; ++i) {
      float acc[kTile] = {0};
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = wt + b * kInt4BlockBytes;
        const int8_t* xb = a.x(b, i);
        uint16_t sbits[kTile], dbits[kTile];
        std::memcpy(sbits, blk + 256, sizeof sbits);
        std::memcpy(dbits, blk + 288, sizeof dbits);
        const float sx = a.scale(b, i), sxs = a.scaled_sum(b, i);
        for (int c = 0; c < kTile; ++c) {
          int32_t s = 0;
          for (int j = 0; j < 4; ++j)
            for (int r = 0; r < 4; ++r) {
              const uint8_t v = blk[j * 64 + c * 4 + r];
              s += int32_t(v & 15) * int32_t(xb[4 * j + r]) + int32_t(v >> 4) * int32_t(xb[16 + 4 * j + r]);
            }
          const float scale = bf16_to_f32(sbits[c]) * sx;
          acc[c] = std::fma(float(s), scale, acc[c]);
          acc[c] = std::fma(bf16_to_f32(dbits[c]), sxs, acc[c]);
        }
      }
      store_tile_row(acc, y + i * ldy, t * kTile, n_valid);
    }
  }
}

void attend_rows_scalar(const ChainAttention& a, int64_t r0, int64_t r1) { attend_rows_impl(a, r0, r1); }


// The reference statement of activation quantization; the SIMD versions give the same bits
// (max and integer sums are exact, the scale is computed the same way, rounding is to nearest even).
void quantize_scalar(const float* x, int64_t m, int64_t K, int64_t r0, int64_t r1, int8_t* xq, float* sx, float* sxs,
                     int group) {
  const int64_t nb = K / kBlock;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i = r / nb, b = r % nb, o = b * m + i;
    const float* v = x + i * K + b * kBlock;
    const float* gv = x + i * K + (b - b % group) * kBlock;  // the group's first value
    float amax = 0.f;  // a max: the same in any order, so every path gets the same scale
    for (int k = 0; k < kBlock * group; ++k) amax = std::fmax(amax, std::fabs(gv[k]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    int32_t sum = 0;
    for (int k = 0; k < kBlock; ++k) {
      const float q = std::fmin(127.f, std::fmax(-127.f, std::nearbyint(v[k] * inv)));
      xq[o * kBlock + k] = int8_t(q);
      sum += int32_t(q);
    }
    sx[o] = amax / 127.f;
    sxs[o] = sx[o] * float(sum);
  }
}

}  // namespace skinny
