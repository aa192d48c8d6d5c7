// Scalar twins of the ggml k-quant microkernels (../ggml_internal.h): decoding is ggml's own
// reference (dequantize_row_*, include/lowbit/ggml_blocks.h), the tile a plain dot per (token, row)
// in column order.
#include "../ggml_internal.h"

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

}  // namespace

const GgmlMicrokernels& ggml_scalar_microkernels() {
  static constexpr GgmlMicrokernels k{Isa::kScalar, decode_q4_K, decode_q6_K, tile};
  return k;
}

}  // namespace lowbit::kernels_internal
