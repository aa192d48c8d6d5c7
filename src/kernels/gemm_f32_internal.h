// Internal to the kernels layer: the per-ISA microkernels behind include/lowbit/gemm_f32.h. The
// scalar level (ref/gemm_f32_ref.cc) is the twin the AVX2 one (x86/gemm_f32_avx2.cc) is tested
// against, bit for bit (tests/kernels/gemm_f32_test.cc).
#pragma once

#include <cstdint>

#include "lowbit/cpu.h"

namespace lowbit::kernels_internal {

struct GemmF32Microkernels {
  Isa isa;
  void (*xwt)(float* y, const float* x, const float* W, int64_t N, int C, int OC, int64_t o0, int64_t o1);
  void (*dx)(float* dx, const float* dy, const float* W, int64_t N, int C, int OC, int64_t n0, int64_t n1);
  void (*dw)(float* dW, const float* dy, const float* x, int64_t N, int C, int OC, int64_t o0, int64_t o1);
};

const GemmF32Microkernels& gemm_f32_scalar_microkernels();
#if defined(LOWBIT_HAVE_AVX2)
const GemmF32Microkernels& gemm_f32_avx2_microkernels();
#endif

}  // namespace lowbit::kernels_internal
