// Kernel tests: packing against its reference (unpack == dequantize, nibble positions), a
// parameterised sweep of every op over odd shapes, strides, group sizes and every ISA this
// CPU has (every path bit-exact vs its scalar twin, which mirrors the SIMD order of operations),
// each also against a dequantize-then-fp64 matmul; the fp8 accumulator emulation; errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fp8_limited_reference.h"
#include "lowbit/cpu.h"
#include "lowbit/formats.h"
#include "lowbit/kernels.h"
#include "lowbit/parallel.h"
#include "lowbit/quant.h"

namespace lowbit {
namespace {

std::vector<float> randn(int64_t n, uint32_t seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

QuantizedTensor quantize_weights(const std::string& spec, int64_t n, int64_t k, uint32_t seed) {
  std::vector<float> w = randn(n * k, seed, 0.05f);
  if (spec.find("asym") != std::string::npos) {
    for (float& x : w) x += 0.03f;  // off-centre so zero points are not trivial
  }
  ConstTensorView v(w.data(), DType::kF32, {n, k});
  return quantize(v, parse_spec(spec).value()).value();
}

// The activations the op actually multiplies (fp32 ops: x itself), dequantized, via the quant layer.
std::vector<float> effective_acts(const std::vector<float>& x, int64_t m, int64_t ldx, int64_t k, KernelOp op) {
  std::vector<float> dense(static_cast<size_t>(m * k));
  for (int64_t i = 0; i < m; ++i) std::memcpy(&dense[i * k], &x[i * ldx], sizeof(float) * k);
  const char* spec = op == KernelOp::kGemmFp8Block ? "e4m3:tile1x128:sym:fp32"
                     : op == KernelOp::kGemmA16W4  ? nullptr
                                                   : "int8:token:sym:fp32";
  if (spec == nullptr) return dense;
  TensorView v(dense.data(), DType::kF32, {m, k});
  QuantizedTensor q = quantize(v, parse_spec(spec).value()).value();
  EXPECT_TRUE(dequantize(q, v).ok());
  return dense;
}

struct Case {
  std::string spec;
  KernelOp op;
  bool bit_exact_vs_scalar;  // every path today: the twins mirror the SIMD order of operations
  double tol_vs_scalar;      // otherwise: |y - y_scalar| <= tol · Σ|x||w|
};

std::string case_name(const testing::TestParamInfo<Case>& info) {
  std::string s = info.param.spec + "_" + std::string(op_name(info.param.op));
  for (char& c : s) {
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return s;
}

class KernelSweep : public testing::TestWithParam<Case> {};

// Runs one shape on every ISA and checks it (fatal failures stop the sweep).
void check_shape(const Case& c, int64_t m, int64_t n, int64_t k, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << c.spec << " " << op_name(c.op) << " m=" << m << " n=" << n << " k=" << k);
  const QuantizedTensor q = quantize_weights(c.spec, n, k, seed);
  const PackedWeights p = pack_weights(q).value();
  // One thread for most shapes (cheap), two for every fourth: chunking must not change results.
  struct Restore {
    int prev = num_threads();
    ~Restore() { (void)set_num_threads(prev); }
  } restore;
  ASSERT_TRUE(set_num_threads(seed % 4 == 0 ? 2 : 1).ok());
  const bool strided = (m + n + k) % 2 == 1;
  const int64_t ldx = strided ? k + 3 : k, ldy = strided ? n + 5 : n;
  const std::vector<float> x = randn(m * ldx, seed + 1);
  MatmulOptions opt{.op = c.op};

  // Dequantize-then-fp64 reference, and the bound Σ|x||w| per output.
  std::vector<float> wd(static_cast<size_t>(n * k));
  {
    TensorView v(wd.data(), DType::kF32, {n, k});
    ASSERT_TRUE(dequantize(q, v).ok());
  }
  const std::vector<float> xe = effective_acts(x, m, ldx, k, c.op);
  std::vector<double> ref(static_cast<size_t>(m * n)), mag(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0, a = 0;
      for (int64_t t = 0; t < k; ++t) {
        s += double{xe[i * k + t]} * wd[j * k + t];
        a += std::fabs(double{xe[i * k + t]} * wd[j * k + t]);
      }
      ref[i * n + j] = s;
      mag[i * n + j] = a;
    }
  }

  std::vector<float> y_scalar(static_cast<size_t>(m * ldy), -7.0f);
  {
    ScopedIsa force(Isa::kScalar);
    ASSERT_TRUE(matmul(p, x.data(), m, ldx, y_scalar.data(), ldy, opt).ok());
    EXPECT_NE(kernel_name(p, opt).find("__scalar"), std::string::npos);
  }
  // fp32 accumulation over k terms plus a few scale products: (k + 8) units of 2^-24 of Σ|x||w|.
  const double tol_ref = (static_cast<double>(k) + 8.0) * std::ldexp(1.0, -24);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const double e = std::fabs(y_scalar[i * ldy + j] - ref[i * n + j]);
      ASSERT_LE(e, tol_ref * mag[i * n + j] + 1e-30) << "scalar vs fp64 at (" << i << ", " << j << ")";
    }
    for (int64_t j = n; j < ldy; ++j) ASSERT_EQ(y_scalar[i * ldy + j], -7.0f) << "wrote past n";
  }

