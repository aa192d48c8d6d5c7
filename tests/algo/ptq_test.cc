// The PTQ methods one linear at a time, on synthetic layers built to show what each
// paper claims: GPTQ beats RTN when inputs are correlated, AWQ when a few input channels
// carry outliers; SmoothQuant's scales follow its formula; LLM.int8()'s split is exact.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "lowbit/parallel.h"
#include "lowbit/ptq.h"

namespace lowbit {
namespace {

Tensor random_matrix(int64_t r, int64_t c, uint64_t seed, float sd = 1.0f) {
  Tensor t = Tensor::empty(DType::kF32, {r, c}).value();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, sd);
  for (int64_t i = 0; i < r * c; ++i) t.data_as<float>()[i] = n(rng);
  return t;
}

// x (n, in) with strongly correlated columns: a low-rank mix plus a little noise.
std::vector<float> correlated_inputs(int64_t n, int64_t in, uint64_t seed) {
  const int64_t rank = 8;
  Tensor z = random_matrix(n, rank, seed), a = random_matrix(rank, in, seed + 1);
  std::mt19937_64 rng(seed + 2);
  std::normal_distribution<float> noise(0.0f, 0.05f);
  std::vector<float> x(static_cast<size_t>(n * in));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < in; ++j) {
      float s = 0;
      for (int64_t k = 0; k < rank; ++k) s += z.data_as<float>()[t * rank + k] * a.data_as<float>()[k * in + j];
      x[static_cast<size_t>(t * in + j)] = s + noise(rng);
    }
  return x;
}

// Calibration statistics (with the Hessian XᵀX) of n rows of x, `in` wide.
InputStats stats_of(const std::vector<float>& x, int64_t n, int64_t in) {
  InputStats st;
  st.init(in, true, 0);
  st.add(x.data(), n);
  st.finish();
  return st;
}

Tensor dequantized(const QuantizedTensor& q) {
  Tensor t = Tensor::empty(DType::kF32, {q.rows, q.cols}).value();
  EXPECT_TRUE(dequantize(q, t.view()).ok());
  return t;
}

double rtn_error(const Tensor& w, const QuantSpec& spec, const std::vector<float>& x, int64_t n) {
  const QuantizedTensor q = quantize(w.view(), spec).value();
  return output_error(w.view(), dequantized(q).view(), x, n);
}

// diag H as the ggml types' importance (the imatrix analogue).
std::vector<float> hessian_diag(const InputStats& st, int64_t in) {
  std::vector<float> d(static_cast<size_t>(in));
  for (int64_t j = 0; j < in; ++j) d[static_cast<size_t>(j)] = static_cast<float>(st.hessian[static_cast<size_t>(j * in + j)]);
  return d;
}

// GPTQ with a ggml block type's grid in the loop (natural order, block scales fixed from the updated
// weights) beats the type's own importance-weighted rounding (the imatrix analogue: diag H).
TEST(GptqGgml, BeatsWeightedRoundingForEveryBlockType) {
  const int64_t out = 24, in = 512, n = 1024;
  const Tensor w = random_matrix(out, in, 17);
  const std::vector<float> x = correlated_inputs(n, in, 19);
  const InputStats st = stats_of(x, n, in);
  const std::vector<float> diag = hessian_diag(st, in);
  for (const GgmlBlockInfo& info : ggml_block_types()) {
    if (info.type == GgmlType::kQ8_0) continue;  // 8 bits: both errors are at the noise floor
    const QuantSpec spec = ggml_spec(info.type);
    const QuantizedTensor r = quantize(w.view(), spec, {.importance = diag}).value();
    const double rtn = output_error(w.view(), dequantized(r).view(), x, n);
    const QuantizedTensor g = gptq_quantize(w.view(), st.hessian, spec, {}, "w").value();
    EXPECT_EQ(g.spec, spec);
    EXPECT_EQ(g.codes.size(), r.codes.size());
    const double err = output_error(w.view(), dequantized(g).view(), x, n);
    EXPECT_LT(err, 0.8 * rtn) << info.name << ": gptq " << err << " weighted rounding " << rtn;
  }
}

