// Helpers of the 8-lane (AVX2) paths, shared by skinny_avx2.cpp and gguf_avx2.cpp. Include it after
// the file's `#pragma GCC target`: like skinny.h's helpers it sits in an anonymous namespace, so
// each AVX2 file compiles its own copy with its own flags and no AVX2 code reaches other paths.
#pragma once
#include <immintrin.h>

#include "skinny.h"

namespace skinny {
namespace {

// Half h (columns 8h..8h+7 of the tile at col0) of mb rows, dropping padding columns.
inline void store_half(const __m256* acc, int mb, int h, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  alignas(32) float out[8];
  for (int i = 0; i < mb; ++i) {
    _mm256_store_ps(out, acc[i]);
    const int64_t c0 = col0 + 8 * h, n = n_valid - c0 < 8 ? n_valid - c0 : 8;
    for (int64_t c = 0; c < n; ++c) y[i * ldy + c0 + c] = out[c];
  }
}

// Half h of a nibble block (256 bytes: byte j*64 + c*4 + r holds value k = 4j + r of column c in its
// low nibble and k = 16 + 4j + r in its high one; int4's and the GGUF 4-bit formats' layout) times
// rows [0, MB) of block b's activations: s16[i] = the products summed in int16, each lane a pair
// of columns' partial sums for vpmaddwd to widen. Values <= 15, so a product is <= 2 * 15 * 127 =
// 3810 and the block's eight add without overflow (30480). The running sum is pinned after each
// step (SKINNY_KEEP): GCC would otherwise compute all the products first and spill them.
template <int MB>
inline SKINNY_INLINE void nibble_block_sums(const uint8_t* blk, int h, const QuantAct& a, int64_t b, __m256i* s16) {
  const __m256i low = _mm256_set1_epi8(15);
  for (int i = 0; i < MB; ++i) s16[i] = _mm256_setzero_si256();
  for (int j = 0; j < 4; ++j) {
    const __m256i v = _mm256_loadu_si256((const __m256i*)(blk + j * 64 + h * 32));
    const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    for (int i = 0; i < MB; ++i) {
      const int8_t* xb = a.x(b, i);
      s16[i] = _mm256_add_epi16(s16[i], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(load_i32(xb + 4 * j))));
      s16[i] = _mm256_add_epi16(s16[i], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(load_i32(xb + 16 + 4 * j))));
      SKINNY_KEEP(s16[i]);
    }
  }
}

}  // namespace
}  // namespace skinny