  for (Isa isa : supported_isas()) {
    if (isa == Isa::kScalar) continue;
    ScopedIsa force(isa);
    std::vector<float> y(static_cast<size_t>(m * ldy), -7.0f);
    ASSERT_TRUE(matmul(p, x.data(), m, ldx, y.data(), ldy, opt).ok());
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < ldy; ++j) {
        const float a = y[i * ldy + j], b = y_scalar[i * ldy + j];
        if (c.bit_exact_vs_scalar || j >= n) {
          ASSERT_EQ(std::memcmp(&a, &b, 4), 0) << isa_name(isa) << " vs scalar at (" << i << ", " << j << "): " << a << " vs " << b;
        } else {
          ASSERT_LE(std::fabs(a - b), c.tol_vs_scalar * mag[i * n + j] + 1e-30) << isa_name(isa) << " at (" << i << ", " << j << ")";
        }
      }
    }
  }
}

TEST_P(KernelSweep, ShapesStridesIsas) {
  const Case& c = GetParam();
  uint32_t seed = 1;
  for (int64_t m : {1, 2, 7, 16, 33}) {
    for (int64_t n : {1, 7, 32, 127, 128, 129, 172}) {
      for (int64_t k : {1, 7, 32, 127, 128, 129, 172}) {
        // Keep the sweep cheap: every n x k at m = 1, a third of them (all n, all k) at larger m.
        if (m > 1 && (n * 7 + k + m) % 3 != 0) continue;
        check_shape(c, m, n, k, seed++);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST_P(KernelSweep, LargeK) {
  check_shape(GetParam(), 2, 9, 4097, 100);
  if (HasFatalFailure()) return;
  check_shape(GetParam(), 3, 300, 256, 98);
}

INSTANTIATE_TEST_SUITE_P(
    Kernels, KernelSweep,
    testing::Values(Case{"int8:row:sym:fp32", KernelOp::kGemmA8W8, true, 0},
                    Case{"int4:g32:sym:fp32", KernelOp::kGemmA16W4, true, 0},
                    Case{"int4:g128:sym:fp16", KernelOp::kGemmA16W4, true, 0},
                    Case{"int4:g128:asym:fp32", KernelOp::kGemmA16W4, true, 0},
                    Case{"uint4:g64:asym:fp32", KernelOp::kGemmA16W4, true, 0},
                    Case{"nf4:g64:sym:fp32", KernelOp::kGemmA16W4, true, 0},
                    Case{"nf4:g32:sym:fp32", KernelOp::kGemmA16W4, true, 0},
                    Case{"int4:g32:sym:fp32", KernelOp::kGemmA8W4, true, 0},
                    Case{"int4:g128:sym:fp16", KernelOp::kGemmA8W4, true, 0},
                    Case{"int4:g128:asym:fp32", KernelOp::kGemmA8W4, true, 0},
                    Case{"uint4:g256:asym:fp32", KernelOp::kGemmA8W4, true, 0},
                    Case{"int4:g512:asym:fp32", KernelOp::kGemmA8W4, true, 0},
                    Case{"uint3:g64:asym:fp16", KernelOp::kGemmA16W4, true, 0},
                    Case{"int3:g32:sym:fp32", KernelOp::kGemmA16W4, true, 0},
                    Case{"uint3:g64:asym:fp16", KernelOp::kGemmA8W4, true, 0},
                    Case{"int3:g128:sym:fp16", KernelOp::kGemmA8W4, true, 0},
                    Case{"e4m3:block128x128:sym:fp32", KernelOp::kGemmFp8Block, true, 0}),
    case_name);

// ---- a16w4: the prefill (decoded panel) path equals the per-row path ----

// From kA16W4Mr rows on, the a16w4 matmul decodes each tile's weights to fp32 panels once and runs
// row triples over them in K blocks; with fewer rows it runs the packed tile per row pair. Both
// must give every output the same bits: each row of a many-row call equals that row alone, at
// every ISA, with row tails of 1 and 2, several K blocks, groups that start inside a 64-chunk (g32),
// n not a multiple of the 4-row tiles or of the panels' 16 rows, and a row stride ldx > k.
TEST(KernelA16W4, PanelPathEqualsRowByRow) {
  uint32_t seed = 40;
  for (const char* spec : {"int4:g32:sym:fp32", "int4:g128:asym:fp16", "uint4:g64:asym:fp32", "nf4:g64:sym:fp32",
                           "uint3:g64:asym:fp16", "int3:g32:sym:fp32"}) {
    for (auto [n, k] : {std::pair<int64_t, int64_t>{5, 70}, {37, 300}, {21, 1100}, {9, 2049}}) {
      const QuantizedTensor q = quantize_weights(spec, n, k, seed++);
      const PackedWeights p = pack_weights(q).value();
      for (int64_t m : {3, 4, 5, 8, 17}) {
        SCOPED_TRACE(testing::Message() << spec << " m=" << m << " n=" << n << " k=" << k);
        const int64_t ldx = k + 3;
        const std::vector<float> x = randn(m * ldx, seed++);
        for (Isa isa : supported_isas()) {
          ScopedIsa force(isa);
          std::vector<float> y(static_cast<size_t>(m * n)), y1(static_cast<size_t>(n));
          ASSERT_TRUE(matmul(p, x.data(), m, ldx, y.data(), n).ok());
          for (int64_t i = 0; i < m; ++i) {
            ASSERT_TRUE(matmul(p, &x[static_cast<size_t>(i * ldx)], 1, ldx, y1.data(), n).ok());
            ASSERT_EQ(std::memcmp(&y[static_cast<size_t>(i * n)], y1.data(), sizeof(float) * static_cast<size_t>(n)), 0)
                << isa_name(isa) << " row " << i;
          }
        }
      }
    }
  }
}

// ---- packing reference ----

TEST(KernelPacking, UnpackEqualsDequantize) {
  for (const char* spec : {"int8:row:sym:fp32", "int4:g32:sym:fp16", "int4:g128:asym:fp32", "uint4:g64:asym:fp32",
                           "nf4:g64:sym:fp32", "e4m3:block128x128:sym:fp32", "uint3:g64:asym:fp16", "int3:g32:sym:fp32",
                           "int3:g64:asym:fp32"}) {
    for (auto [n, k] : {std::pair<int64_t, int64_t>{1, 1}, {7, 129}, {130, 300}}) {
      SCOPED_TRACE(testing::Message() << spec << " " << n << "x" << k);
      const QuantizedTensor q = quantize_weights(spec, n, k, 5);
      const PackedWeights p = pack_weights(q).value();
      std::vector<float> a(static_cast<size_t>(n * k)), b(a.size());
      unpack_weights(p, a.data());
      TensorView v(b.data(), DType::kF32, {n, k});
      ASSERT_TRUE(dequantize(q, v).ok());
      ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
      EXPECT_EQ(p.np % 4, 0);
      EXPECT_GE(p.kp, k);
    }
  }
}

TEST(KernelPacking, NibbleAndPanelPositions) {
  // int4 sym: u = code + 8; element 33 of a row sits in byte 1's high nibble, element 64 in byte 32's low nibble.
  const QuantizedTensor q = quantize_weights("int4:g32:sym:fp32", 5, 70, 3);
  const PackedWeights p = pack_weights(q).value();
  ASSERT_EQ(p.kp, 128);
  const int64_t rb = p.kp / 2;
  EXPECT_EQ(p.data[2 * rb + 1] >> 4, q.code_at(2, 33) + 8);
  EXPECT_EQ(p.data[2 * rb + 1] & 0xF, q.code_at(2, 1) + 8);
  EXPECT_EQ(p.data[2 * rb + 32] & 0xF, q.code_at(2, 64) + 8);
  EXPECT_EQ(p.data[2 * rb + 38] & 0xF, 8);  // padding (element 70) holds the offset: weight 0
  EXPECT_EQ(p.offsets[2], 8);  // (tile 0, group 0, row 2)
  // e4m3: panels of 16 weight rows, k-major.
  const QuantizedTensor f = quantize_weights("e4m3:block128x128:sym:fp32", 20, 130, 4);
  const PackedWeights pf = pack_weights(f).value();
  EXPECT_EQ(pf.np, 32);
  EXPECT_EQ(pf.kp, 256);
  EXPECT_EQ(pf.data[(1 * pf.kp + 129) * 16 + 3], static_cast<uint8_t>(f.code_at(19, 129)));
  EXPECT_EQ(pf.data[(0 * pf.kp + 5) * 16 + 15], static_cast<uint8_t>(f.code_at(15, 5)));
}

// ---- pre-quantized int8 entry point ----

TEST(KernelA8W8, PrequantizedMatchesIntegerReference) {
  const int64_t m = 5, n = 9, k = 77;
  const QuantizedTensor q = quantize_weights("int8:row:sym:fp32", n, k, 8);
  const PackedWeights p = pack_weights(q).value();
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> d(-127, 127);
  std::vector<int8_t> a(static_cast<size_t>(m * k));
  for (auto& v : a) v = static_cast<int8_t>(d(rng));
  a[0] = 127;
  a[1] = -127;
  const std::vector<float> sa = {0.5f, 0.25f, 1.0f, 2.0f, 0.125f};
  for (Isa isa : supported_isas()) {
    ScopedIsa force(isa);
    std::vector<float> y(static_cast<size_t>(m * n));
    ASSERT_TRUE(gemm_a8_w8(p, a.data(), m, k, sa.data(), y.data(), n).ok());
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        int32_t acc = 0;
        for (int64_t t = 0; t < k; ++t) acc += int32_t{a[i * k + t]} * q.code_at(j, t);
        EXPECT_EQ(y[i * n + j], static_cast<float>(acc) * sa[i] * q.scales[j]) << isa_name(isa);
      }
    }
  }
  a[3] = -128;
  std::vector<float> y(static_cast<size_t>(m * n));
  const Status s = gemm_a8_w8(p, a.data(), m, k, sa.data(), y.data(), n);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("[-127, 127]"), std::string::npos);
}

// ---- fp8 accumulator emulation ----

// Normwise relative error of y against the fp64 reference of the same quantized inputs.
double fp8_error(Fp8Accumulation mode, int64_t k) {
  const int64_t m = 4, n = 32;
  const QuantizedTensor q = quantize_weights("e4m3:block128x128:sym:fp32", n, k, 11);
  const PackedWeights p = pack_weights(q).value();
  std::vector<float> x = randn(m * k, 12);
  for (float& v : x) v = std::fabs(v) + 0.1f;  // same-sign inputs: sums grow, as in activations after SwiGLU
  std::vector<float> wd(static_cast<size_t>(n * k));
  TensorView wv(wd.data(), DType::kF32, {n, k});
  EXPECT_TRUE(dequantize(q, wv).ok());
  const std::vector<float> xe = effective_acts(x, m, k, k, KernelOp::kGemmFp8Block);
  std::vector<float> y(static_cast<size_t>(m * n));
  EXPECT_TRUE(matmul(p, x.data(), m, k, y.data(), n, {.op = KernelOp::kAuto, .fp8_accum = mode, .accum_bits = 14}).ok());
  double num = 0, den = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t t = 0; t < k; ++t) s += double{xe[i * k + t]} * wd[j * k + t];
      num += (y[i * n + j] - s) * (y[i * n + j] - s);
      den += s * s;
    }
  }
  return std::sqrt(num / den);
}

