// Dispatch of the training layer's fixed-order fp32 GEMMs (include/lowbit/gemm_f32.h).
#include "lowbit/gemm_f32.h"

#include "gemm_f32_internal.h"

namespace lowbit {
namespace ki = kernels_internal;
namespace {

const ki::GemmF32Microkernels& microkernels() {
#if defined(LOWBIT_HAVE_AVX2)
  if (active_isa() >= Isa::kAvx2) return ki::gemm_f32_avx2_microkernels();
#endif
  return ki::gemm_f32_scalar_microkernels();
}

}  // namespace

void gemm_f32_xwt(float* y, const float* x, const float* W, int64_t N, int C, int OC, int64_t o0, int64_t o1) {
  if (N <= 0 || o1 <= o0) return;
  microkernels().xwt(y, x, W, N, C, OC, o0, o1);
}

void gemm_f32_dx(float* dx, const float* dy, const float* W, int64_t N, int C, int OC, int64_t n0, int64_t n1) {
  if (n1 <= n0 || OC <= 0) return;
  microkernels().dx(dx, dy, W, N, C, OC, n0, n1);
}

void gemm_f32_dw(float* dW, const float* dy, const float* x, int64_t N, int C, int OC, int64_t o0, int64_t o1) {
  if (o1 <= o0 || N <= 0) return;
  microkernels().dw(dW, dy, x, N, C, OC, o0, o1);
}

Isa gemm_f32_isa() { return microkernels().isa; }

}  // namespace lowbit
