// AVX2 attention kernels over a quantized KV cache (compiled with -mavx2 -mfma -mf16c). Twins:
// ../ref/kv_ref.cc. Codes become exact fp32 values in registers (int8/int4 through int32, e4m3 by
// bit placement times 2^120, e5m2 as the top byte of an fp16), so the FMA chains, in the
// contract's order, give the twin's bits.
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "../kv_internal.h"

namespace lowbit::kernels_internal {
namespace {

template <KvCode C>
inline __m256 load8(const uint8_t* row, int64_t j) {
  if constexpr (C == KvCode::kInt8) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + j))));
  } else if constexpr (C == KvCode::kInt4 || C == KvCode::kUint4) {
    int32_t w;
    std::memcpy(&w, row + j / 2, 4);
    const __m128i b = _mm_cvtsi32_si128(w);
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
    __m256i v = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
    if constexpr (C == KvCode::kInt4) v = _mm256_sub_epi32(v, _mm256_set1_epi32(8));
    return _mm256_cvtepi32_ps(v);
  } else if constexpr (C == KvCode::kE4m3) {
    // Sign-extend, move the magnitude bits to fp32 bits 26..20, keep sign + magnitude, × 2^120.
    const __m128i b8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + j));
    const __m256i b = _mm256_slli_epi32(_mm256_cvtepi8_epi32(b8), 20);
    const __m256i bits = _mm256_and_si256(b, _mm256_set1_epi32(static_cast<int32_t>(0x87F00000u)));
    return _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(0x1p120f));
  } else {
    const __m128i b8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + j));
    return _mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(b8), 8));
  }
}

inline float half(const uint16_t* p, int64_t i) { return p ? _cvtsh_ss(p[i]) : 1.0f; }

// ((P0+P4)+(P2+P6)) + ((P1+P5)+(P3+P7)).
inline float hsum(__m256 p) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(p), _mm256_extractf128_ps(p, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// Four tokens at a time: four independent FMA chains per group.
template <KvCode C>
void scores_impl(const KvRows& k, const float* x, const float* xsum, int64_t ntok, float* out) {
  const int64_t ng = k.width / k.group;
  int64_t t = 0;
  for (; t + 4 <= ntok; t += 4) {
    const uint8_t* r[4] = {k.codes + t * k.stride, k.codes + (t + 1) * k.stride, k.codes + (t + 2) * k.stride,
                           k.codes + (t + 3) * k.stride};
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t g = 0; g < ng; ++g) {
      __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0;
      for (int64_t j = g * k.group; j < (g + 1) * k.group; j += 8) {
        const __m256 xv = _mm256_loadu_ps(x + j);
        p0 = _mm256_fmadd_ps(xv, load8<C>(r[0], j), p0);
        p1 = _mm256_fmadd_ps(xv, load8<C>(r[1], j), p1);
        p2 = _mm256_fmadd_ps(xv, load8<C>(r[2], j), p2);
        p3 = _mm256_fmadd_ps(xv, load8<C>(r[3], j), p3);
      }
      const float d[4] = {hsum(p0), hsum(p1), hsum(p2), hsum(p3)};
      for (int u = 0; u < 4; ++u) {
        acc[u] = __builtin_fmaf(half(k.scale, (t + u) * k.pstride + g), d[u], acc[u]);
        if (k.min) acc[u] = __builtin_fmaf(_cvtsh_ss(k.min[(t + u) * k.pstride + g]), xsum[g], acc[u]);
      }
    }
    for (int u = 0; u < 4; ++u) out[t + u] = acc[u];
  }
  for (; t < ntok; ++t) {
    const uint8_t* row = k.codes + t * k.stride;
    float acc = 0.0f;
    for (int64_t g = 0; g < ng; ++g) {
      __m256 p = _mm256_setzero_ps();
      for (int64_t j = g * k.group; j < (g + 1) * k.group; j += 8) p = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), load8<C>(row, j), p);
      acc = __builtin_fmaf(half(k.scale, t * k.pstride + g), hsum(p), acc);
      if (k.min) acc = __builtin_fmaf(_cvtsh_ss(k.min[t * k.pstride + g]), xsum[g], acc);
    }
    out[t] = acc;
  }
}

