// The forward pass on the bundled stories260K: prefill equals token-by-token decode,
// quantized linears and activation fake-quant change the output as they should.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>

#include "lowbit/llama.h"
#include "lowbit/model.h"
#include "lowbit/tokenizer.h"

namespace lowbit {
namespace {

const std::string kModel = std::string(LOWBIT_SOURCE_DIR) + "/../shared/models/stories260K.bin";

class LlamaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kModel)) GTEST_SKIP() << kModel << " not found (../shared is missing)";
    Result<Model> m = load_model(kModel);
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    model_ = std::make_unique<Model>(std::move(*m));
  }
  std::unique_ptr<Model> model_;
};

// BOS and the start of the greedy story after "Once upon a time" (any ids < 512 would do).
const std::vector<int> kTokens = {1, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410};

TEST_F(LlamaTest, PrefillLogitsEqualTokenByTokenDecode) {
  const LlamaModel net(*model_);
  const std::vector<int>& toks = kTokens;
  Session prefill(net);
  std::vector<float> all;
  ASSERT_TRUE(prefill.forward(toks, 0, &all).ok());
  Session decode(net);
  const int V = model_->config.vocab_size;
  double max_diff = 0.0;
  for (size_t t = 0; t < toks.size(); ++t) {
    std::vector<float> one;
    const int tok[1] = {toks[t]};
    ASSERT_TRUE(decode.forward(tok, static_cast<int>(t), &one).ok());
    ASSERT_EQ(one.size(), static_cast<size_t>(V));
    for (int v = 0; v < V; ++v) max_diff = std::max(max_diff, std::fabs(static_cast<double>(one[v]) - all[t * V + v]));
  }
  EXPECT_LT(max_diff, 1e-4);
}

TEST_F(LlamaTest, PrefillInTwoChunksEqualsOneChunk) {
  const LlamaModel net(*model_);
  const std::vector<int>& toks = kTokens;
  Session a(net), b(net);
  std::vector<float> la, lb1, lb2;
  ASSERT_TRUE(a.forward(toks, 0, &la).ok());
  const size_t half = toks.size() / 2;
  ASSERT_TRUE(b.forward(std::span(toks).first(half), 0, &lb1).ok());
  ASSERT_TRUE(b.forward(std::span(toks).subspan(half), static_cast<int>(half), &lb2).ok());
  lb1.insert(lb1.end(), lb2.begin(), lb2.end());
  ASSERT_EQ(la.size(), lb1.size());
  for (size_t i = 0; i < la.size(); ++i) ASSERT_NEAR(la[i], lb1[i], 1e-4) << i;
}

TEST_F(LlamaTest, QuantizedLinearsMoveLogitsByTheirError) {
  const LlamaModel ref(*model_);
  LlamaModel q8(*model_), q4(*model_);
  const QuantSpec s8 = parse_spec("int8:row:sym:fp32").value();
  const QuantSpec s4 = parse_spec("int4:g32:sym:fp32").value();
  for (size_t l = 0; l < q8.layers().size(); ++l) {
    for (auto member : {&LayerLinears::wq, &LayerLinears::wk, &LayerLinears::wv, &LayerLinears::wo, &LayerLinears::w1,
                        &LayerLinears::w2, &LayerLinears::w3}) {
      const LayerWeights& lw = model_->weights.layers[l];
      const ConstTensorView w = member == &LayerLinears::wq   ? lw.wq
                                : member == &LayerLinears::wk ? lw.wk
                                : member == &LayerLinears::wv ? lw.wv
                                : member == &LayerLinears::wo ? lw.wo
                                : member == &LayerLinears::w1 ? lw.w1
                                : member == &LayerLinears::w2 ? lw.w2
                                                              : lw.w3;
      q8.layers()[l].*member = Linear::quantized(quantize(w, s8).value()).value();
      q4.layers()[l].*member = Linear::quantized(quantize(w, s4).value()).value();
    }
  }
  auto logits = [&](const LlamaModel& m) {
    Session s(m);
    std::vector<float> out;
    EXPECT_TRUE(s.forward(kTokens, 0, &out).ok());
    return out;
  };
  const std::vector<float> r = logits(ref), a = logits(q8), b = logits(q4);
  double e8 = 0, e4 = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    e8 += (a[i] - r[i]) * (a[i] - r[i]);
    e4 += (b[i] - r[i]) * (b[i] - r[i]);
  }
  EXPECT_GT(e8, 0.0);
  EXPECT_LT(e8, e4);  // int8 per channel is closer to fp32 than int4 in groups of 32
}

TEST_F(LlamaTest, ActivationFakeQuantChangesLogitsSlightly) {
  const LlamaModel ref(*model_);
  LlamaModel w8a8(*model_);
  w8a8.activation_quant().linear_input = parse_spec("int8:token:sym:fp32").value();
  Session a(ref), b(w8a8);
  std::vector<float> la, lb;
  ASSERT_TRUE(a.forward(kTokens, 0, &la).ok());
  ASSERT_TRUE(b.forward(kTokens, 0, &lb).ok());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    diff += (la[i] - lb[i]) * (la[i] - lb[i]);
    norm += la[i] * la[i];
  }
  EXPECT_GT(diff, 0.0);
  EXPECT_LT(std::sqrt(diff / norm), 0.05);  // int8 per-token activations: a few percent at most
}

TEST_F(LlamaTest, BadInputIsAnErrorNotACrash) {
  const LlamaModel net(*model_);
  Session s(net);
  std::vector<float> out;
  const int bad[1] = {model_->config.vocab_size};
  EXPECT_FALSE(s.forward(bad, 0, &out).ok());
  const int ok[1] = {1};
  EXPECT_FALSE(s.forward(ok, s.max_seq(), &out).ok());
  EXPECT_FALSE(s.forward(std::span<const int>(), 0, &out).ok());
  EXPECT_FALSE(generate(net, std::span<const int>(), {}).ok());
}

}  // namespace
}  // namespace lowbit

namespace lowbit {
namespace {

// Greedy (temperature 0) continuation of "Once upon a time" on stories260K, 64 tokens.
// Produced by tests/model/ref_llama2c.py, an independent numpy port of llama2.c's run.c:
//   .venv/bin/python tests/model/ref_llama2c.py --model ../shared/models/stories260K.bin
//       --tokenizer ../shared/models/tok512.bin --text "Once upon a time" --steps 68
// which also reproduces byte for byte the expected_stdout of llama2.c's test_all.py
// (`./run stories260K.bin -z tok512.bin -t 0.0 -n 200`). Prompt ids: 1 403 407 261 378.
const std::vector<int> kPinnedGreedy = {
    432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322,
    265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267,
    337, 335, 312, 432, 398, 312, 286, 267, 414, 270, 333, 415, 426, 13,  438, 310, 439, 419, 357, 336};

TEST_F(LlamaTest, GreedyMatchesLlama2cRunC) {
  const std::string tok_path = std::string(LOWBIT_SOURCE_DIR) + "/../shared/models/tok512.bin";
  Result<std::unique_ptr<Tokenizer>> tok = load_tokenizer(tok_path, model_->config.vocab_size);
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  const std::vector<int> prompt = (*tok)->encode("Once upon a time", true, false).value();
  ASSERT_EQ(prompt, (std::vector<int>{1, 403, 407, 261, 378}));
  const LlamaModel net(*model_);
  GenerateOptions opt;
  opt.max_new_tokens = 64;
  opt.stop_token = 1;
  const std::vector<int> out = generate(net, prompt, opt).value();
  EXPECT_EQ(out, kPinnedGreedy);
}

}  // namespace
}  // namespace lowbit