// Act-order and static groups over ggml blocks (columns by decreasing diag H; a row's block fitted
// when its first column comes up, or from the original weights): still far better than the type's
// weighted rounding, a different result from the natural order (except static groups where one
// block spans the row: fitted before any update in both), and the same bits on 1 and 2 threads
// (rows go in fixed chunks). 260 rows: more than one 256-row chunk.
TEST(GptqGgml, ActOrderAndStaticGroupsForEveryBlockType) {
  const int64_t out = 260, in = 256, n = 512;
  const Tensor w = random_matrix(out, in, 23);
  const std::vector<float> x = correlated_inputs(n, in, 29);
  const InputStats st = stats_of(x, n, in);
  const std::vector<float> diag = hessian_diag(st, in);
  for (const GgmlBlockInfo& info : ggml_block_types()) {
    if (info.type == GgmlType::kQ8_0) continue;  // 8 bits: both errors are at the noise floor
    const QuantSpec spec = ggml_spec(info.type);
    const double rtn = output_error(w.view(), dequantized(quantize(w.view(), spec, {.importance = diag}).value()).view(), x, n);
    const QuantizedTensor natural = gptq_quantize(w.view(), st.hessian, spec, {}, "w").value();
    for (const auto& [act_order, static_groups] : {std::pair{true, false}, std::pair{false, true}, std::pair{true, true}}) {
      GptqOptions opt;
      opt.act_order = act_order;
      opt.static_groups = static_groups;
      const QuantizedTensor g = gptq_quantize(w.view(), st.hessian, spec, opt, "w").value();
      const std::string what = std::string(info.name) + (act_order ? " act-order" : "") + (static_groups ? " static" : "");
      ASSERT_EQ(g.codes.size(), natural.codes.size()) << what;
      if (static_groups && !act_order && info.block_size == in) {
        EXPECT_EQ(g.codes, natural.codes) << what << ": one block a row is fitted before any update either way";
      } else {
        EXPECT_NE(g.codes, natural.codes) << what;
      }
      const double err = output_error(w.view(), dequantized(g).view(), x, n);
      EXPECT_LT(err, 0.8 * rtn) << what << ": gptq " << err << " weighted rounding " << rtn;
      if (static_groups) continue;  // the thread check once per type (act-order alone)
      const int before = num_threads();
      ASSERT_TRUE(set_num_threads(before == 1 ? 2 : 1).ok());
      const QuantizedTensor other = gptq_quantize(w.view(), st.hessian, spec, opt, "w").value();
      ASSERT_TRUE(set_num_threads(before).ok());
      EXPECT_EQ(other.codes, g.codes) << what << ": 1 vs 2 threads";
    }
  }
}

// A width the block cannot hold is refused by GPTQ with RTN's own one-line message (GPTQ checks one
// row through quantize() for ggml types rather than running the whole tensor's search).
TEST(GptqGgml, RefusesAWidthTheBlockCannotHold) {
  const int64_t out = 4, in = 160, n = 256;  // 160: a multiple of Q4_0's 32, not of Q4_K's 256
  const Tensor w = random_matrix(out, in, 5);
  const std::vector<float> x = correlated_inputs(n, in, 7);
  const InputStats st = stats_of(x, n, in);
  const Result<QuantizedTensor> rtn = quantize(w.view(), ggml_spec(GgmlType::kQ4_K), {.name = "blk.0.ffn_up"});
  const Result<QuantizedTensor> g = gptq_quantize(w.view(), st.hessian, ggml_spec(GgmlType::kQ4_K), {}, "blk.0.ffn_up");
  ASSERT_FALSE(rtn.ok());
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().message(), rtn.status().message());
  EXPECT_NE(g.status().message().find("not a multiple of 256"), std::string::npos) << g.status().message();
  EXPECT_TRUE(gptq_quantize(w.view(), st.hessian, ggml_spec(GgmlType::kQ4_0), {}, "blk.0.ffn_up").ok());
}

class GptqSpecs : public ::testing::TestWithParam<std::string> {};

