// AVX2 microkernels (compiled with -mavx2 -mfma -mf16c). Twins: ../ref/microkernels_ref.cc.
// Integer dot products use vpmaddubsw + vpmaddwd with the sign trick (|a| · sign(w, a)), exact
// because codes stay in [-127, 127] (pairs sum to at most 2·127·127 < 2^15); int4 codes are
// unsigned nibbles (0..15), so |pair| <= 2·15·127 and eight halves of int16 sums stay < 2^15.
// The fp8 tile accumulates each output in K order with FMA, as its twin does: bit-identical.
#include <immintrin.h>

#include <algorithm>

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

template <int MR>
void a8w8_tile_impl(const int8_t* a0, const int8_t* a1, const uint8_t* absa0, const uint8_t* absa1, const int8_t* w,
                    int64_t kp, int32_t* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[8];
  #pragma GCC unroll 8
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
    #pragma GCC unroll 8
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

// Per-row fp32 lane sums of one tile (4 rows): lane j = ((v_j[0]+v_j[1])+(v_j[2]+v_j[3]))+((v_j[4]+v_j[5])+(v_j[6]+v_j[7])).
inline __m128 hsum4_ps(const __m256* v) {
  const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 u = _mm256_hadd_ps(t0, t1);
  return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

// a8w4: per weight row, int16 sums of up to 8 halves (vpmaddubsw), one vpmaddwd into int32 lanes
// per group (lane q: elements with (k % 32) / 4 == q), converted and FMA'd with the group's scale into
// per-row fp32 lanes; one horizontal sum per row at the end, minus the zero-point term
// corr = Σ_g s[g] · float(off[g] · Σa) computed apart (kernels_internal.h).
template <int MR>
void a8w4_tile_impl(const int8_t* a0, const int8_t* a1, const int32_t* asum0, const int32_t* asum1, const uint8_t* w,
                    const float* s, const int32_t* off, int64_t kp, int64_t group, int64_t ng, float* out) {
  constexpr int R = 4 * MR;
  const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0x0F);
  const int64_t rb = kp / 2;  // bytes per weight row
  const int64_t hpg = group / 32;  // 32-element halves per group
  const int8_t* ar[2] = {a0, a1};
  __m256 accf[R];
  #pragma GCC unroll 8
  for (auto& v : accf) v = _mm256_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    __m256i acc32[R];
    #pragma GCC unroll 8
    for (auto& v : acc32) v = _mm256_setzero_si256();
    for (int64_t h0 = g * hpg; h0 < (g + 1) * hpg; h0 += 8) {  // 8 halves of int16 pair sums stay below 2^15
      const int64_t h1 = std::min(h0 + 8, (g + 1) * hpg);
      __m256i acc16[R];
      #pragma GCC unroll 8
      for (auto& v : acc16) v = _mm256_setzero_si256();
      int64_t h = h0;
      if (h & 1) {  // group starts on a high half (group 32)
        #pragma GCC unroll 8
        for (int j = 0; j < 4; ++j) {
          const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * rb + (h / 2) * 32));
          const __m256i u = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
          #pragma GCC unroll 8
          for (int i = 0; i < MR; ++i) {
            const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar[i] + h * 32));
            acc16[i * 4 + j] = _mm256_add_epi16(acc16[i * 4 + j], _mm256_maddubs_epi16(u, x));
          }
        }
        ++h;
      }
      for (; h + 1 < h1; h += 2) {  // whole 32-byte chunks: low nibbles then high nibbles
        // The 4 rows of a tile are contiguous (4·rb bytes) and read 4 streams at a time, each only
        // rb bytes long: too short for the hardware prefetcher to ramp up. Fetch the next tile
        // linearly instead, 128 bytes per chunk step, so it is in cache when its turn comes.
        const char* next = reinterpret_cast<const char*>(w) + 4 * rb + (h / 2) * 128;
        _mm_prefetch(next, _MM_HINT_T0);
        _mm_prefetch(next + 64, _MM_HINT_T0);
        __m256i xl[MR], xh[MR];
        #pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
          xl[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar[i] + h * 32));
          xh[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar[i] + h * 32 + 32));
        }
        #pragma GCC unroll 8
        for (int j = 0; j < 4; ++j) {
          const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * rb + (h / 2) * 32));
          const __m256i ul = _mm256_and_si256(b, m4), uh = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
          #pragma GCC unroll 8
          for (int i = 0; i < MR; ++i) {
            const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(ul, xl[i]), _mm256_maddubs_epi16(uh, xh[i]));
            acc16[i * 4 + j] = _mm256_add_epi16(acc16[i * 4 + j], p);
          }
        }
      }
      if (h < h1) {  // group ends on a low half (group 32)
        #pragma GCC unroll 8
        for (int j = 0; j < 4; ++j) {
          const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * rb + (h / 2) * 32));
          const __m256i u = _mm256_and_si256(b, m4);
          #pragma GCC unroll 8
          for (int i = 0; i < MR; ++i) {
            const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar[i] + h * 32));
            acc16[i * 4 + j] = _mm256_add_epi16(acc16[i * 4 + j], _mm256_maddubs_epi16(u, x));
          }
        }
      }
      #pragma GCC unroll 8
      for (int q = 0; q < R; ++q) acc32[q] = _mm256_add_epi32(acc32[q], _mm256_madd_epi16(acc16[q], ones));
    }
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      #pragma GCC unroll 8
      for (int j = 0; j < 4; ++j) {
        accf[i * 4 + j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc32[i * 4 + j]), _mm256_broadcast_ss(s + g * 4 + j),
                                          accf[i * 4 + j]);
      }
    }
  }
  // Zero-point term per (row, weight row), in group order; one 128-bit lane per activation row.
  const int32_t* asum[2] = {asum0, asum1};
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    __m128 corr = _mm_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
      const __m128i o = _mm_loadu_si128(reinterpret_cast<const __m128i*>(off + g * 4));
      const __m128 t = _mm_cvtepi32_ps(_mm_mullo_epi32(o, _mm_set1_epi32(asum[i][g])));
      corr = _mm_fmadd_ps(t, _mm_loadu_ps(s + g * 4), corr);
    }
    _mm_storeu_ps(out + i * 4, _mm_sub_ps(hsum4_ps(accf + i * 4), corr));
  }
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

