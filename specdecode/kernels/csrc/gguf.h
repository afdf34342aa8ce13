// GGUF block formats run as shipped: Q4_K, Q6_K, Q8_0, Q5_0 and Q4_0 weights, repacked at load
// (kernels/gguf_pack.py) into tiles of 16 output columns, every quantized value and scale kept
// bit for bit. Activations are the skinny kernels' int8 (skinny.h): one scale per row and block
// of 32 for the 32-block formats, one per row and super-block of 256 for the K-quants (as
// llama.cpp's Q8_K), so that a super-block's scaled sums stay integers. Every output is a
// fixed-order fp32 sum over K whatever m is: row-invariant by construction, and the same bits on
// the scalar, AVX2 and AVX-512 paths (integer sums are exact; the float steps below are the same
// operations in the same order on every path).
//
// Per 32-block b of a column and row i (sx, sxs: the activation's scale and scale * sum(xq)):
//   Q5_0: w = d*(q - 16), q 0..31            acc = fma(float(S), d*sx, acc);        acc = fma(d*-16, sxs, acc)
//   Q4_0: w = d*(q - 8),  q 0..15            acc = fma(float(S), d*sx, acc);        acc = fma(d*-8, sxs, acc)
//   Q8_0: w = d*q, q -128..127 (signed)      acc = fma(float(S), d*sx, acc)
// Per super-block g (blocks j = 0..7) of a column and row i (sx: the row's scale for g):
//   Q4_K: w = d*sc_j*q - dmin*m_j, q 0..15, sc_j and m_j 0..63:
//         P = sum_j sc_j*S_j and M = sum_j m_j*X_j in int32 (X_j: sum of xq over block j)
//                                            acc = fma(float(P), d*sx, acc);        acc = fma(float(M), (-dmin)*sx, acc)
//   Q6_K: w = d*sc_h*(q - 32), q 0..63, a scale per 16 values (halves A, B of each block):
//         I = sum_j scA_j*(SA_j - 32*XA_j) + scB_j*(SB_j - 32*XB_j) in int32 (X: sum of xq over the half)
//                                            acc = fma(float(I), d*sx, acc)
// with S = sum(q * xq) over the block (or half). d, dmin are the file's fp16 values. Bounds:
// |P| <= 8 * 63 * 32 * 15 * 127 < 2^25, |M| <= 8 * 63 * 32 * 127 < 2^21, |I| <= 16 * 128 * 16 * 32 * 127 < 2^28
// (float(P), float(I) round past 2^24 the same way on every path).
//
// Tile layouts (T tiles of 16 columns; per tile, K/256 super-blocks or K/32 blocks, contiguous):
//   a nibble block (256 bytes) holds 32 k x 16 columns: byte (j*64 + c*4 + r) holds value
//   k = 4j + r of column c in its low nibble and k = 16 + 4j + r in its high nibble (as int4);
//   "register" R_i, i = 0..7, is the 64 bytes of (i < 4: low nibbles of row j = i; else high
//   nibbles of row j = i - 4), so R_0..R_3 are half A (k 0..15), R_4..R_7 half B.
//   Q4_K super-block (2368 bytes): 8 nibble blocks | sc u8 [8][16] | m u8 [8][16] | d f16 [16] | -dmin f16 [16]
//         (dmin's sign bit flipped at packing: the offset is then one product, the same bits)
//   Q6_K super-block (3360 bytes): 8 x (nibble block of the low 4 bits | 128 bytes of high 2 bits:
//         byte a*64 + p, bits 2f..2f+1 = high bits of R_{4a+f} at byte p) | sc i8 [16][16] | d f16 [16]
//   Q5_0 block (352 bytes): nibble block | 64 bytes: byte p bit i = bit 4 of R_i at byte p | d f16 [16]
//   Q4_0 block (288 bytes): nibble block | d f16 [16]
//   Q8_0 block (544 bytes): int8 [8][16][4] (the int8 layout: chunk j = k 4j..4j+3) | d f16 [16]
#pragma once
#include <cstdint>
#include <cstring>

#include "skinny.h"

namespace skinny {

constexpr int kSuperK = 256;  // k per K-quant super-block
constexpr int kQ4KBytes = 8 * 256 + 128 + 128 + 32 + 32;
constexpr int kQ6KBytes = 8 * (256 + 128) + 256 + 32;
constexpr int kQ5_0Bytes = 256 + 64 + 32;
constexpr int kQ4_0Bytes = 256 + 32;
constexpr int kQ8_0Bytes = 512 + 32;

#define GGUF_DECLARE(isa)                                                                                   \
  void q4k_##isa(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y, \
                 int64_t ldy, int64_t n_valid);                                                             \
  void q6k_##isa(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y, \
                 int64_t ldy, int64_t n_valid);                                                             \
  void q5_0_##isa(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,\
                  int64_t ldy, int64_t n_valid);                                                            \
  void q4_0_##isa(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,\
                  int64_t ldy, int64_t n_valid);                                                            \
  void q8_0_##isa(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, float* y,\
                  int64_t ldy, int64_t n_valid);

GGUF_DECLARE(scalar)
GGUF_DECLARE(avx2)
GGUF_DECLARE(avx512)

namespace {

// IEEE half -> float, exact (subnormals, infinities and NaNs included): the scalar twin of vcvtph2ps.
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    uint32_t m = man;
    do {
      ++e;
      m <<= 1;
    } while (!(m & 0x400));
    bits = sign | (uint32_t(112 - e) << 23) | ((m & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

}  // namespace skinny
