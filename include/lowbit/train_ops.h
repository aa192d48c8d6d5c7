// Forward/backward pairs of every op in a Llama block, llm.c style: each forward saves exactly
// what its backward needs (said beside it), every buffer carries its shape, and every backward
// *accumulates* (+=) into its gradients so residual branches and tied weights add up. Templated
// on the scalar (float for training, double for the finite-difference tests); instantiated for
// both in src/train/ops.cc. Threaded over independent rows with parallel_for; every sum runs in
// a fixed order, so results are bit-identical on any thread count.
//
//   rmsnorm_forward<float>(ln, rstd, x, w, N, C, eps);            // saves rstd (N)
//   matmul_forward<float>(y, ln, W, N, C, OC);                    // y (N, OC) = ln · Wᵀ
//   ...
//   matmul_backward<float>(dln, dW, dy, ln, W, N, C, OC);         // dln += dy · W, dW += dyᵀ · ln
//   rmsnorm_backward<float>(dx, dw, dln, x, w, rstd, N, C);
#pragma once

#include <cstdint>

namespace lowbit::train {

// out (N, C) = wte[tok[n]] (V, C). Saves nothing (the tokens are the input).
template <class T>
void embedding_forward(T* out, const int* tok, const T* wte, int64_t N, int C);
// dwte (V, C) += scatter of dout (N, C) by token (in token order: deterministic).
template <class T>
void embedding_backward(T* dwte, const T* dout, const int* tok, int64_t N, int C);

// out (N, C) = w (C) * (x * rstd), rstd (N) = 1 / sqrt(mean(x²) + eps) — llama2.c's form.
// Saves rstd; the backward also reads x and w.
template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t N, int C, T eps);
// dx (N, C) += ..., dw (C) += Σ_n dout · x · rstd.
template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t N, int C);

// out (N, OC) = x (N, C) · Wᵀ with W (OC, C). Saves nothing beyond its inputs (x and W).
template <class T>
void matmul_forward(T* out, const T* x, const T* W, int64_t N, int C, int OC);
// dx (N, C) += dout (N, OC) · W (either may be null to skip), dW (OC, C) += doutᵀ · x.
template <class T>
void matmul_backward(T* dx, T* dW, const T* dout, const T* x, const T* W, int64_t N, int C, int OC);
// float runs the kernels layer's register-tiled GEMMs (include/lowbit/gemm_f32.h): the same sums
// in the same order as the loops double runs, on every ISA.
template <>
void matmul_forward<float>(float* out, const float* x, const float* W, int64_t N, int C, int OC);
template <>
void matmul_backward<float>(float* dx, float* dW, const float* dout, const float* x, const float* W, int64_t N, int C, int OC);

// RoPE in place: every head of x (B·T, heads, hs) is rotated by its position t (0..T-1 within
// its window), pairs (i, i+1),
// frequency theta^(-(i mod hs)/hs), angles formed in T exactly as llama.cc forms them in float.
template <class T>
void rope_forward(T* x, int64_t B, int Tn, int heads, int hs, T theta);
// The rotation's transpose, in place on dx (B·T, heads, hs).
template <class T>
void rope_backward(T* dx, int64_t B, int Tn, int heads, int hs, T theta);

// Causal grouped-query attention per window: q (B, T, NH, hs), k and v (B, T, NKV, hs), head h
// reads kv head h / (NH / NKV). out (B, T, NH, hs). Saves att (B, NH, T, T), the softmax
// probabilities (upper triangle zero); the backward also reads q, k and v.
template <class T>
void attention_forward(T* out, T* att, const T* q, const T* k, const T* v, int64_t B, int Tn, int NH, int NKV, int hs);
// dq += ..., dk += ..., dv += ... (all (B, T, heads, hs)).
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* att, const T* q, const T* k, const T* v,
                        int64_t B, int Tn, int NH, int NKV, int hs);

// out (n) = silu(a) · b, the SwiGLU gate. Saves nothing beyond a and b.
template <class T>
void swiglu_forward(T* out, const T* a, const T* b, int64_t n);
// da (n) += dout · b · silu'(a), db (n) += dout · silu(a).
template <class T>
void swiglu_backward(T* da, T* db, const T* dout, const T* a, const T* b, int64_t n);

// out (n) = x + y; its backward adds dout into both inputs' gradients.
template <class T>
void residual_forward(T* out, const T* x, const T* y, int64_t n);
template <class T>
void residual_backward(T* dx, T* dy, const T* dout, int64_t n);

// Softmax cross-entropy: probs (N, V) = softmax(logits), losses (N) = -log probs[target].
// Saves probs. Targets must lie in [0, V).
template <class T>
void crossentropy_forward(T* probs, T* losses, const T* logits, const int* targets, int64_t N, int V);
// dlogits (N, V) += (probs - onehot(target)) · dloss[n] (dloss (N): e.g. 1/N for the mean).
template <class T>
void crossentropy_backward(T* dlogits, const T* probs, const int* targets, const T* dloss, int64_t N, int V);

}  // namespace lowbit::train
