// AVX2 + F16C converters (compiled with -mavx2 -mfma -mf16c; called only when
// isa_supported(Isa::kAvx2)). Twins: the scalar kernels in ../convert.cc.
#include <immintrin.h>

#include <cstring>

#include "../convert_internal.h"

namespace lowbit::formats_internal {
namespace {

constexpr size_t kLanes = 8;

// 8 fp32 -> 8 minifloat codes in int32 lanes (sign included). See MiniFloatParams.
inline __m256i encode_minifloat(__m256 x, const MiniFloatParams& p, bool saturate) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i sign = _mm256_srl_epi32(_mm256_andnot_si256(a, u), _mm_cvtsi32_si128(32 - p.bits));
  const __m128i shift = _mm_cvtsi32_si128(p.shift);
  const __m256i a_shifted = _mm256_srl_epi32(a, shift);

  // Normal target: rebias the exponent, add half-ulp-minus-one plus the kept LSB, truncate.
  const __m256i odd = _mm256_and_si256(a_shifted, _mm256_set1_epi32(1));
  const __m256i bias = _mm256_set1_epi32(static_cast<int>(p.rebias + p.round_bias));
  const __m256i normal = _mm256_srl_epi32(_mm256_add_epi32(_mm256_add_epi32(a, bias), odd), shift);

  // Subnormal target: let the FPU round at the subnormal quantum.
  const __m256i magic = _mm256_set1_epi32(static_cast<int>(p.magic_bits));
  const __m256 sum = _mm256_add_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(magic));
  const __m256i subnormal = _mm256_sub_epi32(_mm256_castps_si256(sum), magic);

  const __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(p.min_normal_bits)), a);
  __m256i code = _mm256_blendv_epi8(normal, subnormal, is_sub);

  const __m256i overflow = _mm256_cmpgt_epi32(code, _mm256_set1_epi32(static_cast<int>(p.max_code)));
  const int ovf_code = static_cast<int>(saturate ? p.max_code : p.overflow_code);
  code = _mm256_blendv_epi8(code, _mm256_set1_epi32(ovf_code), overflow);

  const __m256i is_nan = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7F800000));
  const __m256i nan = _mm256_or_si256(_mm256_set1_epi32(static_cast<int>(p.nan_base)),
                                      _mm256_and_si256(a_shifted, _mm256_set1_epi32(static_cast<int>(p.nan_payload_mask))));
  code = _mm256_blendv_epi8(code, nan, is_nan);
  return _mm256_or_si256(code, sign);
}

inline __m128i pack_u16(__m256i v) {  // 8 x u32 (< 2^16) -> 8 x u16
  return _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

inline __m128i pack_u8(__m256i v) {  // 8 x u32 (< 2^8) -> 8 x u8 in the low 64 bits
  const __m128i w = pack_u16(v);
  return _mm_packus_epi16(w, w);
}

// Runs `body(in8, out8)` over full vectors, then once more on a zero-padded copy of the tail
// so the tail goes through the same SIMD code as the body.
template <class In, class Out, class Body>
inline void for_each_vector(const In* in, Out* out, size_t n, Body body) {
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) body(in + i, out + i);
  if (i < n) {
    In in_tail[kLanes] = {};
    Out out_tail[kLanes];
    std::memcpy(in_tail, in + i, (n - i) * sizeof(In));
    body(in_tail, out_tail);
    std::memcpy(out + i, out_tail, (n - i) * sizeof(Out));
  }
}

template <const MiniFloatParams& P>
void encode_u16(const float* in, uint16_t* out, size_t n, bool saturate) {
  for_each_vector(in, out, n, [saturate](const float* s, uint16_t* d) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d), pack_u16(encode_minifloat(_mm256_loadu_ps(s), P, saturate)));
  });
}

template <const MiniFloatParams& P>
void encode_u8(const float* in, uint8_t* out, size_t n, bool saturate) {
  for_each_vector(in, out, n, [saturate](const float* s, uint8_t* d) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(d), pack_u8(encode_minifloat(_mm256_loadu_ps(s), P, saturate)));
  });
}

void f32_to_f16(const float* in, uint16_t* out, size_t n, bool saturate) {
  if (saturate) return encode_u16<kFp16Params>(in, out, n, true);
  // F16C's vcvtps2ph rounds to nearest even, overflows to inf and quiets NaNs keeping the
  // top payload bits: exactly the non-saturating reference.
  for_each_vector(in, out, n, [](const float* s, uint16_t* d) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm256_cvtps_ph(_mm256_loadu_ps(s), _MM_FROUND_TO_NEAREST_INT));
  });
}

void f16_to_f32(const uint16_t* in, float* out, size_t n) {
  for_each_vector(in, out, n, [](const uint16_t* s, float* d) {
    _mm256_storeu_ps(d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s))));
  });
}

void bf16_to_f32(const uint16_t* in, float* out, size_t n) {
  for_each_vector(in, out, n, [](const uint16_t* s, float* d) {
    const __m256i bits = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s))), 16);
    const __m256i abs = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFFFF));
    const __m256i is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F800000));
    const __m256i quiet = _mm256_and_si256(is_nan, _mm256_set1_epi32(0x00400000));
    _mm256_storeu_ps(d, _mm256_castsi256_ps(_mm256_or_si256(bits, quiet)));
  });
}

void e4m3_to_f32(const uint8_t* in, float* out, size_t n) {
  const float* table = e4m3_table();
  for_each_vector(in, out, n, [table](const uint8_t* s, float* d) {
    const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s)));
    _mm256_storeu_ps(d, _mm256_i32gather_ps(table, idx, 4));
  });
}

void e5m2_to_f32(const uint8_t* in, float* out, size_t n) {
  // e5m2 is the top byte of fp16: widen, shift into place, convert with F16C.
  for_each_vector(in, out, n, [](const uint8_t* s, float* d) {
    const __m128i h = _mm_slli_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s))), 8);
    _mm256_storeu_ps(d, _mm256_cvtph_ps(h));
  });
}

}  // namespace

const ConvertKernels& avx2_kernels() {
  static const ConvertKernels k{
      Isa::kAvx2,
      f32_to_f16,
      encode_u16<kBf16Params>,
      encode_u8<kE4m3Params>,
      encode_u8<kE5m2Params>,
      f16_to_f32,
      bf16_to_f32,
      e4m3_to_f32,
      e5m2_to_f32,
  };
  return k;
}

}  // namespace lowbit::formats_internal