// NC chunks of 8 outputs starting at j0 stay in registers over all tokens.
template <KvCode C, int NC>
void accumulate_chunks(const KvRows& v, const float* a, int64_t ntok, int64_t j0, float* out) {
  __m256 o[NC];
  int64_t g[NC];
  #pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) {
    o[c] = _mm256_loadu_ps(out + j0 + 8 * c);
    g[c] = (j0 + 8 * c) / v.group;
  }
  for (int64_t t = 0; t < ntok; ++t) {
    const uint8_t* row = v.codes + t * v.stride;
    #pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      const __m256 w = _mm256_set1_ps(a[t] * half(v.scale, t * v.pstride + g[c]));
      o[c] = _mm256_fmadd_ps(w, load8<C>(row, j0 + 8 * c), o[c]);
    }
  }
  #pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) _mm256_storeu_ps(out + j0 + 8 * c, o[c]);
}

template <KvCode C>
void accumulate_impl(const KvRows& v, const float* a, int64_t ntok, float* out) {
  int64_t j0 = 0;
  for (; j0 + 32 <= v.width; j0 += 32) accumulate_chunks<C, 4>(v, a, ntok, j0, out);
  switch ((v.width - j0) / 8) {
    case 3: accumulate_chunks<C, 3>(v, a, ntok, j0, out); break;
    case 2: accumulate_chunks<C, 2>(v, a, ntok, j0, out); break;
    case 1: accumulate_chunks<C, 1>(v, a, ntok, j0, out); break;
    default: break;
  }
  if (v.min) {
    for (int64_t g = 0; g < v.width / v.group; ++g) {
      float bias = 0.0f;
      for (int64_t t = 0; t < ntok; ++t) bias = __builtin_fmaf(a[t], _cvtsh_ss(v.min[t * v.pstride + g]), bias);
      const __m256 b = _mm256_set1_ps(bias);
      for (int64_t j = g * v.group; j < (g + 1) * v.group; j += 8) _mm256_storeu_ps(out + j, _mm256_add_ps(_mm256_loadu_ps(out + j), b));
    }
  }
}

void scores(const KvRows& k, const float* x, const float* xsum, int64_t ntok, float* out) {
  switch (k.code) {
    case KvCode::kInt8: return scores_impl<KvCode::kInt8>(k, x, xsum, ntok, out);
    case KvCode::kInt4: return scores_impl<KvCode::kInt4>(k, x, xsum, ntok, out);
    case KvCode::kUint4: return scores_impl<KvCode::kUint4>(k, x, xsum, ntok, out);
    case KvCode::kE4m3: return scores_impl<KvCode::kE4m3>(k, x, xsum, ntok, out);
    case KvCode::kE5m2: return scores_impl<KvCode::kE5m2>(k, x, xsum, ntok, out);
  }
}

void accumulate(const KvRows& v, const float* a, int64_t ntok, float* out) {
  switch (v.code) {
    case KvCode::kInt8: return accumulate_impl<KvCode::kInt8>(v, a, ntok, out);
    case KvCode::kInt4: return accumulate_impl<KvCode::kInt4>(v, a, ntok, out);
    case KvCode::kUint4: return accumulate_impl<KvCode::kUint4>(v, a, ntok, out);
    case KvCode::kE4m3: return accumulate_impl<KvCode::kE4m3>(v, a, ntok, out);
    case KvCode::kE5m2: return accumulate_impl<KvCode::kE5m2>(v, a, ntok, out);
  }
}

// fp32 rows: four tokens at a time (four independent chains), the tail of j < 8 in order.
inline float tail_dot(const float* x, const float* row, int64_t w8, int64_t width, float s) {
  for (int64_t j = w8; j < width; ++j) s = __builtin_fmaf(x[j], row[j], s);
  return s;
}

