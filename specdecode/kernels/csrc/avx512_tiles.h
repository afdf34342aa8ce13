// Helpers of the 16-lane (AVX-512) paths, shared by skinny_avx512.cpp and gguf_avx512.cpp. Include it
// after the file's `#pragma GCC target`: like avx2_tiles.h it sits in an anonymous namespace, so no
// AVX-512 code reaches other paths.
#pragma once
#include <immintrin.h>

#include "skinny.h"

namespace skinny {
namespace {

// Signed int8 weights (int8, Q8_0: a block's 8 registers of 16 columns x 4 k) against vpdpbusd,
// which multiplies unsigned by signed bytes: the rows feed xq + 128 (QuantAct::xu) and subtract
// 128 * sum(w) per column, which int8_block_offset computes once per block for every row.
inline __m512i int8_block_offset(const __m512i* wv) {
  const __m512i bias = _mm512_set1_epi8(char(0x80));
  __m512i corr = _mm512_setzero_si512();
  for (int j = 0; j < 8; ++j) corr = _mm512_dpbusd_epi32(corr, bias, wv[j]);
  return corr;
}

// S (per column) = sum(xq * w) over the block for the row whose xq + 128 is xu (32 bytes), each
// vpdpbusd taking its broadcast straight from memory; two accumulators halve the dependent chain.
inline __m512i int8_block_sum(const __m512i* wv, __m512i corr, const uint8_t* xu) {
  __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
  for (int j = 0; j < 8; j += 2) {
    s0 = _mm512_dpbusd_epi32(s0, _mm512_set1_epi32(load_i32(xu + 4 * j)), wv[j]);
    s1 = _mm512_dpbusd_epi32(s1, _mm512_set1_epi32(load_i32(xu + 4 * j + 4)), wv[j + 1]);
  }
  return _mm512_sub_epi32(_mm512_add_epi32(s0, s1), corr);
}

}  // namespace
}  // namespace skinny
