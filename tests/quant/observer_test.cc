// Calibration observers against brute-force references: absmax over batches, exact
// percentiles, the MSE search (never worse than absmax), TE amax history, and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "lowbit/metrics.h"
#include "lowbit/observer.h"
#include "lowbit/quant.h"
#include "lowbit/tensor.h"

namespace lowbit {
namespace {

QuantSpec spec_of(const char* text) {
  Result<QuantSpec> s = parse_spec(text);
  EXPECT_TRUE(s.ok()) << text << ": " << s.status().to_string();
  return s.value_or(QuantSpec{});
}

Tensor tensor_of(std::initializer_list<int64_t> dims, const std::vector<float>& values) {
  Tensor t = Tensor::empty(DType::kF32, dims).value();
  EXPECT_EQ(static_cast<size_t>(t.numel()), values.size());
  std::memcpy(t.data(), values.data(), values.size() * sizeof(float));
  return t;
}

std::vector<float> random_values(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// Student-t with 3 degrees of freedom: normal / sqrt(chi2_3 / 3). Heavy tails.
std::vector<float> student_t3(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<float> v(n);
  for (float& x : v) {
    const double z = normal(rng);
    double chi2 = 0.0;
    for (int k = 0; k < 3; ++k) {
      const double g = normal(rng);
      chi2 += g * g;
    }
    x = static_cast<float>(z / std::sqrt(chi2 / 3.0));
  }
  return v;
}

// Per-block values of (rows, cols) row-major batches, blocks of (br, bc), grid row-major:
// the reference does not use block_grid.
std::vector<std::vector<float>> blocks_of(const std::vector<std::vector<float>>& batches, int64_t rows, int64_t cols,
                                          int64_t br, int64_t bc) {
  const int64_t gr = (rows + br - 1) / br, gc = (cols + bc - 1) / bc;
  std::vector<std::vector<float>> out(static_cast<size_t>(gr * gc));
  for (const std::vector<float>& x : batches) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        out[static_cast<size_t>((r / br) * gc + c / bc)].push_back(x[static_cast<size_t>(r * cols + c)]);
      }
    }
  }
  return out;
}

std::vector<float> block_absmax_ref(const std::vector<std::vector<float>>& blocks) {
  std::vector<float> m;
  for (const std::vector<float>& b : blocks) {
    float a = 0.0f;
    for (float v : b) a = std::max(a, std::fabs(v));
    m.push_back(a);
  }
  return m;
}

// Quantize -> dequantize MSE of x under spec with static clips.
double quant_mse(ConstTensorView x, const QuantSpec& spec, const std::vector<float>& clip) {
  Result<QuantizedTensor> q = quantize(x, spec, {.name = "x", .clip = clip});
  EXPECT_TRUE(q.ok()) << q.status().to_string();
  if (!q.ok()) return std::numeric_limits<double>::infinity();
  Tensor y = Tensor::empty(DType::kF32, std::span(x.shape().dims.data(), static_cast<size_t>(x.ndim()))).value();
  EXPECT_TRUE(dequantize(*q, y.view()).ok());
  LOWBIT_CHECK(x.is_contiguous());
  const std::span<const float> xs(static_cast<const float*>(x.data()), static_cast<size_t>(x.numel()));
  const std::span<const float> ys(y.data_as<float>(), static_cast<size_t>(y.numel()));
  return mse(xs, ys);
}

// ---- AbsMaxObserver and dynamic_clip ---------------------------------------------------------

struct GridCase {
  const char* spec;
  int64_t rows, cols, br, bc;
};

class AbsMaxGrid : public ::testing::TestWithParam<GridCase> {};