TEST(KernelFp8, PromotionBeatsLimitedAccumulatorAtK4096) {
  const double fp32 = fp8_error(Fp8Accumulation::kPromoted, 4096);
  const double promoted = fp8_error(Fp8Accumulation::kLimitedPromoted, 4096);
  const double unpromoted = fp8_error(Fp8Accumulation::kLimitedUnpromoted, 4096);
  std::printf("fp8 K=4096 relative error: fp32 %.3g, 14-bit promoted every 128 %.3g, 14-bit unpromoted %.3g\n", fp32,
              promoted, unpromoted);
  EXPECT_LT(promoted, unpromoted);
  EXPECT_LT(fp32, promoted);
  EXPECT_LT(promoted, 1e-3);
}

// The limited accumulator from its definition (fp8_limited_reference.h): activations in 1×128 tiles
// quantized there, the weights' codes and scales as the quant layer stored them.
std::vector<float> limited_reference(const std::vector<float>& x, int64_t m, int64_t ldx, const QuantizedTensor& q, bool promoted,
                                     int bits) {
  const int64_t n = q.rows, k = q.cols, kp = (k + 127) / 128 * 128, nkb = kp / 128;
  std::vector<float> y(static_cast<size_t>(m * n)), xv, xs;
  for (int64_t i = 0; i < m; ++i) {
    testing_fp8::e4m3_tiles(&x[i * ldx], 1, k, xv, xs);
    for (int64_t j = 0; j < n; ++j) {
      auto w = [&](int64_t t) { return t < k ? decode(Format::kE4m3, static_cast<uint32_t>(q.code_at(j, t))) : 0.0f; };
      auto xa = [&](int64_t t) { return xv[t]; };
      auto scale = [&](int64_t kb) { return xs[kb] * q.scales[(j / 128) * nkb + kb]; };
      y[i * n + j] = testing_fp8::limited_dot(nkb, xa, w, scale, promoted, bits);
    }
  }
  return y;
}