TEST_P(GptqSpecs, BeatsRtnOnCorrelatedInputs) {
  const QuantSpec spec = parse_spec(GetParam()).value();
  const int64_t out = 48, in = 96, n = 512;
  const Tensor w = random_matrix(out, in, 7);
  const std::vector<float> x = correlated_inputs(n, in, 11);
  const InputStats st = stats_of(x, n, in);
  const double rtn = rtn_error(w, spec, x, n);
  for (const bool act_order : {false, true}) {
    for (const bool static_groups : {false, true}) {
      GptqOptions opt;
      opt.act_order = act_order;
      opt.static_groups = static_groups;
      opt.block_size = 32;  // several lazy blocks over 96 columns
      GptqStats gs;
      const QuantizedTensor q = gptq_quantize(w.view(), st.hessian, spec, opt, "w", &gs).value();
      EXPECT_EQ(q.spec, spec);
      const double err = output_error(w.view(), dequantized(q).view(), x, n);
      EXPECT_LT(err, 0.8 * rtn) << GetParam() << " act_order=" << act_order << " static=" << static_groups;
      // The codes decode to values on the grid the scales define: quantizing them again is exact.
      const Tensor deq = dequantized(q);
      QuantizedTensor again = q;
      for (int64_t r = 0; r < out; ++r)
        for (int64_t c = 0; c < in; ++c) {
          const BlockGrid g = q.grid();
          const size_t b = static_cast<size_t>((r / g.block_rows) * g.grid_cols + c / g.block_cols);
          const int32_t z = spec.symmetric ? 0 : q.zero_points[b];
          const uint32_t code = quantize_value(spec, deq.data_as<float>()[r * in + c], q.scales[b], z);
          ASSERT_EQ(dequantize_value(spec, code, q.scales[b], z), deq.data_as<float>()[r * in + c]);
        }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Specs, GptqSpecs,
                         ::testing::Values("int4:g32:sym:fp16", "int4:row", "uint4:g32:asym:fp16", "int8:row",
                                           "nf4:g32", "e4m3:block32x32", "int4:tensor", "e2m1:g32:e8m0"));

// A GptqFactorCache shared by linears on one input (and by the candidates of a sweep) gives the
// codes and scales of uncached calls bit for bit; it hits only on the same Hessian contents and the
// same damping/order options, and a different Hessian replaces its entry.
TEST(Gptq, FactorCacheGivesTheUncachedResult) {
  const int64_t in = 131, n = 400;
  const std::vector<float> x = correlated_inputs(n, in, 21), x2 = correlated_inputs(n, in, 22);
  const InputStats st = stats_of(x, n, in), st2 = stats_of(x2, n, in);
  const Tensor q = random_matrix(37, in, 1), k = random_matrix(19, in, 2), v = random_matrix(19, in, 3);
  for (const char* name : {"int4:g32:sym:fp16", "uint4:g16:asym:fp16", "nf4:g64"}) {
    const QuantSpec spec = parse_spec(name).value();
    for (const bool act_order : {false, true}) {
      GptqOptions opt;
      opt.act_order = act_order;
      opt.block_size = 32;
      GptqFactorCache cache;
      auto same = [&](const Tensor& w, const std::vector<double>& h, const GptqOptions& o) {
        const QuantizedTensor plain = gptq_quantize(w.view(), h, spec, o, "w").value();
        const QuantizedTensor cached = gptq_quantize(w.view(), h, spec, o, "w", nullptr, &cache).value();
        EXPECT_EQ(plain.codes, cached.codes) << name << " act_order=" << act_order;
        EXPECT_EQ(plain.scales, cached.scales) << name << " act_order=" << act_order;
        EXPECT_EQ(plain.zero_points, cached.zero_points) << name << " act_order=" << act_order;
      };
      same(q, st.hessian, opt);  // miss
      same(k, st.hessian, opt);  // hit: same input
      same(v, st.hessian, opt);  // hit
      EXPECT_EQ(cache.misses, 1);
      EXPECT_EQ(cache.hits, 2);
      same(q, st2.hessian, opt);  // another input: replaced
      EXPECT_EQ(cache.misses, 2);
      std::vector<double> h3 = st2.hessian;  // one entry off (symmetric): a different Hessian
      h3[1] = h3[static_cast<size_t>(in)] = h3[1] * 1.5;
      same(k, h3, opt);
      EXPECT_EQ(cache.misses, 3);
      GptqOptions damped = opt;  // the same Hessian at another damping: another factor
      damped.damp = 0.1;
      same(k, h3, damped);
      EXPECT_EQ(cache.misses, 4);
      EXPECT_EQ(cache.hits, 2);
    }
  }
  // A Hessian that no damping makes positive definite fails with the same message, cached or not.
  std::vector<double> bad(static_cast<size_t>(in * in), 0.0);
  for (int64_t i = 0; i < in; ++i) bad[static_cast<size_t>(i * in + i)] = i == 3 ? -1e9 : 1.0;
  GptqFactorCache cache;
  const QuantSpec spec = parse_spec("int4:g32:sym:fp16").value();
  const Status plain = gptq_quantize(q.view(), bad, spec, {}, "blk.0.attn_q").status();
  ASSERT_FALSE(plain.ok());
  for (int i = 0; i < 2; ++i) {
    const Status cached = gptq_quantize(q.view(), bad, spec, {}, "blk.0.attn_q", nullptr, &cache).status();
    EXPECT_EQ(cached.message(), plain.message());
  }
  EXPECT_EQ(cache.hits, 1);
}

// GPTQ of w on 1 thread, then on 2 (the thread count restored after).
std::pair<QuantizedTensor, QuantizedTensor> gptq_on_one_and_two_threads(const Tensor& w, const std::vector<double>& h,
                                                                        const QuantSpec& spec, const GptqOptions& opt) {
  const int before = num_threads();
  EXPECT_TRUE(set_num_threads(1).ok());
  QuantizedTensor one = gptq_quantize(w.view(), h, spec, opt, "w").value();
  EXPECT_TRUE(set_num_threads(2).ok());
  QuantizedTensor two = gptq_quantize(w.view(), h, spec, opt, "w").value();
  EXPECT_TRUE(set_num_threads(before).ok());
  return {std::move(one), std::move(two)};
}

// The float Cholesky + triangular-inverse factor (default) against the double solve + second
// Cholesky reference (f64_factor), on odd shapes that leave partial lazy batches, groups and
// row chunks: the objective within 1%, and nearly every weight decoding to the same value.
// Threads change nothing: 1 and 2 threads give the same codes.
TEST(Gptq, FastFactorMatchesDoubleReference) {
  struct Case { int64_t out, in; const char* spec; bool act_order; };
  for (const Case& k : {Case{37, 203, "int4:g32:sym:fp16", false}, Case{37, 203, "int4:g32:sym:fp16", true},
                        Case{70, 131, "uint4:g16:asym:fp16", true}, Case{19, 257, "int4:row", false},
                        Case{33, 100, "int8:row", true}}) {
    const QuantSpec spec = parse_spec(k.spec).value();
    const int64_t n = 700;
    const Tensor w = random_matrix(k.out, k.in, 21);
    const std::vector<float> x = correlated_inputs(n, k.in, 23);
    const InputStats st = stats_of(x, n, k.in);
    GptqOptions opt;
    opt.act_order = k.act_order;
    opt.block_size = 48;
    const QuantizedTensor fast = gptq_quantize(w.view(), st.hessian, spec, opt, "w").value();
    opt.f64_factor = true;
    const QuantizedTensor ref = gptq_quantize(w.view(), st.hessian, spec, opt, "w").value();
    const double e_fast = output_error(w.view(), dequantized(fast).view(), x, n);
    const double e_ref = output_error(w.view(), dequantized(ref).view(), x, n);
    EXPECT_NEAR(e_fast, e_ref, 0.01 * e_ref) << k.spec << " " << k.out << "x" << k.in;
    const Tensor a = dequantized(fast), b = dequantized(ref);
    int64_t same = 0;
    for (int64_t i = 0; i < k.out * k.in; ++i) same += a.data_as<float>()[i] == b.data_as<float>()[i];
    EXPECT_GE(static_cast<double>(same), 0.98 * static_cast<double>(k.out * k.in)) << k.spec << " " << k.out << "x" << k.in;

    opt.f64_factor = false;
    const auto [one, two] = gptq_on_one_and_two_threads(w, st.hessian, spec, opt);
    EXPECT_EQ(one.codes, two.codes) << k.spec;
    EXPECT_EQ(one.scales, two.scales) << k.spec;
  }
}

// H⁻¹'s factor at widths where the recursion goes several levels deep (and splits off odd
// remainders) and OpenBLAS spreads its products over threads: within float's reach of the
// double reference, and bit-identical on 1 and 2 threads (the split points depend on the width
// alone); then GPTQ itself at the widest: the same codes on 1 and 2 threads, far below RTN.
TEST(Gptq, WideFactorIsAccurateAndThreadCountInvariant) {
  for (const int64_t in : {129, 300, 1100}) {
    const int64_t n = 2 * in + 100;
    const std::vector<float> x = correlated_inputs(n, in, 33);
    const InputStats st = stats_of(x, n, in);
    std::vector<int64_t> order(static_cast<size_t>(in));
    for (int64_t i = 0; i < in; ++i) order[static_cast<size_t>(i)] = (i * 7) % in;  // a permutation: 7 is prime to every width
    std::vector<float> ref, one, two;
    const int before = num_threads();
    ASSERT_TRUE(gptq_factor(st.hessian, order, 0.01, true, ref));
    ASSERT_TRUE(set_num_threads(1).ok());
    ASSERT_TRUE(gptq_factor(st.hessian, order, 0.01, false, one));
    ASSERT_TRUE(set_num_threads(2).ok());
    ASSERT_TRUE(gptq_factor(st.hessian, order, 0.01, false, two));
    ASSERT_TRUE(set_num_threads(before).ok());
    ASSERT_EQ(one.size(), static_cast<size_t>(in * in));
    EXPECT_EQ(one, two) << in;
    float worst = 0, top = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      worst = std::max(worst, std::abs(two[i] - ref[i]));
      top = std::max(top, std::abs(ref[i]));
    }
    EXPECT_LT(worst, 2e-3f * top) << in;
    for (int64_t r = 1; r < in; ++r) EXPECT_EQ(two[static_cast<size_t>(r * in + r - 1)], 0.f) << in;  // upper triangular
  }
  const int64_t out = 12, in = 1100, n = 2300;
  const QuantSpec spec = parse_spec("int4:g32:sym:fp16").value();
  const Tensor w = random_matrix(out, in, 31);
  const std::vector<float> x = correlated_inputs(n, in, 33);
  const InputStats st = stats_of(x, n, in);
  GptqOptions opt;
  opt.act_order = true;
  const auto [one, two] = gptq_on_one_and_two_threads(w, st.hessian, spec, opt);
  EXPECT_EQ(one.codes, two.codes);
  EXPECT_EQ(one.scales, two.scales);
  const double e_gptq = output_error(w.view(), dequantized(two).view(), x, n);
  const double e_rtn = output_error(w.view(), dequantized(quantize(w.view(), spec).value()).view(), x, n);
  EXPECT_LT(e_gptq, 0.01 * e_rtn);
}

TEST(Gptq, EqualsRtnWhenInputsAreIndependent) {
  // H = c·I: no column informs another, so GPTQ's updates vanish and it is RTN exactly.
  const int64_t out = 16, in = 64;
  const Tensor w = random_matrix(out, in, 3);
  std::vector<double> h(static_cast<size_t>(in * in), 0.0);
  for (int64_t i = 0; i < in; ++i) h[static_cast<size_t>(i * in + i)] = 5.0;
  for (const char* s : {"int4:g32:sym:fp16", "int8:row", "uint4:g16:asym:fp16"}) {
    const QuantSpec spec = parse_spec(s).value();
    const QuantizedTensor g = gptq_quantize(w.view(), h, spec, {}, "w").value();
    const QuantizedTensor r = quantize(w.view(), spec).value();
    EXPECT_EQ(g.codes, r.codes) << s;
    EXPECT_EQ(g.scale_codes, r.scale_codes) << s;
    EXPECT_EQ(g.zero_points, r.zero_points) << s;
  }
}

// The Hessian gathers rows and folds them in as symmetric rank-k updates (OpenBLAS's ssyrk where
// linked) into the lower triangle; finish() mirrors. Whatever the fold size (one fold for all rows,
// a fold every few rows, a fold inside a batch's boundary) and with rows added after a finish(), H is
// exactly symmetric and equal to a double-precision XᵀX over every row within float rounding.
TEST(InputStats, HessianIsXtXOverAllBatches) {
  const int64_t in = 19, n1 = 37, n2 = 5, n3 = 11;
  std::vector<float> x = correlated_inputs(n1 + n2 + n3, in, 13);
  for (int64_t fold_rows : {int64_t{0}, int64_t{1}, int64_t{4}, int64_t{40}}) {
    InputStats st;
    st.init(in, true, 0);
    if (fold_rows) st.fold_bytes = fold_rows * in * static_cast<int64_t>(sizeof(float));
    st.add(x.data(), n1);
    st.add(x.data() + n1 * in, n2);
    if (fold_rows == 4) {
      st.finish();  // then more rows: the next finish() must mirror them too
      EXPECT_TRUE(st.pending.empty());
    }
    st.add(x.data() + (n1 + n2) * in, n3);
    if (fold_rows == 1) {
      EXPECT_TRUE(st.pending.empty()) << "a fold per batch once over fold_bytes";
    }
    if (fold_rows == 0) {
      EXPECT_EQ(st.pending.size(), static_cast<size_t>((n1 + n2 + n3) * in)) << "64 MiB default: nothing folded yet";
    }
    st.finish();
    EXPECT_TRUE(st.pending.empty());
    ASSERT_EQ(st.hessian.size(), static_cast<size_t>(in * in));
    double mag = 0;
    for (int64_t i = 0; i < in; ++i) {
      for (int64_t j = 0; j < in; ++j) {
        double want = 0;
        for (int64_t t = 0; t < n1 + n2 + n3; ++t) want += double(x[size_t(t * in + i)]) * double(x[size_t(t * in + j)]);
        mag = std::max(mag, std::fabs(want));
        EXPECT_EQ(st.hessian[size_t(i * in + j)], st.hessian[size_t(j * in + i)]) << fold_rows << ": " << i << "," << j;
        EXPECT_NEAR(st.hessian[size_t(i * in + j)], want, 1e-5 * std::max(1.0, std::fabs(want))) << fold_rows << ": " << i << "," << j;
      }
    }
    EXPECT_GT(mag, 1.0);
    EXPECT_EQ(st.tokens, n1 + n2 + n3);
  }
}

TEST(Gptq, DeadInputsAreZeroed) {
  const int64_t out = 8, in = 32, n = 64;
  const Tensor w = random_matrix(out, in, 5);
  std::vector<float> x = correlated_inputs(n, in, 9);
  for (int64_t t = 0; t < n; ++t) x[static_cast<size_t>(t * in + 3)] = 0.0f;  // column 3 never fires
  const InputStats st = stats_of(x, n, in);
  GptqStats gs;
  const QuantizedTensor q = gptq_quantize(w.view(), st.hessian, parse_spec("int8:row").value(), {}, "w", &gs).value();
  EXPECT_EQ(gs.dead_cols, 1);
  const Tensor d = dequantized(q);
  for (int64_t r = 0; r < out; ++r) EXPECT_EQ(d.data_as<float>()[r * in + 3], 0.0f);
}

TEST(Gptq, BadInputsNameTheTensor) {
  const Tensor w = random_matrix(4, 8, 1);
  const QuantSpec spec = parse_spec("int4:g8:sym:fp16").value();
  std::vector<double> h(64, 0.0);
  for (int i = 0; i < 8; ++i) h[static_cast<size_t>(i * 8 + i)] = -1.0;  // negative definite
  Result<QuantizedTensor> r = gptq_quantize(w.view(), h, spec, {}, "layers.2.wq");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("layers.2.wq"), std::string::npos);
  EXPECT_NE(r.status().message().find("positive definite"), std::string::npos);

  std::vector<double> small(10, 1.0);
  r = gptq_quantize(w.view(), small, spec, {}, "layers.2.wk");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("layers.2.wk"), std::string::npos);

  std::vector<double> nan(64, 0.0);
  for (int i = 0; i < 8; ++i) nan[static_cast<size_t>(i * 8 + i)] = 1.0;
  nan[9] = std::nan("");
  r = gptq_quantize(w.view(), nan, spec, {}, "layers.2.wv");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("NaN"), std::string::npos);
  // A NaN only off the diagonal (no XᵀX makes one; the check reads the diagonal) still fails, in the factor.
  nan[9] = 1.0;
  nan[1] = std::nan("");
  r = gptq_quantize(w.view(), nan, spec, {}, "layers.2.wv");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("layers.2.wv"), std::string::npos);

  std::vector<double> eye(64, 0.0);
  for (int i = 0; i < 8; ++i) eye[static_cast<size_t>(i * 8 + i)] = 1.0;
  r = gptq_quantize(w.view(), eye, parse_spec("e2m1:g16:e4m3*fp32").value(), {}, "layers.2.w1");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("NVFP4"), std::string::npos);
}