void scores_f32(const float* k, int64_t stride, int64_t width, const float* x, int64_t ntok, float* out) {
  const int64_t w8 = width / 8 * 8;
  int64_t t = 0;
  for (; t + 4 <= ntok; t += 4) {
    const float* r0 = k + t * stride;
    const float *r1 = r0 + stride, *r2 = r1 + stride, *r3 = r2 + stride;
    __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0;
    for (int64_t j = 0; j < w8; j += 8) {
      const __m256 xv = _mm256_loadu_ps(x + j);
      p0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r0 + j), p0);
      p1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r1 + j), p1);
      p2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r2 + j), p2);
      p3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r3 + j), p3);
    }
    out[t] = tail_dot(x, r0, w8, width, hsum(p0));
    out[t + 1] = tail_dot(x, r1, w8, width, hsum(p1));
    out[t + 2] = tail_dot(x, r2, w8, width, hsum(p2));
    out[t + 3] = tail_dot(x, r3, w8, width, hsum(p3));
  }
  for (; t < ntok; ++t) {
    const float* row = k + t * stride;
    __m256 p = _mm256_setzero_ps();
    for (int64_t j = 0; j < w8; j += 8) p = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(row + j), p);
    out[t] = tail_dot(x, row, w8, width, hsum(p));
  }
}

// NC chunks of 8 outputs starting at j0 stay in registers over all tokens.
template <int NC>
void accumulate_f32_chunks(const float* v, int64_t stride, const float* a, int64_t ntok, int64_t j0, float* out) {
  __m256 o[NC];
  #pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) o[c] = _mm256_loadu_ps(out + j0 + 8 * c);
  for (int64_t t = 0; t < ntok; ++t) {
    const __m256 w = _mm256_set1_ps(a[t]);
    const float* row = v + t * stride + j0;
    #pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) o[c] = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 8 * c), o[c]);
  }
  #pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) _mm256_storeu_ps(out + j0 + 8 * c, o[c]);
}

void accumulate_f32(const float* v, int64_t stride, int64_t width, const float* a, int64_t ntok, float* out) {
  int64_t j0 = 0;
  for (; j0 + 64 <= width; j0 += 64) accumulate_f32_chunks<8>(v, stride, a, ntok, j0, out);
  for (; j0 + 8 <= width; j0 += 8) accumulate_f32_chunks<1>(v, stride, a, ntok, j0, out);
  for (int64_t j = j0; j < width; ++j) {
    float o = out[j];
    for (int64_t t = 0; t < ntok; ++t) o = __builtin_fmaf(a[t], v[t * stride + j], o);
    out[j] = o;
  }
}

// NH heads × NT tokens of scores: NH·NT fma chains in registers (8 for 4 × 2: the FMA pipes stay
// full, where one head's 4 tokens left them half idle on the chains' latency); each key row loaded
// once for the NH heads. Per (head, token) the lanes and the sum are scores_f32's.
template <int NH, int NT>
void scores_f32_tile(const float* k, int64_t stride, int64_t width, int64_t w8, const float* x, int64_t ldx, int64_t t, float* out,
                     int64_t ldo) {
  __m256 p[NH][NT];
  #pragma GCC unroll 8
  for (int h = 0; h < NH; ++h) {
    #pragma GCC unroll 8
    for (int u = 0; u < NT; ++u) p[h][u] = _mm256_setzero_ps();
  }
  for (int64_t j = 0; j < w8; j += 8) {
    __m256 kv[NT];
    #pragma GCC unroll 8
    for (int u = 0; u < NT; ++u) kv[u] = _mm256_loadu_ps(k + (t + u) * stride + j);
    #pragma GCC unroll 8
    for (int h = 0; h < NH; ++h) {
      const __m256 xv = _mm256_loadu_ps(x + h * ldx + j);
      #pragma GCC unroll 8
      for (int u = 0; u < NT; ++u) p[h][u] = _mm256_fmadd_ps(xv, kv[u], p[h][u]);
    }
  }
  #pragma GCC unroll 8
  for (int h = 0; h < NH; ++h) {
    #pragma GCC unroll 8
    for (int u = 0; u < NT; ++u) out[h * ldo + t + u] = tail_dot(x + h * ldx, k + (t + u) * stride, w8, width, hsum(p[h][u]));
  }
}

