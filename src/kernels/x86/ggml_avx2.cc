// AVX2 ggml k-quant microkernels (compiled with -mavx2 -mfma -mf16c). Twins: ../ref/ggml_ref.cc.
// Decoding forms each value exactly as ggml's dequantize_row_* does (the scale products in fp32,
// then one multiply and, for Q4_K, one subtract, never fused), so it matches the twin bit for
// bit; the tile keeps an 8-lane FMA accumulator per (row, token), so its sums differ from the
// twin's column-order ones only by rounding.
#include <immintrin.h>

#include <cmath>
#include <cstring>

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
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; k += 8) {
    __m256 wv[R];
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_ps(w + r * ldw + k);
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * ldx + k);
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    #pragma GCC unroll 8
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

// --- Q8_K activations and the integer k-quant dot products (twins: dot_q4_K / dot_q6_K in
// ../ref/ggml_ref.cc, which spell out the lanes below). Each int32 lane l of a block's sum holds
// bytes 4l..4l+3 of every 32-byte code vector (exact); per block, lane l of an fp32 accumulator
// takes fma(a.d · d, float(lane l), acc[l]); the lanes are summed once at the end in hsum's tree
// order. The twin does exactly these roundings (std::fma), so both levels give the same bits.

void quantize_q8_K(const float* x, int64_t nblocks, BlockQ8_K* out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m256i top = _mm256_set1_epi32(127);
  for (int64_t i = 0; i < nblocks; ++i, x += kGgmlQK_K) {
    BlockQ8_K& b = out[i];
    __m256 mx = _mm256_setzero_ps();  // max_ps(|x|, mx) keeps mx where |x| is NaN, as the twin's `>` does
    for (int j = 0; j < kGgmlQK_K; j += 8) mx = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), mx);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    std::memset(b.bsums, 0, sizeof b.bsums);
    if (amax == 0.0f) {
      b.d = 0.0f;
      std::memset(b.qs, 0, sizeof b.qs);
      continue;
    }
    float max = 0.0f;  // the first value of that magnitude, with its sign
    for (int j = 0; j < kGgmlQK_K; ++j) {
      if (std::fabs(x[j]) == amax) {
        max = x[j];
        break;
      }
    }
    const float iscale = -127.0f / max;
    const __m256 vs = _mm256_set1_ps(iscale);
    for (int j = 0; j < kGgmlQK_K; j += 32) {
      __m256i q[4];
      for (int u = 0; u < 4; ++u) {
        q[u] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 8 * u))), top);
      }
      const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(b.qs + j), _mm256_permutevar8x32_epi32(p, order));
    }
    for (int g = 0; g < kGgmlQK_K / 16; ++g) {
      int s = 0;
      for (int l = 0; l < 16; ++l) s += b.qs[16 * g + l];
      b.bsums[g] = static_cast<int16_t>(s);
    }
    b.d = 1.0f / iscale;
  }
}

inline float hsum4(__m128 s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}


// A Q4_K block's eight 6-bit scales and mins as bytes [sc0..sc7, m0..m7] (ggml_scale_min_k4's bit
// layout, all sixteen at once): s points at the block's 12 scale bytes, and the 16-byte load reads
// 4 bytes of its codes too (never past the block).
inline __m128i q4_K_scales_mins(const uint8_t* s) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
  // a: [q0..3, q8..11, q4..7, q8..11]; b: the bytes whose top two bits become bits 4..5 of sc4..7 / m4..7.
  const __m128i a = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
  const __m128i b = _mm_shuffle_epi8(v, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
  const __m128i lo = _mm_and_si128(a, _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(a, 4), _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15));
  const __m128i top = _mm_and_si128(_mm_srli_epi16(b, 2), _mm_set1_epi8(0x30));
  return _mm_or_si128(_mm_or_si128(lo, hi), top);
}

