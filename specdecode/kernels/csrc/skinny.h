// Skinny matmuls for decode and verification rows: y[m, N] = x[m, K] @ W.T, m = 1..16 typical.
//
// Every weight format is packed in tiles of 16 output columns (N padded to a multiple of 16);
// SIMD lanes are output columns, so no horizontal reduction is ever needed and every
// output y[i, n] is a sequential fp32 accumulation over K whose operations do not depend on m
// or on the other rows: row-invariant by construction. The integer formats take activations
// quantized per row in blocks of 32 (symmetric int8, one fp32 scale per block; per super-block of
// 256 for the GGUF K-quants, gguf.h); integer block sums are exact, and the float steps are the same on every ISA path, so the scalar, AVX2 and
// AVX-512 paths give bit-identical results. The bf16 path on AVX-512-BF16 uses vdpbf16ps,
// whose rounding differs from the FMA paths: it is row-invariant, not bit-equal to them.
//
// Packed layouts (T = N16 / 16 tiles, per tile contiguous so a thread streams its own range):
//   f32 : [T][K][16] float
//   bf16: [T][K/2][16][2] bf16 (a k-pair of 16 columns per 64 bytes)
//   int8: [T][K/32][8][16][4] int8 (chunk j holds k = 4j..4j+3 of 16 columns); scales [N16] f32
//   int4: [T][K/32][320] bytes: 256 bytes of nibbles, byte (j*64 + c*4 + r) holds
//         q[c][4j + r] (low) and q[c][16 + 4j + r] (high), q in 0..15; then 16 bf16 scales s
//         and 16 bf16 offsets d: w = q * s + d.
#pragma once
#include <cstdint>

namespace skinny {

constexpr int kTile = 16;    // output columns per tile
constexpr int kBlock = 32;   // k per quantization block
constexpr int kInt4BlockBytes = 256 + 64;
constexpr int kInt8BlockBytes = 512;

// Activations quantized per row and per block of 32: x ~ sx * xq; sxs = sx * sum(xq). Stored
// block-major (all rows of block b together), so a pass over K reads them in order whatever m is.
// The K-quant kernels (gguf.h) take them with one scale per row and super-block of 256 instead
// (kActGroupK: the 8 blocks of a super-block share sx, as llama.cpp's Q8_K activations do), which
// lets them sum a super-block's scaled products in int32 and leave the floats to once per 256.
struct QuantAct {
  const int8_t* xq;  // [K/32][ld][32]
  const float* sx;   // [K/32][ld]
  const float* sxs;  // [K/32][ld]
  int64_t ld;        // rows per block (the m of the whole call)
  // Only with super-block scales (the K-quants), as two int16 per int32 (low, high), the operands
  // of vpmaddwd / vpdpwssd: [K/32][ld] the sums of xq over each half of 16 of a block (|sum| <=
  // 16 * 127), and [K/64][ld] the sums over blocks 2p and 2p + 1 (|sum| <= 32 * 127).
  const int32_t* xhalves = nullptr;
  const int32_t* xpairs = nullptr;
  // [K/32][ld][32]: xq + 128 (xq ^ 0x80) as unsigned bytes, vpdpbusd's unsigned operand for signed
  // int8 weights (int8, Q8_0; with per-block scales wherever such a layer is in the call)
  const uint8_t* xu = nullptr;
  const int8_t* x(int64_t b, int64_t i) const { return xq + (b * ld + i) * 32; }
  const uint8_t* x_biased(int64_t b, int64_t i) const { return xu + (b * ld + i) * 32; }
  float scale(int64_t b, int64_t i) const { return sx[b * ld + i]; }
  float scaled_sum(int64_t b, int64_t i) const { return sxs[b * ld + i]; }
  int32_t half_sum(int64_t b, int64_t i, int h) const { return int16_t(uint32_t(half_pair(b, i)) >> (16 * h)); }
  int32_t block_sum(int64_t b, int64_t i) const { return half_sum(b, i, 0) + half_sum(b, i, 1); }
  int32_t pair_sums(int64_t p, int64_t i) const { return xpairs[p * ld + i]; }
  int32_t half_pair(int64_t b, int64_t i) const { return xhalves[b * ld + i]; }
  QuantAct rows_from(int64_t i0) const {
    return QuantAct{xq + i0 * 32, sx + i0, sxs + i0, ld, xhalves ? xhalves + i0 : nullptr, xpairs ? xpairs + i0 : nullptr,
                    xu ? xu + i0 * 32 : nullptr};
  }
};

// Blocks of 32 that share one activation scale: 1 for int8, int4 and the 32-block GGUF formats,
// kActGroupK for the K-quants (a super-block of 256).
constexpr int kActGroupK = 8;

// Every kernel computes tiles [t0, t1) for all m rows into y[m][ldy] (columns < n_valid only).
#define SKINNY_DECLARE(isa)                                                                        \
  void f32_##isa(const float* x, int64_t m, int64_t K, const float* w, int64_t t0, int64_t t1,       \
                 float* y, int64_t ldy, int64_t n_valid);                                           \
  void bf16_##isa(const uint16_t* x, const float* xf, int64_t m, int64_t K, const uint16_t* w,       \
                  int64_t t0, int64_t t1, float* y, int64_t ldy, int64_t n_valid);                  \
  void int8_##isa(const QuantAct& a, int64_t m, int64_t K, const int8_t* w, const float* scales,     \
                  int64_t t0, int64_t t1, float* y, int64_t ldy, int64_t n_valid);                  \
  void int4_##isa(const QuantAct& a, int64_t m, int64_t K, const uint8_t* w, int64_t t0, int64_t t1, \
                  float* y, int64_t ldy, int64_t n_valid);

