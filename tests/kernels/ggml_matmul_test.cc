// ggml block matmul (ggml_matmul.h), every block type: on every ISA this CPU has, decoding a row
// equals ggml's reference dequantize_row_* bit for bit, and y = x·Wᵀ equals the fp64 product of the
// reference dequantized weights within fp32 summation rounding; odd row counts, token counts that hit
// every register-block tail, 1..37 super-blocks per row (the 1024-column tiles and their remainders),
// and for the 32-element types widths that are not multiples of 256 (576, 1056: a 32-wide tail tile).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "lowbit/cpu.h"
#include "lowbit/formats.h"
#include "lowbit/ggml_matmul.h"
#include "lowbit/parallel.h"

namespace lowbit {
namespace {

// Random blocks with finite fp16 scales in [1e-3, 1e-2] (d, dmin) and random everything else.
std::vector<uint8_t> random_blocks(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  const GgmlBlockInfo* info = ggml_block_info(type);
  const int64_t nb = rows * cols / info->block_size;
  std::vector<uint8_t> bytes(static_cast<size_t>(nb * info->type_size));
  std::mt19937 rng(seed);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> us(1e-3f, 1e-2f);
  for (int64_t i = 0; i < nb; ++i) {
    uint8_t* blk = bytes.data() + i * info->type_size;
    const auto put = [&](size_t at) {
      const auto h = static_cast<uint16_t>(encode(Format::kFp16, us(rng)));
      std::memcpy(blk + at, &h, 2);
    };
    switch (type) {  // every fp16 field (d, and the min m / dmin where the type has one)
      case GgmlType::kQ4_0: put(offsetof(BlockQ4_0, d)); break;
      case GgmlType::kQ4_1: put(offsetof(BlockQ4_1, d)); put(offsetof(BlockQ4_1, m)); break;
      case GgmlType::kQ5_0: put(offsetof(BlockQ5_0, d)); break;
      case GgmlType::kQ5_1: put(offsetof(BlockQ5_1, d)); put(offsetof(BlockQ5_1, m)); break;
      case GgmlType::kQ8_0: put(offsetof(BlockQ8_0, d)); break;
      case GgmlType::kQ2_K: put(offsetof(BlockQ2_K, d)); put(offsetof(BlockQ2_K, dmin)); break;
      case GgmlType::kQ3_K: put(offsetof(BlockQ3_K, d)); break;
      case GgmlType::kQ4_K: put(offsetof(BlockQ4_K, d)); put(offsetof(BlockQ4_K, dmin)); break;
      case GgmlType::kQ5_K: put(offsetof(BlockQ5_K, d)); put(offsetof(BlockQ5_K, dmin)); break;
      case GgmlType::kQ6_K: put(offsetof(BlockQ6_K, d)); break;
      case GgmlType::kIQ4_NL: put(offsetof(BlockIQ4_NL, d)); break;
      case GgmlType::kIQ4_XS: put(offsetof(BlockIQ4_XS, d)); break;
      default: ADD_FAILURE() << "no scale layout for type " << static_cast<int>(type);
    }
  }
  return bytes;
}

bool small_blocks(GgmlType t) { return ggml_block_info(t)->block_size == kGgmlQK; }

std::vector<float> reference_rows(const GgmlMatrix& w) {  // (rows, cols)
  std::vector<float> out(static_cast<size_t>(w.rows * w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    EXPECT_TRUE(dequantize_row(w.type, static_cast<const uint8_t*>(w.blocks) + r * w.row_bytes(), out.data() + r * w.cols, w.cols));
  }
  return out;
}

class GgmlMatmul : public ::testing::TestWithParam<GgmlType> {};

TEST_P(GgmlMatmul, DecodeIsBitExactOnEveryIsa) {
  const GgmlType type = GetParam();
  std::vector<int64_t> widths = {256, 1280, 2304};
  if (small_blocks(type)) widths.insert(widths.end(), {32, 576, 1056});
  for (int64_t cols : widths) {
    const std::vector<uint8_t> bytes = random_blocks(type, 3, cols, 7);
    const GgmlMatrix w{.type = type, .blocks = bytes.data(), .rows = 3, .cols = cols};
    const std::vector<float> ref = reference_rows(w);
    for (Isa isa : supported_isas()) {
      ScopedIsa force(isa);
      for (int64_t r = 0; r < 3; ++r) {
        std::vector<float> got(static_cast<size_t>(cols));
        ASSERT_TRUE(ggml_decode_row(w, r, got.data()).ok());
        ASSERT_EQ(std::memcmp(got.data(), ref.data() + r * cols, sizeof(float) * cols), 0)
            << isa_name(isa) << " row " << r << " cols " << cols;
      }
      std::vector<float> all(static_cast<size_t>(3 * cols), -1.0f);  // rows [1, 3) land at the start
      ASSERT_TRUE(ggml_decode_rows(w, 1, 3, all.data()).ok());
      ASSERT_EQ(std::memcmp(all.data(), ref.data() + cols, sizeof(float) * 2 * cols), 0) << isa_name(isa) << " cols " << cols;
      EXPECT_EQ(all[static_cast<size_t>(2 * cols)], -1.0f) << "wrote past its rows";
    }
  }
}

TEST_P(GgmlMatmul, MatchesReferenceOverOddShapesOnEveryIsa) {
  const GgmlType type = GetParam();
  struct Shape { int64_t rows, cols, m; };
  std::vector<Shape> shapes = {{1, 256, 1}, {7, 256, 2}, {17, 1280, 1}, {33, 1536, 3}, {129, 256, 5},
                               {5, 9472, 7}, {66, 2304, 37}, {3, 512, 70}};
  if (small_blocks(type)) shapes.insert(shapes.end(), {{9, 576, 1}, {65, 576, 33}, {4, 1056, 5}, {3, 32, 2}});
  for (const Shape& s : shapes) {
    const std::vector<uint8_t> bytes = random_blocks(type, s.rows, s.cols, static_cast<uint32_t>(s.rows * 31 + s.m));
    const GgmlMatrix w{.type = type, .blocks = bytes.data(), .rows = s.rows, .cols = s.cols};
    const std::vector<float> wf = reference_rows(w);
    std::mt19937 rng(11);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int64_t ldx = s.cols + 5, ldy = s.rows + 3;  // strided rows
    std::vector<float> x(static_cast<size_t>(s.m * ldx));
    for (auto& v : x) v = nd(rng);
    for (Isa isa : supported_isas()) {
      ScopedIsa force(isa);
      std::vector<float> y(static_cast<size_t>(s.m * ldy), -7.0f);
      ASSERT_TRUE(ggml_matmul(w, x.data(), s.m, ldx, y.data(), ldy).ok());
      for (int64_t t = 0; t < s.m; ++t) {
        for (int64_t r = 0; r < s.rows; ++r) {
          double want = 0, mag = 0;
          for (int64_t k = 0; k < s.cols; ++k) {
            want += static_cast<double>(wf[r * s.cols + k]) * x[t * ldx + k];
            mag += std::fabs(static_cast<double>(wf[r * s.cols + k]) * x[t * ldx + k]);
          }
          // fp32 sums of `cols` products: a few ulps of the magnitude sum per 2^10 terms.
          const double tol = 4e-7 * std::sqrt(static_cast<double>(s.cols)) * mag + 1e-30;
          ASSERT_NEAR(y[t * ldy + r], want, tol) << isa_name(isa) << " rows " << s.rows << " cols " << s.cols
                                                 << " m " << s.m << " at (" << t << ", " << r << ")";
        }
        for (int64_t r = s.rows; r < ldy; ++r) ASSERT_EQ(y[t * ldy + r], -7.0f) << "wrote past the row";
      }
    }
  }
}

TEST_P(GgmlMatmul, RejectsBadShapes) {
  const std::vector<uint8_t> bytes = random_blocks(GetParam(), 1, 256, 1);
  GgmlMatrix w{.type = GetParam(), .blocks = bytes.data(), .rows = 1, .cols = 200};  // not a multiple of 32 or 256
  std::vector<float> x(256), y(1);
  EXPECT_EQ(ggml_matmul(w, x.data(), 1, 256, y.data(), 1).code(), StatusCode::kInvalidArgument);
  w.cols = 256;
  EXPECT_EQ(ggml_matmul(w, x.data(), 1, 100, y.data(), 1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ggml_decode_row(w, 1, x.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ggml_decode_rows(w, 0, 2, x.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ggml_decode_rows(w, 1, 0, x.data()).code(), StatusCode::kInvalidArgument);
  if (!small_blocks(GetParam())) {  // a super-block type needs whole 256-element blocks
    w.cols = 32;
    EXPECT_EQ(ggml_matmul(w, x.data(), 1, 256, y.data(), 1).code(), StatusCode::kInvalidArgument);
  }
  w.cols = 256;
  w.type = GgmlType::kIQ2_XXS;  // a ggml type lowbit has no decoder for
  EXPECT_EQ(ggml_matmul(w, x.data(), 1, 256, y.data(), 1).code(), StatusCode::kUnsupported);
}

std::vector<GgmlType> all_block_types() {
  std::vector<GgmlType> out;
  for (const GgmlBlockInfo& i : ggml_block_types()) out.push_back(i.type);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Types, GgmlMatmul, ::testing::ValuesIn(all_block_types()),
                         [](const auto& info) { return std::string(ggml_block_info(info.param)->name); });

TEST(GgmlMatmulTypes, EveryBlockTypeIsServed) {
  EXPECT_EQ(all_block_types().size(), 12u);
  for (GgmlType t : all_block_types()) EXPECT_TRUE(ggml_matmul_supports(t)) << ggml_block_info(t)->name;
  EXPECT_FALSE(ggml_matmul_supports(GgmlType::kF32));
  EXPECT_FALSE(ggml_matmul_supports(GgmlType::kIQ2_XXS));
}

TEST(GgmlMatmulNames, CarryTheContract) {
  EXPECT_EQ(ggml_kernel_name(GgmlType::kQ4_K, Isa::kAvx2), "gemm_a16_q4K_f32__avx2");
  EXPECT_EQ(ggml_kernel_name(GgmlType::kQ6_K, Isa::kScalar), "gemm_a16_q6K_f32__scalar");
  EXPECT_EQ(ggml_kernel_name(GgmlType::kQ3_K, Isa::kAvx2), "gemm_a16_q3K_f32__avx2");
  EXPECT_EQ(ggml_kernel_name(GgmlType::kIQ4_NL, Isa::kScalar), "gemm_a16_iq4_nl_f32__scalar");
  EXPECT_EQ(ggml_kernel_name(GgmlType::kIQ4_XS, Isa::kAvx2), "gemm_a16_iq4_xs_f32__avx2");
}

}  // namespace
}  // namespace lowbit

// --- Q8_K activations (GgmlActs::kQ8K) ---------------------------------------------------------

namespace lowbit {
namespace {

// ggml's rule written independently of lowbit's: nearest_int by the 1.5·2^23 trick (round half to
// even for |v| < 2^22), iscale = -127 / (first value of largest magnitude), codes capped at 127.
BlockQ8_K q8_rule(const float* x) {
  BlockQ8_K b{};
  float amax = 0, max = 0;
  for (int j = 0; j < 256; ++j) {
    if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), max = x[j];
  }
  if (amax == 0) return b;
  const float iscale = -127.f / max;
  for (int j = 0; j < 256; ++j) {
    float v = iscale * x[j] + 12582912.f;
    int32_t bits;
    std::memcpy(&bits, &v, 4);
    const int q = (bits & 0x007fffff) - 0x00400000;
    b.qs[j] = static_cast<int8_t>(q < 127 ? q : 127);
    b.bsums[j / 16] = static_cast<int16_t>(b.bsums[j / 16] + b.qs[j]);
  }
  b.d = 1 / iscale;
  return b;
}

std::vector<float> q8_test_rows(int64_t m, int64_t ld, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(m * ld));
  for (auto& v : x) v = nd(rng) * (rng() % 7 == 0 ? 20.0f : 1.0f);  // some outliers
  return x;
}

TEST(GgmlQ8K, QuantizeRowIsGgmlsRule) {
  std::vector<float> x = q8_test_rows(1, 256 * 6, 3);
  for (int j = 0; j < 256; ++j) x[256 + j] = 0.0f;           // an all-zero block
  for (int j = 0; j < 256; ++j) x[512 + j] = (j % 11) - 5.0f;  // -5 first: ties with +5 later
  // Block 3: -127 first, so iscale = 1 and the halves 2.5 / -3.5 round to even (2 / -4).
  for (int j = 0; j < 256; ++j) x[768 + j] = j == 0 ? -127.0f : (j % 2 ? 2.5f : -3.5f);
  for (int j = 0; j < 256; ++j) x[1024 + j] = 1e-30f * ((j % 5) - 2.0f);  // tiny
  std::vector<BlockQ8_K> got(6);
  quantize_row_q8_K(x.data(), got.data(), 256 * 6);
  for (int b = 0; b < 6; ++b) {
    const BlockQ8_K want = q8_rule(x.data() + 256 * b);
    EXPECT_EQ(got[b].d, want.d) << "block " << b;
    EXPECT_EQ(std::memcmp(got[b].qs, want.qs, 256), 0) << "block " << b;
    EXPECT_EQ(std::memcmp(got[b].bsums, want.bsums, sizeof want.bsums), 0) << "block " << b;
  }
  EXPECT_EQ(got[1].d, 0.0f);
  // The first largest value (-5) maps to -127 (d = -max / 127 carries the sign), the tied +5 to +127.
  EXPECT_EQ(got[2].qs[0], -127);
  EXPECT_EQ(got[2].qs[10], 127);
  EXPECT_EQ(got[3].qs[0], -127);
  EXPECT_EQ(got[3].qs[1], 2);
  EXPECT_EQ(got[3].qs[2], -4);
}

// With Q8_K activations: every ISA gives the same bits; the result equals the exact product of the
// reference-dequantized weights and the dequantized Q8_K activations (fp64) within fp32 rounding,
// and the fp32-activation product within the activation rounding bound.
TEST(GgmlQ8K, MatmulIsExactIntegerArithmeticOnEveryIsa) {
  struct Shape { int64_t rows, cols, m; };
  const std::vector<Shape> shapes = {{1, 256, 1}, {7, 256, 2}, {17, 1280, 1}, {33, 1536, 3}, {129, 256, 5},
                                     {5, 9472, 7}, {66, 2304, 37}, {3, 512, 70}, {20, 768, 4}};
  for (GgmlType type : {GgmlType::kQ4_K, GgmlType::kQ6_K}) {
    for (const Shape& s : shapes) {
      const std::vector<uint8_t> bytes = random_blocks(type, s.rows, s.cols, static_cast<uint32_t>(s.rows * 7 + s.m));
      const GgmlMatrix w{.type = type, .blocks = bytes.data(), .rows = s.rows, .cols = s.cols};
      const std::vector<float> wf = reference_rows(w);
      const int64_t ldx = s.cols + 3, ldy = s.rows + 2, nb = s.cols / 256;
      const std::vector<float> x = q8_test_rows(s.m, ldx, static_cast<uint32_t>(s.cols + s.m));
      std::vector<BlockQ8_K> a(static_cast<size_t>(s.m * nb));
      for (int64_t t = 0; t < s.m; ++t) {
        for (int64_t b = 0; b < nb; ++b) a[static_cast<size_t>(t * nb + b)] = q8_rule(x.data() + t * ldx + 256 * b);
      }
      std::vector<float> first;
      for (Isa isa : supported_isas()) {
        ScopedIsa force(isa);
        std::vector<float> y(static_cast<size_t>(s.m * ldy), -7.0f);
        ASSERT_TRUE(ggml_matmul(w, x.data(), s.m, ldx, y.data(), ldy, GgmlActs::kQ8K).ok());
        if (first.empty()) {
          first = y;
        } else {
          ASSERT_EQ(std::memcmp(first.data(), y.data(), sizeof(float) * y.size()), 0)
              << isa_name(isa) << " differs from " << isa_name(supported_isas().front()) << ": "
              << ggml_block_info(type)->name << " rows " << s.rows << " cols " << s.cols << " m " << s.m;
        }
        for (int64_t t = 0; t < s.m; ++t) {
          for (int64_t r = 0; r < s.rows; ++r) {
            double want = 0, mag = 0, exact = 0, bound = 0;
            for (int64_t k = 0; k < s.cols; ++k) {
              const BlockQ8_K& ab = a[static_cast<size_t>(t * nb + k / 256)];
              const double wk = wf[r * s.cols + k], ak = static_cast<double>(ab.d) * ab.qs[k % 256];
              const double xk = x[t * ldx + k];
              want += wk * ak;
              mag += std::fabs(wk * ak);
              exact += wk * xk;
              bound += std::fabs(wk) * std::fabs(static_cast<double>(ab.d)) * 0.5000001;  // |x - d·q| <= d/2
            }
            const double got = y[t * ldy + r];
            ASSERT_NEAR(got, want, 2e-6 * mag + 1e-30) << isa_name(isa) << " " << ggml_block_info(type)->name << " rows "
                                                       << s.rows << " cols " << s.cols << " m " << s.m << " at (" << t << ", " << r << ")";
            ASSERT_LE(std::fabs(got - exact), bound + 2e-6 * mag + 1e-30) << "farther from the fp32 product than Q8_K rounding allows";
          }
          for (int64_t r = s.rows; r < ldy; ++r) ASSERT_EQ(y[t * ldy + r], -7.0f) << "wrote past the row";
        }
      }
    }
  }
}

// ggml_matmul_many (q, k, v or gate, up over one x, one parallel region): the bits of separate
// ggml_matmul calls on every ISA and at 1 and 2 threads, for Q4_K/Q6_K mixes with row counts that
// split row blocks unevenly, decode and prefill token counts; a mix with a type lacking the Q8_K
// path, fp32 activations, and unequal widths or counts behave as documented.
TEST(GgmlQ8K, ManyMatricesEqualSeparateCalls) {
  const int64_t cols = 1536;
  const int threads_before = num_threads();
  struct Mat { GgmlType type; int64_t rows; };
  const std::vector<std::vector<Mat>> groups = {
      {{GgmlType::kQ4_K, 37}, {GgmlType::kQ4_K, 5}, {GgmlType::kQ6_K, 19}},
      {{GgmlType::kQ6_K, 1}, {GgmlType::kQ4_K, 64}},
      {{GgmlType::kQ4_K, 17}, {GgmlType::kQ5_0, 9}},  // no Q8_K path for Q5_0: separate calls
  };
  for (const auto& g : groups) {
    std::vector<std::vector<uint8_t>> bytes;
    std::vector<GgmlMatrix> mats;
    for (size_t i = 0; i < g.size(); ++i) bytes.push_back(random_blocks(g[i].type, g[i].rows, cols, static_cast<uint32_t>(11 + i)));
    for (size_t i = 0; i < g.size(); ++i) mats.push_back(GgmlMatrix{.type = g[i].type, .blocks = bytes[i].data(), .rows = g[i].rows, .cols = cols});
    std::vector<const GgmlMatrix*> ws;
    for (const GgmlMatrix& w : mats) ws.push_back(&w);
    for (GgmlActs acts : {GgmlActs::kQ8K, GgmlActs::kF32}) {
      for (int64_t m : {1, 3, 33}) {
        const std::vector<float> x = q8_test_rows(m, cols + 1, static_cast<uint32_t>(m));
        for (Isa isa : supported_isas()) {
          ScopedIsa force(isa);
          for (int threads : {1, 2}) {
            ASSERT_TRUE(set_num_threads(threads).ok());
            std::vector<std::vector<float>> want(g.size()), got(g.size());
            std::vector<float*> ys;
            for (size_t i = 0; i < g.size(); ++i) {
              want[i].assign(static_cast<size_t>(m * g[i].rows), -1.0f);
              got[i].assign(want[i].size(), -2.0f);
              ASSERT_TRUE(ggml_matmul(mats[i], x.data(), m, cols + 1, want[i].data(), g[i].rows, acts).ok());
              ys.push_back(got[i].data());
            }
            ASSERT_TRUE(ggml_matmul_many(ws, x.data(), m, cols + 1, ys, acts).ok());
            for (size_t i = 0; i < g.size(); ++i) {
              ASSERT_EQ(std::memcmp(want[i].data(), got[i].data(), sizeof(float) * want[i].size()), 0)
                  << "matrix " << i << " m " << m << " " << isa_name(isa) << " threads " << threads;
            }
          }
        }
      }
    }
  }
  ASSERT_TRUE(set_num_threads(threads_before).ok());
  const std::vector<uint8_t> a = random_blocks(GgmlType::kQ4_K, 4, 256, 1), b = random_blocks(GgmlType::kQ4_K, 4, 512, 2);
  const GgmlMatrix wa{.type = GgmlType::kQ4_K, .blocks = a.data(), .rows = 4, .cols = 256};
  const GgmlMatrix wb{.type = GgmlType::kQ4_K, .blocks = b.data(), .rows = 4, .cols = 512};
  const std::vector<float> x = q8_test_rows(1, 512, 3);
  std::vector<float> ya(4), yb(4);
  const GgmlMatrix* two[] = {&wa, &wb};
  float* outs[] = {ya.data(), yb.data()};
  const Status s = ggml_matmul_many(two, x.data(), 1, 512, outs, GgmlActs::kQ8K);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("256 and 512 columns"), std::string::npos) << s.message();
  EXPECT_FALSE(ggml_matmul_many(two, x.data(), 1, 512, std::span<float* const>(outs, 1), GgmlActs::kQ8K).ok());
}

TEST(GgmlQ8K, OtherTypesIgnoreItAndNamesSayA8) {
  EXPECT_TRUE(ggml_q8_supports(GgmlType::kQ4_K));
  EXPECT_TRUE(ggml_q8_supports(GgmlType::kQ6_K));
  EXPECT_FALSE(ggml_q8_supports(GgmlType::kQ4_0));
  EXPECT_EQ(ggml_kernel_name(GgmlType::kQ4_K, Isa::kAvx2, GgmlActs::kQ8K), "gemm_a8_q4K_f32__avx2");
  EXPECT_EQ(ggml_kernel_name(GgmlType::kQ6_K, Isa::kScalar, GgmlActs::kQ8K), "gemm_a8_q6K_f32__scalar");
  EXPECT_EQ(ggml_kernel_name(GgmlType::kQ4_0, Isa::kAvx2, GgmlActs::kQ8K), "gemm_a16_q4_0_f32__avx2");
  // A type without the integer path runs its fp32 path: the same bits as kF32.
  const std::vector<uint8_t> bytes = random_blocks(GgmlType::kQ5_0, 9, 576, 5);
  const GgmlMatrix w{.type = GgmlType::kQ5_0, .blocks = bytes.data(), .rows = 9, .cols = 576};
  const std::vector<float> x = q8_test_rows(3, 576, 9);
  std::vector<float> y1(27), y2(27);
  ASSERT_TRUE(ggml_matmul(w, x.data(), 3, 576, y1.data(), 9, GgmlActs::kF32).ok());
  ASSERT_TRUE(ggml_matmul(w, x.data(), 3, 576, y2.data(), 9, GgmlActs::kQ8K).ok());
  EXPECT_EQ(std::memcmp(y1.data(), y2.data(), sizeof(float) * 27), 0);
}

}  // namespace
}  // namespace lowbit
