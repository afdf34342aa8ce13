// Attention for decode and verification rows: query t of a chain of T attends keys
// [0, L - T + t], each (batch, head, query) computed alone in a fixed order (16 partial sums
// over head_dim, keys in order), so a query's result is the same whatever T is: a verify pass
// gives every token the bits a one-token step gives. Included by each ISA file, which compiles
// it with its own vector width (lanes never mix, so every path gives the same bits).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

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
};

namespace {  // compiled per ISA file with its flags (see skinny.h)

template <typename KV>
inline float kv_at(const KV* p, int64_t i);
template <>
inline float kv_at<float>(const float* p, int64_t i) { return p[i]; }
template <>
inline float kv_at<uint16_t>(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }

template <typename KV>
inline void attend_one(const ChainAttention& a, int64_t row, std::vector<float>& scores) {
  const int64_t t = row % a.T, h = (row / a.T) % a.H, b = row / (a.T * a.H);
  const int64_t kvh = h / (a.H / a.Hkv), n = a.L - a.T + t + 1, hd = a.hd;
  const float* q = a.q + row * hd;
  const KV* kb = static_cast<const KV*>(a.k) + b * a.kv_sb + kvh * a.kv_sh;
  const KV* vb = static_cast<const KV*>(a.v) + b * a.kv_sb + kvh * a.kv_sh;
  scores.resize(n);
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    const KV* kj = kb + j * a.kv_sl;
    float part[16] = {0};
    for (int64_t d = 0; d < hd; d += 16)
      for (int l = 0; l < 16; ++l) part[l] += q[d + l] * kv_at(kj, d + l);
    float s = 0.f;
    for (int l = 0; l < 16; ++l) s += part[l];
    s *= a.scale;
    scores[j] = s;
    mx = s > mx ? s : mx;
  }
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = std::exp(scores[j] - mx);
    sum += scores[j];
  }
  float* o = a.out + row * hd;
  for (int64_t d = 0; d < hd; ++d) o[d] = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    const KV* vj = vb + j * a.kv_sl;
    const float p = scores[j];
    for (int64_t d = 0; d < hd; ++d) o[d] += p * kv_at(vj, d);
  }
  const float inv = 1.f / sum;
  for (int64_t d = 0; d < hd; ++d) o[d] *= inv;
}

// Rows [r0, r1) of the B * H * T (batch, head, query) rows.
inline void attend_rows_impl(const ChainAttention& a, int64_t r0, int64_t r1) {
  std::vector<float> scores;
  for (int64_t r = r0; r < r1; ++r) {
    if (a.kv_bf16)
      attend_one<uint16_t>(a, r, scores);
    else
      attend_one<float>(a, r, scores);
  }
}

}  // namespace

void attend_rows_scalar(const ChainAttention& a, int64_t r0, int64_t r1);
void attend_rows_avx2(const ChainAttention& a, int64_t r0, int64_t r1);
void attend_rows_avx512(const ChainAttention& a, int64_t r0, int64_t r1);

}  // namespace skinny
