// Scalar twins of the quantized-cache attention kernels: the arithmetic contract of
// include/lowbit/kv_attention.h written out element by element, in the AVX2 kernels' order
// (8 lanes by j % 8, fixed reduction tree), so both give the same bits.
#include <cmath>

#include "../kernels_internal.h"
#include "../kv_internal.h"
#include "lowbit/formats.h"

namespace lowbit::kernels_internal {
namespace {

float code_value(KvCode c, const uint8_t* row, int64_t j) {
  switch (c) {
    case KvCode::kInt8: return static_cast<float>(static_cast<int8_t>(row[j]));
    case KvCode::kInt4: return static_cast<float>(static_cast<int>((row[j / 2] >> (4 * (j % 2))) & 0xF) - 8);
    case KvCode::kUint4: return static_cast<float>((row[j / 2] >> (4 * (j % 2))) & 0xF);
    case KvCode::kE4m3: return e4m3_value(row[j]);
    case KvCode::kE5m2: return decode(Format::kE5m2, row[j]);
  }
  return 0.0f;
}

float half(const uint16_t* p, int64_t i) { return p ? kv_half_to_float(p[i]) : 1.0f; }

void scores(const KvRows& k, const float* x, const float* xsum, int64_t ntok, float* out) {
  const int64_t ng = k.width / k.group;
  for (int64_t t = 0; t < ntok; ++t) {
    const uint8_t* row = k.codes + t * k.stride;
    float acc = 0.0f;
    for (int64_t g = 0; g < ng; ++g) {
      float p[8] = {};
      for (int64_t j = g * k.group; j < (g + 1) * k.group; ++j) p[j % 8] = std::fma(x[j], code_value(k.code, row, j), p[j % 8]);
      const float d = ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
      acc = std::fma(half(k.scale, t * k.pstride + g), d, acc);
      if (k.min) acc = std::fma(kv_half_to_float(k.min[t * k.pstride + g]), xsum[g], acc);
    }
    out[t] = acc;
  }
}

void accumulate(const KvRows& v, const float* a, int64_t ntok, float* out) {
  for (int64_t j = 0; j < v.width; ++j) {
    const int64_t g = j / v.group;
    float o = out[j];
    for (int64_t t = 0; t < ntok; ++t) {
      const float w = a[t] * half(v.scale, t * v.pstride + g);
      o = std::fma(w, code_value(v.code, v.codes + t * v.stride, j), o);
    }
    if (v.min) {
      float bias = 0.0f;
      for (int64_t t = 0; t < ntok; ++t) bias = std::fma(a[t], kv_half_to_float(v.min[t * v.pstride + g]), bias);
      o += bias;
    }
    out[j] = o;
  }
}

void scores_f32(const float* k, int64_t stride, int64_t width, const float* x, int64_t ntok, float* out) {
  const int64_t w8 = width / 8 * 8;
  for (int64_t t = 0; t < ntok; ++t) {
    const float* row = k + t * stride;
    float p[8] = {};
    for (int64_t j = 0; j < w8; ++j) p[j % 8] = std::fma(x[j], row[j], p[j % 8]);
    float s = ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
    for (int64_t j = w8; j < width; ++j) s = std::fma(x[j], row[j], s);
    out[t] = s;
  }
}

void accumulate_f32(const float* v, int64_t stride, int64_t width, const float* a, int64_t ntok, float* out) {
  for (int64_t j = 0; j < width; ++j) {
    float o = out[j];
    for (int64_t t = 0; t < ntok; ++t) o = std::fma(a[t], v[t * stride + j], o);
    out[j] = o;
  }
}

// The grouped forms are, by definition, the one-head forms per head.
void scores_f32_heads(const float* k, int64_t stride, int64_t width, const float* x, int64_t ldx, int64_t nq, int64_t ntok, float* out,
                      int64_t ldo) {
  for (int64_t h = 0; h < nq; ++h) scores_f32(k, stride, width, x + h * ldx, ntok, out + h * ldo);
}

void accumulate_f32_heads(const float* v, int64_t stride, int64_t width, const float* a, int64_t lda, int64_t nq, int64_t ntok,
                          float* out, int64_t ldo) {
  for (int64_t h = 0; h < nq; ++h) accumulate_f32(v, stride, width, a + h * lda, ntok, out + h * ldo);
}

}  // namespace

const KvMicrokernels& kv_scalar_microkernels() {
  static const KvMicrokernels k{Isa::kScalar, scores, accumulate, scores_f32, accumulate_f32, scores_f32_heads, accumulate_f32_heads};
  return k;
}

}  // namespace lowbit::kernels_internal