inline __m256 nf4_lookup(__m256i idx, __m256 lo, __m256 hi) {
  const __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 picks hi
}

// a16w4: per weight row, fp32 lanes over a group (lane q: elements with k % 8 == q), FMA'd with the
// group's scale into per-row fp32 lanes; one horizontal sum per row at the end. One vpmovzxbd of 8
// packed bytes gives 8 low nibbles (elements 8p.., low half) and 8 high ones (32 + 8p..), used in that
// order (kernels_internal.h). The weight is float(u − off) (int4: the offset subtracted exactly in
// int32, so no cancellation against Σ x·u) or level[u] (nf4).
template <int MR, bool kNf4>
void a16w4_tile_impl(const float* x0, const float* x1, const uint8_t* w, const float* s, const int32_t* off, int64_t kp,
                     int64_t group, int64_t ng, float* out) {
  constexpr int R = 4 * MR;
  const int64_t rb = kp / 2;
  const int64_t hpg = group / 32;
  const __m256 lvl_lo = _mm256_loadu_ps(kNf4Levels.data()), lvl_hi = _mm256_loadu_ps(kNf4Levels.data() + 8);
  const __m256i m4 = _mm256_set1_epi32(0x0F);
  const float* xr[2] = {x0, x1};
  __m256 accf[R];
#pragma GCC unroll 8
  for (auto& v : accf) v = _mm256_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    __m256 acc[R];
#pragma GCC unroll 8
    for (auto& v : acc) v = _mm256_setzero_ps();
    const int32_t* og = kNf4 ? nullptr : off + g * 4;
    auto weight = [&](__m256i u, int j) {
      return kNf4 ? nf4_lookup(u, lvl_lo, lvl_hi) : _mm256_cvtepi32_ps(_mm256_sub_epi32(u, _mm256_set1_epi32(og[j])));
    };
    // One half (32 elements) alone: a group that starts or ends inside a 64-element chunk.
    auto half = [&](int64_t h) {
      const bool high = (h & 1) != 0;
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        __m256 xv[MR];
#pragma GCC unroll 2
        for (int i = 0; i < MR; ++i) xv[i] = _mm256_loadu_ps(xr[i] + h * 32 + 8 * p);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const __m256i d = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + j * rb + (h / 2) * 32 + 8 * p)));
          const __m256 v = weight(high ? _mm256_srli_epi32(d, 4) : _mm256_and_si256(d, m4), j);
