// Attention for every row of a pass (prefill chunks, decode steps, verification chains): query t
// of T attends keys [0, L - T + t], each query computed in a fixed order whatever T is (16 partial
// sums over head_dim, keys in order, one exp per key), so a query's result does not depend on T or
// on the other queries: a verify pass gives every token the bits a one-token step gives, and a
// prefill chunk gives a row the bits a decode step gives (which makes a reused prefix exact).
//
// A task is one (batch, kv head, query position): the H / Hkv query heads sharing that kv head
// read each key and value row once (converted from bf16 once) instead of once per head. Included by
// each ISA file, which compiles it with its own vector width; the loops vectorize across the 16
// partial lanes, the heads or head_dim, never across the reduction order of one query, and every
// float operation is a plain IEEE one (-ffp-contract=off), so every path gives the same bits.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(SKINNY_ATTENTION_SIMD)
#include <immintrin.h>
#endif

#include "skinny.h"

namespace skinny {

struct ChainAttention {
  const float* q;      // (B, H, T, hd) contiguous
  const void* k;       // (B, Hkv, L, hd) with strides below, float32 or bf16
  const void* v;
  bool kv_bf16;
  int64_t B, H, Hkv, T, L, hd;
  int64_t kv_sb, kv_sh, kv_sl;  // strides of k and v in elements: batch, head, position
  float scale;
  float* out;  // (B, H, T, hd) contiguous
  // Tree mode (null: a chain): query t is a node whose parent is query parents[t] (-1: the
  // context's last token), and it attends the context keys [0, L - T) then its ancestors and
  // itself in root-to-node order, exactly the keys, in the same order, of a chain along its path.
  const int64_t* parents = nullptr;
};

constexpr int kMaxGroup = 16;  // query heads per kv head the kernel takes (Llama-family: 1..8)

namespace {  // compiled per ISA file with its flags (see skinny.h)

// Eight float lanes: AVX registers in the AVX2 and AVX-512 files (SKINNY_ATTENTION_SIMD), plain
// arrays in the scalar one, with the same operations lane by lane (and the same tree in hsum),
// so every path gives the same bits.
#if defined(SKINNY_ATTENTION_SIMD)
struct V8 {
  __m256 v;
};
inline V8 v8_load(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void v8_store(float* p, V8 a) { _mm256_storeu_ps(p, a.v); }
inline V8 v8_set1(float x) { return {_mm256_set1_ps(x)}; }
inline V8 operator+(V8 a, V8 b) { return {_mm256_add_ps(a.v, b.v)}; }
inline V8 operator-(V8 a, V8 b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline V8 operator*(V8 a, V8 b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline V8 v8_fma(V8 a, V8 b, V8 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }  // a * b + c, rounded once
inline V8 v8_max(V8 a, V8 b) { return {_mm256_max_ps(a.v, b.v)}; }  // a > b ? a : b
inline V8 v8_floor(V8 a) { return {_mm256_floor_ps(a.v)}; }
inline V8 v8_pow2i(V8 n) {  // 2^n for integral n in [-126, 127]
  const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(e, 23))};
}
inline float v8_hsum(V8 a) {  // ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7))
  const __m128 w = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  const __m128 x = _mm_add_ps(w, _mm_movehl_ps(w, w));
  return _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps(x, x, 1)));
}
inline void bf16_to_f32_row(const uint16_t* src, int64_t n, float* dst) {  // n a multiple of 8
  for (int64_t i = 0; i < n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(
                                  _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(src + i))), 16)));
}
#else
struct V8 {
  float v[8];
};
inline V8 v8_load(const float* p) { V8 r; for (int i = 0; i < 8; ++i) r.v[i] = p[i]; return r; }
inline void v8_store(float* p, V8 a) { for (int i = 0; i < 8; ++i) p[i] = a.v[i]; }
inline V8 v8_set1(float x) { V8 r; for (int i = 0; i < 8; ++i) r.v[i] = x; return r; }
inline V8 operator+(V8 a, V8 b) { for (int i = 0; i < 8; ++i) a.v[i] += b.v[i]; return a; }
inline V8 operator-(V8 a, V8 b) { for (int i = 0; i < 8; ++i) a.v[i] -= b.v[i]; return a; }
inline V8 operator*(V8 a, V8 b) { for (int i = 0; i < 8; ++i) a.v[i] *= b.v[i]; return a; }
inline V8 v8_fma(V8 a, V8 b, V8 c) { for (int i = 0; i < 8; ++i) c.v[i] = std::fma(a.v[i], b.v[i], c.v[i]); return c; }
inline V8 v8_max(V8 a, V8 b) { for (int i = 0; i < 8; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i]; return a; }
inline V8 v8_floor(V8 a) { for (int i = 0; i < 8; ++i) a.v[i] = std::floor(a.v[i]); return a; }
inline V8 v8_pow2i(V8 n) {
  V8 r;
  for (int i = 0; i < 8; ++i) {
    const int32_t bits = (static_cast<int32_t>(n.v[i]) + 127) << 23;
    std::memcpy(&r.v[i], &bits, 4);
  }
  return r;
}
inline float v8_hsum(V8 a) {
  const float w0 = a.v[0] + a.v[4], w1 = a.v[1] + a.v[5], w2 = a.v[2] + a.v[6], w3 = a.v[3] + a.v[7];
  return (w0 + w2) + (w1 + w3);
}
inline void bf16_to_f32_row(const uint16_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}
#endif