TEST_P(AbsMaxGrid, ThreeBatchesGiveThePerBlockMax) {
  const GridCase& k = GetParam();
  const QuantSpec spec = spec_of(k.spec);
  const size_t n = static_cast<size_t>(k.rows * k.cols);
  std::vector<std::vector<float>> batches = {random_values(n, 1), random_values(n, 2, 3.0f),
                                             random_values(n, 3, 0.5f)};
  batches[1][5] = -40.0f;  // a negative outlier must count by magnitude

  Result<AbsMaxObserver> obs = AbsMaxObserver::create(spec, "w");
  ASSERT_TRUE(obs.ok()) << obs.status().to_string();
  // Batch 0: contiguous (rows, cols).
  const Tensor t0 = tensor_of({k.rows, k.cols}, batches[0]);
  ASSERT_TRUE(obs->observe(t0.view()).ok());
  // Batch 1: the transpose of a (cols, rows) tensor: column stride = rows.
  std::vector<float> tr(n);
  for (int64_t r = 0; r < k.rows; ++r)
    for (int64_t c = 0; c < k.cols; ++c) tr[static_cast<size_t>(c * k.rows + r)] = batches[1][static_cast<size_t>(r * k.cols + c)];
  const Tensor t1 = tensor_of({k.cols, k.rows}, tr);
  ASSERT_TRUE(obs->observe(t1.view().transpose(0, 1)).ok());
  // Batch 2: a column slice of a wider tensor (row stride cols + 9).
  const int64_t wide = k.cols + 9;
  std::vector<float> w(static_cast<size_t>(k.rows * wide), 1000.0f);  // outside the slice: ignored
  for (int64_t r = 0; r < k.rows; ++r)
    for (int64_t c = 0; c < k.cols; ++c) w[static_cast<size_t>(r * wide + 4 + c)] = batches[2][static_cast<size_t>(r * k.cols + c)];
  const Tensor t2 = tensor_of({k.rows, wide}, w);
  ASSERT_TRUE(obs->observe(t2.view().slice(1, 4, 4 + k.cols)).ok());

  const std::vector<float> want = block_absmax_ref(blocks_of(batches, k.rows, k.cols, k.br, k.bc));
  EXPECT_EQ(obs->clip(), want);
  EXPECT_EQ(obs->num_observed(), 3);
  EXPECT_EQ(obs->grid().num_blocks(), static_cast<int64_t>(want.size()));

  // The per-batch maxima (dynamic clips) give the same running max.
  std::vector<float> running(want.size(), 0.0f);
  for (size_t i = 0; i < batches.size(); ++i) {
    const Tensor t = tensor_of({k.rows, k.cols}, batches[i]);
    Result<std::vector<float>> d = dynamic_clip(t.view(), spec, "x");
    ASSERT_TRUE(d.ok()) << d.status().to_string();
    EXPECT_EQ(*d, block_absmax_ref(blocks_of({batches[i]}, k.rows, k.cols, k.br, k.bc)));
    for (size_t b = 0; b < running.size(); ++b) running[b] = std::max(running[b], (*d)[b]);
  }
  EXPECT_EQ(running, want);
}

INSTANTIATE_TEST_SUITE_P(Grids, AbsMaxGrid,
                         ::testing::Values(GridCase{"int8:row", 6, 40, 1, 40},
                                           GridCase{"int4:g32", 4, 172, 1, 32},  // ragged last group of 12
                                           GridCase{"int8:block2x3", 5, 7, 2, 3},
                                           GridCase{"int8:col", 5, 7, 5, 1},
                                           GridCase{"e4m3:tensor", 3, 11, 3, 11}),
                         [](const auto& info) {
                           std::string s = info.param.spec;
                           std::replace(s.begin(), s.end(), ':', '_');
                           return s;
                         });

TEST(AbsMaxObserver, LeadingDimsAreFlattened) {
  const QuantSpec spec = spec_of("int4:g32");
  const std::vector<float> v = random_values(4 * 172, 7);
  const Tensor t3 = tensor_of({2, 2, 172}, v);
  const Tensor t2 = tensor_of({4, 172}, v);
  Result<AbsMaxObserver> a = AbsMaxObserver::create(spec, "a");
  Result<AbsMaxObserver> b = AbsMaxObserver::create(spec, "b");
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(a->observe(t3.view()).ok());
  ASSERT_TRUE(b->observe(t2.view()).ok());
  EXPECT_EQ(a->clip(), b->clip());
  EXPECT_EQ(a->clip().size(), 4u * 6u);
  // A 1-D tensor is one row.
  const Tensor t1 = tensor_of({172}, std::vector<float>(v.begin(), v.begin() + 172));
  Result<std::vector<float>> d = dynamic_clip(t1.view(), spec);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->size(), 6u);
}

