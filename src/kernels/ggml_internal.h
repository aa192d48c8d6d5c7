// Internal to the kernels layer: the per-ISA microkernels behind ggml_matmul
// (include/lowbit/ggml_matmul.h). The scalar level (ref/ggml_ref.cc) is the twin of the AVX2 one
// (x86/ggml_avx2.cc).
#pragma once

#include <cstdint>

#include "lowbit/ggml_matmul.h"

namespace lowbit::kernels_internal {

struct GgmlMicrokernels {
  Isa isa;
  // out[0 .. 256·nblocks) = the blocks decoded, bit-exact to ggml's dequantize_row_*.
  void (*decode_q4_K)(const BlockQ4_K* b, int64_t nblocks, float* out);
  void (*decode_q6_K)(const BlockQ6_K* b, int64_t nblocks, float* out);
  // y[t·ldy + r] (+)= Σ_{k < kc} w[r·ldw + k] · x[t·ldx + k] for r < rows, t < tokens; kc % 8 == 0.
  // `accumulate` false: y is overwritten. Both operands are cache-resident tiles.
  void (*tile)(const float* w, int64_t ldw, int64_t rows, const float* x, int64_t ldx, int64_t tokens, int64_t kc,
               float* y, int64_t ldy, bool accumulate);
  // Q8_K activations: out[0 .. nblocks) = quantize_row_q8_K(x), bit for bit at every ISA.
  void (*quantize_q8_K)(const float* x, int64_t nblocks, BlockQ8_K* out);
  // One weight row (nblocks super-blocks) times `tokens` activation rows (a + t·nblocks), y[t·ldy].
  // Integer sums per block exact in int32 lanes, one fma per lane and block (scale a.d · d, Q4_K's
  // mins in 4 more lanes), the lanes summed at the end in a fixed order: every ISA, the same bits.
  void (*dot_q4_K)(const BlockQ4_K* w, const BlockQ8_K* a, int64_t nblocks, int64_t tokens, float* y, int64_t ldy);
  void (*dot_q6_K)(const BlockQ6_K* w, const BlockQ8_K* a, int64_t nblocks, int64_t tokens, float* y, int64_t ldy);
};

const GgmlMicrokernels& ggml_scalar_microkernels();
#if defined(LOWBIT_HAVE_AVX2)
const GgmlMicrokernels& ggml_avx2_microkernels();
#endif

}  // namespace lowbit::kernels_internal
