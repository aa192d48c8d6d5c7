// Forward/backward pairs of the Llama block (include/lowbit/train_ops.h). The forward ops follow
// src/model/llama.cc operation by operation (same float expressions, same summation order) so the
// training forward agrees with the inference forward; the GEMM is a plain fixed-order loop (the
// inference path uses Eigen, whose blocking depends on the thread count).
#include "lowbit/train_ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "lowbit/gemm_f32.h"
#include "lowbit/parallel.h"

namespace lowbit::train {
namespace {

// Σ a[i]·b[i] in eight interleaved partial sums combined in a fixed tree: vectorizable without
// -ffast-math, and the same bits on any thread count.
template <class T>
T dot(const T* a, const T* b, int n) {
  T acc[8] = {};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (int j = 0; i < n; ++i, ++j) acc[j] += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

template <class T>
void axpy(T* y, T a, const T* x, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

// Rows per parallel_for chunk for work of `cost` flops per row: about 256k flops a chunk, so small
// tensors run inline (a fork/join costs more than they do, far more on a loaded machine).
int64_t grain_for(int64_t cost) { return std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, cost)); }

}  // namespace

template <class T>
void embedding_forward(T* out, const int* tok, const T* wte, int64_t N, int C) {
  for (int64_t n = 0; n < N; ++n) std::copy(wte + static_cast<int64_t>(tok[n]) * C, wte + static_cast<int64_t>(tok[n] + 1) * C, out + n * C);
}

template <class T>
void embedding_backward(T* dwte, const T* dout, const int* tok, int64_t N, int C) {
  for (int64_t n = 0; n < N; ++n) axpy(dwte + static_cast<int64_t>(tok[n]) * C, T(1), dout + n * C, C);
}

template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t N, int C, T eps) {
  parallel_for(0, N, grain_for(2 * C), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const T* xn = x + n * C;
      T ss = 0;
      for (int j = 0; j < C; ++j) ss += xn[j] * xn[j];
      ss /= static_cast<T>(C);
      ss += eps;
      ss = T(1) / std::sqrt(ss);
      rstd[n] = ss;
      for (int j = 0; j < C; ++j) out[n * C + j] = w[j] * (ss * xn[j]);
    }
  });
}

template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t N, int C) {
  // y_j = w_j x_j r, r = (mean(x²) + eps)^(-1/2), ∂r/∂x_i = -r³ x_i / C.
  parallel_for(0, N, grain_for(3 * C), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const T* xn = x + n * C;
      const T* gn = dout + n * C;
      const T r = rstd[n];
      T s = 0;  // Σ_i w_i g_i x_i
      for (int i = 0; i < C; ++i) s += w[i] * gn[i] * xn[i];
      const T c = r * r * r * s / static_cast<T>(C);
      for (int j = 0; j < C; ++j) dx[n * C + j] += r * w[j] * gn[j] - c * xn[j];
    }
  });
  for (int64_t n = 0; n < N; ++n) {
    for (int j = 0; j < C; ++j) dw[j] += dout[n * C + j] * x[n * C + j] * rstd[n];
  }
}

template <class T>
void matmul_forward(T* out, const T* x, const T* W, int64_t N, int C, int OC) {
  parallel_for(0, N * OC, grain_for(2 * C), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / OC, o = i % OC;
      out[i] = dot(x + n * C, W + o * C, C);
    }
  });
}

template <class T>
void matmul_backward(T* dx, T* dW, const T* dout, const T* x, const T* W, int64_t N, int C, int OC) {
  if (dx) {
    parallel_for(0, N, grain_for(2 * int64_t{C} * OC), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        for (int o = 0; o < OC; ++o) axpy(dx + n * C, dout[n * OC + o], W + static_cast<int64_t>(o) * C, C);
      }
    });
  }
  if (dW) {
    parallel_for(0, OC, grain_for(2 * N * C), [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        for (int64_t n = 0; n < N; ++n) axpy(dW + o * C, dout[n * OC + o], x + n * C, C);
      }
    });
  }
}

namespace {
// Rotates pairs of x (B·T, heads, hs) by ±angle(t, i), angles as llama.cc forms them.
template <class T>
void rope_rotate(T* x, int64_t B, int Tn, int heads, int hs, T theta, T sign) {
  std::vector<T> cs(static_cast<size_t>(Tn) * hs);  // (T, hs/2, 2) cos, sin
  for (int t = 0; t < Tn; ++t) {
    for (int i = 0; i < hs; i += 2) {
      const T freq = T(1) / std::pow(theta, static_cast<T>(i) / static_cast<T>(hs));
      const T val = static_cast<T>(t) * freq;
      cs[static_cast<size_t>(t) * hs + i] = std::cos(val);
      cs[static_cast<size_t>(t) * hs + i + 1] = std::sin(val);
    }
  }
  const int64_t rows = B * Tn;
  parallel_for(0, rows, grain_for(int64_t{heads} * hs * 6), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* c = &cs[static_cast<size_t>(r % Tn) * hs];
      for (int h = 0; h < heads; ++h) {
        T* v = x + (r * heads + h) * hs;
        for (int i = 0; i < hs; i += 2) {
          const T fcr = c[i], fci = sign * c[i + 1];
          const T v0 = v[i], v1 = v[i + 1];
          v[i] = v0 * fcr - v1 * fci;
          v[i + 1] = v0 * fci + v1 * fcr;
        }
      }
    }
  });
}
}  // namespace