#pragma GCC unroll 2
          for (int i = 0; i < MR; ++i) acc[i * 4 + j] = _mm256_fmadd_ps(xv[i], v, acc[i * 4 + j]);
        }
      }
    };
    int64_t h = g * hpg;
    const int64_t hend = (g + 1) * hpg;
    if (h & 1) half(h++);
    for (; h + 1 < hend; h += 2) {  // whole chunks: for each 8 bytes, its low nibbles then its high nibbles
      const uint8_t* wc = w + (h / 2) * 32;
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        __m256 xl[MR], xh[MR];
#pragma GCC unroll 2
        for (int i = 0; i < MR; ++i) {
          xl[i] = _mm256_loadu_ps(xr[i] + h * 32 + 8 * p);
          xh[i] = _mm256_loadu_ps(xr[i] + h * 32 + 32 + 8 * p);
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const __m256i d = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(wc + j * rb + 8 * p)));
          const __m256 vl = weight(_mm256_and_si256(d, m4), j), vh = weight(_mm256_srli_epi32(d, 4), j);
#pragma GCC unroll 2
          for (int i = 0; i < MR; ++i) {
            acc[i * 4 + j] = _mm256_fmadd_ps(xl[i], vl, acc[i * 4 + j]);
            acc[i * 4 + j] = _mm256_fmadd_ps(xh[i], vh, acc[i * 4 + j]);
          }
        }
      }
    }
    if (h < hend) half(h);
#pragma GCC unroll 2
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        accf[i * 4 + j] = _mm256_fmadd_ps(acc[i * 4 + j], _mm256_broadcast_ss(s + g * 4 + j), accf[i * 4 + j]);
      }
    }
  }
#pragma GCC unroll 2
  for (int i = 0; i < MR; ++i) _mm_storeu_ps(out + i * 4, hsum4_ps(accf + i * 4));
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

void a16w4_decode(const uint8_t* w, const int32_t* off, int64_t kp, int64_t group, float* panel, int64_t kc,
                  int64_t block) {
  const __m256 lvl_lo = _mm256_loadu_ps(kNf4Levels.data()), lvl_hi = _mm256_loadu_ps(kNf4Levels.data() + 8);
  const __m256i m4 = _mm256_set1_epi32(0x0F);
  auto at = [&](int j, int64_t k) { return panel + (k / kc) * block + j * kc + k % kc; };
  // group and kc are multiples of 32: each half of a 64-element chunk lies in one group and one K block.
  for (int j = 0; j < 4; ++j) {
    const uint8_t* wj = w + j * (kp / 2);
    for (int64_t c = 0; c < kp; c += kChunk) {
      float* plo = at(j, c);
      float* phi = at(j, c + 32);
      const __m256i olo = _mm256_set1_epi32(off ? off[c / group * 4 + j] : 0);
      const __m256i ohi = _mm256_set1_epi32(off ? off[(c + 32) / group * 4 + j] : 0);
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const __m256i d = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(wj + c / 2 + 8 * p)));
        const __m256i lo = _mm256_and_si256(d, m4), hi = _mm256_srli_epi32(d, 4);
        if (off) {
          _mm256_storeu_ps(plo + 8 * p, _mm256_cvtepi32_ps(_mm256_sub_epi32(lo, olo)));
          _mm256_storeu_ps(phi + 8 * p, _mm256_cvtepi32_ps(_mm256_sub_epi32(hi, ohi)));
        } else {
          _mm256_storeu_ps(plo + 8 * p, nf4_lookup(lo, lvl_lo, lvl_hi));
          _mm256_storeu_ps(phi + 8 * p, nf4_lookup(hi, lvl_lo, lvl_hi));
        }
      }
    }
  }
}

