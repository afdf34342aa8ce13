// Portable path of the GGUF block formats: the reference order of operations (gguf.h) that the
// SIMD paths follow bit for bit.
#include <cmath>

#include "gguf.h"

namespace skinny {
namespace {

// Value k (0..31) of column c in a nibble block: its low 4 bits.
inline int32_t nibble(const uint8_t* blk, int c, int k) {
  const uint8_t v = blk[(k & 15) / 4 * 64 + c * 4 + (k & 3)];
  return k < 16 ? v & 15 : v >> 4;
}

// Register index (gguf.h) and byte of value k of column c.
inline int reg_of(int k) { return (k < 16 ? 0 : 4) + (k & 15) / 4; }
inline int byte_of(int c, int k) { return c * 4 + (k & 3); }

inline float f16_at(const uint8_t* p, int c) {
  uint16_t h;
  std::memcpy(&h, p + 2 * c, 2);
  return f16_to_f32(h);
}

// Shared loop of the formats with one scale and offset per 32-block (Q5_0, Q4_0): Block::value
// gives a weight's integer value, Block::scale_offset the (scale, offset) of gguf.h.
template <class Block>
void affine_tiles(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
                  int64_t ldy, int64_t n_valid) {
  const int64_t nb = K / kBlock, per_tile = nb * Block::kBytes;
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t i = 0; i < m; ++i) {
      float acc[kTile] = {0};
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = w + t * per_tile + b * Block::kBytes;
        const int8_t* xb = a.x(b, i);
        const float sx = a.scale(b, i), sxs = a.scaled_sum(b, i);
        for (int c = 0; c < kTile; ++c) {
          int32_t s = 0;
          for (int k = 0; k < kBlock; ++k) s += Block::value(blk, c, k) * int32_t(xb[k]);
          float scale, offset;
          Block::scale_offset(blk, c, &scale, &offset);
          acc[c] = std::fma(float(s), scale * sx, acc[c]);
          acc[c] = std::fma(offset, sxs, acc[c]);
        }
      }
      store_tile_row(acc, y + i * ldy, t * kTile, n_valid);
    }
  }
}

struct Q5_0 {
  static constexpr int kBytes = kQ5_0Bytes;
  static int32_t value(const uint8_t* blk, int c, int k) {
    return nibble(blk, c, k) | (((blk[256 + byte_of(c, k)] >> reg_of(k)) & 1) << 4);
  }
  static void scale_offset(const uint8_t* blk, int c, float* s, float* o) {
    *s = f16_at(blk + 320, c);
    *o = *s * -16.f;
  }
};

struct Q4_0 {
  static constexpr int kBytes = kQ4_0Bytes;
  static int32_t value(const uint8_t* blk, int c, int k) { return nibble(blk, c, k); }
  static void scale_offset(const uint8_t* blk, int c, float* s, float* o) {
    *s = f16_at(blk + 256, c);
    *o = *s * -8.f;
  }
};

// Shared loop of the K-quants (a scale per row and super-block, gguf.h): for every tile, row and
// super-block g (kBytes a tile's super-block), step(sb, g, i, c, sx, acc) adds column c's share
// to its accumulator, sx the row's activation scale for g.
template <int kBytes, class Step>
void super_tiles(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
                 int64_t ldy, int64_t n_valid, Step step) {
  const int64_t nsb = K / kSuperK, per_tile = nsb * kBytes;
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t i = 0; i < m; ++i) {
      float acc[kTile] = {0};
      for (int64_t g = 0; g < nsb; ++g) {
        const uint8_t* sb = w + t * per_tile + g * kBytes;
        const float sx = a.scale(g * 8, i);
        for (int c = 0; c < kTile; ++c) step(sb, g, i, c, sx, acc[c]);
      }
      store_tile_row(acc, y + i * ldy, t * kTile, n_valid);
    }
  }
}

}  // namespace

// Q4_K with a scale per row and super-block (gguf.h): the scales' products and the offsets' sums in
// int32 over the super-block, then two float steps.
void q4k_scalar(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
                int64_t ldy, int64_t n_valid) {
  super_tiles<kQ4KBytes>(a, m, K, w, t0, t1, y, ldy, n_valid,
                         [&](const uint8_t* sb, int64_t g, int64_t i, int c, float sx, float& acc) {
    int32_t scaled = 0, offsets = 0;
    for (int j = 0; j < 8; ++j) {
      const int8_t* xb = a.x(g * 8 + j, i);
      int32_t s = 0;
      for (int k = 0; k < kBlock; ++k) s += nibble(sb + j * 256, c, k) * int32_t(xb[k]);
      scaled += int32_t(sb[2048 + j * 16 + c]) * s;
      offsets += int32_t(sb[2176 + j * 16 + c]) * a.block_sum(g * 8 + j, i);
    }
    acc = std::fma(float(scaled), f16_at(sb + 2304, c) * sx, acc);
    acc = std::fma(float(offsets), f16_at(sb + 2336, c) * sx, acc);  // -dmin: sign flipped at packing
  });
}

void q5_0_scalar(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
                 int64_t ldy, int64_t n_valid) {
  affine_tiles<Q5_0>(a, m, K, w, t0, t1, y, ldy, n_valid);
}

void q4_0_scalar(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
                 int64_t ldy, int64_t n_valid) {
  affine_tiles<Q4_0>(a, m, K, w, t0, t1, y, ldy, n_valid);
}

void q6k_scalar(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
                int64_t ldy, int64_t n_valid) {
  super_tiles<kQ6KBytes>(a, m, K, w, t0, t1, y, ldy, n_valid,
                         [&](const uint8_t* sb, int64_t g, int64_t i, int c, float sx, float& acc) {
    int32_t I = 0;  // the super-block's scaled sums (|I| < 2^28)
    for (int j = 0; j < 8; ++j) {
      const int64_t b = g * 8 + j;
      const uint8_t* blk = sb + j * 384;
      const int8_t* xb = a.x(b, i);
      int32_t s[2] = {0, 0};
      for (int k = 0; k < kBlock; ++k) {
        const int reg = reg_of(k);
        const int32_t hi = (blk[256 + (reg / 4) * 64 + byte_of(c, k)] >> (2 * (reg % 4))) & 3;
        s[k / 16] += (nibble(blk, c, k) | (hi << 4)) * int32_t(xb[k]);
      }
      const int32_t sca = int8_t(sb[3072 + (2 * j) * 16 + c]), scb = int8_t(sb[3072 + (2 * j + 1) * 16 + c]);
      I += sca * (s[0] - 32 * a.half_sum(b, i, 0)) + scb * (s[1] - 32 * a.half_sum(b, i, 1));
    }
    acc = std::fma(float(I), f16_at(sb + 3328, c) * sx, acc);
  });
}

void q8_0_scalar(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,
                 int64_t ldy, int64_t n_valid) {
  const int64_t nb = K / kBlock;
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t i = 0; i < m; ++i) {
      float acc[kTile] = {0};
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = w + (t * nb + b) * kQ8_0Bytes;
        const int8_t* xb = a.x(b, i);
        const float sx = a.scale(b, i);
        for (int c = 0; c < kTile; ++c) {
          int32_t s = 0;
          for (int j = 0; j < 8; ++j)
            for (int r = 0; r < 4; ++r) s += int32_t(int8_t(blk[j * 64 + c * 4 + r])) * int32_t(xb[4 * j + r]);
          acc[c] = std::fma(float(s), f16_at(blk + 512, c) * sx, acc[c]);
        }
      }
      store_tile_row(acc, y + i * ldy, t * kTile, n_valid);
    }
  }
}

}  // namespace skinny
