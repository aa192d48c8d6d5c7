// Scalar twins of the ggml k-quant microkernels (../ggml_internal.h): decoding is ggml's own
// reference (dequantize_row_*, include/lowbit/ggml_blocks.h), the tile a plain dot per (token, row)
// in column order.
#include <cmath>

#include "../ggml_internal.h"
#include "lowbit/formats.h"

namespace lowbit::kernels_internal {
namespace {

void decode_q4_K(const BlockQ4_K* b, int64_t nblocks, float* out) { dequantize_row_q4_K(b, out, nblocks * kGgmlQK_K); }
void decode_q6_K(const BlockQ6_K* b, int64_t nblocks, float* out) { dequantize_row_q6_K(b, out, nblocks * kGgmlQK_K); }

void tile(const float* w, int64_t ldw, int64_t rows, const float* x, int64_t ldx, int64_t tokens, int64_t kc, float* y,
          int64_t ldy, bool accumulate) {
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      float s = 0.0f;
      for (int64_t k = 0; k < kc; ++k) s += w[r * ldw + k] * x[t * ldx + k];
      y[t * ldy + r] = accumulate ? y[t * ldy + r] + s : s;
    }
  }
}

void quantize_q8_K(const float* x, int64_t nblocks, BlockQ8_K* out) { quantize_row_q8_K(x, out, nblocks * kGgmlQK_K); }

// Q4_K's eight 6-bit scales and eight mins from its 12 packed bytes.
void unpack_q4_K_scales(const uint8_t packed[12], uint8_t scales[8], uint8_t mins[8]) {
  for (int j = 0; j < 8; ++j) ggml_scale_min_k4(j, packed, &scales[j], &mins[j]);
}

// The AVX2 level's final reduction of 8 (and 4) fp32 lanes, in its tree order.
float sum8(const float l[8]) { return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7])); }
float sum4(const float l[4]) { return (l[0] + l[2]) + (l[1] + l[3]); }

// Lane arithmetic of the AVX2 level (x86/ggml_avx2.cc): lane l of a block's int32 sum holds
// values 4l..4l+3 of each 32-value code group; per block each fp32 lane takes one fma.
void dot_q4_K(const BlockQ4_K* w, const BlockQ8_K* a, int64_t nblocks, int64_t tokens, float* y, int64_t ldy) {
  for (int64_t t = 0; t < tokens; ++t) {
    const BlockQ8_K* at = a + t * nblocks;
    float lanes[8] = {}, mlanes[4] = {};
    for (int64_t b = 0; b < nblocks; ++b) {
      uint8_t sc[8], mn[8];
      unpack_q4_K_scales(w[b].scales, sc, mn);
      const float dd = at[b].d * decode(Format::kFp16, w[b].d), dm = at[b].d * decode(Format::kFp16, w[b].dmin);
      for (int l = 0; l < 8; ++l) {
        int32_t si = 0;
        for (int sub = 0; sub < 8; ++sub) {  // sub-block 2j: low nibbles of qs[32j ..]; 2j+1: high ones
          int32_t dot = 0;
          for (int u = 0; u < 4; ++u) {
            const int e = 4 * l + u;
            dot += ((w[b].qs[32 * (sub / 2) + e] >> (4 * (sub % 2))) & 0x0F) * at[b].qs[32 * sub + e];
          }
          si += sc[sub] * dot;
        }
        lanes[l] = std::fma(dd, static_cast<float>(si), lanes[l]);
      }
      const int16_t* bs = at[b].bsums;  // sub-block s's sum is bsums 2s + 2s+1
      for (int k = 0; k < 4; ++k) {
        const int32_t mi = mn[2 * k] * (bs[4 * k] + bs[4 * k + 1]) + mn[2 * k + 1] * (bs[4 * k + 2] + bs[4 * k + 3]);
        mlanes[k] = std::fma(dm, static_cast<float>(mi), mlanes[k]);
      }
    }
    y[t * ldy] = sum8(lanes) - sum4(mlanes);
  }
}

void dot_q6_K(const BlockQ6_K* w, const BlockQ8_K* a, int64_t nblocks, int64_t tokens, float* y, int64_t ldy) {
  for (int64_t t = 0; t < tokens; ++t) {
    const BlockQ8_K* at = a + t * nblocks;
    float lanes[8] = {};
    for (int64_t b = 0; b < nblocks; ++b) {
      const BlockQ6_K& wb = w[b];
      const float dd = at[b].d * decode(Format::kFp16, wb.d);
      for (int l = 0; l < 8; ++l) {
        int32_t si = 0;
        for (int grp = 0; grp < 8; ++grp) {  // 32-value groups; values 16.. of a group take the next scale
          int32_t dot = 0;
          for (int u = 0; u < 4; ++u) {
            const int e = 32 * grp + 4 * l + u, n = e / 128, j = (e / 32) % 4, i = e % 32;
            const int lo = (wb.ql[64 * n + 32 * (j % 2) + i] >> (4 * (j / 2))) & 0x0F;
            const int hi = (wb.qh[32 * n + i] >> (2 * j)) & 3;
            dot += (lo | (hi << 4)) * at[b].qs[e];
          }
          si += wb.scales[2 * grp + (l >= 4 ? 1 : 0)] * dot;
        }
        // Codes are stored + 32: lane l also carries -32 · (scale · bsum) of 16-value groups 2l, 2l+1.
        si -= 32 * (wb.scales[2 * l] * at[b].bsums[2 * l] + wb.scales[2 * l + 1] * at[b].bsums[2 * l + 1]);
        lanes[l] = std::fma(dd, static_cast<float>(si), lanes[l]);
      }
    }
    y[t * ldy] = sum8(lanes);
  }
}

}  // namespace

const GgmlMicrokernels& ggml_scalar_microkernels() {
  static constexpr GgmlMicrokernels k{Isa::kScalar, decode_q4_K, decode_q6_K, tile, quantize_q8_K, dot_q4_K, dot_q6_K};
  return k;
}

}  // namespace lowbit::kernels_internal