TEST(KernelFp8, LimitedAccumulatorOnEveryIsaMatchesItsDefinition) {
  struct Restore {
    int prev = num_threads();
    ~Restore() { (void)set_num_threads(prev); }
  } restore;
  const int64_t shapes[][3] = {{1, 16, 128}, {5, 20, 130}, {7, 33, 300}, {13, 130, 257}, {6, 17, 1}, {14, 140, 129}};
  uint32_t seed = 40;
  for (const auto& sh : shapes) {
    const int64_t m = sh[0], n = sh[1], k = sh[2], ldx = k + (m % 2), ldy = n + 3;
    const QuantizedTensor q = quantize_weights("e4m3:block128x128:sym:fp32", n, k, seed);
    const PackedWeights p = pack_weights(q).value();
    std::vector<float> x = randn(m * ldx, seed + 1);
    x[0] *= 300.0f;  // an outlier: the rest of its tile lands on e4m3's subnormals
    for (const bool promoted : {true, false}) {
      for (const int bits : {14, 5, 24}) {
        SCOPED_TRACE(testing::Message() << "m=" << m << " n=" << n << " k=" << k << " promoted=" << promoted << " bits=" << bits);
        const std::vector<float> ref = limited_reference(x, m, ldx, q, promoted, bits);
        const MatmulOptions opt{.op = KernelOp::kAuto,
                                .fp8_accum = promoted ? Fp8Accumulation::kLimitedPromoted : Fp8Accumulation::kLimitedUnpromoted,
                                .accum_bits = bits};
        for (Isa isa : supported_isas()) {
          ScopedIsa force(isa);
          ASSERT_TRUE(set_num_threads(seed % 2 == 0 ? 2 : 1).ok());
          EXPECT_NE(kernel_name(p, opt).find(isa >= Isa::kAvx2 ? "__avx2" : "__scalar"), std::string::npos) << kernel_name(p, opt);
          std::vector<float> y(static_cast<size_t>(m * ldy), -7.0f);
          ASSERT_TRUE(matmul(p, x.data(), m, ldx, y.data(), ldy, opt).ok());
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
              ASSERT_EQ(y[i * ldy + j], ref[i * n + j]) << isa_name(isa) << " at (" << i << ", " << j << ")";
            }
            for (int64_t j = n; j < ldy; ++j) ASSERT_EQ(y[i * ldy + j], -7.0f) << "wrote past n";
          }
        }
        ++seed;
      }
    }
  }
}

