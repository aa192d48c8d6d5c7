// Internal to the quant layer: the per-ISA row kernels behind quantize / dequantize.
// Each level has the same contract; the scalar level is the twin the SIMD ones are tested
// against (tests/quant), and the whole fast path is tested against the per-element
// reference (QuantizeOptions::use_reference).
#pragma once

#include <cstddef>
#include <cstdint>

#include "lowbit/cpu.h"

namespace lowbit::quant_internal {

struct QuantKernels {
  Isa isa;
  // max |x[i]| over n >= 0 floats (0 for n == 0). Inputs are finite.
  float (*absmax)(const float* x, size_t n);
  // min and max of x[i] (n >= 1). Inputs are finite.
  void (*minmax)(const float* x, size_t n, float* lo, float* hi);
  // true when every x[i] is finite.
  bool (*all_finite)(const float* x, size_t n);
  // out[i] = byte of rint_even(clamp(x[i] / s + z, lo, hi)) — integer element codes (s != 0).
  void (*quant_int)(const float* x, size_t n, float s, float z, float lo, float hi, uint8_t* out);
  // v[i] = x[i] / s (s != 0).
  void (*divide)(const float* x, size_t n, float s, float* v);
  // out[i] = (float(code[i]) - z) * s, codes signed (int8/int4 sign-extended) or unsigned bytes.
  void (*dequant_i8)(const int8_t* code, size_t n, float z, float s, float* out);
  void (*dequant_u8)(const uint8_t* code, size_t n, float z, float s, float* out);
  // v[i] = (v[i] - z) * s.
  void (*rescale)(float* v, size_t n, float z, float s);
};

const QuantKernels& scalar_quant_kernels();
#if defined(LOWBIT_HAVE_AVX2)
const QuantKernels& avx2_quant_kernels();
#endif
// nullptr when this build has no kernels for `isa` (avx512 levels reuse avx2's).
const QuantKernels* quant_kernels(Isa isa);
const QuantKernels& active_quant_kernels();

}  // namespace lowbit::quant_internal
