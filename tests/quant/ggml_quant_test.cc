// ggml block quantizers: codes within each type's constraints, a weighted search that is never
// worse than plain rounding, and the block coder GPTQ uses agreeing with quantize_row_ggml.

#include "lowbit/ggml_quant.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace lowbit {
namespace {

struct Row {
  std::vector<float> x, w;
};

// Heavy-tailed weights with a few outliers and importance spanning three orders of magnitude.
Row make_row(int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::student_t_distribution<float> t(4.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  Row r;
  r.x.resize(static_cast<size_t>(k));
  r.w.resize(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    r.x[static_cast<size_t>(i)] = 0.02f * t(rng) + (i % 97 == 5 ? 0.3f : 0.0f);
    r.w[static_cast<size_t>(i)] = std::pow(10.0f, 3.0f * u(rng));
  }
  return r;
}

double rms_of(const std::vector<float>& x) {
  double s = 0;
  for (float v : x) s += static_cast<double>(v) * v;
  return std::sqrt(s / static_cast<double>(x.size()));
}

// The table-driven IQ4 rounding against a scan of all 16 levels (nearest, ties to the lower): at every
// integer, every midpoint and the floats either side of it, the ends and beyond, and random values.
TEST(GgmlQuant, Iq4NearestCodeMatchesAFullScan) {
  const auto scan = [](float t) {
    int best = 0;
    for (int q = 1; q < 16; ++q) {
      const double t2 = std::clamp(static_cast<double>(t), -200.0, 200.0);  // at 1e30 every distance would be equal
      if (std::fabs(t2 - kIq4nlValues[q]) < std::fabs(t2 - kIq4nlValues[best])) best = q;
    }
    return best;
  };
  std::vector<float> ts = {-1e30f, -1000.0f, -127.5f, -127.0f, 113.0f, 113.25f, 1000.0f, 1e30f, 0.0f, -0.0f};
  for (int i = -130; i <= 116; ++i) {
    for (float f : {0.0f, 0.25f, 0.5f, 0.75f}) ts.push_back(static_cast<float>(i) + f);
  }
  for (int q = 0; q + 1 < 16; ++q) {
    const float mid = 0.5f * (static_cast<float>(kIq4nlValues[q]) + static_cast<float>(kIq4nlValues[q + 1]));
    ts.push_back(mid);
    ts.push_back(std::nextafter(mid, -1e9f));
    ts.push_back(std::nextafter(mid, 1e9f));
  }
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-140.0f, 125.0f);
  for (int i = 0; i < 200000; ++i) ts.push_back(u(rng));
  for (float t : ts) ASSERT_EQ(iq4_nearest_code(t), scan(t)) << "t = " << t;
  // A midpoint is a tie: the lower level.
  EXPECT_EQ(iq4_nearest_code(-115.5f), 0);
  EXPECT_EQ(iq4_nearest_code(7.0f), 8);
}

TEST(GgmlQuant, EveryTypeRoundTripsWithBoundedError) {
  // Relative RMS error bounds, loose enough for any sane quantizer of the type, tight enough
  // that a wrong layout or a broken scale fails: bits decide the error.
  const int64_t k = 512;
  const Row r = make_row(k, 7);
  for (const GgmlBlockInfo& info : ggml_block_types()) {
    std::vector<uint8_t> out(static_cast<size_t>(ggml_row_bytes(info.type, k)));
    ASSERT_TRUE(quantize_row_ggml(info.type, r.x.data(), nullptr, out.data(), k)) << info.name;
    std::vector<float> y(static_cast<size_t>(k));
    ASSERT_TRUE(dequantize_row(info.type, out.data(), y.data(), k));
    std::vector<float> d(static_cast<size_t>(k));
    for (size_t i = 0; i < d.size(); ++i) d[i] = y[i] - r.x[i];
    const double rel = rms_of(d) / rms_of(r.x);
    const double bound = 2.0 * std::pow(2.0, -(info.bpw - 1.5));  // ~ 2^-(bits) with headroom
    EXPECT_LT(rel, bound) << info.name << " relative RMS error " << rel;
    EXPECT_GT(rel, 0.0) << info.name;
  }
}

TEST(GgmlQuant, WeightedSearchNeverWorseThanPlainRounding) {
  for (const GgmlBlockInfo& info : ggml_block_types()) {
    for (uint32_t seed = 0; seed < 6; ++seed) {
      const int64_t k = 256;
      const Row r = make_row(k, 100 + seed);
      std::vector<uint8_t> plain(static_cast<size_t>(ggml_row_bytes(info.type, k))), weighted(plain.size());
      ASSERT_TRUE(quantize_row_ggml(info.type, r.x.data(), r.w.data(), plain.data(), k, {.search = false}));
      ASSERT_TRUE(quantize_row_ggml(info.type, r.x.data(), r.w.data(), weighted.data(), k, {.search = true}));
      // Block by block, measured through the ggml dequantizer.
      for (int64_t b = 0; b < k / info.block_size; ++b) {
        const int64_t o = b * info.block_size;
        const double ep = ggml_weighted_error(info.type, r.x.data() + o, r.w.data() + o,
                                              plain.data() + b * info.type_size, info.block_size);
        const double ew = ggml_weighted_error(info.type, r.x.data() + o, r.w.data() + o,
                                              weighted.data() + b * info.type_size, info.block_size);
        EXPECT_LE(ew, ep * (1 + 1e-9)) << info.name << " seed " << seed << " block " << b;
      }
      const double tp = ggml_weighted_error(info.type, r.x.data(), r.w.data(), plain.data(), k);
      const double tw = ggml_weighted_error(info.type, r.x.data(), r.w.data(), weighted.data(), k);
      if (seed == 0) {
        EXPECT_LT(tw, tp) << info.name << ": the search should find something better on heavy tails";
      }
    }
  }
}

TEST(GgmlQuant, BlockCoderMatchesRowQuantizer) {
  for (const GgmlBlockInfo& info : ggml_block_types()) {
    const Row r = make_row(info.block_size, 3);
    std::vector<uint8_t> row(static_cast<size_t>(info.type_size)), coded(row.size());
    ASSERT_TRUE(quantize_row_ggml(info.type, r.x.data(), r.w.data(), row.data(), info.block_size));
    GgmlBlockCoder coder(info.type);
    ASSERT_EQ(coder.block_size(), info.block_size);
    coder.fit(r.x.data(), r.w.data());
    std::vector<float> v(static_cast<size_t>(info.block_size)), y(v.size());
    for (int e = 0; e < info.block_size; ++e) v[static_cast<size_t>(e)] = coder.round(e, r.x[static_cast<size_t>(e)]);
    coder.pack(coded.data());
    EXPECT_EQ(row, coded) << info.name;
    // round() returns exactly what ggml's dequantizer gives for the packed block.
    ASSERT_TRUE(dequantize_row(info.type, coded.data(), y.data(), info.block_size));
    for (size_t e = 0; e < y.size(); ++e) ASSERT_EQ(v[e], y[e]) << info.name << " element " << e;
  }
}

TEST(GgmlQuant, RejectsPartialBlocksAndUnknownTypes) {
  std::vector<float> x(300, 1.0f);
  std::vector<uint8_t> out(1024, 0xAB);
  EXPECT_FALSE(quantize_row_ggml(GgmlType::kQ4_K, x.data(), nullptr, out.data(), 288));
  EXPECT_FALSE(quantize_row_ggml(GgmlType::kIQ2_XXS, x.data(), nullptr, out.data(), 256));
  EXPECT_EQ(out[0], 0xAB);
  EXPECT_EQ(ggml_row_bytes(GgmlType::kQ4_K, 576), 0);
  EXPECT_EQ(ggml_row_bytes(GgmlType::kQ5_0, 576), 18 * 22);
}

}  // namespace
}  // namespace lowbit