// Quantizes x (m, K) float32 for flattened (row, block) indices [r0, r1), r = i * K/32 + b, with
// one scale per `group` consecutive blocks of a row (amax over the group's 32 * group values;
// K a multiple of 32 * group).
#define SKINNY_DECLARE_QUANT(isa)                                                                     \
  void quantize_##isa(const float* x, int64_t m, int64_t K, int64_t r0, int64_t r1, int8_t* xq, float* sx, \
                      float* sxs, int group);
SKINNY_DECLARE_QUANT(scalar)
SKINNY_DECLARE_QUANT(avx2)
SKINNY_DECLARE_QUANT(avx512)

SKINNY_DECLARE(scalar)
SKINNY_DECLARE(avx2)
SKINNY_DECLARE(avx512)

// Bytes ahead of the weight stream each integer kernel prefetches (prefetch_ahead below); 0: none.
// Outside the anonymous namespace: one variable for every ISA file (a C++17 inline variable).
inline int prefetch_distance = 16384;

// Tiles a thread claims at a time from its own share of a product, or from the back of another
// thread's once its own is done (binding.cpp, for_tiles); 0: a static split. A run-time setting
// (set_steal_tiles) so that both can be timed in one process; the results are the same bits.
inline int steal_tiles = 8;

// Most rows the 8-lane kernels take in one pass over a tile's two halves (for_block_halves below;
// each format caps it further); 2 gives the two-pass order for every m > 2. A run-time setting
// (set_one_pass_rows in binding.cpp) so that other CPUs can be measured both ways in one process.
inline int one_pass_rows = 4;