// ---- registry and errors ----

TEST(KernelRegistry, NamesCarryContractAndIsa) {
  const QuantizedTensor q = quantize_weights("int4:g128:sym:fp16", 8, 256, 1);
  const PackedWeights p = pack_weights(q).value();
  {
    ScopedIsa force(Isa::kScalar);
    EXPECT_EQ(kernel_name(p), "gemm_a16_w4g128_f32__scalar");
    EXPECT_EQ(kernel_name(p, {.op = KernelOp::kGemmA8W4}), "gemm_a8_w4g128_f32__scalar");
  }
  bool found_scalar = false;
  for (const KernelInfo& k : available_kernels()) found_scalar |= k.name == "gemm_a8_w8_f32__scalar";
  EXPECT_TRUE(found_scalar);
  if (isa_supported(Isa::kAvx2)) {
    ScopedIsa force(Isa::kAvx2);
    EXPECT_EQ(kernel_name(p), "gemm_a16_w4g128_f32__avx2");
  }
}

TEST(KernelErrors, UnsupportedSpecAndBadShapes) {
  const QuantizedTensor t = quantize_weights("int8:tensor:sym:fp32", 4, 8, 1);
  Result<PackedWeights> r = pack_weights(t);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(r.status().message().find("int8:row:sym"), std::string::npos);
  EXPECT_FALSE(kernel_supports(parse_spec("int4:g48:sym").value()));
  EXPECT_FALSE(kernel_supports(parse_spec("uint3:g64:sym").value()));  // unsigned codes need a zero point
  EXPECT_TRUE(kernel_supports(parse_spec("uint3:g64:asym").value()));

  const PackedWeights p = pack_weights(quantize_weights("int8:row:sym:fp32", 4, 8, 1)).value();
  std::vector<float> x(64), y(64);
  Status s = matmul(p, x.data(), 2, 7, y.data(), 4);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("in features 8"), std::string::npos);
  s = matmul(p, x.data(), 2, 8, y.data(), 3);
  EXPECT_NE(s.message().find("out features 4"), std::string::npos);
  s = matmul(p, x.data(), 2, 8, y.data(), 4, {.op = KernelOp::kGemmA8W4});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("expects int4"), std::string::npos);
  s = matmul(p, x.data(), 2, 8, y.data(), 4, {.op = KernelOp::kAuto, .fp8_accum = Fp8Accumulation::kLimitedPromoted});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(matmul(p, nullptr, 0, 8, nullptr, 4).ok());
}

