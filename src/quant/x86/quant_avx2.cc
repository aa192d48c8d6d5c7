// AVX2 row kernels for quantize / dequantize (compiled with -mavx2 -mfma -mf16c).
// Twins: the scalar kernels in ../quantize.cc. Only exact IEEE operations (div, add, mul,
// min/max, round-to-nearest-even conversion) so results equal the twins bit for bit.
#include <immintrin.h>

#include <cstring>

#include "../quant_internal.h"

namespace lowbit::quant_internal {
namespace {

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline float hmin(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

float absmax(const float* x, size_t n) {
  const __m256 mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_and_ps(_mm256_loadu_ps(x + i), mask));
    m1 = _mm256_max_ps(m1, _mm256_and_ps(_mm256_loadu_ps(x + i + 8), mask));
  }
  float m = hmax(_mm256_max_ps(m0, m1));
  for (; i < n; ++i) {
    const float a = x[i] < 0 ? -x[i] : x[i];
    m = a > m ? a : m;
  }
  return m;
}

void minmax(const float* x, size_t n, float* lo, float* hi) {
  __m256 mn = _mm256_set1_ps(x[0]), mx = mn;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    mn = _mm256_min_ps(mn, v);
    mx = _mm256_max_ps(mx, v);
  }
  float a = hmin(mn), b = hmax(mx);
  for (; i < n; ++i) {
    a = x[i] < a ? x[i] : a;
    b = x[i] > b ? x[i] : b;
  }
  *lo = a;
  *hi = b;
}

bool all_finite(const float* x, size_t n) {
  // Finite <=> exponent field not all ones: (bits & 0x7F800000) != 0x7F800000.
  const __m256i exp = _mm256_set1_epi32(0x7F800000);
  __m256i bad = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i b = _mm256_and_si256(_mm256_castps_si256(_mm256_loadu_ps(x + i)), exp);
    bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(b, exp));
  }
  if (!_mm256_testz_si256(bad, bad)) return false;
  for (; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, x + i, 4);
    if ((b & 0x7F800000u) == 0x7F800000u) return false;
  }
  return true;
}

void quant_int(const float* x, size_t n, float s, float z, float lo, float hi, uint8_t* out) {
  const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i q[4];
    for (int k = 0; k < 4; ++k) {
      __m256 v = _mm256_add_ps(_mm256_div_ps(_mm256_loadu_ps(x + i + 8 * k), vs), vz);
      v = _mm256_min_ps(_mm256_max_ps(v, vlo), vhi);
      q[k] = _mm256_cvtps_epi32(v);  // MXCSR default: round to nearest even
    }
    // int32 -> int16 -> int8 with saturation; values are already in [-128, 255], so take bytes
    // through a 16-bit pack (exact) and mask to the low byte before the final unsigned pack.
    const __m256i w01 = _mm256_packs_epi32(q[0], q[1]);
    const __m256i w23 = _mm256_packs_epi32(q[2], q[3]);
    const __m256i lowbyte = _mm256_set1_epi16(0xFF);
    __m256i b = _mm256_packus_epi16(_mm256_and_si256(w01, lowbyte), _mm256_and_si256(w23, lowbyte));
    b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), b);
  }
  for (; i < n; ++i) {
    float v = x[i] / s + z;
    v = v < lo ? lo : (v > hi ? hi : v);
    out[i] = static_cast<uint8_t>(static_cast<int32_t>(__builtin_rintf(v)));
  }
}

void divide(const float* x, size_t n, float s, float* v) {
  const __m256 vs = _mm256_set1_ps(s);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, _mm256_div_ps(_mm256_loadu_ps(x + i), vs));
  for (; i < n; ++i) v[i] = x[i] / s;
}

void dequant_i8(const int8_t* c, size_t n, float z, float s, float* out) {
  const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + i)));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(w), vz), vs));
  }
  for (; i < n; ++i) out[i] = (static_cast<float>(c[i]) - z) * s;
}

void dequant_u8(const uint8_t* c, size_t n, float z, float s, float* out) {
  const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + i)));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(w), vz), vs));
  }
  for (; i < n; ++i) out[i] = (static_cast<float>(c[i]) - z) * s;
}

void rescale(float* v, size_t n, float z, float s) {
  const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(v + i), vz), vs));
  for (; i < n; ++i) v[i] = (v[i] - z) * s;
}

}  // namespace

const QuantKernels& avx2_quant_kernels() {
  static const QuantKernels k{Isa::kAvx2, absmax, minmax, all_finite, quant_int, divide, dequant_i8, dequant_u8, rescale};
  return k;
}

}  // namespace lowbit::quant_internal