// Helpers are internal to each translation unit (anonymous namespace): every ISA file compiles
// them with its own target flags, and a shared inline copy could carry AVX-512 code into the
// AVX2 path.
namespace {

// Stores a finished tile row (16 accumulators) to y, dropping padding columns.
inline void store_tile_row(const float* acc16, float* yrow, int64_t col0, int64_t n_valid) {
  int64_t n = n_valid - col0 < kTile ? n_valid - col0 : kTile;
  for (int64_t c = 0; c < n; ++c) yrow[col0 + c] = acc16[c];
}

// Runs CALL(MB) for rows [i0, i0 + MB) over all m rows, MB <= 8 (or 4) known at compile time.
#define SKINNY_ROW_BLOCKS_8(CALL)                                     \
  for (int64_t i0 = 0; i0 < m; i0 += 8) {                            \
    switch (m - i0 < 8 ? m - i0 : 8) {                               \
      case 1: CALL(1); break;                                        \
      case 2: CALL(2); break;                                        \
      case 3: CALL(3); break;                                        \
      case 4: CALL(4); break;                                        \
      case 5: CALL(5); break;                                        \
      case 6: CALL(6); break;                                        \
      case 7: CALL(7); break;                                        \
      default: CALL(8); break;                                       \
    }                                                                \
  }
#define SKINNY_ROW_BLOCKS_4(CALL)                                     \
  for (int64_t i0 = 0; i0 < m; i0 += 4) {                            \
    switch (m - i0 < 4 ? m - i0 : 4) {                               \
      case 1: CALL(1); break;                                        \
      case 2: CALL(2); break;                                        \
      case 3: CALL(3); break;                                        \
      default: CALL(4); break;                                       \
    }                                                                \
  }

// Software prefetch of the weight stream, `prefetch_distance` bytes ahead (0: none), into L2 (call
// once per `bytes` of weights read). Decoding a 4-bit block keeps the out-of-order window busy
// with arithmetic, so the hardware alone may keep too few lines in flight. Measured on a 2-core
// Xeon (read bandwidth 28 GB/s), an 8960x1536 Q4_K product at m = 1: 16 GB/s without, 19 with
// 8 KB into L1, 25.6 with 16 KB into L2; int4 20 -> 27 GB/s; at m = 8 Q4_K 10 -> 18.5 GB/s.
// Other CPUs may gain less or lose: the distance is a run-time setting (prefetch_distance above,
// set_prefetch_distance in binding.cpp). Prefetching past the end of the weights is harmless: a
// prefetch never faults.
inline void prefetch_ahead(const void* p, int bytes) {
  const int ahead = prefetch_distance;
  if (ahead <= 0) return;
  for (int o = 0; o < bytes; o += 64) __builtin_prefetch(static_cast<const char*>(p) + ahead + o, 0, 2);
}

// The (block, half) steps of a tile for the 8-lane (AVX2) kernels, whose 16-column tile is two
// halves, with the accumulators of each half. Rows up to kOnePassRows take a block's two halves
// one after the other, so one pass over the weights keeps the memory stream going; a pass per
// half leaves it idle while the second half re-reads the first's bytes from cache. Measured on a
// Zen 3 (AVX2), streaming 400 MB of 8960x1536 layers: int4 1.24-1.28x and Q6_K 1.15x faster in one
// pass at m = 2; at m = 3 / 4 Q4_K 21.7 -> 27.6 / 19.3 -> 23.2 GB/s, int4 21.0 -> 27.1 / 20.0 ->
// 22.7. Past two rows both halves' accumulators do not fit 16 registers with the block's sums, so
// the half not being worked on waits in memory (L1: a load and a store per row and block-half,
// cheaper than the spills the compiler chose when left alone: int4 at m = 4 21.4 -> 22.9 GB/s).
// Rows past kOnePassRows take one half over all blocks, stored before the other (per format: where
// one pass did not pay, Q8_0 and Q5_0 at m = 4). Each column sees the same operations in the same
// order either way. step(b, h, acc) adds block b of half h to acc[MB]; store(h, acc) writes half
// h. Both must be inlined (SKINNY_INLINE) to keep acc in registers.
#define SKINNY_INLINE __attribute__((always_inline))
template <int MB, class Acc, int kOnePassRows, class Step, class Store>
inline SKINNY_INLINE void for_block_halves(int64_t nb, Step step, Store store) {
  if (MB <= 2) {
    Acc acc[2][MB];
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < MB; ++i) acc[h][i] = Acc{};
    for (int64_t b = 0; b < nb; ++b) {
      step(b, 0, acc[0]);
      step(b, 1, acc[1]);
    }
    store(0, acc[0]);
    store(1, acc[1]);
  } else if (MB <= kOnePassRows && MB <= one_pass_rows) {
    alignas(32) Acc waiting[2][MB];
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < MB; ++i) waiting[h][i] = Acc{};
    for (int64_t b = 0; b < nb; ++b) {
      for (int h = 0; h < 2; ++h) {
        Acc acc[MB];
        for (int i = 0; i < MB; ++i) acc[i] = waiting[h][i];
        step(b, h, acc);
        for (int i = 0; i < MB; ++i) waiting[h][i] = acc[i];
        // keeps the accumulators in memory between halves (else GCC keeps both halves in
        // registers and spills the block's sums instead)
        __asm__ volatile("" : : "r"(waiting) : "memory");
      }
    }
    store(0, waiting[0]);
    store(1, waiting[1]);
  } else {
    for (int h = 0; h < 2; ++h) {
      Acc acc[MB];
      for (int i = 0; i < MB; ++i) acc[i] = Acc{};
      for (int64_t b = 0; b < nb; ++b) step(b, h, acc);
      store(h, acc);
    }
  }
}

// Pins a vector value in a register at this point of the program (an empty asm that reads and
// writes it). GCC otherwise re-associates a block's exact integer sums so that all of its products
// are computed first, more than 16 registers hold, and spills them to the stack: measured on a
// Zen 3 (AVX2), that spill traffic cost more than the sums (Q4_K at m = 4: 17.5 -> 21.3 GB/s from
// cache). The result is the same: only the schedule changes.
#define SKINNY_KEEP(v) __asm__("" : "+x"(v))

// Four activation bytes as one int32 (for a 4-byte broadcast), without an unaligned-pointer cast.
inline int32_t load_i32(const void* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return v;
}

inline float bf16_to_f32(uint16_t v) {
  union { uint32_t u; float f; } b;
  b.u = static_cast<uint32_t>(v) << 16;
  return b.f;
}

}  // namespace

}  // namespace skinny
