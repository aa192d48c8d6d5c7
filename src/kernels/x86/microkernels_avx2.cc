// AVX2 microkernels (compiled with -mavx2 -mfma -mf16c). Twins: ../ref/microkernels_ref.cc.
// Integer dot products use vpmaddubsw + vpmaddwd with the sign trick (|a| · sign(w, a)), exact
// because codes stay in [-127, 127] (pairs sum to at most 2·127·127 < 2^15); int4 codes are
// unsigned nibbles (0..15), so |pair| <= 2·15·127 and eight halves of int16 sums stay < 2^15.
// The fp8 tile accumulates each output in K order with FMA, as its twin does: bit-identical.
#include <immintrin.h>

#include "../kernels_internal.h"
#include "lowbit/formats.h"

namespace lowbit::kernels_internal {
namespace {

// Lane q of the result = horizontal sum of v[q].
inline __m256i hsum8_epi32(const __m256i* v) {
  const __m256i t0 = _mm256_hadd_epi32(v[0], v[1]), t1 = _mm256_hadd_epi32(v[2], v[3]);
  const __m256i t2 = _mm256_hadd_epi32(v[4], v[5]), t3 = _mm256_hadd_epi32(v[6], v[7]);
  const __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
  return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

inline __m256 hsum8_ps(const __m256* v) {
  const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

template <int MR>
void a8w8_tile_impl(const int8_t* a0, const int8_t* a1, const uint8_t* absa0, const uint8_t* absa1, const int8_t* w,
                    int64_t kp, int32_t* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[8];
  for (auto& v : acc) v = _mm256_setzero_si256();
  const int8_t* w0 = w;
  const int8_t* w1 = w + kp;
  const int8_t* w2 = w + 2 * kp;
  const int8_t* w3 = w + 3 * kp;
  for (int64_t k = 0; k < kp; k += 32) {
    const __m256i s0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a0 + k));
    const __m256i s1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a1 + k));
    const __m256i u0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(absa0 + k));
    const __m256i u1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(absa1 + k));
    const int8_t* wr[4] = {w0 + k, w1 + k, w2 + k, w3 + k};
    for (int j = 0; j < 4; ++j) {
      const __m256i wj = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[j]));
      acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(_mm256_maddubs_epi16(u0, _mm256_sign_epi8(wj, s0)), ones));
      if constexpr (MR == 2) {
        acc[4 + j] =
            _mm256_add_epi32(acc[4 + j], _mm256_madd_epi16(_mm256_maddubs_epi16(u1, _mm256_sign_epi8(wj, s1)), ones));
      }
    }
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), hsum8_epi32(acc));
}

// a1 == a0: one row (decode); the second row's lanes repeat the first.
void a8w8_tile(const int8_t* a0, const int8_t* a1, const uint8_t* absa0, const uint8_t* absa1, const int8_t* w,
               int64_t kp, int32_t* out) {
  if (a1 == a0) {
    a8w8_tile_impl<1>(a0, a1, absa0, absa1, w, kp, out);
    for (int j = 0; j < 4; ++j) out[4 + j] = out[j];
  } else {
    a8w8_tile_impl<2>(a0, a1, absa0, absa1, w, kp, out);
  }
}

// Low (0..31) or high (32..63) nibbles of a 32-byte chunk, as bytes.
inline __m256i nibbles(__m256i b, int half) {
  const __m256i m = _mm256_set1_epi8(0x0F);
  return half == 0 ? _mm256_and_si256(b, m) : _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
}

