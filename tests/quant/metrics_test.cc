// Error metrics on hand-computed vectors, their edge cases, double accumulation and
// thread-count independence.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "lowbit/metrics.h"
#include "lowbit/parallel.h"

namespace lowbit {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

TEST(Metrics, HandComputed) {
  const std::vector<float> x = {1, 2, 3, 4};
  const std::vector<float> y = {1, 2, 3, 5};  // error (0, 0, 0, -1)
  EXPECT_DOUBLE_EQ(mse(x, y), 0.25);
  EXPECT_DOUBLE_EQ(sqnr_db(x, y), 10.0 * std::log10(30.0));  // sum x^2 = 30, sum e^2 = 1
  EXPECT_DOUBLE_EQ(cosine_similarity(x, y), 34.0 / std::sqrt(30.0 * 39.0));
  EXPECT_DOUBLE_EQ(max_abs_error(x, y), 1.0);
  EXPECT_DOUBLE_EQ(relative_frobenius_error(x, y), 1.0 / std::sqrt(30.0));
}

TEST(Metrics, SignsAndScale) {
  const std::vector<float> x = {3, -4};
  const std::vector<float> y = {-3, 4};  // e = (6, -8)
  EXPECT_DOUBLE_EQ(mse(x, y), 50.0);
  EXPECT_DOUBLE_EQ(cosine_similarity(x, y), -1.0);
  EXPECT_DOUBLE_EQ(max_abs_error(x, y), 8.0);
  EXPECT_DOUBLE_EQ(relative_frobenius_error(x, y), 2.0);
  EXPECT_DOUBLE_EQ(sqnr_db(x, y), 10.0 * std::log10(25.0 / 100.0));
  const std::vector<float> y2 = {6, -8};  // same direction, twice the length
  EXPECT_DOUBLE_EQ(cosine_similarity(x, y2), 1.0);
  EXPECT_DOUBLE_EQ(relative_frobenius_error(x, y2), 1.0);
  EXPECT_DOUBLE_EQ(sqnr_db(x, y2), 0.0);
}

TEST(Metrics, ErrorStatsMatchesTheSingleFunctions) {
  const std::vector<float> x = {0.5f, -1.25f, 3.0f, 0.0f, 7.5f, -2.0f};
  const std::vector<float> y = {0.5f, -1.0f, 2.75f, 0.125f, 8.0f, -2.0f};
  const ErrorStats e = error_stats(x, y);
  EXPECT_EQ(e.mse, mse(x, y));
  EXPECT_EQ(e.sqnr_db, sqnr_db(x, y));
  EXPECT_EQ(e.cosine, cosine_similarity(x, y));
  EXPECT_EQ(e.max_abs, max_abs_error(x, y));
  EXPECT_EQ(e.rel_frobenius, relative_frobenius_error(x, y));
  EXPECT_DOUBLE_EQ(e.max_abs, 0.5);
  // (0.25^2 + 0.25^2 + 0.125^2 + 0.5^2) / 6
  EXPECT_DOUBLE_EQ(e.mse, (0.0625 + 0.0625 + 0.015625 + 0.25) / 6.0);
}

TEST(Metrics, IdenticalInputs) {
  const std::vector<float> x = {1, -2, 3};
  const ErrorStats e = error_stats(x, x);
  EXPECT_EQ(e.mse, 0.0);
  EXPECT_EQ(e.sqnr_db, kInf);
  EXPECT_DOUBLE_EQ(e.cosine, 1.0);
  EXPECT_EQ(e.max_abs, 0.0);
  EXPECT_EQ(e.rel_frobenius, 0.0);
}

TEST(Metrics, BothZero) {
  const std::vector<float> z = {0, 0, 0};
  const ErrorStats e = error_stats(z, z);
  EXPECT_EQ(e.mse, 0.0);
  EXPECT_EQ(e.sqnr_db, kInf);  // no error at all
  EXPECT_EQ(e.cosine, 1.0);
  EXPECT_EQ(e.max_abs, 0.0);
  EXPECT_EQ(e.rel_frobenius, 0.0);
}

TEST(Metrics, OneSideZero) {
  const std::vector<float> z = {0, 0};
  const std::vector<float> v = {3, 4};
  // Reference zero, copy not: no signal, infinite relative error.
  EXPECT_EQ(cosine_similarity(z, v), 0.0);
  EXPECT_EQ(relative_frobenius_error(z, v), kInf);
  EXPECT_EQ(sqnr_db(z, v), -kInf);
  EXPECT_DOUBLE_EQ(mse(z, v), 12.5);
  // Copy zero (everything quantized to 0): relative error 1, SQNR 0 dB.
  EXPECT_EQ(cosine_similarity(v, z), 0.0);
  EXPECT_DOUBLE_EQ(relative_frobenius_error(v, z), 1.0);
  EXPECT_DOUBLE_EQ(sqnr_db(v, z), 0.0);
  EXPECT_DOUBLE_EQ(max_abs_error(v, z), 4.0);
}

TEST(Metrics, Empty) {
  const std::vector<float> e;
  const ErrorStats s = error_stats(e, e);
  EXPECT_EQ(s.mse, 0.0);
  EXPECT_EQ(s.sqnr_db, kInf);
  EXPECT_EQ(s.cosine, 1.0);
  EXPECT_EQ(s.max_abs, 0.0);
  EXPECT_EQ(s.rel_frobenius, 0.0);
}

TEST(Metrics, NanPropagates) {
  const std::vector<float> x = {1, 2, 3};
  const std::vector<float> y = {1, std::numeric_limits<float>::quiet_NaN(), 3};
  const ErrorStats e = error_stats(x, y);
  EXPECT_TRUE(std::isnan(e.mse));
  EXPECT_TRUE(std::isnan(e.max_abs));
  EXPECT_TRUE(std::isnan(e.cosine));
}

// 3 million errors of 2^-10: in float the sum would stall at 2^24 ulps; in double it is exact.
TEST(Metrics, AccumulatesInDoubleAndIsThreadIndependent) {
  const size_t n = 3'000'001;  // several parallel chunks and a ragged last one
  std::vector<float> x(n, 1.0f), y(n, 1.0f + 0x1p-10f);
  x[17] = 2.0f;  // one larger error: 1 - 2^-10
  const double big = 1.0 - 0x1p-10;
  const double want = ((n - 1) * 0x1p-20 + big * big) / static_cast<double>(n);
  const int saved = num_threads();
  ASSERT_TRUE(set_num_threads(1).ok());
  const ErrorStats one = error_stats(x, y);
  ASSERT_TRUE(set_num_threads(4).ok());
  const ErrorStats four = error_stats(x, y);
  ASSERT_TRUE(set_num_threads(saved).ok());
  EXPECT_DOUBLE_EQ(one.mse, want);
  EXPECT_DOUBLE_EQ(one.max_abs, big);
  // Bit-identical on any thread count.
  EXPECT_EQ(one.mse, four.mse);
  EXPECT_EQ(one.sqnr_db, four.sqnr_db);
  EXPECT_EQ(one.cosine, four.cosine);
  EXPECT_EQ(one.max_abs, four.max_abs);
  EXPECT_EQ(one.rel_frobenius, four.rel_frobenius);
}

TEST(MetricsDeathTest, SizeMismatchAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::vector<float> x = {1, 2, 3}, y = {1, 2};
  EXPECT_DEATH((void)mse(x, y), "x has 3 elements, y has 2");
  EXPECT_DEATH((void)error_stats(x, y), "x has 3 elements, y has 2");
}

}  // namespace
}  // namespace lowbit