TEST(Gptq, RefusesWhatRtnRefuses) {
  // Weights near 1e30: an fp16 scale cannot hold amax / 7. RTN refuses; GPTQ once wrote all-zero
  // scales for the same matrix (issue 21).
  Tensor w = random_matrix(4, 8, 3);
  for (int64_t i = 0; i < w.numel(); ++i) w.data_as<float>()[i] *= 1e30f;
  const QuantSpec spec = parse_spec("int4:g8:sym:fp16").value();
  Result<QuantizedTensor> rtn = quantize(w.view(), spec, {.name = "layers.0.wq"});
  ASSERT_FALSE(rtn.ok());
  std::vector<double> eye(64, 0.0);
  for (int i = 0; i < 8; ++i) eye[static_cast<size_t>(i * 8 + i)] = 1.0;
  Result<QuantizedTensor> g = gptq_quantize(w.view(), eye, spec, {}, "layers.0.wq");
  ASSERT_FALSE(g.ok()) << "GPTQ accepted weights RTN refuses";
  EXPECT_EQ(g.status().message(), rtn.status().message());
}

TEST(Awq, BeatsRtnWithOutlierInputChannels) {
  const int64_t out = 64, in = 128, n = 256;
  const Tensor w1 = random_matrix(out, in, 21), w2 = random_matrix(out / 2, in, 22);
  const Tensor xt = random_matrix(n, in, 23);
  std::vector<float> x(xt.data_as<float>(), xt.data_as<float>() + n * in);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j : {5, 40, 77, 100}) x[static_cast<size_t>(t * in + j)] *= 30.0f;  // salient channels
  InputStats st;
  st.init(in, false, n);
  st.add(x.data(), n);
  st.finish();
  const ConstTensorView ws[] = {w1.view(), w2.view()};
  const QuantSpec spec = parse_spec("int4:g32:sym:fp16").value();
  const AwqResult r = awq_search(ws, st.mean_abs(), st.samples, st.sample_rows(), spec, {}, "w").value();
  EXPECT_GT(r.alpha, 0.0);
  EXPECT_LT(r.error, 0.8 * r.rtn_error);
  EXPECT_NEAR(r.rtn_error, rtn_error(w1, spec, x, n) + rtn_error(w2, spec, x, n), 1e-6 * r.rtn_error);
  // The salient channels get the largest scales.
  for (int64_t j : {5, 40, 77, 100}) EXPECT_GT(r.scales[static_cast<size_t>(j)], r.scales[0]);
}

