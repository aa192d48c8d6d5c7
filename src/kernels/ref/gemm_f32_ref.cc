// Scalar twins of the training GEMMs: the arithmetic contract of include/lowbit/gemm_f32.h
// written out (these are the loops src/train/ops.cc ran before the AVX2 level existed).
#include "../gemm_f32_internal.h"

namespace lowbit::kernels_internal {
namespace {

float dot8(const float* a, const float* b, int n) {
  float acc[8] = {};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (int j = 0; i < n; ++i, ++j) acc[j] += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

void axpy(float* y, float a, const float* x, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

void xwt(float* y, const float* x, const float* W, int64_t N, int C, int OC, int64_t o0, int64_t o1) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t o = o0; o < o1; ++o) y[n * OC + o] = dot8(x + n * C, W + o * C, C);
  }
}

void dx(float* dx, const float* dy, const float* W, int64_t, int C, int OC, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    for (int o = 0; o < OC; ++o) axpy(dx + n * C, dy[n * OC + o], W + static_cast<int64_t>(o) * C, C);
  }
}

void dw(float* dW, const float* dy, const float* x, int64_t N, int C, int OC, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    for (int64_t n = 0; n < N; ++n) axpy(dW + o * C, dy[n * OC + o], x + n * C, C);
  }
}

}  // namespace

const GemmF32Microkernels& gemm_f32_scalar_microkernels() {
  static const GemmF32Microkernels k{Isa::kScalar, xwt, dx, dw};
  return k;
}

}  // namespace lowbit::kernels_internal
