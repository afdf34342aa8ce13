// AVX-512 path of the GGUF block formats (needs avx512f/bw/vl + avx512_vnni; checked at run time).
// Lanes are the 16 columns of a tile: a block's 8 registers of unsigned values (gguf.h) are
// decoded once and applied to up to 8 rows with vpdpbusd, whose sums are exact.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,fma")
#include <immintrin.h>

#include "gguf.h"
#include "avx512_tiles.h"

namespace skinny {
namespace {

inline __m512 load_f16x16(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }

// The 8 registers of a nibble block's low 4 bits (gguf.h).
inline void nibbles(const uint8_t* blk, __m512i* R) {
  const __m512i low = _mm512_set1_epi8(15);
  for (int j = 0; j < 4; ++j) {
    const __m512i v = _mm512_loadu_si512(blk + j * 64);
    R[j] = _mm512_and_si512(v, low);
    R[4 + j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
  }
}

// R | (X & mask) in one instruction.
inline __m512i or_masked(__m512i R, __m512i X, __m512i mask) { return _mm512_ternarylogic_epi32(R, X, mask, 0xF8); }

inline void store_rows(const __m512* acc, int mb, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  alignas(64) float out[kTile];
  for (int i = 0; i < mb; ++i) {
    _mm512_store_ps(out, acc[i]);
    store_tile_row(out, y + i * ldy, col0, n_valid);
  }
}

// S (per column) of row i over one block (sums are exact in any order): two accumulators, so the
// chain of dependent vpdpbusd is 4 long, not 8 (its latency bound one row's pass on Zen 4).
inline __m512i block_sum(const __m512i* R, const int8_t* xb) {
  __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
  for (int j = 0; j < 4; ++j) {
    s0 = _mm512_dpbusd_epi32(s0, R[j], _mm512_set1_epi32(load_i32(xb + 4 * j)));
    s1 = _mm512_dpbusd_epi32(s1, R[4 + j], _mm512_set1_epi32(load_i32(xb + 16 + 4 * j)));
  }
  return _mm512_add_epi32(s0, s1);
}

// S (per column) of row i over one block: the low half's and the high half's sums.
inline void block_sums(const __m512i* R, const int8_t* xb, __m512i* s0, __m512i* s1) {
  *s0 = _mm512_setzero_si512();
  *s1 = _mm512_setzero_si512();
  for (int j = 0; j < 4; ++j) {
    *s0 = _mm512_dpbusd_epi32(*s0, R[j], _mm512_set1_epi32(load_i32(xb + 4 * j)));
    *s1 = _mm512_dpbusd_epi32(*s1, R[4 + j], _mm512_set1_epi32(load_i32(xb + 16 + 4 * j)));
  }
}

// The formats with one scale and offset per block of 32: decode (a block's 8 registers) and
// scale_offset (its per-column scale and offset, gguf.h).
struct Q5_0 {
  static constexpr int kBytes = kQ5_0Bytes;
  static void decode(const uint8_t* blk, __m512i* R) {
    nibbles(blk, R);
    const __m512i h = _mm512_loadu_si512(blk + 256), bit4 = _mm512_set1_epi8(0x10);
    R[0] = or_masked(R[0], _mm512_slli_epi16(h, 4), bit4);
    R[1] = or_masked(R[1], _mm512_slli_epi16(h, 3), bit4);
    R[2] = or_masked(R[2], _mm512_slli_epi16(h, 2), bit4);
    R[3] = or_masked(R[3], _mm512_slli_epi16(h, 1), bit4);
    R[4] = or_masked(R[4], h, bit4);
    R[5] = or_masked(R[5], _mm512_srli_epi16(h, 1), bit4);
    R[6] = or_masked(R[6], _mm512_srli_epi16(h, 2), bit4);
    R[7] = or_masked(R[7], _mm512_srli_epi16(h, 3), bit4);
  }
  static void scale_offset(const uint8_t* blk, __m512* s, __m512* o) {
    *s = load_f16x16(blk + 320);
    *o = _mm512_mul_ps(*s, _mm512_set1_ps(-16.f));
  }
};

struct Q4_0 {
  static constexpr int kBytes = kQ4_0Bytes;
  static void decode(const uint8_t* blk, __m512i* R) { nibbles(blk, R); }
  static void scale_offset(const uint8_t* blk, __m512* s, __m512* o) {
    *s = load_f16x16(blk + 256);
    *o = _mm512_mul_ps(*s, _mm512_set1_ps(-8.f));
  }
};

template <class Block, int MB>
void affine_rows(const QuantAct& a, int64_t K, const uint8_t* wt, float* y, int64_t ldy, int64_t col0,
                 int64_t n_valid) {
  __m512 acc[MB];
  for (int i = 0; i < MB; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < K / kBlock; ++b) {
    const uint8_t* blk = wt + b * Block::kBytes;
    prefetch_ahead(blk, Block::kBytes);
    __m512i R[8];
    __m512 s, o;
    Block::decode(blk, R);
    Block::scale_offset(blk, &s, &o);
    for (int i = 0; i < MB; ++i) {
      const __m512 scale = _mm512_mul_ps(s, _mm512_set1_ps(a.scale(b, i)));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(block_sum(R, a.x(b, i))), scale, acc[i]);
      acc[i] = _mm512_fmadd_ps(o, _mm512_set1_ps(a.scaled_sum(b, i)), acc[i]);
    }
  }
  store_rows(acc, MB, y, ldy, col0, n_valid);
}

// Q4_K with a scale per row and super-block (gguf.h): per row, the super-block's scaled sums
// sc_j * S_j in int32 (vpmulld), the offsets' sum_j m_j * X_j as four vpdpwssd of (m_2p, m_2p+1)
// pairs with the row's pairs of block sums; then two float steps per 256 values.
template <int MB>
void q4k_rows(const QuantAct& a, int64_t K, const uint8_t* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  __m512 acc[MB];
  for (int i = 0; i < MB; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < K / kSuperK; ++g) {
    const uint8_t* sb = wt + g * kQ4KBytes;
    __m512i scaled[MB];
    for (int i = 0; i < MB; ++i) scaled[i] = _mm512_setzero_si512();
    for (int j = 0; j < 8; ++j) {
      prefetch_ahead(sb + j * (kQ4KBytes / 8), kQ4KBytes / 8);
      __m512i R[8];
      nibbles(sb + j * 256, R);
      const __m512i sc = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(sb + 2048 + j * 16)));
      for (int i = 0; i < MB; ++i) {
        const int8_t* xb = a.x(g * 8 + j, i);
        scaled[i] = _mm512_add_epi32(scaled[i], _mm512_mullo_epi32(block_sum(R, xb), sc));
      }
    }
    __m512i mins[4];  // lane c: (m_2p, m_2p+1) of column c as two int16
    for (int p = 0; p < 4; ++p) {
      const __m512i lo = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(sb + 2176 + 2 * p * 16)));
      const __m512i hi = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(sb + 2176 + (2 * p + 1) * 16)));
      mins[p] = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
    }
    const __m512 d = load_f16x16(sb + 2304), ndmin = load_f16x16(sb + 2336);
    for (int i = 0; i < MB; ++i) {
      __m512i offsets = _mm512_setzero_si512();
      for (int p = 0; p < 4; ++p) offsets = _mm512_dpwssd_epi32(offsets, mins[p], _mm512_set1_epi32(a.pair_sums(g * 4 + p, i)));
      const __m512 sx = _mm512_set1_ps(a.scale(g * 8, i));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(scaled[i]), _mm512_mul_ps(d, sx), acc[i]);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(offsets), _mm512_mul_ps(ndmin, sx), acc[i]);
    }
  }
  store_rows(acc, MB, y, ldy, col0, n_valid);
}