template <int MR>
void a8w4_tile_impl(const int8_t* a0, const int8_t* a1, const int32_t* asum0, const int32_t* asum1, const uint8_t* w,
                    const float* s, const int32_t* off, int64_t kp, int64_t group, int64_t /*ng*/, float* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t rb = kp / 2;  // bytes per weight row
  const int64_t halves_per_group = group / 32;
  __m256i acc16[8], acc32[8];
  for (int q = 0; q < 8; ++q) acc16[q] = acc32[q] = _mm256_setzero_si256();
  __m256 accf = _mm256_setzero_ps();
  int64_t h_in_group = 0, h_since_flush = 0, g = 0;
  __m256i wb[4];
  for (int64_t h = 0; h < kp / 32; ++h) {
    const int half = static_cast<int>(h & 1);
    if (half == 0) {
      for (int j = 0; j < 4; ++j) wb[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * rb + (h / 2) * 32));
    }
    const __m256i s0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a0 + h * 32));
    const __m256i s1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a1 + h * 32));
    for (int j = 0; j < 4; ++j) {
      const __m256i u = nibbles(wb[j], half);
      acc16[j] = _mm256_add_epi16(acc16[j], _mm256_maddubs_epi16(u, s0));
      if constexpr (MR == 2) acc16[4 + j] = _mm256_add_epi16(acc16[4 + j], _mm256_maddubs_epi16(u, s1));
    }
    ++h_in_group;
    ++h_since_flush;
    const bool group_end = h_in_group == halves_per_group;
    if (group_end || h_since_flush == 8) {  // 8 halves of int16 pair sums stay below 2^15
      for (int q = 0; q < 8; ++q) {
        acc32[q] = _mm256_add_epi32(acc32[q], _mm256_madd_epi16(acc16[q], ones));
        acc16[q] = _mm256_setzero_si256();
      }
      h_since_flush = 0;
    }
    if (group_end) {
      const __m256i d = hsum8_epi32(acc32);
      // Lanes q = i*4 + j: offsets and scales of the 4 weight rows, twice; asum of row i.
      const __m256i o = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(off + g * 4)));
      const __m256i as = _mm256_set_m128i(_mm_set1_epi32(asum1[g]), _mm_set1_epi32(asum0[g]));
      const __m256 sc = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(s + g * 4));
      const __m256i dd = _mm256_sub_epi32(d, _mm256_mullo_epi32(o, as));
      accf = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dd), sc, accf);
      for (int q = 0; q < 8; ++q) acc32[q] = _mm256_setzero_si256();
      h_in_group = 0;
      ++g;
    }
  }
  _mm256_storeu_ps(out, accf);
}

void a8w4_tile(const int8_t* a0, const int8_t* a1, const int32_t* asum0, const int32_t* asum1, const uint8_t* w,
               const float* s, const int32_t* off, int64_t kp, int64_t group, int64_t ng, float* out) {
  if (a1 == a0) {
    a8w4_tile_impl<1>(a0, a1, asum0, asum1, w, s, off, kp, group, ng, out);
    for (int j = 0; j < 4; ++j) out[4 + j] = out[j];
  } else {
    a8w4_tile_impl<2>(a0, a1, asum0, asum1, w, s, off, kp, group, ng, out);
  }
}

// 8 bytes at p (low half of a 128-bit lane) -> 8 floats.
inline __m256 u8x8_to_ps(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)); }

inline __m256 nf4_lookup(__m256i idx, __m256 lo, __m256 hi) {
  const __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 picks hi
}

template <int MR, bool kNf4>
void a16w4_tile_impl(const float* x0, const float* x1, const uint8_t* w, const float* s, const int32_t* off,
                     int64_t kp, int64_t group, int64_t /*ng*/, float* out) {
  const int64_t rb = kp / 2;
  const int64_t halves_per_group = group / 32;
  const __m256 lvl_lo = _mm256_loadu_ps(kNf4Levels.data()), lvl_hi = _mm256_loadu_ps(kNf4Levels.data() + 8);
  __m256 acc[8];
  for (auto& v : acc) v = _mm256_setzero_ps();
  __m256 accf = _mm256_setzero_ps();
  __m256 vo[4] = {};
  int64_t h_in_group = 0, g = 0;
  __m256i wb[4];
  for (int64_t h = 0; h < kp / 32; ++h) {
    const int half = static_cast<int>(h & 1);
    if (half == 0) {
      for (int j = 0; j < 4; ++j) wb[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * rb + (h / 2) * 32));
    }
    if (!kNf4 && h_in_group == 0) {
      for (int j = 0; j < 4; ++j) vo[j] = _mm256_set1_ps(static_cast<float>(off[g * 4 + j]));
    }
    const float* xa = x0 + h * 32;
    const float* xb = x1 + h * 32;
    for (int j = 0; j < 4; ++j) {
      const __m256i u = nibbles(wb[j], half);
      const __m128i ul = _mm256_castsi256_si128(u), uh = _mm256_extracti128_si256(u, 1);
      const __m128i parts[4] = {ul, _mm_srli_si128(ul, 8), uh, _mm_srli_si128(uh, 8)};
      for (int p = 0; p < 4; ++p) {
        __m256 v;
        if constexpr (kNf4) {
          v = nf4_lookup(_mm256_cvtepu8_epi32(parts[p]), lvl_lo, lvl_hi);
        } else {
          v = _mm256_sub_ps(u8x8_to_ps(parts[p]), vo[j]);
        }
        acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(xa + 8 * p), v, acc[j]);
        if constexpr (MR == 2) acc[4 + j] = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 8 * p), v, acc[4 + j]);
      }
    }
    if (++h_in_group == halves_per_group) {
      const __m256 p = hsum8_ps(acc);
      const __m256 sc = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(s + g * 4));
      accf = _mm256_fmadd_ps(p, sc, accf);
      for (auto& v : acc) v = _mm256_setzero_ps();
      h_in_group = 0;
      ++g;
    }
  }
  _mm256_storeu_ps(out, accf);
}

