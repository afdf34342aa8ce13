// AVX2 + FMA path (8 lanes): a 16-column tile is two 8-column halves. Integer products use
// vpmaddubsw (no saturation possible: |products| <= 2 * 127 * 127) and vpmaddwd; the float
// steps are those of the scalar path, so results are bit-identical to it.
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "skinny.h"
#include "avx2_tiles.h"
#define SKINNY_ATTENTION_SIMD 1  // attention.h: 8-lane AVX registers
#include "attention.h"

namespace skinny {
namespace {

inline __m256 load_bf16x8(const uint8_t* p) {  // 8 bf16 -> 8 fp32, exact
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}

inline void store_rows(const __m256 (*acc)[2], int mb, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  alignas(32) float out[kTile];
  for (int i = 0; i < mb; ++i) {
    _mm256_store_ps(out, acc[i][0]);
    _mm256_store_ps(out + 8, acc[i][1]);
    store_tile_row(out, y + i * ldy, col0, n_valid);
  }
}

template <int MB>
void f32_rows(const float* x, int64_t K, const float* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  __m256 acc[MB][2];
  for (int i = 0; i < MB; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 w0 = _mm256_loadu_ps(wt + k * kTile), w1 = _mm256_loadu_ps(wt + k * kTile + 8);
    for (int i = 0; i < MB; ++i) {
      const __m256 xv = _mm256_set1_ps(x[i * K + k]);
      acc[i][0] = _mm256_fmadd_ps(w0, xv, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(w1, xv, acc[i][1]);
    }
  }
  store_rows(acc, MB, y, ldy, col0, n_valid);
}

template <int MB>
void bf16_rows(const float* xf, int64_t K, const uint16_t* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  const __m256i hi_mask = _mm256_set1_epi32(int(0xFFFF0000u));
  __m256 acc[MB][2];
  for (int i = 0; i < MB; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t p = 0; p < K / 2; ++p) {
    __m256 even[2], odd[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_loadu_si256((const __m256i*)(wt + p * 2 * kTile + h * 16));
      even[h] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      odd[h] = _mm256_castsi256_ps(_mm256_and_si256(v, hi_mask));
    }
    for (int i = 0; i < MB; ++i) {
      const __m256 x0 = _mm256_set1_ps(xf[i * K + 2 * p]), x1 = _mm256_set1_ps(xf[i * K + 2 * p + 1]);
      for (int h = 0; h < 2; ++h) {
        acc[i][h] = _mm256_fmadd_ps(even[h], x0, acc[i][h]);
        acc[i][h] = _mm256_fmadd_ps(odd[h], x1, acc[i][h]);
      }
    }
  }
  store_rows(acc, MB, y, ldy, col0, n_valid);
}

template <int MB>
void int8_rows(const QuantAct& a, int64_t K, const int8_t* wt, const float* scales, float* y, int64_t ldy,
               int64_t col0, int64_t n_valid) {
  const __m256i ones = _mm256_set1_epi16(1);
  auto step = [&](int64_t b, int h, __m256* acc) SKINNY_INLINE {
    const int8_t* blk = wt + b * kInt8BlockBytes + h * 32;
    if (h == 0) prefetch_ahead(blk, kInt8BlockBytes);  // h = 1 reads from cache
    __m256i s[MB];
    for (int i = 0; i < MB; ++i) s[i] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      const __m256i wv = _mm256_loadu_si256((const __m256i*)(blk + j * 64));
      for (int i = 0; i < MB; ++i) {
        // |x| (unsigned) times w * sign(x): the product of x and w, within vpmaddubsw's range.
        const __m256i xv = _mm256_set1_epi32(load_i32(a.x(b, i) + 4 * j));
        const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(xv), _mm256_sign_epi8(wv, xv));
        s[i] = _mm256_add_epi32(s[i], _mm256_madd_epi16(p, ones));
        SKINNY_KEEP(s[i]);
      }
    }
    for (int i = 0; i < MB; ++i)
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[i]), _mm256_set1_ps(a.scale(b, i)), acc[i]);
  };
  auto store = [&](int h, __m256* acc) SKINNY_INLINE {
    const __m256 sc = _mm256_loadu_ps(scales + col0 + 8 * h);
    for (int i = 0; i < MB; ++i) acc[i] = _mm256_mul_ps(acc[i], sc);
    store_half(acc, MB, h, y, ldy, col0, n_valid);
  };
  for_block_halves<MB, __m256, 2>(K / kBlock, step, store);  // one pass at m = 3, 4: not measured
}

