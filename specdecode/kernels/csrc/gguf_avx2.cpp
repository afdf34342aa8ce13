// AVX2 + FMA + F16C path of the GGUF block formats (8 lanes: a 16-column tile is two 8-column
// halves). Integer products use vpmaddubsw, which cannot saturate here (unsigned values <= 63
// times |xq| <= 127, two per lane: <= 16002), then vpmaddwd; the float steps are the scalar
// path's, so results are bit-identical to it.
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include "gguf.h"
#include "avx2_tiles.h"

namespace skinny {
namespace {

inline __m256 load_f16x8(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
inline __m256i load_u8x8_epi32(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
inline __m256i load_i8x8_epi32(const uint8_t* p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)); }

// An int32 lane per column holding two int16: (lo & 0xFFFF) | (hi << 16). pack_epi16(v, v) holds
// a column's int8 scale twice (for vpmaddwd), pack_epi16(a, b) the pair (a, b).
inline __m256i pack_epi16(__m256i lo, __m256i hi) {
  return _mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32(hi, 16));
}

// The scale and offset (per column, gguf.h) of a 32-block format's block, for half h of the tile.
struct Q5_0 {
  static void scale_offset(const uint8_t* blk, int h, __m256* s, __m256* o) {
    *s = load_f16x8(blk + 320 + 16 * h);
    *o = _mm256_mul_ps(*s, _mm256_set1_ps(-16.f));
  }
};

struct Q4_0 {
  static void scale_offset(const uint8_t* blk, int h, __m256* s, __m256* o) {
    *s = load_f16x8(blk + 256 + 16 * h);
    *o = _mm256_mul_ps(*s, _mm256_set1_ps(-8.f));
  }
};

// Q4_K with a scale per row and super-block (gguf.h): a block's products per row summed in int16 by
// nibble_block_sums (avx2_tiles.h), widened and multiplied by the block's scale in one vpmaddwd
// (the scale twice per lane) and summed in int32 over the super-block; the offsets' sum_j m_j *
// X_j is four vpmaddwd of (m_2p, m_2p+1) pairs with the row's pairs of block sums; then two float
// steps per 256 values.
template <int MB>
void q4k_rows(const QuantAct& a, int64_t K, const uint8_t* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  for_block_halves<MB, __m256, 4>(K / kSuperK, [&](int64_t g, int h, __m256* acc) SKINNY_INLINE {
    const uint8_t* sb = wt + g * kQ4KBytes;
    __m256i scaled[MB];
    for (int i = 0; i < MB; ++i) scaled[i] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      // h = 1 reads from cache; the prefetches spread over the blocks, a few lines each
      if (h == 0) prefetch_ahead(sb + j * (kQ4KBytes / 8), kQ4KBytes / 8);
      __m256i s16[MB];
      nibble_block_sums<MB>(sb + j * 256, h, a, g * 8 + j, s16);
      const __m256i sc = load_u8x8_epi32(sb + 2048 + j * 16 + 8 * h), sc16 = pack_epi16(sc, sc);
      for (int i = 0; i < MB; ++i) {
        scaled[i] = _mm256_add_epi32(scaled[i], _mm256_madd_epi16(s16[i], sc16));
        SKINNY_KEEP(scaled[i]);
      }
    }
    __m256i mins[4];  // lane c: (m_2p, m_2p+1) of column c as two int16
    for (int p = 0; p < 4; ++p)
      mins[p] = pack_epi16(load_u8x8_epi32(sb + 2176 + 2 * p * 16 + 8 * h),
                           load_u8x8_epi32(sb + 2176 + (2 * p + 1) * 16 + 8 * h));
    const __m256 d = load_f16x8(sb + 2304 + 16 * h), ndmin = load_f16x8(sb + 2336 + 16 * h);
    for (int i = 0; i < MB; ++i) {
      __m256i offsets = _mm256_setzero_si256();
      for (int p = 0; p < 4; ++p)
        offsets = _mm256_add_epi32(offsets, _mm256_madd_epi16(mins[p], _mm256_set1_epi32(a.pair_sums(g * 4 + p, i))));
      const __m256 sx = _mm256_set1_ps(a.scale(g * 8, i));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(scaled[i]), _mm256_mul_ps(d, sx), acc[i]);
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(offsets), _mm256_mul_ps(ndmin, sx), acc[i]);
    }
  }, [&](int h, __m256* acc) SKINNY_INLINE { store_half(acc, MB, h, y, ldy, col0, n_valid); });
}