TEST(SmoothQuant, ScalesFollowTheFormula) {
  Tensor w = Tensor::empty(DType::kF32, {2, 3}).value();
  const float wv[] = {1, -4, 0.5f, -2, 1, 0};
  std::copy(wv, wv + 6, w.data_as<float>());
  const float act[] = {16, 1, 0};
  const ConstTensorView ws[] = {w.view()};
  const std::vector<float> s = smoothquant_scales(ws, act, 0.5);
  EXPECT_FLOAT_EQ(s[0], std::sqrt(16.0f) / std::sqrt(2.0f));
  EXPECT_FLOAT_EQ(s[1], 1.0f / 2.0f);
  EXPECT_FLOAT_EQ(s[2], 1.0f);  // never fires: unchanged
  const std::vector<float> s8 = smoothquant_scales(ws, act, 0.8);
  EXPECT_NEAR(s8[0], std::pow(16.0, 0.8) / std::pow(2.0, 0.2), 1e-5);
}

TEST(Outliers, SplitIsExact) {
  const int64_t out = 6, in = 10;
  const Tensor w = random_matrix(out, in, 31);
  std::vector<float> amax(static_cast<size_t>(in), 1.0f);
  amax[2] = 7.0f;
  amax[8] = 60.0f;
  const QuantSpec spec = parse_spec("int8:row").value();
  const OutlierDecomposition d = split_outliers(w.view(), amax, 6.0f, spec, "w").value();
  ASSERT_EQ(d.cols, (std::vector<int32_t>{2, 8}));
  const Tensor m = dequantized(d.main);
  for (int64_t r = 0; r < out; ++r) {
    EXPECT_EQ(m.data_as<float>()[r * in + 2], 0.0f);
    EXPECT_EQ(m.data_as<float>()[r * in + 8], 0.0f);
    EXPECT_EQ(d.part.data_as<float>()[r * 2 + 1], decode(Format::kFp16, encode(Format::kFp16, w.data_as<float>()[r * in + 8])));
  }
  EXPECT_EQ(d.part_bytes, 2 * out * 2 + 4 * 2);
  EXPECT_FALSE(split_outliers(w.view(), amax, 0.0f, spec, "w").ok());
}

}  // namespace
}  // namespace lowbit
