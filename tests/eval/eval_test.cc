// Evaluation on the bundled model: the properties the numbers must have, a pinned fp32
// perplexity, and bad text input.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "lowbit/eval.h"
#include "lowbit/rtn.h"
#include "lowbit/tokenizer.h"

namespace lowbit {
namespace {

const std::string kShared = std::string(LOWBIT_SOURCE_DIR) + "/../shared";
const std::string kModel = kShared + "/models/stories260K.bin";
const std::string kTok = kShared + "/models/tok512.model";  // what `lowbit eval` picks beside the model
const std::string kText = kShared + "/data/tinystories_val.txt";

class EvalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const std::string& p : {kModel, kTok, kText}) {
      if (!std::filesystem::exists(p)) GTEST_SKIP() << p << " not found (../shared is missing)";
    }
    model_ = std::make_unique<Model>(load_model(kModel).value());
    auto tok = load_tokenizer(kTok, model_->config.vocab_size).value();
    const std::vector<std::string> stories = load_stories(kText, "eval").value();
    for (const std::string& s : stories) {
      const std::vector<int> ids = tok->encode(s, true, false).value();
      tokens_.insert(tokens_.end(), ids.begin(), ids.end());
      if (tokens_.size() > 4000) break;  // enough for the windows below
    }
  }
  EvalResult run(const LlamaModel& m, const LlamaModel& ref, int windows = 20) {
    EvalOptions opt;
    opt.ctx = 128;
    opt.max_windows = windows;
    return evaluate(m, ref, tokens_, opt).value();
  }
  std::unique_ptr<Model> model_;
  std::vector<int> tokens_;
};

TEST_F(EvalTest, ReferenceAgainstItselfIsPerfect) {
  const LlamaModel a(*model_), b(*model_);
  const EvalResult r = run(a, b);
  EXPECT_EQ(r.tokens_scored, 20 * 64);
  EXPECT_LT(r.kld_mean, 1e-12);
  EXPECT_DOUBLE_EQ(r.top1, 1.0);
  EXPECT_DOUBLE_EQ(r.ppl, r.ref_ppl);
  EXPECT_DOUBLE_EQ(r.delta_ppl, 0.0);
}

// Pinned with: lowbit eval --model ../shared/models/stories260K.bin --text ../shared/data/tinystories_val.txt
//              --split eval --ctx 128 --max-windows 20 --json out.json   ->  "ppl": 3.9519816814841513
TEST_F(EvalTest, Fp32PerplexityOnAFixedSliceIsPinned) {
  const LlamaModel a(*model_);
  const EvalResult r = run(a, a);
  EXPECT_NEAR(r.ppl, 3.9519816814841513, 1e-4);
}

TEST_F(EvalTest, QuantizationCostsWhatItShould) {
  const LlamaModel ref(*model_);
  LlamaModel fp16(*model_), int8(*model_), int4(*model_);
  ASSERT_TRUE(apply_rtn(fp16, parse_spec("fp16:tensor:sym:fp32:unit").value(), std::nullopt).ok());
  ASSERT_TRUE(apply_rtn(int8, parse_spec("int8:row:sym:fp32").value(), std::nullopt).ok());
  ASSERT_TRUE(apply_rtn(int4, parse_spec("int4:g32:sym:fp32").value(), std::nullopt).ok());
  const EvalResult r16 = run(fp16, ref), r8 = run(int8, ref), r4 = run(int4, ref);
  EXPECT_LT(r16.kld_mean, 1e-4);
  EXPECT_GT(r8.kld_mean, 0.0);
  EXPECT_LT(r8.kld_mean, r4.kld_mean);
  EXPECT_GT(r8.top1, r4.top1);
  EXPECT_GT(r4.ppl, r4.ref_ppl);
  EXPECT_GT(r4.delta_ppl_se, 0.0);
  EXPECT_GE(r4.kld_p99, r4.kld_mean);
  // Sizes: int4-g32 with fp32 scales is 4 + 32/32 = 5 bits per linear weight.
  EXPECT_NEAR(model_size(int4).bpw_total(), 5.0, 0.05);
  EXPECT_DOUBLE_EQ(model_size(ref).bpw_total(), 32.0);
}

