// AVX2 ggml k-quant microkernels (compiled with -mavx2 -mfma -mf16c). Twins: ../ref/ggml_ref.cc.
// Decoding forms each value exactly as ggml's dequantize_row_* does (the scale products in fp32,
// then one multiply and, for Q4_K, one subtract, never fused), so it matches the twin bit for
// bit; the tile keeps an 8-lane FMA accumulator per (row, token), so its sums differ from the
// twin's column-order ones only by rounding.
#include <immintrin.h>

#include "../ggml_internal.h"

namespace lowbit::kernels_internal {
namespace {

inline __m256 u8_to_ps(__m128i v8) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v8)); }
inline __m256 i8_to_ps(__m128i v8) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v8)); }

// out (32) = d · q − m for the 32 unsigned codes in q (bytes).
inline void store_affine32(__m256i q, float d, float m, float* out) {
  const __m256 dv = _mm256_set1_ps(d), mv = _mm256_set1_ps(m);
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  _mm256_storeu_ps(out + 0, _mm256_sub_ps(_mm256_mul_ps(dv, u8_to_ps(lo)), mv));
  _mm256_storeu_ps(out + 8, _mm256_sub_ps(_mm256_mul_ps(dv, u8_to_ps(_mm_srli_si128(lo, 8))), mv));
  _mm256_storeu_ps(out + 16, _mm256_sub_ps(_mm256_mul_ps(dv, u8_to_ps(hi)), mv));
  _mm256_storeu_ps(out + 24, _mm256_sub_ps(_mm256_mul_ps(dv, u8_to_ps(_mm_srli_si128(hi, 8))), mv));
}

void decode_q4_K(const BlockQ4_K* b, int64_t nblocks, float* out) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  for (int64_t i = 0; i < nblocks; ++i, out += kGgmlQK_K) {
    const float d = _cvtsh_ss(b[i].d), dmin = _cvtsh_ss(b[i].dmin);
    // 64 values per 32 bytes of qs: sub-block 2j from the low nibbles, 2j+1 from the high ones.
    for (int j = 0; j < 4; ++j) {
      uint8_t sc0, m0, sc1, m1;
      ggml_scale_min_k4(2 * j, b[i].scales, &sc0, &m0);
      ggml_scale_min_k4(2 * j + 1, b[i].scales, &sc1, &m1);
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs + 32 * j));
      store_affine32(_mm256_and_si256(q, mask), d * sc0, dmin * m0, out + 64 * j);
      store_affine32(_mm256_and_si256(_mm256_srli_epi16(q, 4), mask), d * sc1, dmin * m1, out + 64 * j + 32);
    }
  }
}

// out (32) = s[e / 16] · (q − 32) for 32 six-bit codes; s0 for the first 16, s1 for the rest.
inline void store_q6_32(__m256i q, float s0, float s1, float* out) {
  const __m256i c = _mm256_sub_epi8(q, _mm256_set1_epi8(32));
  const __m128i lo = _mm256_castsi256_si128(c), hi = _mm256_extracti128_si256(c, 1);
  const __m256 a = _mm256_set1_ps(s0), bb = _mm256_set1_ps(s1);
  _mm256_storeu_ps(out + 0, _mm256_mul_ps(a, i8_to_ps(lo)));
  _mm256_storeu_ps(out + 8, _mm256_mul_ps(a, i8_to_ps(_mm_srli_si128(lo, 8))));
  _mm256_storeu_ps(out + 16, _mm256_mul_ps(bb, i8_to_ps(hi)));
  _mm256_storeu_ps(out + 24, _mm256_mul_ps(bb, i8_to_ps(_mm_srli_si128(hi, 8))));
}

void decode_q6_K(const BlockQ6_K* b, int64_t nblocks, float* out) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03);
  for (int64_t i = 0; i < nblocks; ++i) {
    const float d = _cvtsh_ss(b[i].d);
    const uint8_t* ql = b[i].ql;
    const uint8_t* qh = b[i].qh;
    const int8_t* sc = b[i].scales;
    // Two halves of 128: ql 64 bytes, qh 32 bytes, 8 scales (one per 16 values) each.
    for (int h = 0; h < 2; ++h, ql += 64, qh += 32, sc += 8, out += 128) {
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
      const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));
      const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4);
      const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4);
      const __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4);
      const __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4);
      const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l0, m4), h0);
      const __m256i q2 = _mm256_or_si256(_mm256_and_si256(l1, m4), h1);
      const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2);
      const __m256i q4 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3);
      store_q6_32(q1, d * sc[0], d * sc[1], out + 0);
      store_q6_32(q2, d * sc[2], d * sc[3], out + 32);
      store_q6_32(q3, d * sc[4], d * sc[5], out + 64);
      store_q6_32(q4, d * sc[6], d * sc[7], out + 96);
    }
  }
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// An R rows × T tokens register block over kc columns.
template <int R, int T>
inline void block(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t kc, float* y, int64_t ldy,
                  bool accumulate) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; k += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_ps(w + r * ldw + k);
    for (int t = 0; t < T; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * ldx + k);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  for (int t = 0; t < T; ++t) {
    for (int r = 0; r < R; ++r) {
      const float s = hsum(acc[r][t]);
      float& out = y[t * ldy + r];
      out = accumulate ? out + s : s;
    }
  }
}

template <int R>
inline void rows_block(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t tokens, int64_t kc, float* y,
                       int64_t ldy, bool accumulate) {
  int64_t t = 0;
  for (; t + 4 <= tokens; t += 4) block<R, 4>(w, ldw, x + t * ldx, ldx, kc, y + t * ldy, ldy, accumulate);
  switch (tokens - t) {
    case 3: block<R, 3>(w, ldw, x + t * ldx, ldx, kc, y + t * ldy, ldy, accumulate); break;
    case 2: block<R, 2>(w, ldw, x + t * ldx, ldx, kc, y + t * ldy, ldy, accumulate); break;
    case 1: block<R, 1>(w, ldw, x + t * ldx, ldx, kc, y + t * ldy, ldy, accumulate); break;
    default: break;
  }
}

void tile(const float* w, int64_t ldw, int64_t rows, const float* x, int64_t ldx, int64_t tokens, int64_t kc, float* y,
          int64_t ldy, bool accumulate) {
  int64_t r = 0;
  if (tokens == 1) {  // decode: four rows share each x load
    for (; r + 4 <= rows; r += 4) block<4, 1>(w + r * ldw, ldw, x, ldx, kc, y + r, ldy, accumulate);
  } else {
    for (; r + 2 <= rows; r += 2) rows_block<2>(w + r * ldw, ldw, x, ldx, tokens, kc, y + r, ldy, accumulate);
  }
  for (; r < rows; ++r) rows_block<1>(w + r * ldw, ldw, x, ldx, tokens, kc, y + r, ldy, accumulate);
}

}  // namespace

const GgmlMicrokernels& ggml_avx2_microkernels() {
  static constexpr GgmlMicrokernels k{Isa::kAvx2, decode_q4_K, decode_q6_K, tile};
  return k;
}

}  // namespace lowbit::kernels_internal
