// Fixed-order fp32 GEMMs of the training layer (include/lowbit/train_ops.h, matmul_forward /
// matmul_backward): the three products of a linear y = x · Wᵀ, each with one summation order that
// every ISA reproduces bit for bit, so training is deterministic on any ISA and thread count.
// Each call covers a range of rows, so callers thread over disjoint ranges (parallel_for).
//
//   gemm_f32_xwt(y, x, W, N, C, OC, o0, o1);   // y[n, o] = x[n]·W[o] for o in [o0, o1), every n
//   gemm_f32_dx(dx, dy, W, N, C, OC, n0, n1);  // dx[n] += Σ_o dy[n, o] W[o] for n in [n0, n1)
//   gemm_f32_dw(dW, dy, x, N, C, OC, o0, o1);  // dW[o] += Σ_n dy[n, o] x[n] for o in [o0, o1)
//
// Arithmetic contract (the scalar twins in src/kernels/ref/gemm_f32_ref.cc are this, written out):
//   xwt: eight partial sums, lane j = i mod 8, each accumulating x[i]·W[i] (product rounded, then
//        added; no fused multiply-add) in increasing i; combined as ((s0+s4)+(s1+s5))+((s2+s6)+(s3+s7)).
//   dx:  each dx[n, c] adds the rounded products dy[n, o]·W[o, c] one at a time, o = 0, 1, ... OC−1.
//   dw:  each dW[o, c] adds the rounded products dy[n, o]·x[n, c] one at a time, n = 0, 1, ... N−1.
// Layouts, row-major: x (N, C), W (OC, C), y and dy (N, OC), dx (N, C), dW (OC, C).
#pragma once

#include <cstdint>

#include "lowbit/cpu.h"

namespace lowbit {

void gemm_f32_xwt(float* y, const float* x, const float* W, int64_t N, int C, int OC, int64_t o0, int64_t o1);
void gemm_f32_dx(float* dx, const float* dy, const float* W, int64_t N, int C, int OC, int64_t n0, int64_t n1);
void gemm_f32_dw(float* dW, const float* dy, const float* x, int64_t N, int C, int OC, int64_t o0, int64_t o1);

Isa gemm_f32_isa();  // the level the calls above dispatch to now

}  // namespace lowbit
