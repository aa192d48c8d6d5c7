// FakeQuant (include/lowbit/qat.h): the forward gives exactly quantize()'s codes for the same
// block parameters, the clipped straight-through estimator passes the fp32 gradient (the
// gradient of the linear at the dequantized weight) inside the clipping range and zero outside
// it, and learned scales are stored in the scale format.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "lowbit/formats.h"
#include "lowbit/qat.h"
#include "lowbit/train.h"

namespace lowbit {
namespace {

std::vector<float> randn(size_t n, uint64_t seed, float sd = 1.0f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

TEST(FakeQuant, CodesAndValuesEqualQuantizeWithTheSameBlockParameters) {
  for (const char* text : {"int4:g32:sym:fp16", "uint3:g64:asym:fp16", "int8:row:sym:fp32", "e4m3:block16x16", "nf4:g16:sym:fp16",
                           "int4:g7:sym:bf16"}) {
    SCOPED_TRACE(text);
    const QuantSpec spec = parse_spec(text).value();
    const int64_t R = 19, C = 70;  // ragged groups and blocks
    const std::vector<float> w = randn(static_cast<size_t>(R * C), 3);
    const QuantizedTensor q = quantize(ConstTensorView(w.data(), DType::kF32, {R, C}), spec).value();
    FakeQuant fq = FakeQuant::from_quantized(q, "w").value();
    std::vector<float> w_hat(w.size()), want(w.size());
    ASSERT_TRUE(fq.forward(w.data(), w_hat.data()).ok());
    EXPECT_EQ(fq.quantized().codes, q.codes);
    EXPECT_EQ(fq.quantized().scale_codes, q.scale_codes);
    EXPECT_EQ(fq.quantized().zero_points, q.zero_points);
    ASSERT_TRUE(dequantize(q, TensorView(want.data(), DType::kF32, {R, C})).ok());
    for (size_t i = 0; i < w.size(); ++i) ASSERT_EQ(w_hat[i], want[i]) << i;
    EXPECT_EQ(fq.clipped(), 0);  // absmax scales clip nothing
  }
}

TEST(FakeQuant, StochasticAndTwoLevelSpecsAreRefusedNamingTheTensor) {
  const std::vector<float> w = randn(64, 1);
  for (const char* text : {"int4:g16:sym:fp16:sr7", "e2m1:g16:sym:e4m3*fp32"}) {
    const QuantizedTensor q = quantize(ConstTensorView(w.data(), DType::kF32, {4, 16}), parse_spec(text).value()).value();
    Result<FakeQuant> f = FakeQuant::from_quantized(q, "layers.2.w1");
    ASSERT_FALSE(f.ok()) << text;
    EXPECT_NE(f.status().message().find("layers.2.w1"), std::string::npos);
  }
}

// The estimator's definition on a whole model: with the fake-quantized weight ŵ in the
// forward, the master weight's gradient is the fp32 model's gradient at ŵ where w/s (+z) lies
// in the element range and exactly zero where it does not.
TEST(FakeQuant, SteGradientIsTheFp32GradientInsideTheRangeAndZeroOutside) {
  for (const char* text : {"int4:g8:sym:fp16", "uint3:g8:asym:fp16"}) {
    SCOPED_TRACE(text);
    const QuantSpec spec = parse_spec(text).value();
    LlamaConfig c;
    c.dim = 16;
    c.hidden_dim = 24;
    c.n_layers = 1;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.vocab_size = 19;
    c.seq_len = 8;
    const TrainRecipe fp32 = find_recipe("fp32").value();
    TrainModel ste = TrainModel::init(c, 4, fp32).value();
    const ParamInfo& p = ste.param_info()[1 + 6];  // layers.0.w1 (hidden, dim)
    ASSERT_EQ(p.name, "layers.0.w1");
    float* w = ste.params().data() + p.offset;
    const QuantizedTensor q0 = quantize(ConstTensorView(w, DType::kF32, {p.rows, p.cols}), spec).value();
    FakeQuant fq = FakeQuant::from_quantized(q0, p.name).value();
    // Move some weights beyond the fixed scales' range, on both sides.
    for (int64_t i = 0; i < p.numel(); i += 5) w[i] *= (i % 2 ? 3.0f : -3.0f);
    std::vector<float> w_hat(static_cast<size_t>(p.numel()));
    ASSERT_TRUE(fq.forward(w, w_hat.data()).ok());
    ste.set_weight_override(1 + 6, w_hat.data());

    TrainModel ref = TrainModel::from_model(ste.to_model(), fp32).value();  // fp32 model at ŵ
    std::copy(w_hat.begin(), w_hat.end(), ref.params().begin() + p.offset);
    const std::vector<int> in = {1, 5, 7, 3, 2, 9, 11, 4, 6, 0, 8, 12}, tg = {5, 7, 3, 2, 9, 11, 4, 6, 0, 8, 12, 1};
    for (TrainModel* m : {&ste, &ref}) {
      m->zero_grad();
      ASSERT_TRUE(m->forward(in, tg, 2, 6).ok());
      ASSERT_TRUE(m->backward(1.0f).ok());
    }
    std::vector<float> g(ste.grads().begin() + p.offset, ste.grads().begin() + p.offset + p.numel());
    fq.backward(g.data());
    const BlockGrid grid = q0.grid();
    int64_t inside = 0, outside = 0;
    for (int64_t r = 0; r < p.rows; ++r) {
      for (int64_t col = 0; col < p.cols; ++col) {
        const int64_t b = (r / grid.block_rows) * grid.grid_cols + col / grid.block_cols;
        const double s = q0.scales[static_cast<size_t>(b)];
        const double v = static_cast<double>(w[r * p.cols + col]) / s + (spec.symmetric ? 0 : q0.zero_points[static_cast<size_t>(b)]);
        const bool in_range = spec.symmetric ? std::fabs(v) <= 7.5 : (v >= -0.5 && v <= 7.5);  // half a step past the ends
        const size_t i = static_cast<size_t>(r * p.cols + col);
        const float fp32_grad = ref.grads()[static_cast<size_t>(p.offset) + i];
        if (in_range) {
          ++inside;
          ASSERT_EQ(g[i], fp32_grad) << r << "," << col;
        } else {
          ++outside;
          ASSERT_EQ(g[i], 0.0f) << r << "," << col;
        }
      }
    }
    EXPECT_EQ(outside, fq.clipped());
    EXPECT_GT(outside, 20);
    EXPECT_GT(inside, 200);
    // Every other parameter's gradient is the fp32 model's (the activations saw the same ŵ).
    const ParamInfo& wo = ste.param_info()[1 + 4];
    for (int64_t i = 0; i < wo.numel(); ++i) {
      ASSERT_EQ(ste.grads()[static_cast<size_t>(wo.offset + i)], ref.grads()[static_cast<size_t>(wo.offset + i)]);
    }
  }
}

TEST(FakeQuant, LearnedScalesAreStoredInTheScaleFormatAndUsedByTheForward) {
  const QuantSpec spec = parse_spec("int4:g16:sym:fp16").value();
  const std::vector<float> w = randn(4 * 32, 8);
  const QuantizedTensor q = quantize(ConstTensorView(w.data(), DType::kF32, {4, 32}), spec).value();
  FakeQuant fq = FakeQuant::from_quantized(q, "w").value();
  fq.set_learnable(true);
  for (float& s : fq.master_scales()) s *= 0.6180339887f;  // not an fp16 value
  ASSERT_TRUE(fq.commit_scales().ok());
  std::vector<float> w_hat(w.size());
  ASSERT_TRUE(fq.forward(w.data(), w_hat.data()).ok());
  for (size_t b = 0; b < fq.quantized().scales.size(); ++b) {
    const float s = fq.quantized().scales[b];
    EXPECT_EQ(s, decode(Format::kFp16, encode(Format::kFp16, fq.master_scales()[b])));
  }
  EXPECT_GT(fq.clipped(), 0);  // smaller scales clip the largest weights
  // The gradient of the scale: Σ g · ((q − z) − w/s) inside, (q − z) outside, times 1/sqrt(n · qmax).
  std::vector<float> g(w.size(), 1.0f);
  fq.backward(g.data());
  const float s0 = fq.quantized().scales[0];
  double want = 0;
  for (int64_t c = 0; c < 16; ++c) {
    const double u = static_cast<double>(w[static_cast<size_t>(c)]) / s0;
    const double qv = std::clamp(std::nearbyint(u), -7.0, 7.0);
    want += std::fabs(u) <= 7.5 ? qv - u : qv;
  }
  want /= std::sqrt(16.0 * 7.0);
  EXPECT_NEAR(fq.scale_grads()[0], want, 1e-4);
  fq.master_scales()[1] = -1.0f;
  EXPECT_FALSE(fq.commit_scales().ok());
}

}  // namespace
}  // namespace lowbit