template <int NH>
void scores_f32_group(const float* k, int64_t stride, int64_t width, const float* x, int64_t ldx, int64_t ntok, float* out, int64_t ldo) {
  const int64_t w8 = width / 8 * 8;
  int64_t t = 0;
  for (; t + 2 <= ntok; t += 2) scores_f32_tile<NH, 2>(k, stride, width, w8, x, ldx, t, out, ldo);
  for (; t < ntok; ++t) scores_f32_tile<NH, 1>(k, stride, width, w8, x, ldx, t, out, ldo);
}

// Heads [0, nq) in tiles of 4, then one tile of the 1..3 left: f(std::integral_constant<int, NH>, h0).
template <class F>
void by_head_tiles(int64_t nq, F&& f) {
  int64_t h = 0;
  for (; h + 4 <= nq; h += 4) f(std::integral_constant<int, 4>{}, h);
  switch (nq - h) {
    case 3: f(std::integral_constant<int, 3>{}, h); break;
    case 2: f(std::integral_constant<int, 2>{}, h); break;
    case 1: f(std::integral_constant<int, 1>{}, h); break;
    default: break;
  }
}

void scores_f32_heads(const float* k, int64_t stride, int64_t width, const float* x, int64_t ldx, int64_t nq, int64_t ntok, float* out,
                      int64_t ldo) {
  by_head_tiles(nq, [&](auto nh, int64_t h) { scores_f32_group<nh()>(k, stride, width, x + h * ldx, ldx, ntok, out + h * ldo, ldo); });
}

// NH heads × NC chunks of 8 outputs starting at j0, in registers over all tokens; each value row's
// chunk loaded once for the NH heads. Per output the fma chain over t is accumulate_f32's.
template <int NH, int NC>
void accumulate_f32_heads_chunks(const float* v, int64_t stride, const float* a, int64_t lda, int64_t ntok, int64_t j0, float* out,
                                 int64_t ldo) {
  __m256 o[NH][NC];
  #pragma GCC unroll 8
  for (int h = 0; h < NH; ++h) {
    #pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) o[h][c] = _mm256_loadu_ps(out + h * ldo + j0 + 8 * c);
  }
  for (int64_t t = 0; t < ntok; ++t) {
    const float* row = v + t * stride + j0;
    __m256 r[NC];
    #pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) r[c] = _mm256_loadu_ps(row + 8 * c);
    #pragma GCC unroll 8
    for (int h = 0; h < NH; ++h) {
      const __m256 w = _mm256_broadcast_ss(a + h * lda + t);
      #pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) o[h][c] = _mm256_fmadd_ps(w, r[c], o[h][c]);
    }
  }
  #pragma GCC unroll 8
  for (int h = 0; h < NH; ++h) {
    #pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) _mm256_storeu_ps(out + h * ldo + j0 + 8 * c, o[h][c]);
  }
}

template <int NH>
void accumulate_f32_group(const float* v, int64_t stride, int64_t width, const float* a, int64_t lda, int64_t ntok, float* out,
                          int64_t ldo) {
  int64_t j0 = 0;
  for (; j0 + 24 <= width; j0 += 24) accumulate_f32_heads_chunks<NH, 3>(v, stride, a, lda, ntok, j0, out, ldo);
  for (; j0 + 8 <= width; j0 += 8) accumulate_f32_heads_chunks<NH, 1>(v, stride, a, lda, ntok, j0, out, ldo);
  for (int h = 0; h < NH; ++h) {
    for (int64_t j = j0; j < width; ++j) {
      float o = out[h * ldo + j];
      for (int64_t t = 0; t < ntok; ++t) o = __builtin_fmaf(a[h * lda + t], v[t * stride + j], o);
      out[h * ldo + j] = o;
    }
  }
}

void accumulate_f32_heads(const float* v, int64_t stride, int64_t width, const float* a, int64_t lda, int64_t nq, int64_t ntok,
                          float* out, int64_t ldo) {
  by_head_tiles(nq, [&](auto nh, int64_t h) { accumulate_f32_group<nh()>(v, stride, width, a + h * lda, lda, ntok, out + h * ldo, ldo); });
}

}  // namespace

const KvMicrokernels& kv_avx2_microkernels() {
  static const KvMicrokernels k{Isa::kAvx2, scores, accumulate, scores_f32, accumulate_f32, scores_f32_heads, accumulate_f32_heads};
  return k;
}

}  // namespace lowbit::kernels_internal