template <class T>
void rope_forward(T* x, int64_t B, int Tn, int heads, int hs, T theta) {
  rope_rotate(x, B, Tn, heads, hs, theta, T(1));
}

template <class T>
void rope_backward(T* dx, int64_t B, int Tn, int heads, int hs, T theta) {
  rope_rotate(dx, B, Tn, heads, hs, theta, T(-1));
}

template <class T>
void attention_forward(T* out, T* att, const T* q, const T* k, const T* v, int64_t B, int Tn, int NH, int NKV, int hs) {
  const int kv_mul = NH / NKV;
  const T inv_sqrt = T(1) / std::sqrt(static_cast<T>(hs));
  const int64_t qs = int64_t{NH} * hs, ks = int64_t{NKV} * hs;  // token strides
  parallel_for(0, B * NH * Tn, grain_for(4 * int64_t{Tn} * hs), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (int64_t{NH} * Tn);
      const int h = static_cast<int>(i / Tn % NH);
      const int t = static_cast<int>(i % Tn);
      const T* qh = q + (b * Tn + t) * qs + int64_t{h} * hs;
      T* a = att + ((b * NH + h) * Tn + t) * Tn;  // (T) row t
      for (int s = 0; s <= t; ++s) {
        const T* kh = k + (b * Tn + s) * ks + int64_t{h / kv_mul} * hs;
        T score = 0;
        for (int j = 0; j < hs; ++j) score += qh[j] * kh[j];
        a[s] = score * inv_sqrt;
      }
      T mx = a[0];
      for (int s = 1; s <= t; ++s) mx = std::max(mx, a[s]);
      T sum = 0;
      for (int s = 0; s <= t; ++s) {
        a[s] = std::exp(a[s] - mx);
        sum += a[s];
      }
      for (int s = 0; s <= t; ++s) a[s] /= sum;
      for (int s = t + 1; s < Tn; ++s) a[s] = 0;
      T* o = out + (b * Tn + t) * qs + int64_t{h} * hs;
      std::fill(o, o + hs, T(0));
      for (int s = 0; s <= t; ++s) {
        const T* vh = v + (b * Tn + s) * ks + int64_t{h / kv_mul} * hs;
        const T p = a[s];
        for (int j = 0; j < hs; ++j) o[j] += p * vh[j];
      }
    }
  });
}

template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* att, const T* q, const T* k, const T* v,
                        int64_t B, int Tn, int NH, int NKV, int hs) {
  const int kv_mul = NH / NKV;
  const T inv_sqrt = T(1) / std::sqrt(static_cast<T>(hs));
  const int64_t qs = int64_t{NH} * hs, ks = int64_t{NKV} * hs;
  // One task per (window, kv head): it alone writes that kv head's dk and dv, so no races and a
  // fixed order of accumulation (query heads of the group, then t, then s).
  parallel_for(0, B * NKV, grain_for(8 * int64_t{kv_mul} * Tn * Tn * hs), [&](int64_t i0, int64_t i1) {
    std::vector<T> datt(static_cast<size_t>(Tn));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / NKV;
      const int g = static_cast<int>(i % NKV);
      for (int h = g * kv_mul; h < (g + 1) * kv_mul; ++h) {
        for (int t = 0; t < Tn; ++t) {
          const T* a = att + ((b * NH + h) * Tn + t) * Tn;
          const T* go = dout + (b * Tn + t) * qs + int64_t{h} * hs;
          const T* qh = q + (b * Tn + t) * qs + int64_t{h} * hs;
          T* dqh = dq + (b * Tn + t) * qs + int64_t{h} * hs;
          T dot_ad = 0;
          for (int s = 0; s <= t; ++s) {
            const T* vh = v + (b * Tn + s) * ks + int64_t{g} * hs;
            T d = 0;
            for (int j = 0; j < hs; ++j) d += go[j] * vh[j];
            datt[static_cast<size_t>(s)] = d;
            dot_ad += a[s] * d;
            axpy(dv + (b * Tn + s) * ks + int64_t{g} * hs, a[s], go, hs);
          }
          for (int s = 0; s <= t; ++s) {
            const T dpre = a[s] * (datt[static_cast<size_t>(s)] - dot_ad) * inv_sqrt;
            axpy(dqh, dpre, k + (b * Tn + s) * ks + int64_t{g} * hs, hs);
            axpy(dk + (b * Tn + s) * ks + int64_t{g} * hs, dpre, qh, hs);
          }
        }
      }
    }
  });
}

template <class T>
void swiglu_forward(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T val = a[i];
    val *= T(1) / (T(1) + std::exp(-val));
    out[i] = val * b[i];
  }
}