// Q4_0 (values fit 4 bits): a block's products per row summed in int16 by nibble_block_sums
// (avx2_tiles.h, int4's too), then widened by one vpmaddwd.
template <int MB>
void q4_0_rows(const QuantAct& a, int64_t K, const uint8_t* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  const __m256i ones = _mm256_set1_epi16(1);
  for_block_halves<MB, __m256, 4>(K / kBlock, [&](int64_t b, int h, __m256* acc) SKINNY_INLINE {
    const uint8_t* blk = wt + b * kQ4_0Bytes;
    if (h == 0) prefetch_ahead(blk, kQ4_0Bytes);  // h = 1 reads from cache
    __m256i s16[MB];
    nibble_block_sums<MB>(blk, h, a, b, s16);
    __m256 s, o;
    Q4_0::scale_offset(blk, h, &s, &o);
    for (int i = 0; i < MB; ++i) {
      const __m256 scale = _mm256_mul_ps(s, _mm256_set1_ps(a.scale(b, i)));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(s16[i], ones)), scale, acc[i]);
      acc[i] = _mm256_fmadd_ps(o, _mm256_set1_ps(a.scaled_sum(b, i)), acc[i]);
    }
  }, [&](int h, __m256* acc) SKINNY_INLINE { store_half(acc, MB, h, y, ldy, col0, n_valid); });
}

// Bit 4 of the values of register R_r (r < 4: low nibbles of load r) or R_{4 + r} (high nibbles)
// from Q5_0's high-bit plane hb (byte p bit i = bit 4 of R_i at byte p): the bits to OR into them.
inline __m256i q5_bit4_low(__m256i hb, int r) {  // (hb << (4 - r)) & 0x10
  const __m256i bit4 = _mm256_set1_epi8(0x10);
  switch (r) {
    case 0: return _mm256_and_si256(_mm256_slli_epi16(hb, 4), bit4);
    case 1: return _mm256_and_si256(_mm256_slli_epi16(hb, 3), bit4);
    case 2: return _mm256_and_si256(_mm256_slli_epi16(hb, 2), bit4);
    default: return _mm256_and_si256(_mm256_slli_epi16(hb, 1), bit4);
  }
}
inline __m256i q5_bit4_high(__m256i hb, int r) {  // (hb >> r) & 0x10
  const __m256i bit4 = _mm256_set1_epi8(0x10);
  switch (r) {
    case 0: return _mm256_and_si256(hb, bit4);
    case 1: return _mm256_and_si256(_mm256_srli_epi16(hb, 1), bit4);
    case 2: return _mm256_and_si256(_mm256_srli_epi16(hb, 2), bit4);
    default: return _mm256_and_si256(_mm256_srli_epi16(hb, 3), bit4);
  }
}

// Q5_0 a register pair at a time, as q4_0_rows: values <= 31, so a product is <= 2 * 31 * 127 =
// 7874 and two j-steps' four products add in int16 (31496) before a vpmaddwd widens them.
template <int MB>
void q5_0_rows(const QuantAct& a, int64_t K, const uint8_t* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
  for_block_halves<MB, __m256, 3>(K / kBlock, [&](int64_t b, int h, __m256* acc) SKINNY_INLINE {
    const uint8_t* blk = wt + b * kQ5_0Bytes;
    if (h == 0) prefetch_ahead(blk, kQ5_0Bytes);  // h = 1 reads from cache
    const __m256i hb = _mm256_loadu_si256((const __m256i*)(blk + 256 + h * 32));
    __m256i s32[MB];
    for (int i = 0; i < MB; ++i) s32[i] = _mm256_setzero_si256();
    for (int rp = 0; rp < 4; rp += 2) {
      __m256i s16[MB];
      for (int i = 0; i < MB; ++i) s16[i] = _mm256_setzero_si256();
      for (int r = rp; r < rp + 2; ++r) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(blk + r * 64 + h * 32));
        const __m256i lo = _mm256_or_si256(_mm256_and_si256(v, low), q5_bit4_low(hb, r));
        const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), q5_bit4_high(hb, r));
        for (int i = 0; i < MB; ++i) {
          const int8_t* xb = a.x(b, i);
          s16[i] = _mm256_add_epi16(s16[i], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(load_i32(xb + 4 * r))));
          s16[i] = _mm256_add_epi16(s16[i], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(load_i32(xb + 16 + 4 * r))));
          SKINNY_KEEP(s16[i]);
        }
      }
      for (int i = 0; i < MB; ++i) {
        s32[i] = _mm256_add_epi32(s32[i], _mm256_madd_epi16(s16[i], ones));
        SKINNY_KEEP(s32[i]);
      }
    }
    __m256 s, o;
    Q5_0::scale_offset(blk, h, &s, &o);
    for (int i = 0; i < MB; ++i) {
      const __m256 scale = _mm256_mul_ps(s, _mm256_set1_ps(a.scale(b, i)));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[i]), scale, acc[i]);
      acc[i] = _mm256_fmadd_ps(o, _mm256_set1_ps(a.scaled_sum(b, i)), acc[i]);
    }
  }, [&](int h, __m256* acc) SKINNY_INLINE { store_half(acc, MB, h, y, ldy, col0, n_valid); });
}