// exp(x) for x <= 0 from IEEE operations only (no libm): x = n ln2 + r with |r| <= ln2 / 2
// (Cody-Waite, two-part ln2), a degree-6 Taylor polynomial in r (relative error < 3e-7), times
// 2^n built in the exponent bits. Below -87 the result is exp(-87) ~ 1.6e-38, a weight that
// vanishes beside the largest one (exactly 1).
inline V8 v8_exp_nonpositive(V8 x) {
  x = v8_max(x, v8_set1(-87.0f));
  const V8 n = v8_floor(x * v8_set1(1.44269504f) + v8_set1(0.5f));
  V8 r = x - n * v8_set1(0.693145752f);
  r = r - n * v8_set1(1.42860677e-6f);
  V8 p = v8_set1(1.f / 720.f);
  p = p * r + v8_set1(1.f / 120.f);
  p = p * r + v8_set1(1.f / 24.f);
  p = p * r + v8_set1(1.f / 6.f);
  p = p * r + v8_set1(0.5f);
  p = p * r + v8_set1(1.f);
  p = p * r + v8_set1(1.f);
  return p * v8_pow2i(n);
}

template <typename KV>
inline void load_rows(const KV* src, int64_t stride, int64_t nj, int64_t hd, float* dst);
template <>
inline void load_rows<float>(const float* src, int64_t stride, int64_t nj, int64_t hd, float* dst) {
  for (int64_t j = 0; j < nj; ++j) std::memcpy(dst + j * hd, src + j * stride, hd * sizeof(float));
}
template <>
inline void load_rows<uint16_t>(const uint16_t* src, int64_t stride, int64_t nj, int64_t hd, float* dst) {
  for (int64_t j = 0; j < nj; ++j) bf16_to_f32_row(src + j * stride, hd, dst + j * hd);
}

// Rows j0 .. j0 + nj of a query's key sequence, the j-th from slot slot(j): one contiguous copy
// where the slots are consecutive (a chain, a tree's context), else row by row. Either way each
// row is the same conversion, so the bits do not depend on where a row sits.
template <typename KV, typename Slot>
inline void load_keys(const KV* base, int64_t stride, int64_t j0, int64_t nj, int64_t hd, float* dst, Slot slot) {
  if (slot(j0 + nj - 1) - slot(j0) == nj - 1) {
    bool consecutive = true;
    for (int64_t j = 1; j < nj && consecutive; ++j) consecutive = slot(j0 + j) == slot(j0) + j;
    if (consecutive) return load_rows(base + slot(j0) * stride, stride, nj, hd, dst);
  }
  for (int64_t j = 0; j < nj; ++j) load_rows(base + slot(j0 + j) * stride, stride, 1, hd, dst + j * hd);
}

