// The training loop: resume from a checkpoint reproduces the next losses bit for bit (fp32
// moments and bf16 moments, static and dynamic loss scaling, delayed-scaling amax histories),
// the train/validation split, and errors that name what went wrong.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include <fmt/format.h>

#include "lowbit/train.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

LlamaConfig config() {
  LlamaConfig c;
  c.dim = 24;
  c.hidden_dim = 40;
  c.n_layers = 2;
  c.n_heads = 3;
  c.n_kv_heads = 1;
  c.vocab_size = 37;
  c.seq_len = 12;
  c.shared_classifier = true;
  return c;
}

std::vector<int> tokens(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<int>((i * 7 + g() % 3) % 37);  // learnable with some noise
  return t;
}

TrainOptions options(const LossScaleOptions& ls, bool bf16) {
  TrainOptions o;
  o.steps = 6;
  o.batch = 3;
  o.ctx = 10;
  o.accum = 2;
  o.lr = 5e-3f;
  o.warmup = 2;
  o.bf16_moments = bf16;
  o.loss_scale = ls;
  o.seed = 9;
  o.val_windows = 3;
  return o;
}

Trainer make(const std::string& recipe, const TrainOptions& o) {
  TrainModel m = TrainModel::init(config(), 5, find_recipe(recipe).value()).value();
  return Trainer::create(std::move(m), o, tokens(400, 1), tokens(100, 2)).value();
}

struct ResumeCase {
  const char* recipe;
  LossScaleOptions ls;
  bool bf16;
};

TEST(Trainer, ResumeReproducesTheNextLossesBitForBit) {
  const ResumeCase cases[] = {
      {"fp32", {}, false},
      {"fp8-tensor-delayed", {.dynamic = true, .scale = 1024.0f, .growth_interval = 2}, true},
      {"fp8-blockwise", {.scale = 256.0f}, false},
  };
  for (const ResumeCase& rc : cases) {
    SCOPED_TRACE(rc.recipe);
    const TrainOptions o = options(rc.ls, rc.bf16);
    Trainer full = make(rc.recipe, o);
    std::vector<double> want;
    for (int s = 0; s < 6; ++s) want.push_back(full.step().value().loss);
    const double want_val = full.validation_loss().value();

    Trainer half = make(rc.recipe, o);
    for (int s = 0; s < 3; ++s) ASSERT_EQ(half.step().value().loss, want[static_cast<size_t>(s)]);
    const fs::path dir = fs::temp_directory_path() / fmt::format("lowbit_resume_{}_{}", ::getpid(), rc.recipe);
    ASSERT_TRUE(save_checkpoint(half, dir.string(), "").ok());
    const Model m = load_model(dir.string()).value();
    TrainModel tm = TrainModel::from_model(m, find_recipe(rc.recipe).value()).value();
    Trainer resumed = Trainer::create(std::move(tm), o, tokens(400, 1), tokens(100, 2)).value();
    ASSERT_TRUE(load_train_state(resumed, dir.string()).ok());
    EXPECT_EQ(resumed.steps_done(), 3);
    for (int s = 3; s < 6; ++s) EXPECT_EQ(resumed.step().value().loss, want[static_cast<size_t>(s)]) << "step " << s + 1;
    EXPECT_EQ(resumed.validation_loss().value(), want_val);
    EXPECT_EQ(resumed.optimizer().loss_scale(), full.optimizer().loss_scale());
    // A checkpoint of another recipe is refused by name.
    TrainModel other = TrainModel::from_model(m, find_recipe("bf16").value()).value();
    Trainer wrong = Trainer::create(std::move(other), o, tokens(400, 1), tokens(100, 2)).value();
    const Status st = load_train_state(wrong, dir.string());
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message().find(rc.recipe), std::string::npos) << st.message();
    fs::remove_all(dir);
  }
}

