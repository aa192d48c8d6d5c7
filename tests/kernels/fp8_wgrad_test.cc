// gemm_fp8_wgrad (the wgrad GEMM of FP8 training, dW += dYᵀ·X over K = tokens): on every ISA this
// CPU has, over odd shapes, token tails, strides and 1 / 2 threads, bit-exact against its scalar
// twin; the scalar path against an fp64 GEMM of the operands quantized by the quant layer's
// e4m3:block128x1 (the same 128-token tiles); accumulation into dW; the emulated accumulators;
// errors that name the bad shape.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "fp8_limited_reference.h"
#include "lowbit/cpu.h"
#include "lowbit/formats.h"
#include "lowbit/kernels.h"
#include "lowbit/parallel.h"
#include "lowbit/quant.h"

namespace lowbit {
namespace {

std::vector<float> randn(int64_t n, uint32_t seed, float sd) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

// a (m, ld) with `cols` columns quantized by the quant layer in 128-token tiles, dense (m, cols).
std::vector<double> quant_layer_tiles(const std::vector<float>& a, int64_t m, int64_t ld, int64_t cols) {
  std::vector<float> dense(static_cast<size_t>(m * cols));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t c = 0; c < cols; ++c) dense[i * cols + c] = a[i * ld + c];
  }
  TensorView v(dense.data(), DType::kF32, {m, cols});
  const QuantizedTensor q = quantize(v, parse_spec("e4m3:block128x1:sym:fp32").value()).value();
  EXPECT_TRUE(dequantize(q, v).ok());
  return {dense.begin(), dense.end()};
}

struct Restore {
  int prev = num_threads();
  ~Restore() { (void)set_num_threads(prev); }
};

void check_shape(int64_t m, int64_t n, int64_t k, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << "tokens=" << m << " out=" << n << " in=" << k);
  Restore restore;
  ASSERT_TRUE(set_num_threads(seed % 2 == 0 ? 2 : 1).ok());
  const bool strided = (m + n + k) % 2 == 1;
  const int64_t lddy = strided ? n + 3 : n, ldx = strided ? k + 2 : k, lddw = strided ? k + 5 : k;
  // Gradients are small and spread over decades (tile scales matter); activations O(1).
  std::vector<float> dy = randn(m * lddy, seed, 1e-4f), x = randn(m * ldx, seed + 1, 1.0f);
  for (int64_t i = 0; i < m; i += 3) dy[i * lddy] *= 50.0f;  // an outlier column tile
  const std::vector<float> init = randn(n * lddw, seed + 2, 1e-3f);

  const std::vector<double> dq = quant_layer_tiles(dy, m, lddy, n), xq = quant_layer_tiles(x, m, ldx, k);
  std::vector<float> y_scalar = init;
  {
    ScopedIsa force(Isa::kScalar);
    ASSERT_TRUE(gemm_fp8_wgrad(dy.data(), lddy, x.data(), ldx, m, n, k, y_scalar.data(), lddw).ok());
    EXPECT_NE(wgrad_kernel_name().find("__scalar"), std::string::npos);
  }
  const double unit = (static_cast<double>(m) + 8.0) * std::ldexp(1.0, -24);
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t c = 0; c < k; ++c) {
      double s = init[j * lddw + c], mag = std::fabs(init[j * lddw + c]);
      for (int64_t t = 0; t < m; ++t) {
        s += dq[t * n + j] * xq[t * k + c];
        mag += std::fabs(dq[t * n + j] * xq[t * k + c]);
      }
      ASSERT_LE(std::fabs(y_scalar[j * lddw + c] - s), unit * mag + 1e-30) << "scalar vs fp64 at (" << j << ", " << c << ")";
    }
    for (int64_t c = k; c < lddw; ++c) ASSERT_EQ(y_scalar[j * lddw + c], init[j * lddw + c]) << "wrote past in";
  }
  for (Isa isa : supported_isas()) {
    ScopedIsa force(isa);
    std::vector<float> y = init;
    ASSERT_TRUE(gemm_fp8_wgrad(dy.data(), lddy, x.data(), ldx, m, n, k, y.data(), lddw).ok());
    ASSERT_EQ(y, y_scalar) << isa_name(isa) << " " << wgrad_kernel_name();
  }
}