constexpr int64_t kMaxTreeDepth = 64;  // nodes on a tree path (drafts are far shorter)

constexpr int64_t kKeyChunk = 16;  // key/value rows converted to fp32 at a time (8 KB at head_dim 128: they stay in L1)

// scale * (q . k_i) for 4 keys at once (independent chains keep the adders busy): per key, partial
// sums in 2 x 8 lanes over head_dim (lane l takes d = l mod 16), added lane-wise, then the 8
// lanes by the fixed tree of v8_hsum. A key's score never depends on the others of its group.
inline void dot4(const float* q, const float* k, int64_t hd, float scale, float* s) {
  V8 a[4][2];
  for (int i = 0; i < 4; ++i) a[i][0] = a[i][1] = v8_set1(0.f);
  for (int64_t d = 0; d < hd; d += 16) {
    const V8 q0 = v8_load(q + d), q1 = v8_load(q + d + 8);
    for (int i = 0; i < 4; ++i) {
      a[i][0] = v8_fma(q0, v8_load(k + i * hd + d), a[i][0]);
      a[i][1] = v8_fma(q1, v8_load(k + i * hd + d + 8), a[i][1]);
    }
  }
  for (int i = 0; i < 4; ++i) s[i] = v8_hsum(a[i][0] + a[i][1]) * scale;
}

inline float dot(const float* q, const float* k, int64_t hd, float scale) {
  V8 a0 = v8_set1(0.f), a1 = v8_set1(0.f);
  for (int64_t d = 0; d < hd; d += 16) {
    a0 = v8_fma(v8_load(q + d), v8_load(k + d), a0);
    a1 = v8_fma(v8_load(q + d + 8), v8_load(k + d + 8), a1);
  }
  return v8_hsum(a0 + a1) * scale;
}

// Sum of e[0:n]: 8 lane sums over whole blocks of 8, the tree of v8_hsum, then the tail in order.
// It depends on n only (a query's n is its position + 1), never on the pass.
inline float sum_row(const float* e, int64_t n) {
  V8 acc = v8_set1(0.f);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) acc = acc + v8_load(e + j);
  float s = v8_hsum(acc);
  for (; j < n; ++j) s += e[j];
  return s;
}

// e[0:n] = exp(s[0:n] - m), in place (whole blocks of 8, then a padded tail).
inline void exp_row(float* s, int64_t n, float m) {
  const V8 mv = v8_set1(m);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) v8_store(s + j, v8_exp_nonpositive(v8_load(s + j) - mv));
  if (j < n) {
    float tail[8];
    for (int i = 0; i < 8; ++i) tail[i] = j + i < n ? s[j + i] : m;
    v8_store(tail, v8_exp_nonpositive(v8_load(tail) - mv));
    for (int i = 0; j + i < n; ++i) s[j + i] = tail[i];
  }
}

// o[0:hd] += sum over the chunk's keys j, in key order, of p[j] * v[j][0:hd]: up to 64 columns of o
// stay in registers (8 independent chains) while the chunk streams by; per column it is the same
// sum as one key at a time.
template <int W>  // columns per block, a multiple of 8
inline void accumulate_pv_block(float* o, const float* p, const float* vrows, int64_t nj, int64_t hd) {
  V8 acc[W / 8];
  for (int c = 0; c < W / 8; ++c) acc[c] = v8_load(o + 8 * c);
  for (int64_t j = 0; j < nj; ++j) {
    const V8 pj = v8_set1(p[j]);
    for (int c = 0; c < W / 8; ++c) acc[c] = v8_fma(pj, v8_load(vrows + j * hd + 8 * c), acc[c]);
  }
  for (int c = 0; c < W / 8; ++c) v8_store(o + 8 * c, acc[c]);
}

inline void accumulate_pv(float* o, const float* p, const float* vrows, int64_t nj, int64_t hd) {
  int64_t d = 0;
  for (; d + 64 <= hd; d += 64) accumulate_pv_block<64>(o + d, p, vrows + d, nj, hd);
  for (; d < hd; d += 16) accumulate_pv_block<16>(o + d, p, vrows + d, nj, hd);
}

