// Internal to the formats layer: parameters of the bit-trick fp32 -> minifloat encoder
// shared by every SIMD level, and the per-ISA kernel tables.
#pragma once

#include <bit>
#include <cstdint>

#include "lowbit/convert.h"

namespace lowbit::formats_internal {

// Round-to-nearest-even fp32 -> (1, E, M) minifloat on the fp32 bit pattern a = |x|:
//   normal target:    code = (a + rebias + round_bias + ((a >> shift) & 1)) >> shift
//   subnormal target: code = bits(float(a) + magic) - bits(magic); the FPU's own RNE
//                     rounds to the target's subnormal quantum because magic's ulp is it.
// Overflow is `code > max_code`; NaN is a > 0x7F800000. Derivation in docs/formats.md.
struct MiniFloatParams {
  int shift;                  // 23 - M
  int bits;                   // code width (sign at bit bits-1)
  uint32_t rebias;            // ((B - 127) << 23) mod 2^32
  uint32_t round_bias;        // (1 << (shift - 1)) - 1
  uint32_t min_normal_bits;   // fp32 bits of the target's min normal 2^(1-B)
  uint32_t magic_bits;        // fp32 bits of 2^(1 - B - M + 23)
  uint32_t max_code;          // largest finite magnitude code
  uint32_t overflow_code;     // non-saturating overflow: inf or NaN magnitude code
  uint32_t nan_base;          // NaN magnitude code before payload
  uint32_t nan_payload_mask;  // which bits of (a >> shift) a NaN keeps
};

constexpr MiniFloatParams make_params(int E, int M, int B, uint32_t max_code, uint32_t overflow_code,
                                      uint32_t nan_base, uint32_t nan_payload_mask) {
  const int shift = 23 - M;
  return {shift,
          1 + E + M,
          static_cast<uint32_t>(B - 127) << 23,
          (1u << (shift - 1)) - 1,
          static_cast<uint32_t>(127 + 1 - B) << 23,
          static_cast<uint32_t>(127 + 1 - B - M + 23) << 23,
          max_code,
          overflow_code,
          nan_base,
          nan_payload_mask};
}

inline constexpr MiniFloatParams kFp16Params = make_params(5, 10, 15, 0x7BFF, 0x7C00, 0x7E00, 0x3FF);
inline constexpr MiniFloatParams kBf16Params = make_params(8, 7, 127, 0x7F7F, 0x7F80, 0x7FC0, 0x7F);
inline constexpr MiniFloatParams kE4m3Params = make_params(4, 3, 7, 0x7E, 0x7F, 0x7F, 0x0);
inline constexpr MiniFloatParams kE5m2Params = make_params(5, 2, 15, 0x7B, 0x7C, 0x7E, 0x3);

// fp32 values of every e4m3 code (built from the reference decode), for gather decoders.
const float* e4m3_table();

const ConvertKernels& scalar_kernels();
#if defined(LOWBIT_HAVE_AVX2)
const ConvertKernels& avx2_kernels();
#endif
#if defined(LOWBIT_HAVE_AVX512)
const ConvertKernels& avx512_kernels();
#endif

}  // namespace lowbit::formats_internal
