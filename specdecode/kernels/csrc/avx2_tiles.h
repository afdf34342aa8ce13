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

}  // namespace
}  // namespace skinny
