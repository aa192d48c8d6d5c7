// AVX2 training GEMMs (compiled with -mavx2 -mfma -mf16c -ffp-contract=off). Twins:
// ../ref/gemm_f32_ref.cc. Register tiles share each load across several outputs; every output
// keeps the contract's order (include/lowbit/gemm_f32.h): xwt's eight partial sums are one
// register's lanes, dx and dw add their rounded products one at a time in the same order, with
// separate multiply and add (no FMA; -ffp-contract=off keeps the compiler from fusing them).
#include <immintrin.h>

#include <algorithm>

#include "../gemm_f32_internal.h"

namespace lowbit::kernels_internal {
namespace {

// ((s0+s4)+(s1+s5))+((s2+s6)+(s3+s7)) of eight lanes, plus the scalar tail i = C8 .. C-1 into lane i-C8.
inline float finish(__m256 acc, const float* a, const float* b, int C8, int C) {
  alignas(32) float s[8];
  _mm256_store_ps(s, acc);
  for (int i = C8, j = 0; i < C; ++i, ++j) s[j] += a[i] * b[i];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

// y[n+a, o+b] for a < NB tokens, b < OB rows of W.
template <int NB, int OB>
void xwt_tile(float* y, const float* x, const float* W, int C, int OC, int64_t n, int64_t o) {
  const int C8 = C & ~7;
  __m256 acc[NB][OB];
  #pragma GCC unroll 8
  for (int a = 0; a < NB; ++a) {
    #pragma GCC unroll 8
    for (int b = 0; b < OB; ++b) acc[a][b] = _mm256_setzero_ps();
  }
  const float* xr[NB];
  const float* wr[OB];
  #pragma GCC unroll 8
  for (int a = 0; a < NB; ++a) xr[a] = x + (n + a) * C;
  #pragma GCC unroll 8
  for (int b = 0; b < OB; ++b) wr[b] = W + (o + b) * C;
  for (int i = 0; i < C8; i += 8) {
    __m256 w[OB];
    #pragma GCC unroll 8
    for (int b = 0; b < OB; ++b) w[b] = _mm256_loadu_ps(wr[b] + i);
    #pragma GCC unroll 8
    for (int a = 0; a < NB; ++a) {
      const __m256 xv = _mm256_loadu_ps(xr[a] + i);
      #pragma GCC unroll 8
      for (int b = 0; b < OB; ++b) acc[a][b] = _mm256_add_ps(acc[a][b], _mm256_mul_ps(xv, w[b]));
    }
  }
  #pragma GCC unroll 8
  for (int a = 0; a < NB; ++a) {
    #pragma GCC unroll 8
    for (int b = 0; b < OB; ++b) y[(n + a) * OC + o + b] = finish(acc[a][b], xr[a], wr[b], C8, C);
  }
}

// Register tiles. Each needs its accumulators, the operands it shares, and one register for a
// product (no FMA here), within the 16 ymm registers; one more and GCC re-reads an operand from
// memory for every multiply (4 × 3 for xwt: 16 loads per 12 products). Chosen by bench_train_gemm
// on SmolLM2's shapes (docs/results.md).
//   xwt: 3 tokens × 3 rows of W: 9 accumulators, 3 rows of W, 1 of x, 1 product.
//   dx:  6 tokens × 2 vectors of columns: 12 accumulators, 2 of W, 1 broadcast of dy, 1 product.
//   dw:  6 rows of dW × 2 vectors of columns: 12 accumulators, 2 of x, 1 broadcast, 1 product.
constexpr int kXnb = 3, kXob = 3, kDnb = 6, kDcb = 2, kWob = 6, kWcb = 2;

template <int OB>
void xwt_rows(float* y, const float* x, const float* W, int64_t N, int C, int OC, int64_t o) {
  int64_t n = 0;
  for (; n + kXnb <= N; n += kXnb) xwt_tile<kXnb, OB>(y, x, W, C, OC, n, o);
  for (; n < N; ++n) xwt_tile<1, OB>(y, x, W, C, OC, n, o);
}

void xwt(float* y, const float* x, const float* W, int64_t N, int C, int OC, int64_t o0, int64_t o1) {
  int64_t o = o0;
  for (; o + kXob <= o1; o += kXob) xwt_rows<kXob>(y, x, W, N, C, OC, o);
  for (; o < o1; ++o) xwt_rows<1>(y, x, W, N, C, OC, o);
}

// Rows of W (dx) or tokens (dw) per pass: the block stays in L2 while the other side streams.
#ifndef KBLOCK
#define KBLOCK 128
#endif
constexpr int64_t kBlock = KBLOCK;

// dx[n+a, c .. c+8·CB) += Σ_{o in [ob, oe)} dy[n+a, o] W[o, c ..], o ascending.
template <int NB, int CB>
void dx_tile(float* dx, const float* dy, const float* W, int C, int OC, int64_t n, int c, int64_t ob, int64_t oe) {
  __m256 acc[NB][CB];
  #pragma GCC unroll 8
  for (int a = 0; a < NB; ++a) {
    #pragma GCC unroll 8
    for (int k = 0; k < CB; ++k) acc[a][k] = _mm256_loadu_ps(dx + (n + a) * C + c + 8 * k);
  }
  for (int64_t o = ob; o < oe; ++o) {
    __m256 w[CB];
    #pragma GCC unroll 8
    for (int k = 0; k < CB; ++k) w[k] = _mm256_loadu_ps(W + o * C + c + 8 * k);
    #pragma GCC unroll 8
    for (int a = 0; a < NB; ++a) {
      const __m256 d = _mm256_set1_ps(dy[(n + a) * OC + o]);
      #pragma GCC unroll 8
      for (int k = 0; k < CB; ++k) acc[a][k] = _mm256_add_ps(acc[a][k], _mm256_mul_ps(d, w[k]));
    }
  }
  #pragma GCC unroll 8
  for (int a = 0; a < NB; ++a) {
    #pragma GCC unroll 8
    for (int k = 0; k < CB; ++k) _mm256_storeu_ps(dx + (n + a) * C + c + 8 * k, acc[a][k]);
  }
}

template <int NB>
void dx_tokens(float* dx, const float* dy, const float* W, int C, int OC, int64_t n, int64_t ob, int64_t oe) {
  const int C8 = C & ~7;
  int c = 0;
  for (; c + 8 * kDcb <= C8; c += 8 * kDcb) dx_tile<NB, kDcb>(dx, dy, W, C, OC, n, c, ob, oe);
  for (; c < C8; c += 8) dx_tile<NB, 1>(dx, dy, W, C, OC, n, c, ob, oe);
  #pragma GCC unroll 8
  for (int a = 0; a < NB; ++a) {
    float* d = dx + (n + a) * C;
    for (int64_t o = ob; o < oe; ++o) {
      const float g = dy[(n + a) * OC + o];
      for (int i = C8; i < C; ++i) d[i] += g * W[o * C + i];
    }
  }
}

void dx(float* dx, const float* dy, const float* W, int64_t, int C, int OC, int64_t n0, int64_t n1) {
  for (int64_t ob = 0; ob < OC; ob += kBlock) {
    const int64_t oe = std::min<int64_t>(OC, ob + kBlock);
    int64_t n = n0;
    for (; n + kDnb <= n1; n += kDnb) dx_tokens<kDnb>(dx, dy, W, C, OC, n, ob, oe);
    for (; n < n1; ++n) dx_tokens<1>(dx, dy, W, C, OC, n, ob, oe);
  }
}

// dW[o+b, c .. c+8·CB) += Σ_{n in [nb, ne)} dy[n, o+b] x[n, c ..], n ascending.
template <int OB, int CB>
void dw_tile(float* dW, const float* dy, const float* x, int C, int OC, int64_t o, int c, int64_t nb, int64_t ne) {
  __m256 acc[OB][CB];
  #pragma GCC unroll 8
  for (int b = 0; b < OB; ++b) {
    #pragma GCC unroll 8
    for (int k = 0; k < CB; ++k) acc[b][k] = _mm256_loadu_ps(dW + (o + b) * C + c + 8 * k);
  }
  for (int64_t n = nb; n < ne; ++n) {
    __m256 xv[CB];
    #pragma GCC unroll 8
    for (int k = 0; k < CB; ++k) xv[k] = _mm256_loadu_ps(x + n * C + c + 8 * k);
    #pragma GCC unroll 8
    for (int b = 0; b < OB; ++b) {
      const __m256 d = _mm256_set1_ps(dy[n * OC + o + b]);
      #pragma GCC unroll 8
      for (int k = 0; k < CB; ++k) acc[b][k] = _mm256_add_ps(acc[b][k], _mm256_mul_ps(d, xv[k]));
    }
  }
  #pragma GCC unroll 8
  for (int b = 0; b < OB; ++b) {
    #pragma GCC unroll 8
    for (int k = 0; k < CB; ++k) _mm256_storeu_ps(dW + (o + b) * C + c + 8 * k, acc[b][k]);
  }
}

template <int OB>
void dw_rows(float* dW, const float* dy, const float* x, int C, int OC, int64_t o, int64_t nb, int64_t ne) {
  const int C8 = C & ~7;
  int c = 0;
  for (; c + 8 * kWcb <= C8; c += 8 * kWcb) dw_tile<OB, kWcb>(dW, dy, x, C, OC, o, c, nb, ne);
  for (; c < C8; c += 8) dw_tile<OB, 1>(dW, dy, x, C, OC, o, c, nb, ne);
  #pragma GCC unroll 8
  for (int b = 0; b < OB; ++b) {
    float* d = dW + (o + b) * C;
    for (int64_t n = nb; n < ne; ++n) {
      const float g = dy[n * OC + o + b];
      for (int i = C8; i < C; ++i) d[i] += g * x[n * C + i];
    }
  }
}

void dw(float* dW, const float* dy, const float* x, int64_t N, int C, int OC, int64_t o0, int64_t o1) {
  for (int64_t nb = 0; nb < N; nb += kBlock) {
    const int64_t ne = std::min<int64_t>(N, nb + kBlock);
    int64_t o = o0;
    for (; o + kWob <= o1; o += kWob) dw_rows<kWob>(dW, dy, x, C, OC, o, nb, ne);
    for (; o < o1; ++o) dw_rows<1>(dW, dy, x, C, OC, o, nb, ne);
  }
}

}  // namespace

const GemmF32Microkernels& gemm_f32_avx2_microkernels() {
  static const GemmF32Microkernels k{Isa::kAvx2, xwt, dx, dw};
  return k;
}

}  // namespace lowbit::kernels_internal