TEST(AbsMaxObserver, StaticClipsReproduceDynamicQuantization) {
  const QuantSpec spec = spec_of("int4:g32:sym:fp16");
  const Tensor x = tensor_of({4, 172}, random_values(4 * 172, 11));
  Result<AbsMaxObserver> obs = AbsMaxObserver::create(spec, "x");
  ASSERT_TRUE(obs.ok());
  ASSERT_TRUE(obs->observe(x.view()).ok());
  const std::vector<float> c = obs->clip();
  Result<QuantizedTensor> stat = quantize(x.view(), spec, {.name = "x", .clip = c});
  Result<QuantizedTensor> dyn = quantize(x.view(), spec);
  ASSERT_TRUE(stat.ok() && dyn.ok());
  EXPECT_EQ(stat->codes, dyn->codes);
  EXPECT_EQ(stat->scales, dyn->scales);
}

TEST(AbsMaxObserver, NothingObservedGivesNoClips) {
  Result<AbsMaxObserver> obs = AbsMaxObserver::create(spec_of("int8:row"), "w");
  ASSERT_TRUE(obs.ok());
  EXPECT_TRUE(obs->clip().empty());
  EXPECT_EQ(obs->grid().num_blocks(), 0);
  const Tensor empty = Tensor::empty(DType::kF32, {0, 16}).value();
  EXPECT_TRUE(obs->observe(empty.view()).ok());  // nothing to see
  EXPECT_TRUE(obs->clip().empty());
}

// ---- PercentileObserver ------------------------------------------------------------------------

// ceil(P/100 · n) − 1 in integers, P given in tenths of a percent.
size_t percentile_index_exact(int p_tenths, size_t n) {
  const size_t k = (static_cast<size_t>(p_tenths) * n + 999) / 1000;
  return std::max<size_t>(k, 1) - 1;
}

TEST(PercentileObserver, MatchesSortedReference) {
  struct Case {
    const char* spec;
    int64_t rows, cols, br, bc;
  };
  // (10, 50) x 2 batches per tensor: n = 1000, where 99.9/100 * 1000 is not 999 in double.
  for (const Case& k : {Case{"int8:tensor", 10, 50, 10, 50}, Case{"int4:g32", 4, 172, 1, 32},
                        Case{"int8:block2x3", 5, 7, 2, 3}, Case{"int8:row", 3, 1000, 1, 1000}}) {
    for (int p_tenths : {500, 990, 999, 1000}) {
      SCOPED_TRACE(std::string(k.spec) + " P=" + std::to_string(p_tenths / 10.0));
      const QuantSpec spec = spec_of(k.spec);
      const size_t n = static_cast<size_t>(k.rows * k.cols);
      const std::vector<std::vector<float>> batches = {student_t3(n, 21), random_values(n, 22)};
      Result<PercentileObserver> obs = PercentileObserver::create(spec, p_tenths / 10.0, "act");
      ASSERT_TRUE(obs.ok()) << obs.status().to_string();
      for (const std::vector<float>& b : batches) {
        const Tensor t = tensor_of({k.rows, k.cols}, b);
        ASSERT_TRUE(obs->observe(t.view()).ok());
      }
      std::vector<float> want;
      for (std::vector<float> blk : blocks_of(batches, k.rows, k.cols, k.br, k.bc)) {
        for (float& v : blk) v = std::fabs(v);
        std::sort(blk.begin(), blk.end());
        want.push_back(blk[percentile_index_exact(p_tenths, blk.size())]);
      }
      EXPECT_EQ(obs->clip(), want);
      if (p_tenths == 1000) {  // the 100th percentile is the absmax
        EXPECT_EQ(obs->clip(), block_absmax_ref(blocks_of(batches, k.rows, k.cols, k.br, k.bc)));
      }
    }
  }
}