template <int MB>
void q6k_rows(const QuantAct& a, int64_t K, const uint8_t* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  const __m512i hi2 = _mm512_set1_epi8(0x30);
  __m512 acc[MB];
  for (int i = 0; i < MB; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < K / kSuperK; ++g) {
    const uint8_t* sb = wt + g * kQ6KBytes;
    const __m512 d = load_f16x16(sb + 3328);
    __m512i I[MB];  // the super-block's scaled sums per row (|I| < 2^28)
    for (int i = 0; i < MB; ++i) I[i] = _mm512_setzero_si512();
    for (int j = 0; j < 8; ++j) {
      const int64_t b = g * 8 + j;
      const uint8_t* blk = sb + j * 384;
      prefetch_ahead(sb + j * (kQ6KBytes / 8), kQ6KBytes / 8);
      __m512i R[8];
      nibbles(blk, R);
      for (int half = 0; half < 2; ++half) {
        const __m512i h = _mm512_loadu_si512(blk + 256 + half * 64);
        __m512i* r = R + 4 * half;
        r[0] = or_masked(r[0], _mm512_slli_epi16(h, 4), hi2);
        r[1] = or_masked(r[1], _mm512_slli_epi16(h, 2), hi2);
        r[2] = or_masked(r[2], h, hi2);
        r[3] = or_masked(r[3], _mm512_srli_epi16(h, 2), hi2);
      }
      const __m512i sca = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(sb + 3072 + 2 * j * 16)));
      const __m512i scb = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(sb + 3072 + (2 * j + 1) * 16)));
      // (-32 scA, -32 scB) as two int16 per lane (|32 sc| <= 4096): the offset term
      // -32 (scA XA + scB XB) is one vpdpwssd with the row's half sums (XA, XB) as int16
      const __m512i scab32 = _mm512_or_si512(_mm512_and_si512(_mm512_slli_epi32(sca, 5), _mm512_set1_epi32(0xFFFF)),
                                             _mm512_slli_epi32(scb, 21));
      const __m512i nscab32 = _mm512_sub_epi16(_mm512_setzero_si512(), scab32);
      for (int i = 0; i < MB; ++i) {
        __m512i s0, s1;
        block_sums(R, a.x(b, i), &s0, &s1);
        I[i] = _mm512_add_epi32(I[i], _mm512_add_epi32(_mm512_mullo_epi32(sca, s0), _mm512_mullo_epi32(scb, s1)));
        I[i] = _mm512_dpwssd_epi32(I[i], nscab32, _mm512_set1_epi32(a.half_pair(b, i)));
      }
    }
    for (int i = 0; i < MB; ++i)
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I[i]), _mm512_mul_ps(d, _mm512_set1_ps(a.scale(g * 8, i))), acc[i]);
  }
  store_rows(acc, MB, y, ldy, col0, n_valid);
}