// MR activation rows × the 4 decoded weight rows: 4·MR accumulators (12 at MR = 3), MR activation
// vectors and one weight vector fit the 16 ymm registers; the lanes are updated in memory once a group.
template <int MR>
void a16w4_panel_impl(const float* x, int64_t ldx, const float* pn, int64_t ldp, int64_t k0, const float* s, int64_t group,
                      int64_t g0, int64_t g1, float* lanes) {
  for (int64_t g = g0; g < g1; ++g) {
    __m256 acc[MR * 4];
#pragma GCC unroll 12
    for (auto& v : acc) v = _mm256_setzero_ps();
    auto step = [&](int64_t k) {
      __m256 xv[MR];
#pragma GCC unroll 3
      for (int i = 0; i < MR; ++i) xv[i] = _mm256_loadu_ps(x + i * ldx + (k - k0));
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m256 wv = _mm256_loadu_ps(pn + j * ldp + (k - k0));
#pragma GCC unroll 3
        for (int i = 0; i < MR; ++i) acc[i * 4 + j] = _mm256_fmadd_ps(xv[i], wv, acc[i * 4 + j]);
      }
    };
    int64_t h = g * group / 32;
    const int64_t hend = (g + 1) * group / 32;
    if (h & 1) {  // a group that starts inside a 64-element chunk: its first half alone
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) step(h * 32 + 8 * p);
      ++h;
    }
    for (; h + 1 < hend; h += 2) {  // whole chunks: each 8 of the low half, then of the high half
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        step(h * 32 + 8 * p);
        step(h * 32 + 32 + 8 * p);
      }
    }
    if (h < hend) {
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) step(h * 32 + 8 * p);
    }
#pragma GCC unroll 3
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        float* l = lanes + (i * 4 + j) * 8;
        _mm256_storeu_ps(l, _mm256_fmadd_ps(acc[i * 4 + j], _mm256_broadcast_ss(s + g * 4 + j), _mm256_loadu_ps(l)));
      }
    }
  }
}

void a16w4_panel(int mr, const float* x, int64_t ldx, const float* panel, int64_t ldp, int nt, int64_t tstride, int64_t k0,
                 const float* s, int64_t sstride, int64_t group, int64_t g0, int64_t g1, float* lanes) {
  for (int t = 0; t < nt; ++t) {
    const float* pt = panel + t * tstride;
    const float* st = s + t * sstride;
    float* lt = lanes + t * kA16W4Lanes;
    switch (mr) {
      case 1: a16w4_panel_impl<1>(x, ldx, pt, ldp, k0, st, group, g0, g1, lt); break;
      case 2: a16w4_panel_impl<2>(x, ldx, pt, ldp, k0, st, group, g0, g1, lt); break;
      default: a16w4_panel_impl<3>(x, ldx, pt, ldp, k0, st, group, g0, g1, lt); break;
    }
  }
}

// 8 e4m3 codes (low 8 bytes) -> 8 floats: sign-extend, shift the magnitude bits to fp32 bits 26..20 (the
// sign copies land in 31..27), keep sign + magnitude, times 2^120 (exact, subnormals included).
inline __m256 e4m3x8_to_ps(__m128i b8) {
  const __m256i b = _mm256_slli_epi32(_mm256_cvtepi8_epi32(b8), 20);
  const __m256i bits = _mm256_and_si256(b, _mm256_set1_epi32(static_cast<int32_t>(0x87F00000u)));
  return _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(0x1p120f));
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
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(ws + k * kFp8Nr), b1 = _mm256_loadu_ps(ws + k * kFp8Nr + 8);
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(xa + i * ldxa + k);
      c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
      c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
    }
  }
  #pragma GCC unroll 8
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