TEST(PercentileObserver, BeatsAbsMaxOnHeavyTailsInt4PerTensor) {
  const QuantSpec spec = spec_of("int4:tensor");
  const Tensor x = tensor_of({100, 1000}, student_t3(100000, 2024));
  Result<AbsMaxObserver> amax = AbsMaxObserver::create(spec, "t3");
  Result<PercentileObserver> pct = PercentileObserver::create(spec, 99.9, "t3");
  ASSERT_TRUE(amax.ok() && pct.ok());
  ASSERT_TRUE(amax->observe(x.view()).ok());
  ASSERT_TRUE(pct->observe(x.view()).ok());
  const double mse_amax = quant_mse(x.view(), spec, amax->clip());
  const double mse_pct = quant_mse(x.view(), spec, pct->clip());
  EXPECT_LT(pct->clip()[0], amax->clip()[0]);
  EXPECT_LT(mse_pct, mse_amax);
  RecordProperty("mse_absmax", std::to_string(mse_amax));
  RecordProperty("mse_p99.9", std::to_string(mse_pct));
}

TEST(PercentileObserver, RejectsPercentOutOfRange) {
  const QuantSpec spec = spec_of("int8:tensor");
  for (double p : {0.0, -1.0, 100.5, std::numeric_limits<double>::quiet_NaN()}) {
    Result<PercentileObserver> obs = PercentileObserver::create(spec, p, "act7");
    ASSERT_FALSE(obs.ok()) << p;
    EXPECT_NE(obs.status().message().find("act7"), std::string::npos) << obs.status().message();
    EXPECT_NE(obs.status().message().find("percentile"), std::string::npos) << obs.status().message();
  }
  EXPECT_TRUE(PercentileObserver::create(spec, 100.0, "a").ok());
  EXPECT_TRUE(PercentileObserver::create(spec, 1e-6, "a").ok());
}

// ---- MseObserver -------------------------------------------------------------------------------

std::vector<float> distribution(int which, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> v(n);
  switch (which) {
    case 0: return random_values(n, seed);  // normal
    case 1: {
      std::uniform_real_distribution<float> u(-2.0f, 2.0f);
      for (float& x : v) x = u(rng);
      return v;
    }
    case 2: return student_t3(n, seed);
    case 3: {  // Laplace
      std::exponential_distribution<float> e(1.0f);
      std::bernoulli_distribution s(0.5);
      for (float& x : v) x = s(rng) ? e(rng) : -e(rng);
      return v;
    }
    default: {  // normal with rare large outliers, as in LLM activations
      v = random_values(n, seed);
      for (size_t i = 0; i < n; i += 97) v[i] *= 30.0f;
      return v;
    }
  }
}

TEST(MseObserver, NeverWorseThanAbsMax) {
  const int64_t rows = 8, cols = 300;
  const size_t n = static_cast<size_t>(rows * cols);
  for (const char* text : {"int4:tensor", "int4:g32", "int8:row", "int4:block4x64:sym:fp16", "e4m3:g64",
                           "nf4:g64", "e2m1:g32:e8m0:mxfloor", "e2m1:g16:e4m3*fp32", "int4:g128:sym:bf16:pow2"}) {
    const QuantSpec spec = spec_of(text);
    bool strictly_better_somewhere = false;
    for (int dist = 0; dist < 5; ++dist) {
      SCOPED_TRACE(std::string(text) + " distribution " + std::to_string(dist));
      Result<MseObserver> mse_obs = MseObserver::create(spec, "blk");
      Result<AbsMaxObserver> amax_obs = AbsMaxObserver::create(spec, "blk");
      ASSERT_TRUE(mse_obs.ok() && amax_obs.ok()) << mse_obs.status().to_string();
      // Two calibration batches; the MSE is judged over both.
      const Tensor a = tensor_of({rows, cols}, distribution(dist, n, 100 + dist));
      const Tensor b = tensor_of({rows, cols}, distribution(dist, n, 200 + dist));
      for (const Tensor* t : {&a, &b}) {
        ASSERT_TRUE(mse_obs->observe(t->view()).ok());
        ASSERT_TRUE(amax_obs->observe(t->view()).ok());
      }
      const std::vector<float> c_mse = mse_obs->clip(), c_amax = amax_obs->clip();
      ASSERT_EQ(c_mse.size(), c_amax.size());
      for (size_t i = 0; i < c_mse.size(); ++i) {
        EXPECT_LE(c_mse[i], c_amax[i]);
        EXPECT_GE(c_mse[i], 0.5f * c_amax[i] * (1 - 1e-6f));
      }
      const double e_mse = quant_mse(a.view(), spec, c_mse) + quant_mse(b.view(), spec, c_mse);
      const double e_amax = quant_mse(a.view(), spec, c_amax) + quant_mse(b.view(), spec, c_amax);
      EXPECT_LE(e_mse, e_amax * (1 + 1e-12));
      if (e_mse < e_amax * 0.999) strictly_better_somewhere = true;
    }
    EXPECT_TRUE(strictly_better_somewhere) << text << ": the search never found a better clip";
  }
}