// Q6_K, a register pair at a time: per j-step pair (jp, jp + 1), the two loads' low nibbles are
// R_jp, R_jp+1 (half A) and their high nibbles R_4+jp, R_5+jp (half B), each with its two high
// bits merged in; every row then adds that pair's products of each half, scaled by vpmaddwd.
template <int MB>
void q6k_rows(const QuantAct& a, int64_t K, const uint8_t* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  const __m256i hi2 = _mm256_set1_epi8(0x30), low = _mm256_set1_epi8(15);
  for_block_halves<MB, __m256, 4>(K / kSuperK, [&](int64_t g, int h, __m256* acc) SKINNY_INLINE {
    const uint8_t* sb = wt + g * kQ6KBytes;
    const __m256 d = load_f16x8(sb + 3328 + 16 * h);
    __m256i I[MB];  // the super-block's scaled sums per row (|I| < 2^28)
    for (int i = 0; i < MB; ++i) I[i] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      if (h == 0) prefetch_ahead(sb + j * (kQ6KBytes / 8), kQ6KBytes / 8);  // h = 1 reads from cache
      const int64_t b = g * 8 + j;
      const uint8_t* blk = sb + j * 384;
      const __m256i hbA = _mm256_loadu_si256((const __m256i*)(blk + 256 + h * 32));
      const __m256i hbB = _mm256_loadu_si256((const __m256i*)(blk + 256 + 64 + h * 32));
      const __m256i sca = load_i8x8_epi32(sb + 3072 + 2 * j * 16 + 8 * h);
      const __m256i scb = load_i8x8_epi32(sb + 3072 + (2 * j + 1) * 16 + 8 * h);
      const __m256i sca16 = pack_epi16(sca, sca), scb16 = pack_epi16(scb, scb);
      // (32 scA, 32 scB): |32 sc| <= 4096 fits int16, so the offset term is one vpmaddwd per row
      const __m256i scab32 = pack_epi16(_mm256_slli_epi32(sca, 5), _mm256_slli_epi32(scb, 5));
      for (int jp = 0; jp < 4; jp += 2) {
        const __m256i v0 = _mm256_loadu_si256((const __m256i*)(blk + jp * 64 + h * 32));
        const __m256i v1 = _mm256_loadu_si256((const __m256i*)(blk + (jp + 1) * 64 + h * 32));
        // high bits of R_f sit at bits 2f..2f+1 of hb: f = jp -> shift left 4 - 2jp, f = jp + 1 -> 2 - 2jp
        const __m256i hA0 = jp == 0 ? _mm256_slli_epi16(hbA, 4) : hbA;
        const __m256i hA1 = jp == 0 ? _mm256_slli_epi16(hbA, 2) : _mm256_srli_epi16(hbA, 2);
        const __m256i hB0 = jp == 0 ? _mm256_slli_epi16(hbB, 4) : hbB;
        const __m256i hB1 = jp == 0 ? _mm256_slli_epi16(hbB, 2) : _mm256_srli_epi16(hbB, 2);
        const __m256i a0 = _mm256_or_si256(_mm256_and_si256(v0, low), _mm256_and_si256(hA0, hi2));
        const __m256i a1 = _mm256_or_si256(_mm256_and_si256(v1, low), _mm256_and_si256(hA1, hi2));
        const __m256i b0 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v0, 4), low), _mm256_and_si256(hB0, hi2));
        const __m256i b1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v1, 4), low), _mm256_and_si256(hB1, hi2));
        for (int i = 0; i < MB; ++i) {
          const int8_t* xb = a.x(b, i);
          // two products of 6-bit values add in int16 (each <= 2 * 63 * 127 = 16002)
          const __m256i pa = _mm256_add_epi16(_mm256_maddubs_epi16(a0, _mm256_set1_epi32(load_i32(xb + 4 * jp))),
                                              _mm256_maddubs_epi16(a1, _mm256_set1_epi32(load_i32(xb + 4 * jp + 4))));
          const __m256i pb = _mm256_add_epi16(_mm256_maddubs_epi16(b0, _mm256_set1_epi32(load_i32(xb + 16 + 4 * jp))),
                                              _mm256_maddubs_epi16(b1, _mm256_set1_epi32(load_i32(xb + 20 + 4 * jp))));
          I[i] = _mm256_add_epi32(I[i], _mm256_add_epi32(_mm256_madd_epi16(pa, sca16), _mm256_madd_epi16(pb, scb16)));
          SKINNY_KEEP(I[i]);
        }
      }
      for (int i = 0; i < MB; ++i) {
        // I = scA*SA + scB*SB - 32*(scA*XA + scB*XB): the bracket is one vpmaddwd of (32 scA, 32 scB)
        // with the row's half sums (XA, XB) as int16 (|X| <= 16 * 127).
        I[i] = _mm256_sub_epi32(I[i], _mm256_madd_epi16(scab32, _mm256_set1_epi32(a.half_pair(b, i))));
        SKINNY_KEEP(I[i]);
      }
    }
    for (int i = 0; i < MB; ++i)
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(I[i]), _mm256_mul_ps(d, _mm256_set1_ps(a.scale(g * 8, i))), acc[i]);
  }, [&](int h, __m256* acc) SKINNY_INLINE { store_half(acc, MB, h, y, ldy, col0, n_valid); });
}

