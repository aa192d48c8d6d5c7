// The FP8 limited-precision accumulator from its definition (src/kernels/kernels_internal.h,
// fp8_tile_limited), shared by the matmul and the wgrad tests: operands quantized in 128-element
// tiles by the formats layer's scalar codec, every product and sum rounded on its own (the tests
// are built without FMA contraction).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lowbit/formats.h"

namespace lowbit::testing_fp8 {

// v with all but `bits` significand bits (implicit one included) cleared: truncation toward zero.
inline float keep_bits(float v, int bits) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if (bits < 24) u &= ~((uint32_t{1} << (24 - bits)) - 1);
  std::memcpy(&v, &u, 4);
  return v;
}

// x[0], x[stride], ... (n values) in 128-element tiles, zero-padded to a multiple of 128: e4m3
// values (unscaled) and one scale absmax / 448 per tile (saturating round-to-nearest-even).
inline void e4m3_tiles(const float* x, int64_t stride, int64_t n, std::vector<float>& v, std::vector<float>& s) {
  const int64_t np = (n + 127) / 128 * 128;
  v.assign(static_cast<size_t>(np), 0.0f);
  s.assign(static_cast<size_t>(np / 128), 0.0f);
  for (int64_t kb = 0; kb < np / 128; ++kb) {
    const int64_t t1 = std::min(n, (kb + 1) * 128);
    float amax = 0.0f;
    for (int64_t t = kb * 128; t < t1; ++t) amax = std::max(amax, std::fabs(x[t * stride]));
    s[kb] = amax / 448.0f;
    if (s[kb] == 0.0f) continue;
    for (int64_t t = kb * 128; t < t1; ++t) v[t] = decode(Format::kE4m3, encode(Format::kE4m3, x[t * stride] / s[kb], {.saturate = true}));
  }
}

// One output: Σ over K blocks kb of the products a(t) · b(t), t in the block, with block scale
// scale(kb); promoted: a `bits`-bit partial per block, then fma into fp32; unpromoted: one
// `bits`-bit accumulator over all of K.
template <class A, class B, class S>
float limited_dot(int64_t nkb, const A& a, const B& b, const S& scale, bool promoted, int bits) {
  float acc = 0.0f;
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const float s = scale(kb);
    float p = 0.0f;
    for (int64_t t = kb * 128; t < (kb + 1) * 128; ++t) {
      const float prod = a(t) * b(t);
      if (promoted) {
        p = keep_bits(p + prod, bits);
      } else {
        const float scaled = prod * s;
        acc = keep_bits(acc + scaled, bits);
      }
    }
    if (promoted) acc = std::fma(p, s, acc);
  }
  return acc;
}

}  // namespace lowbit::testing_fp8