// One observed batch gives the clips of quantize's own ClipRule::kMse search.
TEST(MseObserver, OneBatchMatchesTheInlineMseRule) {
  for (const char* text : {"int4:g32", "int8:row", "e4m3:block4x64", "nf4:g64"}) {
    SCOPED_TRACE(text);
    const QuantSpec spec = spec_of(text);
    QuantSpec inline_spec = spec;
    inline_spec.clip = ClipRule::kMse;
    const Tensor x = tensor_of({8, 300}, distribution(2, 2400, 5));
    Result<MseObserver> obs = MseObserver::create(spec, "x");
    ASSERT_TRUE(obs.ok());
    ASSERT_TRUE(obs->observe(x.view()).ok());
    const std::vector<float> c = obs->clip();
    Result<QuantizedTensor> stat = quantize(x.view(), spec, {.name = "x", .clip = c});
    Result<QuantizedTensor> inl = quantize(x.view(), inline_spec);
    ASSERT_TRUE(stat.ok() && inl.ok());
    EXPECT_EQ(stat->scales, inl->scales);
    EXPECT_EQ(stat->codes, inl->codes);
  }
}

TEST(MseObserver, ZeroBlocksAndRatios) {
  EXPECT_EQ(MseObserver::ratio(0), 1.0f);
  EXPECT_FLOAT_EQ(MseObserver::ratio(MseObserver::kNumRatios - 1), 0.5f);
  Result<MseObserver> obs = MseObserver::create(spec_of("int4:g4"), "z");
  ASSERT_TRUE(obs.ok());
  const Tensor t = tensor_of({1, 8}, {0, 0, 0, 0, 1, -2, 3, 0.5f});
  ASSERT_TRUE(obs->observe(t.view()).ok());
  const std::vector<float> c = obs->clip();
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0], 0.0f);
  EXPECT_GT(c[1], 0.0f);
  EXPECT_LE(c[1], 3.0f);
}

// A candidate clip whose scale the format cannot hold is skipped, not fatal: row 1's absmax
// 5e-6 gives s = 5e-6/127 ~ 3.9e-8, which fp16 rounds to its smallest subnormal (6e-8), while
// r <= 0.75 gives s < 2.98e-8, which underflows to 0. The batched evaluation then fails and
// every block is evaluated alone; row 0 must get the clip it gets when observed by itself.
TEST(MseObserver, SkipsCandidatesTheScaleFormatCannotHold) {
  const QuantSpec spec = spec_of("int8:row:sym:fp16");
  std::vector<float> v = student_t3(64, 3);
  float tiny_max = 0.0f;
  for (size_t i = 32; i < 64; ++i) tiny_max = std::max(tiny_max, std::fabs(v[i]));
  for (size_t i = 32; i < 64; ++i) v[i] *= 5e-6f / tiny_max;
  const Tensor t = tensor_of({2, 32}, v);
  Result<MseObserver> obs = MseObserver::create(spec, "tiny");
  ASSERT_TRUE(obs.ok());
  ASSERT_TRUE(obs->observe(t.view()).ok());
  const std::vector<float> c = obs->clip();
  ASSERT_EQ(c.size(), 2u);
  EXPECT_GT(c[1], 0.75f * 5e-6f);  // the unrepresentable candidates were not chosen
  EXPECT_TRUE(quantize(t.view(), spec, {.name = "tiny", .clip = c}).ok());

  Result<MseObserver> row0 = MseObserver::create(spec, "row0");
  ASSERT_TRUE(row0.ok());
  ASSERT_TRUE(row0->observe(tensor_of({1, 32}, std::vector<float>(v.begin(), v.begin() + 32)).view()).ok());
  EXPECT_EQ(row0->clip()[0], c[0]);
  // The premise: a smaller candidate for row 1 does make quantize() fail.
  const std::vector<float> too_small = {c[0], 0.7f * 5e-6f};
  EXPECT_FALSE(quantize(t.view(), spec, {.name = "tiny", .clip = too_small}).ok());
}