// A checkpoint resumes only the run it came from: another flag or other training data is refused
// by name (the same flags are accepted, above; validation windows may change).
TEST(Trainer, ResumeRefusesOtherFlagsAndData) {
  const TrainOptions o = options({}, false);
  Trainer t = make("fp32", o);
  ASSERT_TRUE(t.step().ok());
  const fs::path dir = fs::temp_directory_path() / fmt::format("lowbit_resume_flags_{}", ::getpid());
  ASSERT_TRUE(save_checkpoint(t, dir.string(), "").ok());
  const Model m = load_model(dir.string()).value();
  auto resume = [&](const TrainOptions& o2, std::vector<int> train) {
    TrainModel tm = TrainModel::from_model(m, find_recipe("fp32").value()).value();
    Trainer r = Trainer::create(std::move(tm), o2, std::move(train), tokens(100, 2)).value();
    const Status s = load_train_state(r, dir.string());
    return s.ok() ? std::string() : s.message();
  };
  TrainOptions v = o;
  v.val_windows = 2;
  EXPECT_EQ(resume(v, tokens(400, 1)), "");
  TrainOptions lr = o;
  lr.lr = 1e-3f;
  EXPECT_NE(resume(lr, tokens(400, 1)).find("--lr is '0.001' here but '0.005' in the checkpoint"), std::string::npos) << resume(lr, tokens(400, 1));
  TrainOptions ls = o;
  ls.loss_scale = {.dynamic = true, .scale = 1024.0f};
  EXPECT_NE(resume(ls, tokens(400, 1)).find("--loss-scale"), std::string::npos);
  TrainOptions bf = o;
  bf.bf16_moments = true;
  EXPECT_NE(resume(bf, tokens(400, 1)).find("--bf16-moments"), std::string::npos);
  EXPECT_NE(resume(o, tokens(400, 7)).find("--data"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Trainer, LossFallsOnLearnableTokens) {
  Trainer t = make("fp32", options({}, false));
  const double v0 = t.validation_loss().value();
  for (int s = 0; s < 6; ++s) ASSERT_TRUE(t.step().ok());
  EXPECT_LT(t.validation_loss().value(), v0);
}

TEST(Trainer, NonFiniteWeightsAreANamedError) {
  TrainModel m = TrainModel::init(config(), 5, find_recipe("fp32").value()).value();
  m.params()[100] = std::numeric_limits<float>::quiet_NaN();
  Trainer t = Trainer::create(std::move(m), options({}, false), tokens(400, 1), tokens(100, 2)).value();
  Result<TrainLogEntry> e = t.step();
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("step 1"), std::string::npos) << e.status().message();
  EXPECT_NE(e.status().message().find("non-finite"), std::string::npos) << e.status().message();
  EXPECT_EQ(t.steps_done(), 0);
}

TEST(Trainer, BadOptionsAreNamed) {
  auto err = [](TrainOptions o, std::vector<int> train, std::vector<int> val) {
    TrainModel m = TrainModel::init(config(), 5, find_recipe("fp32").value()).value();
    Result<Trainer> t = Trainer::create(std::move(m), o, std::move(train), std::move(val));
    return t.ok() ? std::string() : t.status().message();
  };
  TrainOptions o = options({}, false);
  o.steps = 0;
  EXPECT_NE(err(o, tokens(400, 1), tokens(100, 2)).find("--steps 0"), std::string::npos);
  o = options({}, false);
  o.ctx = 13;  // seq_len 12
  EXPECT_NE(err(o, tokens(400, 1), tokens(100, 2)).find("--ctx 13"), std::string::npos);
  o = options({}, false);
  EXPECT_NE(err(o, tokens(5, 1), tokens(100, 2)).find("training split has 5 tokens"), std::string::npos);
  EXPECT_NE(err(o, tokens(400, 1), {}).find("validation split has 0 tokens"), std::string::npos);
  EXPECT_NE(err(o, {1, 2, 3, 99, 4, 5, 6, 7, 8, 9, 10, 11}, tokens(100, 2)).find("token id 99"), std::string::npos);
  EXPECT_FALSE(find_recipe("fp4").ok());
  EXPECT_NE(find_recipe("fp4").status().message().find("fp8-blockwise"), std::string::npos);
}

TEST(Trainer, StorySplitSkipsCalibrationAndKeepsTheLastTenthForValidation) {
  std::vector<std::string> s;
  for (int i = 0; i < 21; ++i) s.push_back("story " + std::to_string(i));
  const StorySplit sp = split_stories_for_training(s, "x.txt").value();
  // ceil(2.1) = 3 calibration stories (load_stories' calib split), ceil(2.1) = 3 validation.
  ASSERT_EQ(sp.train.size(), 15u);
  EXPECT_EQ(sp.train.front(), "story 3");
  EXPECT_EQ(sp.train.back(), "story 17");
  ASSERT_EQ(sp.val.size(), 3u);
  EXPECT_EQ(sp.val.front(), "story 18");
  Result<StorySplit> tiny = split_stories_for_training({"a", "b"}, "tiny.txt");
  ASSERT_FALSE(tiny.ok());
  EXPECT_NE(tiny.status().message().find("tiny.txt"), std::string::npos);
}

TEST(TrainRecipe, EveryRecipeIsDescribed) {
  for (const TrainRecipe& r : train_recipes()) {
    const std::string d = describe_recipe(r);
    EXPECT_NE(d.find(r.name), std::string::npos);
    EXPECT_NE(d.find("wgrad"), std::string::npos);
  }
  const std::string b = describe_recipe(find_recipe("fp8-blockwise").value());
  EXPECT_NE(b.find("e4m3:block1x128"), std::string::npos);
  EXPECT_NE(b.find("e4m3:block128x128"), std::string::npos);
  const std::string d = describe_recipe(find_recipe("fp8-tensor-delayed").value());
  EXPECT_NE(d.find("e5m2:tensor"), std::string::npos);
  EXPECT_NE(d.find("delayed"), std::string::npos);
}

TEST(TrainModel, Fp8BlockwiseCachesInputsInOneBytePerElementPlusScales) {
  LlamaConfig c = config();
  TrainModel a = TrainModel::init(c, 5, find_recipe("fp32").value()).value();
  TrainModel b = TrainModel::init(c, 5, find_recipe("fp8-blockwise").value()).value();
  const std::vector<int> t = tokens(24, 3);
  ASSERT_TRUE(a.forward(std::span(t).first(20), std::span(t).subspan(1, 20), 2, 10).ok());
  ASSERT_TRUE(b.forward(std::span(t).first(20), std::span(t).subspan(1, 20), 2, 10).ok());
  // 20 tokens; per layer the inputs of wq/wk/wv, wo, w1/w3 (24 wide) and w2 (40 wide); the
  // classifier's input (24 wide) stays fp32 as the output head does. fp32: 4 bytes an element;
  // e4m3: 1 byte plus one fp32 scale per 1x128 tile (one per row here).
  EXPECT_EQ(a.cached_linear_input_bytes(), 2 * 20 * (3 * 24 + 40) * 4 + 20 * 24 * 4);
  EXPECT_EQ(b.cached_linear_input_bytes(), 2 * 20 * (3 * (24 + 4) + (40 + 4)) + 20 * 24 * 4);
}

}  // namespace
}  // namespace lowbit