void a16w4_tile(const float* x0, const float* x1, const uint8_t* w, const float* s, const int32_t* off, int64_t kp,
                int64_t group, int64_t ng, float* out) {
  // x1 == x0: one row (decode); skip the duplicate FMAs and copy the lanes.
  const bool one = x1 == x0;
  if (off) {
    one ? a16w4_tile_impl<1, false>(x0, x1, w, s, off, kp, group, ng, out)
        : a16w4_tile_impl<2, false>(x0, x1, w, s, off, kp, group, ng, out);
  } else {
    one ? a16w4_tile_impl<1, true>(x0, x1, w, s, off, kp, group, ng, out)
        : a16w4_tile_impl<2, true>(x0, x1, w, s, off, kp, group, ng, out);
  }
  if (one) {
    for (int j = 0; j < 4; ++j) out[4 + j] = out[j];
  }
}

inline __m256 e4m3x8_to_ps(__m128i b8) {
  const __m256i b = _mm256_cvtepu8_epi32(b8);
  const __m256i mag = _mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x7F)), 20);
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x80)), 24);
  const __m256 f = _mm256_mul_ps(_mm256_castsi256_ps(mag), _mm256_set1_ps(0x1p120f));
  return _mm256_or_ps(f, _mm256_castsi256_ps(sign));
}

void fp8_decode(const uint8_t* codes, int64_t kc, float* ws) {
  for (int64_t k = 0; k < kc; ++k) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k * kFp8Nr));
    _mm256_storeu_ps(ws + k * kFp8Nr, e4m3x8_to_ps(b));
    _mm256_storeu_ps(ws + k * kFp8Nr + 8, e4m3x8_to_ps(_mm_srli_si128(b, 8)));
  }
}

template <int MR>
void fp8_tile_impl(const float* xa, int64_t ldxa, const float* ws, int64_t kc, const float* scale, float* y,
                   int64_t ldy) {
  __m256 c[MR][2];
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(ws + k * kFp8Nr), b1 = _mm256_loadu_ps(ws + k * kFp8Nr + 8);
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(xa + i * ldxa + k);
      c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
      c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    const __m256 sc = _mm256_set1_ps(scale[i]);
    float* yi = y + i * ldy;
    _mm256_storeu_ps(yi, _mm256_fmadd_ps(c[i][0], sc, _mm256_loadu_ps(yi)));
    _mm256_storeu_ps(yi + 8, _mm256_fmadd_ps(c[i][1], sc, _mm256_loadu_ps(yi + 8)));
  }
}

void fp8_tile(int mr, const float* xa, int64_t ldxa, const float* ws, int64_t kc, const float* scale, float* y,
              int64_t ldy) {
  switch (mr) {
    case 1: return fp8_tile_impl<1>(xa, ldxa, ws, kc, scale, y, ldy);
    case 2: return fp8_tile_impl<2>(xa, ldxa, ws, kc, scale, y, ldy);
    case 3: return fp8_tile_impl<3>(xa, ldxa, ws, kc, scale, y, ldy);
    case 4: return fp8_tile_impl<4>(xa, ldxa, ws, kc, scale, y, ldy);
    case 5: return fp8_tile_impl<5>(xa, ldxa, ws, kc, scale, y, ldy);
    default: return fp8_tile_impl<6>(xa, ldxa, ws, kc, scale, y, ldy);
  }
}

}  // namespace

const Microkernels& avx2_microkernels() {
  static const Microkernels k{Isa::kAvx2, a8w8_tile, a8w4_tile, a16w4_tile, fp8_decode, fp8_tile};
  return k;
}

}  // namespace lowbit::kernels_internal
