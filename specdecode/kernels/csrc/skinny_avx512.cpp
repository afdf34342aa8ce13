// AVX-512 path (needs avx512f/bw/vl + avx512_vnni + avx512_bf16; checked at run time).
// Lanes are the 16 columns of a tile; each weight vector is loaded once per row block and
// applied to up to kRowBlock rows held in registers.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,fma")
#include <immintrin.h>

#include "skinny.h"
#include "avx512_tiles.h"
#define SKINNY_ATTENTION_SIMD 1  // attention.h: 8-lane AVX registers
#include "attention.h"

namespace skinny {
namespace {

inline __m512 load_bf16x16(const uint8_t* p) {  // 16 bf16 -> 16 fp32, exact
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

template <int MB>
void f32_rows(const float* x, int64_t K, const float* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  __m512 acc[MB];
  for (int i = 0; i < MB; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m512 wv = _mm512_loadu_ps(wt + k * kTile);
    for (int i = 0; i < MB; ++i) acc[i] = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[i * K + k]), acc[i]);
  }
  alignas(64) float out[kTile];
  for (int i = 0; i < MB; ++i) {
    _mm512_store_ps(out, acc[i]);
    store_tile_row(out, y + i * ldy, col0, n_valid);
  }
}

template <int MB>
void bf16_rows(const uint16_t* x, int64_t K, const uint16_t* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  __m512 acc[MB];
  for (int i = 0; i < MB; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t p = 0; p < K / 2; ++p) {
    const __m512bh wv = (__m512bh)_mm512_loadu_si512(wt + p * 2 * kTile);
    for (int i = 0; i < MB; ++i)
      acc[i] = _mm512_dpbf16_ps(acc[i], wv, (__m512bh)_mm512_set1_epi32(load_i32(x + i * K + 2 * p)));
  }
  alignas(64) float out[kTile];
  for (int i = 0; i < MB; ++i) {
    _mm512_store_ps(out, acc[i]);
    store_tile_row(out, y + i * ldy, col0, n_valid);
  }
}

template <int MB>
void int8_rows(const QuantAct& a, int64_t K, const int8_t* wt, const float* scales, float* y, int64_t ldy,
               int64_t col0, int64_t n_valid) {
  const int64_t nb = K / kBlock;
  __m512 acc[MB];
  for (int i = 0; i < MB; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const int8_t* blk = wt + b * kInt8BlockBytes;
    prefetch_ahead(blk, kInt8BlockBytes);
    __m512i wv[8];
    for (int j = 0; j < 8; ++j) wv[j] = _mm512_loadu_si512(blk + j * 64);
    const __m512i corr = int8_block_offset(wv);
    for (int i = 0; i < MB; ++i) {
      const __m512i s = int8_block_sum(wv, corr, a.x_biased(b, i));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(a.scale(b, i)), acc[i]);
    }
  }
  const __m512 sc = _mm512_loadu_ps(scales + col0);
  alignas(64) float out[kTile];
  for (int i = 0; i < MB; ++i) {
    _mm512_store_ps(out, _mm512_mul_ps(acc[i], sc));
    store_tile_row(out, y + i * ldy, col0, n_valid);
  }
}

template <int MB>
void int4_rows(const QuantAct& a, int64_t K, const uint8_t* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  const int64_t nb = K / kBlock;
  const __m512i low = _mm512_set1_epi8(15);
  __m512 acc[MB];
  for (int i = 0; i < MB; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = wt + b * kInt4BlockBytes;
    prefetch_ahead(blk, kInt4BlockBytes);
    __m512i lo[4], hi[4];
    for (int j = 0; j < 4; ++j) {
      const __m512i v = _mm512_loadu_si512(blk + j * 64);
      lo[j] = _mm512_and_si512(v, low);
      hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
    }
    const __m512 s = load_bf16x16(blk + 256), d = load_bf16x16(blk + 288);
    for (int i = 0; i < MB; ++i) {
      const int8_t* xb = a.x(b, i);
      __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
      for (int j = 0; j < 4; ++j) {
        s0 = _mm512_dpbusd_epi32(s0, lo[j], _mm512_set1_epi32(load_i32(xb + 4 * j)));
        s1 = _mm512_dpbusd_epi32(s1, hi[j], _mm512_set1_epi32(load_i32(xb + 16 + 4 * j)));
      }
      const __m512 scale = _mm512_mul_ps(s, _mm512_set1_ps(a.scale(b, i)));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), scale, acc[i]);
      acc[i] = _mm512_fmadd_ps(d, _mm512_set1_ps(a.scaled_sum(b, i)), acc[i]);
    }
  }
  alignas(64) float out[kTile];
  for (int i = 0; i < MB; ++i) {
    _mm512_store_ps(out, acc[i]);
    store_tile_row(out, y + i * ldy, col0, n_valid);
  }
}


}  // namespace