namespace lowbit {
namespace {

// gemm_fp8_block from the kernel registry (forward and dgrad) computes what fp8-blockwise's
// quantize -> dequantize -> fp32 GEMM computes, up to summation order; without promotion (one
// 14-bit accumulator over K = 160) it moves further away.
TEST(TrainRecipe, KernelGemmsAgreeWithTheEmulatedOnesAndPromotionMatters) {
  LlamaConfig c = config();
  c.dim = 160;
  c.n_layers = 1;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.hidden_dim = 136;
  c.vocab_size = 37;
  const std::vector<int> t = tokens(40, 4);
  std::vector<float> logits[3], grads[3];
  const char* names[3] = {"fp8-blockwise", "fp8-blockwise-kernel", "fp8-blockwise-noprom"};
  for (int k = 0; k < 3; ++k) {
    TrainModel m = TrainModel::init(c, 5, find_recipe(names[k]).value()).value();
    m.zero_grad();
    ASSERT_TRUE(m.forward(std::span(t).first(20), std::span(t).subspan(1, 20), 2, 10).ok()) << names[k];
    ASSERT_TRUE(m.backward(1.0f).ok()) << names[k];
    logits[k].assign(m.logits().begin(), m.logits().end());
    grads[k].assign(m.grads().begin(), m.grads().end());
  }
  auto rel = [](const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
      den += static_cast<double>(b[i]) * b[i];
    }
    return std::sqrt(num / den);
  };
  const double kernel_logits = rel(logits[1], logits[0]), kernel_grads = rel(grads[1], grads[0]);
  const double noprom_logits = rel(logits[2], logits[0]);
  std::printf("relative L2 vs fp8-blockwise: kernel logits %.3g grads %.3g; unpromoted logits %.3g\n", kernel_logits, kernel_grads,
              noprom_logits);
  EXPECT_LT(kernel_logits, 1e-4);
  EXPECT_LT(kernel_grads, 1e-3);
  EXPECT_GT(noprom_logits, 10 * kernel_logits);
}

}  // namespace
}  // namespace lowbit