TEST(KernelFp8Wgrad, OddShapesOnEveryIsaMatchTheScalarTwinAndFp64) {
  const int64_t shapes[][3] = {{1, 1, 1},     {5, 3, 17},   {127, 7, 16}, {128, 6, 15},  {129, 13, 33},
                               {256, 12, 32}, {300, 20, 70}, {257, 1, 129}, {383, 31, 47}, {130, 7, 1}};
  uint32_t seed = 1;
  for (const auto& s : shapes) check_shape(s[0], s[1], s[2], seed++);
}

TEST(KernelFp8Wgrad, ZeroTokensLeaveDwAndZeroTilesAreExact) {
  std::vector<float> dw(6, 1.5f), dy(3 * 2, 0.0f), x(3 * 3, 2.0f);
  ASSERT_TRUE(gemm_fp8_wgrad(dy.data(), 2, x.data(), 3, 0, 2, 3, dw.data(), 3).ok());
  ASSERT_TRUE(gemm_fp8_wgrad(dy.data(), 2, x.data(), 3, 3, 2, 3, dw.data(), 3).ok());  // dy all zero
  for (float v : dw) EXPECT_EQ(v, 1.5f);
}

// Over 4096 tokens one 14-bit accumulator (no promotion) loses far more than fp32 promotion.
TEST(KernelFp8Wgrad, PromotionBeatsTheLimitedAccumulatorOverManyTokens) {
  const int64_t m = 4096, n = 4, k = 8;
  const std::vector<float> dy = randn(m * n, 3, 1.0f), x = randn(m * k, 4, 1.0f);
  const std::vector<double> dq = quant_layer_tiles(dy, m, n, n), xq = quant_layer_tiles(x, m, k, k);
  auto error = [&](Fp8Accumulation mode) {
    std::vector<float> dw(static_cast<size_t>(n * k), 0.0f);
    EXPECT_TRUE(gemm_fp8_wgrad(dy.data(), n, x.data(), k, m, n, k, dw.data(), k, {.fp8_accum = mode, .accum_bits = 14}).ok());
    double num = 0, den = 0;
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t c = 0; c < k; ++c) {
        double s = 0;
        for (int64_t t = 0; t < m; ++t) s += dq[t * n + j] * xq[t * k + c];
        num += (dw[j * k + c] - s) * (dw[j * k + c] - s);
        den += s * s;
      }
    }
    return std::sqrt(num / den);
  };
  const double promoted = error(Fp8Accumulation::kPromoted), limited_promoted = error(Fp8Accumulation::kLimitedPromoted),
               unpromoted = error(Fp8Accumulation::kLimitedUnpromoted);
  std::printf("wgrad over 4096 tokens, relative error: fp32 %.3g, 14-bit promoted %.3g, 14-bit unpromoted %.3g\n", promoted,
              limited_promoted, unpromoted);
  EXPECT_LT(promoted, 1e-5);
  EXPECT_GT(unpromoted, 10 * limited_promoted);
}