template <int MB>
void q8_0_rows(const QuantAct& a, int64_t K, const uint8_t* wt, float* y, int64_t ldy, int64_t col0, int64_t n_valid) {
  const __m256i ones = _mm256_set1_epi16(1);
  for_block_halves<MB, __m256, 3>(K / kBlock, [&](int64_t b, int h, __m256* acc) SKINNY_INLINE {
    const uint8_t* blk = wt + b * kQ8_0Bytes;
    if (h == 0) prefetch_ahead(blk, kQ8_0Bytes);  // h = 1 reads from cache
    const __m256 d = load_f16x8(blk + 512 + 16 * h);
    __m256i s[MB];
    for (int i = 0; i < MB; ++i) s[i] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      const __m256i wv = _mm256_loadu_si256((const __m256i*)(blk + j * 64 + h * 32));
      const __m256i wabs = _mm256_abs_epi8(wv);  // -128 -> 128 read as unsigned: right
      for (int i = 0; i < MB; ++i) {
        // |w| (unsigned) times x * sign(w): the product of x and w for every int8 w (a file may
        // hold -128), within vpmaddubsw's range since |xq| <= 127.
        const __m256i xv = _mm256_set1_epi32(load_i32(a.x(b, i) + 4 * j));
        const __m256i p = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(xv, wv));
        s[i] = _mm256_add_epi32(s[i], _mm256_madd_epi16(p, ones));
        SKINNY_KEEP(s[i]);
      }
    }
    for (int i = 0; i < MB; ++i)
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[i]), _mm256_mul_ps(d, _mm256_set1_ps(a.scale(b, i))), acc[i]);
  }, [&](int h, __m256* acc) SKINNY_INLINE { store_half(acc, MB, h, y, ldy, col0, n_valid); });
}

}  // namespace

#define GGUF_TILES(ROWS, BYTES_PER_TILE)             \
  for (int64_t t = t0; t < t1; ++t) {             \
    const uint8_t* wt = w + t * (BYTES_PER_TILE); \
    SKINNY_ROW_BLOCKS_4(ROWS)                     \
  }

void q4k_avx2(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
              int64_t ldy, int64_t n_valid) {
#define CALL(MB) q4k_rows<MB>(a.rows_from(i0), K, wt, y + i0 * ldy, ldy, t * kTile, n_valid)
  GGUF_TILES(CALL, K / kSuperK * kQ4KBytes)
#undef CALL
}

void q5_0_avx2(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
               int64_t ldy, int64_t n_valid) {
#define CALL(MB) q5_0_rows<MB>(a.rows_from(i0), K, wt, y + i0 * ldy, ldy, t * kTile, n_valid)
  GGUF_TILES(CALL, K / kBlock * kQ5_0Bytes)
#undef CALL
}

void q4_0_avx2(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
               int64_t ldy, int64_t n_valid) {
#define CALL(MB) q4_0_rows<MB>(a.rows_from(i0), K, wt, y + i0 * ldy, ldy, t * kTile, n_valid)
  GGUF_TILES(CALL, K / kBlock * kQ4_0Bytes)
#undef CALL
}

void q6k_avx2(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
              int64_t ldy, int64_t n_valid) {
#define CALL(MB) q6k_rows<MB>(a.rows_from(i0), K, wt, y + i0 * ldy, ldy, t * kTile, n_valid)
  GGUF_TILES(CALL, K / kSuperK * kQ6KBytes)
#undef CALL
}

void q8_0_avx2(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
               int64_t ldy, int64_t n_valid) {
#define CALL(MB) q8_0_rows<MB>(a.rows_from(i0), K, wt, y + i0 * ldy, ldy, t * kTile, n_valid)
  GGUF_TILES(CALL, K / kBlock * kQ8_0Bytes)
#undef CALL
}

}  // namespace skinny