// ---- AmaxHistory -------------------------------------------------------------------------------

TEST(AmaxHistory, RingBuffer) {
  Result<AmaxHistory> h = AmaxHistory::create(3, 0, 448.0f, "fc1");
  ASSERT_TRUE(h.ok()) << h.status().to_string();
  EXPECT_EQ(h->clip(), 0.0f);
  EXPECT_EQ(h->scale(), 0.0f);
  EXPECT_TRUE(h->history().empty());
  for (float a : {1.0f, 5.0f, 2.0f, 3.0f}) ASSERT_TRUE(h->record(a).ok());
  EXPECT_EQ(std::vector<float>(h->history().begin(), h->history().end()), (std::vector<float>{5, 2, 3}));
  EXPECT_EQ(h->clip(), 5.0f);
  EXPECT_EQ(h->scale(), 5.0f / 448.0f);
  ASSERT_TRUE(h->record(4.0f).ok());  // 5 falls out
  EXPECT_EQ(std::vector<float>(h->history().begin(), h->history().end()), (std::vector<float>{2, 3, 4}));
  EXPECT_EQ(h->clip(), 4.0f);
  EXPECT_EQ(h->num_recorded(), 5);
}

TEST(AmaxHistory, MarginDoubles) {
  for (int margin : {-2, 0, 1, 2, 3}) {
    Result<AmaxHistory> h = AmaxHistory::create(2, margin, 57344.0f, "g");
    ASSERT_TRUE(h.ok());
    ASSERT_TRUE(h->record(3.0f).ok());
    EXPECT_EQ(h->clip(), std::ldexp(3.0f, margin));
    EXPECT_EQ(h->scale(), std::ldexp(3.0f, margin) / 57344.0f);
  }
  Result<AmaxHistory> h = AmaxHistory::create(1, 1, 448.0f, "g");
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(h->record(10.0f).ok());
  ASSERT_TRUE(h->record(1.5f).ok());  // N = 1: only the latest counts
  EXPECT_EQ(h->clip(), 3.0f);
}

TEST(AmaxHistory, RejectsBadValuesNamingTheTensor) {
  Result<AmaxHistory> h = AmaxHistory::create(4, 0, 448.0f, "blocks.3.fc2");
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(h->record(2.0f).ok());
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity(), -1.0f}) {
    const Status s = h->record(bad);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message().find("blocks.3.fc2"), std::string::npos) << s.message();
  }
  EXPECT_EQ(h->history().size(), 1u);  // unchanged
  EXPECT_EQ(h->clip(), 2.0f);
  EXPECT_FALSE(AmaxHistory::create(0, 0, 448.0f, "x").ok());
  EXPECT_FALSE(AmaxHistory::create(4, 0, 0.0f, "x").ok());
  EXPECT_FALSE(AmaxHistory::create(4, 0, std::numeric_limits<float>::quiet_NaN(), "x").ok());
}

// ---- errors ------------------------------------------------------------------------------------