// Byte k of each 128-bit half of v, zero-extended into every int16 lane of that half (pshufb).
inline __m256i byte_to_i16(__m256i v, int k) { return _mm256_shuffle_epi8(v, _mm256_set1_epi16(static_cast<int16_t>(0x8000 | k))); }

template <int T>
void dot_q4_K_t(const BlockQ4_K* w, const BlockQ8_K* a, int64_t nb, float* y, int64_t ldy) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc[T];
  __m128 accm[T];
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps(), accm[t] = _mm_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    if (T == 1) {  // decode streams the weights once: lines 16 blocks ahead into L1, 64 blocks ahead into L2/L3
      const char* ahead = reinterpret_cast<const char*>(w + b) + 16 * sizeof(BlockQ4_K);
      _mm_prefetch(ahead, _MM_HINT_T0);
      _mm_prefetch(ahead + 64, _MM_HINT_T0);
      _mm_prefetch(ahead + 128, _MM_HINT_T0);
      const char* far = reinterpret_cast<const char*>(w + b) + 64 * sizeof(BlockQ4_K);
      _mm_prefetch(far, _MM_HINT_T2);
      _mm_prefetch(far + 64, _MM_HINT_T2);
      _mm_prefetch(far + 128, _MM_HINT_T2);
    }
    const __m128i sm8 = q4_K_scales_mins(w[b].scales);
    const __m256i scales = _mm256_broadcastsi128_si256(sm8);           // bytes sc0..7 in both halves
    const __m128i mins = _mm_unpackhi_epi8(sm8, _mm_setzero_si128());  // int16 m0..7
    __m256i sumi[T];
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    #pragma GCC unroll 8
    for (int j = 0; j < 4; ++j) {
      const __m256i q4 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs + 32 * j));
      const __m256i lo = _mm256_and_si256(q4, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
      const __m256i sl = byte_to_i16(scales, 2 * j), sh = byte_to_i16(scales, 2 * j + 1);
      #pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const int8_t* q8 = a[t * nb + b].qs + 64 * j;
        const __m256i pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8))), sl);
        const __m256i ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + 32))), sh);
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(pl, ph));
      }
    }
    uint32_t dm;  // d and dmin, two fp16 side by side
    std::memcpy(&dm, &w[b].d, sizeof dm);
    const __m128 wdm = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(dm)));  // [d, dmin, 0, 0]
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const BlockQ8_K& ab = a[t * nb + b];
      const __m128 s = _mm_mul_ps(_mm_set1_ps(ab.d), wdm);  // [a.d · d, a.d · dmin]: the twin's products
      acc[t] = _mm256_fmadd_ps(_mm256_broadcastss_ps(s), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
      const __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ab.bsums)),
                                           _mm_loadu_si128(reinterpret_cast<const __m128i*>(ab.bsums + 8)));
      accm[t] = _mm_fmadd_ps(_mm_permute_ps(s, 0x55), _mm_cvtepi32_ps(_mm_madd_epi16(mins, pairs)), accm[t]);
    }
  }
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) y[t * ldy] = hsum(acc[t]) - hsum4(accm[t]);
}

void dot_q4_K(const BlockQ4_K* w, const BlockQ8_K* a, int64_t nblocks, int64_t tokens, float* y, int64_t ldy) {
  int64_t t = 0;
  for (; t + 4 <= tokens; t += 4) dot_q4_K_t<4>(w, a + t * nblocks, nblocks, y + t * ldy, ldy);
  for (; t < tokens; ++t) dot_q4_K_t<1>(w, a + t * nblocks, nblocks, y + t * ldy, ldy);
}