template <int MB>
void q8_0_rows(const QuantAct& a, int64_t K, const uint8_t* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  __m512 acc[MB];
  for (int i = 0; i < MB; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < K / kBlock; ++b) {
    const uint8_t* blk = wt + b * kQ8_0Bytes;
    prefetch_ahead(blk, kQ8_0Bytes);
    __m512i wv[8];  // the int8 format's block layout (avx512_tiles.h)
    for (int j = 0; j < 8; ++j) wv[j] = _mm512_loadu_si512(blk + j * 64);
    const __m512i corr = int8_block_offset(wv);
    const __m512 d = load_f16x16(blk + 512);
    for (int i = 0; i < MB; ++i) {
      const __m512i s = int8_block_sum(wv, corr, a.x_biased(b, i));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, _mm512_set1_ps(a.scale(b, i))), acc[i]);
    }
  }
  store_rows(acc, MB, y, ldy, col0, n_valid);
}

}  // namespace

#define GGUF_TILES(ROWS, BYTES_PER_TILE)             \
  for (int64_t t = t0; t < t1; ++t) {             \
    const uint8_t* wt = w + t * (BYTES_PER_TILE); \
    SKINNY_ROW_BLOCKS_8(ROWS)                     \
  }

void q4k_avx512(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
                int64_t ldy, int64_t n_valid) {
#define CALL(MB) q4k_rows<MB>(a.rows_from(i0), K, wt, y + i0 * ldy, ldy, t * kTile, n_valid)
  GGUF_TILES(CALL, K / kSuperK * kQ4KBytes)
#undef CALL
}

void q5_0_avx512(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
                 int64_t ldy, int64_t n_valid) {
#define CALL(MB) affine_rows<Q5_0, MB>(a.rows_from(i0), K, wt, y + i0 * ldy, ldy, t * kTile, n_valid)
  GGUF_TILES(CALL, K / kBlock * kQ5_0Bytes)
#undef CALL
}

void q4_0_avx512(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
                 int64_t ldy, int64_t n_valid) {
#define CALL(MB) affine_rows<Q4_0, MB>(a.rows_from(i0), K, wt, y + i0 * ldy, ldy, t * kTile, n_valid)
  GGUF_TILES(CALL, K / kBlock * kQ4_0Bytes)
#undef CALL
}

void q6k_avx512(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
                int64_t ldy, int64_t n_valid) {
#define CALL(MB) q6k_rows<MB>(a.rows_from(i0), K, wt, y + i0 * ldy, ldy, t * kTile, n_valid)
  GGUF_TILES(CALL, K / kSuperK * kQ6KBytes)
#undef CALL
}

void q8_0_avx512(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
                 int64_t ldy, int64_t n_valid) {
#define CALL(MB) q8_0_rows<MB>(a.rows_from(i0), K, wt, y + i0 * ldy, ldy, t * kTile, n_valid)
  GGUF_TILES(CALL, K / kBlock * kQ8_0Bytes)
#undef CALL
}

}  // namespace skinny