template <int MR>
void fp8_tile_cs_impl(const float* xa, int64_t ldxa, const float* ws, int64_t kc, const float* row_scale,
                      const float* col_scale, float* y, int64_t ldy) {
  __m256 c[MR][2];
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(ws + k * kFp8Nr), b1 = _mm256_loadu_ps(ws + k * kFp8Nr + 8);
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(xa + i * ldxa + k);
      c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
      c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
    }
  }
  const __m256 cs0 = _mm256_loadu_ps(col_scale), cs1 = _mm256_loadu_ps(col_scale + 8);
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const __m256 rs = _mm256_set1_ps(row_scale[i]);
    float* yi = y + i * ldy;
    _mm256_storeu_ps(yi, _mm256_fmadd_ps(c[i][0], _mm256_mul_ps(rs, cs0), _mm256_loadu_ps(yi)));
    _mm256_storeu_ps(yi + 8, _mm256_fmadd_ps(c[i][1], _mm256_mul_ps(rs, cs1), _mm256_loadu_ps(yi + 8)));
  }
}

void fp8_tile_cs(int mr, const float* xa, int64_t ldxa, const float* ws, int64_t kc, const float* row_scale,
                 const float* col_scale, float* y, int64_t ldy) {
  switch (mr) {
    case 1: return fp8_tile_cs_impl<1>(xa, ldxa, ws, kc, row_scale, col_scale, y, ldy);
    case 2: return fp8_tile_cs_impl<2>(xa, ldxa, ws, kc, row_scale, col_scale, y, ldy);
    case 3: return fp8_tile_cs_impl<3>(xa, ldxa, ws, kc, row_scale, col_scale, y, ldy);
    case 4: return fp8_tile_cs_impl<4>(xa, ldxa, ws, kc, row_scale, col_scale, y, ldy);
    case 5: return fp8_tile_cs_impl<5>(xa, ldxa, ws, kc, row_scale, col_scale, y, ldy);
    default: return fp8_tile_cs_impl<6>(xa, ldxa, ws, kc, row_scale, col_scale, y, ldy);
  }
}

// 2·MR independent accumulator chains, each lane the scalar twin's chain for its (i, j); the
// multiplies and adds stay separate instructions (the file is built with -ffp-contract=off).
template <int MR, bool PROMOTED>
void fp8_tile_limited_impl(const float* xa, int64_t ldxa, const float* ws, int64_t kc, const float* row_scale,
                           const float* col_scale, uint32_t mask, float* y, int64_t ldy) {
  const __m256 keep = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(mask)));
  const __m256 cs0 = _mm256_loadu_ps(col_scale), cs1 = _mm256_loadu_ps(col_scale + 8);
  __m256 s[MR][2], c[MR][2];
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const __m256 rs = _mm256_set1_ps(row_scale[i]);
    s[i][0] = _mm256_mul_ps(rs, cs0);
    s[i][1] = _mm256_mul_ps(rs, cs1);
    if (PROMOTED) {
      c[i][0] = c[i][1] = _mm256_setzero_ps();
    } else {
      c[i][0] = _mm256_loadu_ps(y + i * ldy);
      c[i][1] = _mm256_loadu_ps(y + i * ldy + 8);
    }
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(ws + k * kFp8Nr), b1 = _mm256_loadu_ps(ws + k * kFp8Nr + 8);
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(xa + i * ldxa + k);
      __m256 p0 = _mm256_mul_ps(a, b0), p1 = _mm256_mul_ps(a, b1);
      if (!PROMOTED) {
        p0 = _mm256_mul_ps(p0, s[i][0]);
        p1 = _mm256_mul_ps(p1, s[i][1]);
      }
      c[i][0] = _mm256_and_ps(_mm256_add_ps(c[i][0], p0), keep);
      c[i][1] = _mm256_and_ps(_mm256_add_ps(c[i][1], p1), keep);
    }
  }
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    float* yi = y + i * ldy;
    if (PROMOTED) {
      c[i][0] = _mm256_fmadd_ps(c[i][0], s[i][0], _mm256_loadu_ps(yi));
      c[i][1] = _mm256_fmadd_ps(c[i][1], s[i][1], _mm256_loadu_ps(yi + 8));
    }
    _mm256_storeu_ps(yi, c[i][0]);
    _mm256_storeu_ps(yi + 8, c[i][1]);
  }
}

