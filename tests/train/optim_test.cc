// AdamW with FP32 master weights: a hand-worked update, loss-scale overflow (skip + halve),
// growth, clipping, BF16 moments, the LR schedule, gradient accumulation, and overfitting one
// batch to near-zero loss under fp32 and fp8-blockwise.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "lowbit/train.h"

namespace lowbit {
namespace {

LlamaConfig tiny(int dim = 6, int heads = 3, int kv = 1, int hidden = 7, int vocab = 11, int seq = 8) {
  LlamaConfig c;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = 2;
  c.n_heads = heads;
  c.n_kv_heads = kv;
  c.vocab_size = vocab;
  c.seq_len = seq;
  c.shared_classifier = false;
  return c;
}

TrainModel make(std::string_view recipe = "fp32", const LlamaConfig& c = tiny()) {
  return TrainModel::init(c, 7, find_recipe(recipe).value()).value();
}

// First matrix element (decayed) and first norm element (not decayed).
size_t first_matrix(const TrainModel& m) { return static_cast<size_t>(m.param_info()[0].offset); }
size_t first_norm(const TrainModel& m) { return static_cast<size_t>(m.param_info()[1].offset); }

TEST(AdamW, HandWorkedTwoSteps) {
  TrainModel m = make();
  const size_t w = first_matrix(m), n = first_norm(m);
  m.params()[w] = 1.0f;
  m.params()[n] = 1.0f;
  AdamW opt(m, {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f, .clip = 0.0f});
  m.zero_grad();
  m.grads()[w] = 0.5f;
  m.grads()[n] = 0.5f;
  StepResult r = opt.step(m, 0.1f);
  EXPECT_FALSE(r.skipped);
  // m = 0.05, v = 0.00025, m̂ = 0.5, v̂ = 0.25, update 1; decayed: 1 - 0.1·(1 + 0.1·1) = 0.89.
  EXPECT_NEAR(m.params()[w], 0.89f, 1e-6);
  EXPECT_NEAR(m.params()[n], 0.90f, 1e-6);
  m.grads()[w] = -0.25f;
  opt.step(m, 0.1f);
  // m = 0.02, v = 0.00031225, m̂ = 0.02/0.19, v̂ = 0.00031225/0.001999, update 0.266339;
  // 0.89 - 0.1·(0.266339 + 0.1·0.89) = 0.8544661.
  EXPECT_NEAR(m.params()[w], 0.8544661f, 2e-6);
  EXPECT_EQ(opt.steps(), 2);
}

TEST(AdamW, OverflowSkipsTheStepAndHalvesTheScale) {
  TrainModel m = make();
  AdamW opt(m, {.lr = 0.1f}, {.dynamic = true, .scale = 1024.0f, .growth_interval = 2});
  const std::vector<float> before(m.params().begin(), m.params().end());
  m.zero_grad();
  m.grads()[3] = std::numeric_limits<float>::infinity();
  StepResult r = opt.step(m, 0.1f);
  EXPECT_TRUE(r.skipped);
  EXPECT_EQ(r.loss_scale, 512.0f);
  EXPECT_EQ(opt.loss_scale(), 512.0f);
  EXPECT_EQ(opt.skipped_steps(), 1);
  EXPECT_EQ(opt.steps(), 0);
  EXPECT_TRUE(std::equal(before.begin(), before.end(), m.params().begin()));
  m.grads()[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(opt.step(m, 0.1f).skipped);
  EXPECT_EQ(opt.loss_scale(), 256.0f);
  // Two good steps in a row double it again.
  m.grads()[3] = 1.0f;
  EXPECT_FALSE(opt.step(m, 0.1f).skipped);
  EXPECT_EQ(opt.loss_scale(), 256.0f);
  EXPECT_FALSE(opt.step(m, 0.1f).skipped);
  EXPECT_EQ(opt.loss_scale(), 512.0f);
}

TEST(AdamW, StaticScaleSkipsWithoutChangingTheScale) {
  TrainModel m = make();
  AdamW opt(m, {}, {.dynamic = false, .scale = 1024.0f});
  m.zero_grad();
  m.grads()[0] = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(opt.step(m, 0.1f).skipped);
  EXPECT_EQ(opt.loss_scale(), 1024.0f);
}

TEST(AdamW, LossScaleIsDividedOut) {
  // Gradients ×1024 under scale 1024 update exactly as unscaled ones under scale 1 (powers of two).
  TrainModel a = make(), b = make();
  AdamW oa(a, {.lr = 0.01f, .clip = 0.0f}), ob(b, {.lr = 0.01f, .clip = 0.0f}, {.scale = 1024.0f});
  std::mt19937 g(1);
  std::normal_distribution<float> d;
  for (size_t i = 0; i < a.grads().size(); ++i) {
    a.grads()[i] = d(g);
    b.grads()[i] = a.grads()[i] * 1024.0f;
  }
  oa.step(a, 0.01f);
  ob.step(b, 0.01f);
  for (size_t i = 0; i < a.params().size(); ++i) ASSERT_EQ(a.params()[i], b.params()[i]) << i;
}

TEST(AdamW, ClipsByGlobalNorm) {
  TrainModel a = make(), b = make();
  AdamW oa(a, {.lr = 0.01f, .clip = 1.0f}), ob(b, {.lr = 0.01f, .clip = 0.0f});
  a.zero_grad();
  b.zero_grad();
  a.grads()[0] = 6.0f;  // norm 10
  a.grads()[5] = 8.0f;
  b.grads()[0] = 0.6f;  // the clipped gradient
  b.grads()[5] = 0.8f;
  const StepResult ra = oa.step(a, 0.01f);
  EXPECT_NEAR(ra.grad_norm, 10.0, 1e-9);
  ob.step(b, 0.01f);
  for (size_t i = 0; i < a.params().size(); ++i) ASSERT_NEAR(a.params()[i], b.params()[i], 1e-7) << i;
  // Below the threshold nothing changes: the same gradient at clip 100 equals no clipping.
  TrainModel c = make(), e = make();
  AdamW oc(c, {.lr = 0.01f, .clip = 100.0f}), oe(e, {.lr = 0.01f, .clip = 0.0f});
  c.grads()[0] = e.grads()[0] = 6.0f;
  oc.step(c, 0.01f);
  oe.step(e, 0.01f);
  for (size_t i = 0; i < c.params().size(); ++i) ASSERT_EQ(c.params()[i], e.params()[i]);
}

TEST(AdamW, Bf16MomentsTrackFp32AndSerialize) {
  TrainModel a = make(), b = make();
  AdamW oa(a, {.lr = 0.01f, .clip = 0.0f}), ob(b, {.lr = 0.01f, .clip = 0.0f, .bf16_moments = true});
  std::mt19937 g(2);
  std::normal_distribution<float> d;
  for (int s = 0; s < 3; ++s) {
    for (size_t i = 0; i < a.grads().size(); ++i) a.grads()[i] = b.grads()[i] = d(g);
    oa.step(a, 0.01f);
    ob.step(b, 0.01f);
  }
  double diff = 0;
  for (size_t i = 0; i < a.params().size(); ++i) diff = std::max(diff, static_cast<double>(std::fabs(a.params()[i] - b.params()[i])));
  EXPECT_GT(diff, 0.0);   // bf16 rounding shows
  EXPECT_LT(diff, 1e-3);  // but stays small (3 steps of lr 0.01)
  const std::string st = ob.serialize();
  AdamW oc(b, {.lr = 0.01f, .clip = 0.0f, .bf16_moments = true});
  ASSERT_TRUE(oc.deserialize(st, "state").ok());
  EXPECT_EQ(oc.serialize(), st);
  EXPECT_EQ(oc.steps(), 3);
  AdamW of(b, {.clip = 0.0f});
  const Status bad = of.deserialize(st, "ckpt/optimizer.bin");
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("ckpt/optimizer.bin"), std::string::npos);
  EXPECT_FALSE(oc.deserialize(st.substr(0, st.size() - 1), "x").ok());
}

TEST(LrSchedule, WarmupThenCosine) {
  const LrSchedule s{.peak = 1.0f, .warmup = 4, .total = 14, .min_ratio = 0.1f};
  EXPECT_FLOAT_EQ(lr_at(s, 0), 0.25f);
  EXPECT_FLOAT_EQ(lr_at(s, 3), 1.0f);
  EXPECT_FLOAT_EQ(lr_at(s, 4), 1.0f);
  EXPECT_NEAR(lr_at(s, 9), 0.55f, 1e-6);  // halfway: min + (peak - min)/2
  EXPECT_NEAR(lr_at(s, 14), 0.1f, 1e-6);
  EXPECT_NEAR(lr_at(s, 100), 0.1f, 1e-6);
}

TEST(TrainModel, GradientAccumulationEqualsTheWholeBatch) {
  const LlamaConfig c = tiny();
  TrainModel a = make("fp32", c), b = make("fp32", c);
  const std::vector<int> in = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, tg = {2, 3, 4, 5, 6, 7, 8, 9, 10, 0};
  a.zero_grad();
  ASSERT_TRUE(a.forward(in, tg, 2, 5).ok());
  ASSERT_TRUE(a.backward(1.0f).ok());
  b.zero_grad();
  for (int k = 0; k < 2; ++k) {
    ASSERT_TRUE(b.forward(std::span(in).subspan(5 * k, 5), std::span(tg).subspan(5 * k, 5), 1, 5).ok());
    ASSERT_TRUE(b.backward(0.5f).ok());
  }
  double mx = 0, err = 0;
  for (size_t i = 0; i < a.grads().size(); ++i) {
    mx = std::max(mx, static_cast<double>(std::fabs(a.grads()[i])));
    err = std::max(err, static_cast<double>(std::fabs(a.grads()[i] - b.grads()[i])));
  }
  EXPECT_GT(mx, 0.0);
  EXPECT_LT(err, 1e-5 * mx);
}

// Overfits one batch: the loss falls from ~log(V) to near zero.
float overfit(std::string_view recipe, int steps) {
  LlamaConfig c = tiny(32, 4, 2, 48, 29, 16);
  TrainModel m = make(recipe, c);
  AdamW opt(m, {.lr = 1e-2f, .weight_decay = 0.0f});
  std::vector<int> in(32), tg(32);
  std::mt19937 g(5);
  for (size_t i = 0; i < in.size(); ++i) {
    in[i] = static_cast<int>(g() % 29);
    tg[i] = static_cast<int>(g() % 29);
  }
  float loss = 0, first = 0;
  for (int s = 0; s < steps; ++s) {
    m.zero_grad();
    loss = m.forward(in, tg, 2, 16).value();
    EXPECT_TRUE(m.backward(1.0f).ok());
    if (s == 0) first = loss;
    opt.step(m, 1e-2f);
  }
  EXPECT_NEAR(first, std::log(29.0f), 0.2f) << recipe << ": a fresh model predicts ~uniformly";
  std::printf("%.*s: loss %.4f -> %.4f after %d steps\n", static_cast<int>(recipe.size()), recipe.data(), first, loss, steps);
  return loss;
}

TEST(TrainOverfit, Fp32) { EXPECT_LT(overfit("fp32", 100), 0.05f); }
TEST(TrainOverfit, Fp8Blockwise) { EXPECT_LT(overfit("fp8-blockwise", 100), 0.05f); }
TEST(TrainOverfit, OtherRecipesLearn) {
  for (std::string_view r : {"bf16", "fp8-tensor-delayed", "fp8-seed"}) EXPECT_LT(overfit(r, 60), 1.0f) << r;
}

}  // namespace
}  // namespace lowbit