// Run under LOWBIT_ISA (tests/CMakeLists.txt): the chosen kernel is the forced level's, and it
// agrees with the scalar twin.
TEST(KernelsEnvIsa, ForcedLevelDispatches) {
  const Isa isa = active_isa();
  const QuantizedTensor q = quantize_weights("int4:g32:sym:fp32", 33, 129, 2);
  const PackedWeights p = pack_weights(q).value();
  const std::string want = isa >= Isa::kAvx2 ? "__avx2" : "__scalar";
  EXPECT_NE(kernel_name(p, {.op = KernelOp::kGemmA8W4}).find(want), std::string::npos) << kernel_name(p);
  const std::vector<float> x = randn(3 * 129, 4);
  std::vector<float> y(3 * 33), ys(3 * 33);
  ASSERT_TRUE(matmul(p, x.data(), 3, 129, y.data(), 33, {.op = KernelOp::kGemmA8W4}).ok());
  {
    ScopedIsa force(Isa::kScalar);
    ASSERT_TRUE(matmul(p, x.data(), 3, 129, ys.data(), 33, {.op = KernelOp::kGemmA8W4}).ok());
  }
  EXPECT_EQ(std::memcmp(y.data(), ys.data(), y.size() * 4), 0);
}

}  // namespace
}  // namespace lowbit