template <int T>
void dot_q6_K_t(const BlockQ6_K* w, const BlockQ8_K* a, int64_t nb, float* y, int64_t ldy) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  __m256 acc[T];
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const BlockQ6_K& wb = w[b];
    if (T == 1) {
      const char* ahead = reinterpret_cast<const char*>(w + b) + 16 * sizeof(BlockQ6_K);
      const char* far = reinterpret_cast<const char*>(w + b) + 64 * sizeof(BlockQ6_K);
      #pragma GCC unroll 8
      for (int l = 0; l < 4; ++l) _mm_prefetch(ahead + 64 * l, _MM_HINT_T0);
      #pragma GCC unroll 8
      for (int l = 0; l < 4; ++l) _mm_prefetch(far + 64 * l, _MM_HINT_T2);
    }
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.scales));
    const __m256i scales16 = _mm256_cvtepi8_epi16(sc8);  // int16 sc0..15
    // Each half's eight int16 scales in both 128-bit halves, so one pshufb forms [sc[k] × 8, sc[k+1] × 8].
    const __m256i sc_half[2] = {_mm256_permute2x128_si256(scales16, scales16, 0x00),
                                _mm256_permute2x128_si256(scales16, scales16, 0x11)};
    __m256i sumi[T];
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    #pragma GCC unroll 8
    for (int h = 0; h < 2; ++h) {  // two halves of 128: ql 64 bytes, qh 32 bytes, 8 scales
      const uint8_t* ql = wb.ql + 64 * h;
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
      const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qh + 32 * h));
      __m256i q[4];  // values 32i .. 32i+31 of the half, codes 0..63 (stored + 32)
      // Bit pair 2i of each qh byte lands in bits 4..5 (the 16-bit shifts only carry bits across a
      // byte boundary into the positions the 0x30 mask clears).
      q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
      q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
      q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m30));
      q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
      #pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) {
        // maddubs pairs 0..7 come from values 0..15 (scale k), pairs 8..15 from 16..31 (k+1):
        // int16 lanes [sc[k] × 8, sc[k+1] × 8].
        const int k = 2 * (2 * i), k1 = 2 * (2 * i + 1);  // byte offsets of int16 lanes 2i, 2i+1 of the half
        const __m256i scale = _mm256_shuffle_epi8(
            sc_half[h], _mm256_setr_epi8(k, k + 1, k, k + 1, k, k + 1, k, k + 1, k, k + 1, k, k + 1, k, k + 1, k, k + 1, k1, k1 + 1,
                                         k1, k1 + 1, k1, k1 + 1, k1, k1 + 1, k1, k1 + 1, k1, k1 + 1, k1, k1 + 1, k1, k1 + 1));
        #pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const int8_t* q8 = a[t * nb + b].qs + 128 * h + 32 * i;
          const __m256i p = _mm256_maddubs_epi16(q[i], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8)));
          sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(p, scale));
        }
      }
    }
    const float wd = _cvtsh_ss(wb.d);
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const BlockQ8_K& ab = a[t * nb + b];
      // Codes are stored + 32: subtract 32 · Σ scale · bsum, lane l holding groups 2l and 2l+1.
      const __m256i bias = _mm256_madd_epi16(scales16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.bsums)));
      const __m256i si = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(bias, 5));
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(ab.d * wd), _mm256_cvtepi32_ps(si), acc[t]);
    }
  }
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) y[t * ldy] = hsum(acc[t]);
}

void dot_q6_K(const BlockQ6_K* w, const BlockQ8_K* a, int64_t nblocks, int64_t tokens, float* y, int64_t ldy) {
  int64_t t = 0;
  for (; t + 4 <= tokens; t += 4) dot_q6_K_t<4>(w, a + t * nblocks, nblocks, y + t * ldy, ldy);
  for (; t < tokens; ++t) dot_q6_K_t<1>(w, a + t * nblocks, nblocks, y + t * ldy, ldy);
}

}  // namespace

const GgmlMicrokernels& ggml_avx2_microkernels() {
  static constexpr GgmlMicrokernels k{Isa::kAvx2, decode_q4_K, decode_q6_K, tile, quantize_q8_K, dot_q4_K, dot_q6_K};
  return k;
}

}  // namespace lowbit::kernels_internal