// Several models in one pass over the reference give exactly what separate passes give, the
// reference itself included (int3 weights: the 3-bit format runs end to end).
TEST_F(EvalTest, ManyModelsEqualSeparateRuns) {
  const LlamaModel ref(*model_);
  LlamaModel int8(*model_), int3(*model_);
  ASSERT_TRUE(apply_rtn(int8, parse_spec("int8:row:sym:fp32").value(), std::nullopt).ok());
  ASSERT_TRUE(apply_rtn(int3, parse_spec("uint3:g64:asym:fp16").value(), std::nullopt).ok());
  const LlamaModel* models[] = {&int3, &ref, &int8};
  EvalOptions opt;
  opt.ctx = 128;
  opt.max_windows = 6;
  const std::vector<EvalResult> many = evaluate_many(models, ref, tokens_, opt).value();
  ASSERT_EQ(many.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const EvalResult one = run(*models[i], ref, 6);
    EXPECT_EQ(many[i].tokens_scored, one.tokens_scored) << i;
    EXPECT_DOUBLE_EQ(many[i].ppl, one.ppl) << i;
    EXPECT_DOUBLE_EQ(many[i].ref_ppl, one.ref_ppl) << i;
    EXPECT_DOUBLE_EQ(many[i].kld_mean, one.kld_mean) << i;
    EXPECT_DOUBLE_EQ(many[i].kld_p99, one.kld_p99) << i;
    EXPECT_DOUBLE_EQ(many[i].top1, one.top1) << i;
    EXPECT_DOUBLE_EQ(many[i].delta_ppl_se, one.delta_ppl_se) << i;
    EXPECT_EQ(many[i].kld_by_position, one.kld_by_position) << i;
    EXPECT_GT(many[i].prefill_tok_s, 0.0);
    EXPECT_GT(many[i].ref_prefill_tok_s, 0.0);
  }
  EXPECT_DOUBLE_EQ(many[1].kld_mean, 0.0);
  EXPECT_GT(many[0].kld_mean, many[2].kld_mean);  // 3 bits cost more than 8
  // 3 + 16/64 + 3/64 = 3.30 bits per weight, a little more where rows (172 wide) end in a short group
  EXPECT_NEAR(model_size(int3).bpw_total(), 3.0 + 16.0 / 64 + 3.0 / 64, 0.03);
  const LlamaModel* none[] = {&ref};
  EXPECT_FALSE(evaluate_many(std::span<const LlamaModel* const>(none, 0), ref, tokens_, opt).ok());
}

TEST(ScorePosition, KnownDistributions) {
  // Uniform reference over 4, model puts all mass on token 0: KL = sum p log(p/q).
  const std::vector<float> ref = {0, 0, 0, 0}, same = {0, 0, 0, 0}, peaked = {10, 0, 0, 0};
  const TokenScore s0 = score_position(same, ref, 2);
  EXPECT_NEAR(s0.kld, 0.0, 1e-12);
  EXPECT_NEAR(s0.nll, std::log(4.0), 1e-12);
  EXPECT_TRUE(s0.top1_agree);
  const TokenScore s1 = score_position(peaked, ref, 0);
  const double lz = std::log(std::exp(10.0) + 3.0);
  double kl = 0;
  for (int i = 0; i < 4; ++i) kl += 0.25 * (std::log(0.25) - ((i == 0 ? 10.0 : 0.0) - lz));
  EXPECT_NEAR(s1.kld, kl, 1e-9);
  EXPECT_NEAR(s1.nll, lz - 10.0, 1e-9);
}

TEST(LoadStories, SplitsAndRejectsBadText) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "lowbit_eval_test";
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& body) {
    std::ofstream(dir / name, std::ios::binary) << body;
    return (dir / name).string();
  };
  std::string ten;
  for (int i = 0; i < 10; ++i) ten += "story " + std::to_string(i) + "\nline two\n\n";
  const std::string p = write("ten.txt", ten);
  EXPECT_EQ(load_stories(p, "all").value().size(), 10u);
  EXPECT_EQ(load_stories(p, "calib").value(), std::vector<std::string>{"story 0\nline two"});
  EXPECT_EQ(load_stories(p, "eval").value().size(), 9u);
  EXPECT_FALSE(load_stories(p, "train").ok());
  const Result<std::vector<std::string>> empty = load_stories(write("empty.txt", ""), "all");
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("empty.txt"), std::string::npos);
  const Result<std::vector<std::string>> bad = load_stories(write("bad.txt", "ok\xff\xfe"), "all");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("UTF-8"), std::string::npos);
  EXPECT_NE(bad.status().message().find("byte 2"), std::string::npos);
  EXPECT_FALSE(load_stories(write("blank.txt", "\n\n  \n"), "all").ok());
  EXPECT_FALSE(load_stories((dir / "missing.txt").string(), "all").ok());
  std::filesystem::remove_all(dir);
}

TEST(KldCurve, IsAnSvgWithTheFigures) {
  EvalResult r;
  r.ppl = 4.5;
  r.ref_ppl = 4.0;
  r.kld_by_position = {0.1f, 0.2f, 0.05f};
  const std::string svg = kld_curve_svg(r, "a <b> & c");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("polyline"), std::string::npos);
  EXPECT_NE(svg.find("a &lt;b&gt; &amp; c"), std::string::npos);
  EXPECT_NE(svg.find("PPL 4.5000"), std::string::npos);
}

}  // namespace
}  // namespace lowbit