// The G = H / Hkv query heads of kv head `kvh` at query position t of batch b.
template <typename KV>
inline void attend_group(const ChainAttention& a, int64_t task, std::vector<float>& scores, std::vector<float>& rows) {
  const int64_t t = task % a.T, kvh = (task / a.T) % a.Hkv, b = task / (a.T * a.Hkv);
  const int64_t G = a.H / a.Hkv, hd = a.hd, context = a.L - a.T;
  // The key slots this query attends, in order: a chain's [0, context + t], a tree node's
  // context then its root-to-node path (slots context + node).
  int64_t path[kMaxTreeDepth];
  int64_t depth = 0;
  if (a.parents != nullptr) {
    for (int64_t u = t; u >= 0 && depth < kMaxTreeDepth; u = a.parents[u]) path[depth++] = context + u;
  }
  const int64_t n = a.parents != nullptr ? context + depth : context + t + 1;
  auto slot = [&](int64_t j) { return j < context || a.parents == nullptr ? j : path[depth - 1 - (j - context)]; };
  const float* q[kMaxGroup];
  float* o[kMaxGroup];
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r = (b * a.H + kvh * G + g) * a.T + t;  // row of (b, head kvh * G + g, t)
    q[g] = a.q + r * hd;
    o[g] = a.out + r * hd;
  }
  const KV* kb = static_cast<const KV*>(a.k) + b * a.kv_sb + kvh * a.kv_sh;
  const KV* vb = static_cast<const KV*>(a.v) + b * a.kv_sb + kvh * a.kv_sh;
  scores.resize(G * n);  // (G, n)
  rows.resize(kKeyChunk * hd);
  float mx[kMaxGroup];
  for (int64_t g = 0; g < G; ++g) mx[g] = -INFINITY;
  for (int64_t j0 = 0; j0 < n; j0 += kKeyChunk) {
    const int64_t nj = n - j0 < kKeyChunk ? n - j0 : kKeyChunk;
    load_keys(kb, a.kv_sl, j0, nj, hd, rows.data(), slot);
    for (int64_t g = 0; g < G; ++g) {
      float* sg = scores.data() + g * n + j0;
      float m = mx[g];
      int64_t j = 0;
      for (; j + 4 <= nj; j += 4) dot4(q[g], rows.data() + j * hd, hd, a.scale, sg + j);
      for (; j < nj; ++j) sg[j] = dot(q[g], rows.data() + j * hd, hd, a.scale);
      for (j = 0; j < nj; ++j) m = sg[j] > m ? sg[j] : m;
      mx[g] = m;
    }
  }
  float inv[kMaxGroup];
  for (int64_t g = 0; g < G; ++g) {
    float* sg = scores.data() + g * n;
    exp_row(sg, n, mx[g]);
    inv[g] = 1.f / sum_row(sg, n);
    for (int64_t d = 0; d < hd; ++d) o[g][d] = 0.f;
  }
  for (int64_t j0 = 0; j0 < n; j0 += kKeyChunk) {
    const int64_t nj = n - j0 < kKeyChunk ? n - j0 : kKeyChunk;
    load_keys(vb, a.kv_sl, j0, nj, hd, rows.data(), slot);
    for (int64_t g = 0; g < G; ++g) accumulate_pv(o[g], scores.data() + g * n + j0, rows.data(), nj, hd);
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t d = 0; d < hd; ++d) o[g][d] *= inv[g];
}

// Tasks [r0, r1) of the B * Hkv * T (batch, kv head, query) tasks.
inline void attend_rows_impl(const ChainAttention& a, int64_t r0, int64_t r1) {
  std::vector<float> scores, rows;
  for (int64_t r = r0; r < r1; ++r) {
    if (a.kv_bf16)
      attend_group<uint16_t>(a, r, scores, rows);
    else
      attend_group<float>(a, r, scores, rows);
  }
}

}  // namespace

void attend_rows_scalar(const ChainAttention& a, int64_t r0, int64_t r1);
void attend_rows_avx2(const ChainAttention& a, int64_t r0, int64_t r1);
void attend_rows_avx512(const ChainAttention& a, int64_t r0, int64_t r1);

}  // namespace skinny