template <class T>
void swiglu_backward(T* da, T* db, const T* dout, const T* a, const T* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T s = T(1) / (T(1) + std::exp(-a[i]));
    const T silu = a[i] * s;
    da[i] += dout[i] * b[i] * s * (T(1) + a[i] * (T(1) - s));
    db[i] += dout[i] * silu;
  }
}

template <class T>
void residual_forward(T* out, const T* x, const T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] + y[i];
}

template <class T>
void residual_backward(T* dx, T* dy, const T* dout, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    dx[i] += dout[i];
    dy[i] += dout[i];
  }
}

template <class T>
void crossentropy_forward(T* probs, T* losses, const T* logits, const int* targets, int64_t N, int V) {
  parallel_for(0, N, grain_for(4 * int64_t{V}), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const T* l = logits + n * V;
      T* p = probs + n * V;
      T mx = l[0];
      for (int i = 1; i < V; ++i) mx = std::max(mx, l[i]);
      double sum = 0;  // the normaliser in double: V can be 32k terms
      for (int i = 0; i < V; ++i) {
        p[i] = std::exp(l[i] - mx);
        sum += static_cast<double>(p[i]);
      }
      const T inv = static_cast<T>(1.0 / sum);
      for (int i = 0; i < V; ++i) p[i] *= inv;
      losses[n] = static_cast<T>(std::log(sum) - static_cast<double>(l[targets[n]] - mx));
    }
  });
}

template <class T>
void crossentropy_backward(T* dlogits, const T* probs, const int* targets, const T* dloss, int64_t N, int V) {
  parallel_for(0, N, grain_for(int64_t{V}), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      for (int i = 0; i < V; ++i) dlogits[n * V + i] += (probs[n * V + i] - (i == targets[n] ? T(1) : T(0))) * dloss[n];
    }
  });
}

// fp32: the kernels layer's fixed-order GEMMs (include/lowbit/gemm_f32.h), whose contract is the
// loops above with T = float (its scalar level is exactly them; the AVX2 level gives the same bits).
// One chunk per thread, whole tiles (the kernels reuse each load across a tile of rows, and a
// one-row chunk would reload the other operand per row); no output depends on the cut.
namespace {
int64_t gemm_grain(int64_t rows, int64_t cost_per_row) {
  constexpr int64_t kTile = 12;  // a multiple of the kernels' 3- and 4-row tiles
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(num_threads(), rows / std::max<int64_t>(1, grain_for(cost_per_row))));
  const int64_t per = (rows + threads - 1) / threads;
  return std::max<int64_t>(1, (per + kTile - 1) / kTile * kTile);
}
}  // namespace

template <>
void matmul_forward<float>(float* out, const float* x, const float* W, int64_t N, int C, int OC) {
  parallel_for(0, OC, gemm_grain(OC, 2 * N * C), [&](int64_t o0, int64_t o1) { gemm_f32_xwt(out, x, W, N, C, OC, o0, o1); });
}

template <>
void matmul_backward<float>(float* dx, float* dW, const float* dout, const float* x, const float* W, int64_t N, int C, int OC) {
  if (dx) {
    parallel_for(0, N, gemm_grain(N, 2 * int64_t{C} * OC), [&](int64_t n0, int64_t n1) { gemm_f32_dx(dx, dout, W, N, C, OC, n0, n1); });
  }
  if (dW) {
    parallel_for(0, OC, gemm_grain(OC, 2 * N * C), [&](int64_t o0, int64_t o1) { gemm_f32_dw(dW, dout, x, N, C, OC, o0, o1); });
  }
}

#define LOWBIT_TRAIN_OPS(T)                                                                                     \
  template void embedding_forward<T>(T*, const int*, const T*, int64_t, int);                                   \
  template void embedding_backward<T>(T*, const T*, const int*, int64_t, int);                                  \
  template void rmsnorm_forward<T>(T*, T*, const T*, const T*, int64_t, int, T);                                \
  template void rmsnorm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, int64_t, int);              \
  template void rope_forward<T>(T*, int64_t, int, int, int, T);                                                 \
  template void rope_backward<T>(T*, int64_t, int, int, int, T);                                                \
  template void attention_forward<T>(T*, T*, const T*, const T*, const T*, int64_t, int, int, int, int);        \
  template void attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t,    \
                                      int, int, int, int);                                                      \
  template void swiglu_forward<T>(T*, const T*, const T*, int64_t);                                             \
  template void swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t);                              \
  template void residual_forward<T>(T*, const T*, const T*, int64_t);                                           \
  template void residual_backward<T>(T*, T*, const T*, int64_t);                                                \
  template void crossentropy_forward<T>(T*, T*, const T*, const int*, int64_t, int);                            \
  template void crossentropy_backward<T>(T*, const T*, const int*, const T*, int64_t, int);

LOWBIT_TRAIN_OPS(float)
LOWBIT_TRAIN_OPS(double)
template void matmul_forward<double>(double*, const double*, const double*, int64_t, int, int);
template void matmul_backward<double>(double*, double*, const double*, const double*, const double*, int64_t, int, int);

}  // namespace lowbit::train