void f32_avx512(const float* x, int64_t m, int64_t K, const float* w, int64_t t0, int64_t t1, float* y,
                int64_t ldy, int64_t n_valid) {
  for (int64_t t = t0; t < t1; ++t) {
#define CALL(MB) f32_rows<MB>(x + i0 * K, K, w + t * K * kTile, y + i0 * ldy, ldy, t * kTile, n_valid)
    SKINNY_ROW_BLOCKS_8(CALL)
#undef CALL
  }
}

void bf16_avx512(const uint16_t* x, const float* /*xf*/, int64_t m, int64_t K, const uint16_t* w, int64_t t0,
                 int64_t t1, float* y, int64_t ldy, int64_t n_valid) {
  for (int64_t t = t0; t < t1; ++t) {
#define CALL(MB) bf16_rows<MB>(x + i0 * K, K, w + t * K * kTile, y + i0 * ldy, ldy, t * kTile, n_valid)
    SKINNY_ROW_BLOCKS_8(CALL)
#undef CALL
  }
}

void int8_avx512(const QuantAct& a, int64_t m, int64_t K, const int8_t* w, const float* scales, int64_t t0,
                 int64_t t1, float* y, int64_t ldy, int64_t n_valid) {
  const int64_t nb = K / kBlock;
  for (int64_t t = t0; t < t1; ++t) {
#define CALL(MB)                                                                                     \
  int8_rows<MB>(a.rows_from(i0), K, w + t * nb * kInt8BlockBytes, \
                scales, y + i0 * ldy, ldy, t * kTile, n_valid)
    SKINNY_ROW_BLOCKS_8(CALL)
#undef CALL
  }
}

void int4_avx512(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
                 int64_t ldy, int64_t n_valid) {
  const int64_t nb = K / kBlock;
  for (int64_t t = t0; t < t1; ++t) {
#define CALL(MB)                                                                                     \
  int4_rows<MB>(a.rows_from(i0), K, w + t * nb * kInt4BlockBytes, \
                y + i0 * ldy, ldy, t * kTile, n_valid)
    SKINNY_ROW_BLOCKS_8(CALL)
#undef CALL
  }
}

void attend_rows_avx512(const ChainAttention& a, int64_t r0, int64_t r1) { attend_rows_impl(a, r0, r1); }


void quantize_avx512(const float* x, int64_t m, int64_t K, int64_t r0, int64_t r1, int8_t* xq, float* sx, float* sxs,
                     int group) {
  const int64_t nb = K / kBlock;
  const __m512 lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i = r / nb, b = r % nb, o = b * m + i;
    const float* v = x + i * K + b * kBlock;
    const float* gv = x + i * K + (b - b % group) * kBlock;  // the group's first value
    const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
    __m512 mx = _mm512_setzero_ps();
    for (int c = 0; c < 2 * group; ++c) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(gv + 16 * c)));
    const float amax = _mm512_reduce_max_ps(mx);
    const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
    const int rn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_roundscale_ps(_mm512_mul_ps(v0, inv), rn))));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_roundscale_ps(_mm512_mul_ps(v1, inv), rn))));
    _mm_storeu_si128((__m128i*)(xq + o * kBlock), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128((__m128i*)(xq + o * kBlock + 16), _mm512_cvtepi32_epi8(q1));
    sx[o] = amax / 127.f;
    sxs[o] = sx[o] * float(_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)));
  }
}

}  // namespace skinny