template <bool PROMOTED>
void fp8_tile_limited_mode(int mr, const float* xa, int64_t ldxa, const float* ws, int64_t kc, const float* row_scale,
                           const float* col_scale, uint32_t mask, float* y, int64_t ldy) {
  switch (mr) {
    case 1: return fp8_tile_limited_impl<1, PROMOTED>(xa, ldxa, ws, kc, row_scale, col_scale, mask, y, ldy);
    case 2: return fp8_tile_limited_impl<2, PROMOTED>(xa, ldxa, ws, kc, row_scale, col_scale, mask, y, ldy);
    case 3: return fp8_tile_limited_impl<3, PROMOTED>(xa, ldxa, ws, kc, row_scale, col_scale, mask, y, ldy);
    case 4: return fp8_tile_limited_impl<4, PROMOTED>(xa, ldxa, ws, kc, row_scale, col_scale, mask, y, ldy);
    case 5: return fp8_tile_limited_impl<5, PROMOTED>(xa, ldxa, ws, kc, row_scale, col_scale, mask, y, ldy);
    default: return fp8_tile_limited_impl<6, PROMOTED>(xa, ldxa, ws, kc, row_scale, col_scale, mask, y, ldy);
  }
}

void fp8_tile_limited(int mr, const float* xa, int64_t ldxa, const float* ws, int64_t kc, const float* row_scale,
                      const float* col_scale, int bits, bool promoted, float* y, int64_t ldy) {
  const uint32_t mask = significand_mask(bits);
  if (promoted) return fp8_tile_limited_mode<true>(mr, xa, ldxa, ws, kc, row_scale, col_scale, mask, y, ldy);
  return fp8_tile_limited_mode<false>(mr, xa, ldxa, ws, kc, row_scale, col_scale, mask, y, ldy);
}

// NP panels side by side: 2·NP independent FMA chains (one panel alone is latency-bound).
template <int NP>
void fp8_gemv_impl(const uint8_t* codes, int64_t pstride, const float* xa, int64_t kc, float scale, float* y) {
  __m256 c[NP][2];
#pragma GCC unroll 4
  for (int p = 0; p < NP; ++p) c[p][0] = c[p][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 a = _mm256_broadcast_ss(xa + k);
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + p * pstride + k * kFp8Nr));
      c[p][0] = _mm256_fmadd_ps(a, e4m3x8_to_ps(b), c[p][0]);
      c[p][1] = _mm256_fmadd_ps(a, e4m3x8_to_ps(_mm_srli_si128(b, 8)), c[p][1]);
    }
  }
  const __m256 sc = _mm256_set1_ps(scale);
#pragma GCC unroll 4
  for (int p = 0; p < NP; ++p) {
    float* yp = y + p * kFp8Nr;
    _mm256_storeu_ps(yp, _mm256_fmadd_ps(c[p][0], sc, _mm256_loadu_ps(yp)));
    _mm256_storeu_ps(yp + 8, _mm256_fmadd_ps(c[p][1], sc, _mm256_loadu_ps(yp + 8)));
  }
}

void fp8_gemv(const uint8_t* codes, int64_t pstride, int np, const float* xa, int64_t kc, float scale, float* y) {
  int p = 0;
  for (; p + 4 <= np; p += 4) fp8_gemv_impl<4>(codes + p * pstride, pstride, xa, kc, scale, y + p * kFp8Nr);
  switch (np - p) {
    case 3: return fp8_gemv_impl<3>(codes + p * pstride, pstride, xa, kc, scale, y + p * kFp8Nr);
    case 2: return fp8_gemv_impl<2>(codes + p * pstride, pstride, xa, kc, scale, y + p * kFp8Nr);
    case 1: return fp8_gemv_impl<1>(codes + p * pstride, pstride, xa, kc, scale, y + p * kFp8Nr);
    default: return;
  }
}

}  // namespace

const Microkernels& avx2_microkernels() {
  static const Microkernels k{Isa::kAvx2, a8w8_tile, a8w4_tile,   a16w4_tile,      a16w4_decode, a16w4_panel,
                              fp8_decode, fp8_tile,  fp8_gemv,    fp8_tile_cs,     fp8_tile_limited};
  return k;
}

}  // namespace lowbit::kernels_internal