// The emulated limited accumulators from their definition (fp8_limited_reference.h): both operands
// quantized there in 128-token tiles per feature.
TEST(KernelFp8Wgrad, LimitedAccumulatorsOnEveryIsaMatchTheirDefinition) {
  Restore restore;
  const int64_t shapes[][3] = {{1, 1, 1}, {130, 7, 17}, {300, 13, 33}, {257, 6, 16}, {128, 20, 40}};
  uint32_t seed = 70;
  for (const auto& sh : shapes) {
    const int64_t m = sh[0], n = sh[1], k = sh[2], lddw = k + 2;
    std::vector<float> dy = randn(m * n, seed, 1e-3f), x = randn(m * k, seed + 1, 1.0f);
    dy[0] *= 100.0f;
    const std::vector<float> init = randn(n * lddw, seed + 2, 1e-3f);
    std::vector<std::vector<float>> av(n), as(n), bv(k), bs(k);
    for (int64_t j = 0; j < n; ++j) testing_fp8::e4m3_tiles(&dy[j], n, m, av[j], as[j]);
    for (int64_t c = 0; c < k; ++c) testing_fp8::e4m3_tiles(&x[c], k, m, bv[c], bs[c]);
    for (const bool promoted : {true, false}) {
      for (const int bits : {14, 6, 24}) {
        SCOPED_TRACE(testing::Message() << "m=" << m << " n=" << n << " k=" << k << " promoted=" << promoted << " bits=" << bits);
        std::vector<float> ref = init;
        for (int64_t j = 0; j < n; ++j) {
          for (int64_t c = 0; c < k; ++c) {
            auto a = [&](int64_t t) { return av[j][t]; };
            auto b = [&](int64_t t) { return bv[c][t]; };
            auto scale = [&](int64_t kb) { return as[j][kb] * bs[c][kb]; };
            ref[j * lddw + c] += testing_fp8::limited_dot(static_cast<int64_t>(as[j].size()), a, b, scale, promoted, bits);
          }
        }
        const MatmulOptions opt{.fp8_accum = promoted ? Fp8Accumulation::kLimitedPromoted : Fp8Accumulation::kLimitedUnpromoted,
                                .accum_bits = bits};
        for (Isa isa : supported_isas()) {
          ScopedIsa force(isa);
          ASSERT_TRUE(set_num_threads(seed % 2 == 0 ? 2 : 1).ok());
          EXPECT_NE(wgrad_kernel_name(opt).find(isa >= Isa::kAvx2 ? "__avx2" : "__scalar"), std::string::npos) << wgrad_kernel_name(opt);
          std::vector<float> dw = init;
          ASSERT_TRUE(gemm_fp8_wgrad(dy.data(), n, x.data(), k, m, n, k, dw.data(), lddw, opt).ok());
          ASSERT_EQ(dw, ref) << isa_name(isa);
        }
        ++seed;
      }
    }
  }
}

TEST(KernelFp8Wgrad, BadShapesAreNamed) {
  std::vector<float> a(64, 1.0f), dw(64, 0.0f);
  Status s = gemm_fp8_wgrad(a.data(), 2, a.data(), 4, 4, 3, 4, dw.data(), 4);  // lddy 2 < out 3
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("row strides"), std::string::npos) << s.message();
  s = gemm_fp8_wgrad(a.data(), 3, a.data(), 4, 4, 0, 4, dw.data(), 4);
  EXPECT_NE(s.message().find("out 0"), std::string::npos) << s.message();
  s = gemm_fp8_wgrad(a.data(), 3, a.data(), 4, 4, 3, 4, dw.data(), 4, {.fp8_accum = Fp8Accumulation::kLimitedUnpromoted, .accum_bits = 30});
  EXPECT_NE(s.message().find("accum_bits"), std::string::npos) << s.message();
}

// Run by kernels_env_isa_* with LOWBIT_ISA forced through the environment (tests/CMakeLists.txt).
TEST(KernelsEnvIsa, WgradForcedLevelDispatches) {
  const std::string want = active_isa() >= Isa::kAvx2 ? "__avx2" : "__scalar";
  EXPECT_NE(wgrad_kernel_name().find(want), std::string::npos) << wgrad_kernel_name();
  const int64_t m = 131, n = 9, k = 21;
  const std::vector<float> dy = randn(m * n, 5, 1e-3f), x = randn(m * k, 6, 1.0f);
  std::vector<float> y(static_cast<size_t>(n * k), 0.0f), ys(y.size(), 0.0f);
  ASSERT_TRUE(gemm_fp8_wgrad(dy.data(), n, x.data(), k, m, n, k, y.data(), k).ok());
  {
    ScopedIsa force(Isa::kScalar);
    ASSERT_TRUE(gemm_fp8_wgrad(dy.data(), n, x.data(), k, m, n, k, ys.data(), k).ok());
  }
  EXPECT_EQ(y, ys);
}

}  // namespace
}  // namespace lowbit
