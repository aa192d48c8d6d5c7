// The training GEMMs (include/lowbit/gemm_f32.h): every ISA this CPU has gives the scalar twin's
// bits for odd shapes and tails (C not a multiple of 8 or 24, token and row counts not multiples
// of the register tiles, more rows and tokens than one cache block, partial row ranges), the
// twin's results equal the contract's value in fp64 within a stated tolerance. (The training ops
// that call them: tests/train.)
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "lowbit/cpu.h"
#include "lowbit/gemm_f32.h"

namespace lowbit {
namespace {

std::vector<float> randn(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = nd(rng);
  return v;
}

struct Shape {
  int64_t N;
  int C, OC;
};

class GemmF32 : public ::testing::TestWithParam<Shape> {};

TEST_P(GemmF32, EveryIsaMatchesTwinAndFp64Reference) {
  const Shape s = GetParam();
  const int64_t N = s.N;
  const int C = s.C, OC = s.OC;
  const std::vector<float> x = randn(N * C, 1 + static_cast<uint32_t>(C)), W = randn(int64_t{OC} * C, 2 + static_cast<uint32_t>(OC));
  const std::vector<float> dy = randn(N * OC, 3 + static_cast<uint32_t>(N));
  const std::vector<float> dx0 = randn(N * C, 4), dw0 = randn(int64_t{OC} * C, 5);  // accumulated into
  // Row ranges: everything, and a strict inner range (the other rows must stay untouched).
  const int64_t o0 = OC > 2 ? 1 : 0, o1 = OC > 2 ? OC - 1 : OC, n0 = N > 2 ? 1 : 0, n1 = N > 2 ? N - 1 : N;
  std::vector<float> y_ref, dx_ref, dw_ref, yp_ref, dxp_ref, dwp_ref;
  for (Isa isa : supported_isas()) {
    ScopedIsa force(isa);
    ASSERT_EQ(gemm_f32_isa(), isa == Isa::kScalar ? Isa::kScalar : Isa::kAvx2);
    std::vector<float> y(static_cast<size_t>(N * OC), -7.0f), dx = dx0, dw = dw0;
    gemm_f32_xwt(y.data(), x.data(), W.data(), N, C, OC, 0, OC);
    gemm_f32_dx(dx.data(), dy.data(), W.data(), N, C, OC, 0, N);
    gemm_f32_dw(dw.data(), dy.data(), x.data(), N, C, OC, 0, OC);
    std::vector<float> yp(static_cast<size_t>(N * OC), -7.0f), dxp = dx0, dwp = dw0;
    gemm_f32_xwt(yp.data(), x.data(), W.data(), N, C, OC, o0, o1);
    gemm_f32_dx(dxp.data(), dy.data(), W.data(), N, C, OC, n0, n1);
    gemm_f32_dw(dwp.data(), dy.data(), x.data(), N, C, OC, o0, o1);
    if (isa == Isa::kScalar) {
      y_ref = y, dx_ref = dx, dw_ref = dw, yp_ref = yp, dxp_ref = dxp, dwp_ref = dwp;
      // The contract in fp64: |err| <= 1e-5 · Σ|terms| + 1e-6 (fp32 sums of <= a few hundred terms).
      for (int64_t n = 0; n < N; ++n) {
        for (int o = 0; o < OC; ++o) {
          double want = 0, mag = 0;
          for (int c = 0; c < C; ++c) {
            const double t = double{x[static_cast<size_t>(n * C + c)]} * W[static_cast<size_t>(int64_t{o} * C + c)];
            want += t, mag += std::fabs(t);
          }
          ASSERT_NEAR(y[static_cast<size_t>(n * OC + o)], want, 1e-5 * mag + 1e-6) << "y n=" << n << " o=" << o;
        }
        for (int c = 0; c < C; ++c) {
          double want = dx0[static_cast<size_t>(n * C + c)], mag = std::fabs(want);
          for (int o = 0; o < OC; ++o) {
            const double t = double{dy[static_cast<size_t>(n * OC + o)]} * W[static_cast<size_t>(int64_t{o} * C + c)];
            want += t, mag += std::fabs(t);
          }
          ASSERT_NEAR(dx[static_cast<size_t>(n * C + c)], want, 1e-5 * mag + 1e-6) << "dx n=" << n << " c=" << c;
        }
      }
      for (int o = 0; o < OC; ++o) {
        for (int c = 0; c < C; ++c) {
          double want = dw0[static_cast<size_t>(int64_t{o} * C + c)], mag = std::fabs(want);
          for (int64_t n = 0; n < N; ++n) {
            const double t = double{dy[static_cast<size_t>(n * OC + o)]} * x[static_cast<size_t>(n * C + c)];
            want += t, mag += std::fabs(t);
          }
          ASSERT_NEAR(dw[static_cast<size_t>(int64_t{o} * C + c)], want, 1e-5 * mag + 1e-6) << "dw o=" << o << " c=" << c;
        }
      }
      // Partial ranges: inside equal to the full call, outside untouched.
      for (int64_t n = 0; n < N; ++n) {
        for (int o = 0; o < OC; ++o) {
          const size_t i = static_cast<size_t>(n * OC + o);
          ASSERT_EQ(yp[i], o >= o0 && o < o1 ? y[i] : -7.0f) << "n=" << n << " o=" << o;
        }
        for (int c = 0; c < C; ++c) {
          const size_t i = static_cast<size_t>(n * C + c);
          ASSERT_EQ(dxp[i], n >= n0 && n < n1 ? dx[i] : dx0[i]) << "n=" << n << " c=" << c;
        }
      }
      for (int o = 0; o < OC; ++o) {
        for (int c = 0; c < C; ++c) {
          const size_t i = static_cast<size_t>(int64_t{o} * C + c);
          ASSERT_EQ(dwp[i], o >= o0 && o < o1 ? dw[i] : dw0[i]) << "o=" << o << " c=" << c;
        }
      }
      continue;
    }
    // Every other level: the twin's bits.
    for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], y_ref[i]) << isa_name(isa) << " y " << i;
    for (size_t i = 0; i < dx.size(); ++i) ASSERT_EQ(dx[i], dx_ref[i]) << isa_name(isa) << " dx " << i;
    for (size_t i = 0; i < dw.size(); ++i) ASSERT_EQ(dw[i], dw_ref[i]) << isa_name(isa) << " dw " << i;
    for (size_t i = 0; i < yp.size(); ++i) ASSERT_EQ(yp[i], yp_ref[i]) << isa_name(isa) << " y partial " << i;
    for (size_t i = 0; i < dxp.size(); ++i) ASSERT_EQ(dxp[i], dxp_ref[i]) << isa_name(isa) << " dx partial " << i;
    for (size_t i = 0; i < dwp.size(); ++i) ASSERT_EQ(dwp[i], dwp_ref[i]) << isa_name(isa) << " dw partial " << i;
  }
}

// C: below one vector, tails of 1..7 past the 8-lane and 24-wide tiles, exact multiples; N and OC:
// tile remainders (4-token, 3- and 4-row tiles) and more than one 128-row / 128-token block.
INSTANTIATE_TEST_SUITE_P(Shapes, GemmF32,
                         ::testing::Values(Shape{1, 1, 1}, Shape{1, 7, 3}, Shape{3, 8, 4}, Shape{5, 9, 5}, Shape{4, 23, 7},
                                           Shape{7, 24, 6}, Shape{9, 25, 11}, Shape{2, 48, 2}, Shape{6, 57, 13},
                                           Shape{13, 64, 9}, Shape{130, 33, 5}, Shape{6, 40, 131}, Shape{131, 17, 133},
                                           Shape{257, 72, 3}),
                         [](const ::testing::TestParamInfo<Shape>& i) {
                           return "N" + std::to_string(i.param.N) + "_C" + std::to_string(i.param.C) + "_OC" + std::to_string(i.param.OC);
                         });

}  // namespace
}  // namespace lowbit