template <int MB>
void int4_rows(const QuantAct& a, int64_t K, const uint8_t* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  const __m256i ones = _mm256_set1_epi16(1);
  auto step = [&](int64_t b, int h, __m256* acc) SKINNY_INLINE {
    const uint8_t* blk = wt + b * kInt4BlockBytes;
    if (h == 0) prefetch_ahead(blk, kInt4BlockBytes);  // h = 1 reads from cache
    __m256i s[MB];
    nibble_block_sums<MB>(blk, h, a, b, s);
    const __m256 sv = load_bf16x8(blk + 256 + 16 * h), dv = load_bf16x8(blk + 288 + 16 * h);
    for (int i = 0; i < MB; ++i) {
      const __m256 scale = _mm256_mul_ps(sv, _mm256_set1_ps(a.scale(b, i)));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(s[i], ones)), scale, acc[i]);
      acc[i] = _mm256_fmadd_ps(dv, _mm256_set1_ps(a.scaled_sum(b, i)), acc[i]);
    }
  };
  auto store = [&](int h, __m256* acc) SKINNY_INLINE { store_half(acc, MB, h, y, ldy, col0, n_valid); };
  for_block_halves<MB, __m256, 4>(K / kBlock, step, store);
}

}  // namespace

void f32_avx2(const float* x, int64_t m, int64_t K, const float* w, int64_t t0, int64_t t1, float* y, int64_t ldy,
              int64_t n_valid) {
  for (int64_t t = t0; t < t1; ++t) {
#define CALL(MB) f32_rows<MB>(x + i0 * K, K, w + t * K * kTile, y + i0 * ldy, ldy, t * kTile, n_valid)
    SKINNY_ROW_BLOCKS_4(CALL)
#undef CALL
  }
}

void bf16_avx2(const uint16_t* /*x*/, const float* xf, int64_t m, int64_t K, const uint16_t* w, int64_t t0,
               int64_t t1, float* y, int64_t ldy, int64_t n_valid) {
  for (int64_t t = t0; t < t1; ++t) {
#define CALL(MB) bf16_rows<MB>(xf + i0 * K, K, w + t * K * kTile, y + i0 * ldy, ldy, t * kTile, n_valid)
    SKINNY_ROW_BLOCKS_4(CALL)
#undef CALL
  }
}

void int8_avx2(const QuantAct& a, int64_t m, int64_t K, const int8_t* w, const float* scales, int64_t t0, int64_t t1,
               float* y, int64_t ldy, int64_t n_valid) {
  const int64_t nb = K / kBlock;
  for (int64_t t = t0; t < t1; ++t) {
#define CALL(MB)                                                                                          \
  int8_rows<MB>(a.rows_from(i0), K, w + t * nb * kInt8BlockBytes, \
                scales, y + i0 * ldy, ldy, t * kTile, n_valid)
    SKINNY_ROW_BLOCKS_4(CALL)
#undef CALL
  }
}

void int4_avx2(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
               int64_t ldy, int64_t n_valid) {
  const int64_t nb = K / kBlock;
  for (int64_t t = t0; t < t1; ++t) {
#define CALL(MB)                                                                                          \
  int4_rows<MB>(a.rows_from(i0), K, w + t * nb * kInt4BlockBytes, \
                y + i0 * ldy, ldy, t * kTile, n_valid)
    SKINNY_ROW_BLOCKS_4(CALL)
#undef CALL
  }
}

void attend_rows_avx2(const ChainAttention& a, int64_t r0, int64_t r1) { attend_rows_impl(a, r0, r1); }


void quantize_avx2(const float* x, int64_t m, int64_t K, int64_t r0, int64_t r1, int8_t* xq, float* sx, float* sxs,
                   int group) {
  const int64_t nb = K / kBlock;
  const __m256 sign = _mm256_set1_ps(-0.f), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i = r / nb, b = r % nb, o = b * m + i;
    const float* v = x + i * K + b * kBlock;
    const float* gv = x + i * K + (b - b % group) * kBlock;  // the group's first value
    __m256 vv[4], mx = _mm256_setzero_ps();
    for (int c = 0; c < 4; ++c) vv[c] = _mm256_loadu_ps(v + 8 * c);
    for (int c = 0; c < 4 * group; ++c) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(gv + 8 * c)));
    alignas(32) float m8[8];
    _mm256_store_ps(m8, mx);
    float amax = 0.f;
    for (int k = 0; k < 8; ++k) amax = amax > m8[k] ? amax : m8[k];
    const __m256 inv = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
    alignas(32) int32_t q[kBlock];
    for (int c = 0; c < 4; ++c) {
      const __m256 rq = _mm256_round_ps(_mm256_mul_ps(vv[c], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm256_store_si256((__m256i*)(q + 8 * c), _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, rq))));
    }
    int32_t sum = 0;
    for (int k = 0; k < kBlock; ++k) {
      xq[o * kBlock + k] = int8_t(q[k]);
      sum += q[k];
    }
    sx[o] = amax / 127.f;
    sxs[o] = sx[o] * float(sum);
  }
}

}  // namespace skinny