template <class Obs>
void expect_shape_and_nan_errors(Result<Obs> obs) {
  ASSERT_TRUE(obs.ok()) << obs.status().to_string();
  const Tensor a = tensor_of({4, 172}, random_values(4 * 172, 1));
  ASSERT_TRUE(obs->observe(a.view()).ok());
  const std::vector<float> before = obs->clip();

  // Different rows under row granularity, different cols.
  std::vector<Tensor> wrong;
  wrong.push_back(tensor_of({5, 172}, random_values(5 * 172, 2)));
  wrong.push_back(tensor_of({4, 171}, random_values(4 * 171, 3)));
  for (const Tensor& t : wrong) {
    const Status s = obs->observe(t.view());
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message().find("layers.0.attn.q"), std::string::npos) << s.message();
  }
  // NaN and inf: the message names the tensor and the (row, column).
  std::vector<float> v = random_values(4 * 172, 4);
  v[1 * 172 + 2] = std::numeric_limits<float>::quiet_NaN();
  v[3 * 172 + 0] = std::numeric_limits<float>::infinity();  // later: not the one reported
  const Tensor n = tensor_of({4, 172}, v);
  Status s = obs->observe(n.view());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("layers.0.attn.q"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("NaN at row 1, column 2"), std::string::npos) << s.message();
  v[1 * 172 + 2] = 0.0f;
  v[3 * 172 + 0] = -std::numeric_limits<float>::infinity();
  const Tensor i = tensor_of({4, 172}, v);
  s = obs->observe(i.view());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("-inf at row 3, column 0"), std::string::npos) << s.message();
  // Wrong dtype.
  Tensor h = Tensor::empty(DType::kF16, {4, 172}).value();
  s = obs->observe(h.view());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("layers.0.attn.q"), std::string::npos) << s.message();

  EXPECT_EQ(obs->clip(), before);  // failed calls change nothing
  EXPECT_EQ(obs->num_observed(), 1);
}

TEST(ObserverErrors, ShapesNanAndDtypeNameTheTensor) {
  const QuantSpec spec = spec_of("int4:row");
  {
    SCOPED_TRACE("absmax");
    expect_shape_and_nan_errors(AbsMaxObserver::create(spec, "layers.0.attn.q"));
  }
  {
    SCOPED_TRACE("percentile");
    expect_shape_and_nan_errors(PercentileObserver::create(spec, 99.0, "layers.0.attn.q"));
  }
  {
    SCOPED_TRACE("mse");
    expect_shape_and_nan_errors(MseObserver::create(spec, "layers.0.attn.q"));
  }
}

TEST(ObserverErrors, PerTensorAcceptsBatchesOfDifferentLengths) {
  const QuantSpec spec = spec_of("int8:tensor");
  Result<AbsMaxObserver> obs = AbsMaxObserver::create(spec, "act");
  ASSERT_TRUE(obs.ok());
  ASSERT_TRUE(obs->observe(tensor_of({3, 8}, random_values(24, 1)).view()).ok());
  ASSERT_TRUE(obs->observe(tensor_of({5, 8}, random_values(40, 2, 4.0f)).view()).ok());
  EXPECT_EQ(obs->clip().size(), 1u);
  EXPECT_FALSE(obs->observe(tensor_of({5, 9}, random_values(45, 3)).view()).ok());  // cols still fixed
}

TEST(ObserverErrors, InvalidSpecs) {
  QuantSpec bad = spec_of("int4:g32");
  bad.group = 0;
  Result<AbsMaxObserver> a = AbsMaxObserver::create(bad, "w.q");
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("w.q"), std::string::npos) << a.status().message();
  EXPECT_NE(a.status().message().find("group"), std::string::npos) << a.status().message();
  // Static clips are symmetric only.
  Result<MseObserver> m = MseObserver::create(spec_of("uint8:tensor:asym"), "w.k");
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("w.k"), std::string::npos) << m.status().message();
  EXPECT_FALSE(PercentileObserver::create(spec_of("uint4:g32:asym"), 99.0, "w").ok());
}

TEST(DynamicClip, ErrorsNameTheTensor) {
  const QuantSpec spec = spec_of("e4m3:block2x3");
  std::vector<float> v(35, 1.0f);
  v[3 * 7 + 6] = std::numeric_limits<float>::quiet_NaN();
  Result<std::vector<float>> d = dynamic_clip(tensor_of({5, 7}, v).view(), spec, "mlp.out");
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("mlp.out"), std::string::npos) << d.status().message();
  EXPECT_NE(d.status().message().find("row 3, column 6"), std::string::npos) << d.status().message();
  float scalar = 1.0f;
  EXPECT_FALSE(dynamic_clip(ConstTensorView(&scalar, DType::kF32, Shape{}), spec, "s").ok());
}

}  // namespace
}  // namespace lowbit
