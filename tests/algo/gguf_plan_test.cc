// make_gguf_plan: llama.cpp's per-tensor rules and fallbacks as a named plan, and the one-line error
// for a row no type of the plan can hold.

#include <gtest/gtest.h>

#include "lowbit/pipeline.h"

namespace lowbit {
namespace {

LlamaConfig config(int dim, int hidden, int layers) {
  LlamaConfig c;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = 4;
  c.n_kv_heads = 4;
  c.vocab_size = 64;
  c.seq_len = 32;
  c.shared_classifier = true;
  return c;
}

TEST(GgufPlan, Q4KMRulesAndFallbacks) {
  // SmolLM2-like widths: 576 is a multiple of 32 but not of 256, 1536 of both.
  Result<QuantPlan> p = make_gguf_plan(config(576, 1536, 8), "gguf-q4_k_m");
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  const auto type_of = [&](const char* name) { return p->find(name)->spec->ggml; };
  EXPECT_EQ(type_of("layers.3.wq"), GgmlType::kQ5_0);   // q4_K -> fallback q5_0
  EXPECT_EQ(type_of("layers.0.wv"), GgmlType::kQ8_0);   // use_more_bits: q6_K -> fallback q8_0
  EXPECT_EQ(type_of("layers.1.wv"), GgmlType::kQ5_0);   // not use_more_bits (1 < 8/8 is false, (1-1)%3 != 2)
  EXPECT_EQ(type_of("layers.0.w2"), GgmlType::kQ6_K);   // use_more_bits, 1536 fits
  EXPECT_EQ(type_of("layers.1.w2"), GgmlType::kQ4_K);
  EXPECT_EQ(type_of("tok_embeddings"), GgmlType::kQ8_0);  // tied output, 576 % 256 != 0
  EXPECT_FALSE(p->find("layers.0.attn_norm")->spec.has_value());
  EXPECT_NE(p->find("layers.3.wq")->rule.find("fallback: 576 not a multiple of 256 (q4_K) -> q5_0"), std::string::npos)
      << p->find("layers.3.wq")->rule;

  Result<QuantPlan> q2 = make_gguf_plan(config(576, 1536, 8), "gguf-q2_k");
  ASSERT_TRUE(q2.ok());
  EXPECT_EQ(q2->find("layers.2.wq")->spec->ggml, GgmlType::kIQ4_NL);  // q2_K -> iq4_nl
  EXPECT_EQ(q2->find("layers.2.w2")->spec->ggml, GgmlType::kQ3_K);    // ffn_down bumped to q3_K
}

TEST(GgufPlan, RowNoTypeCanHoldIsAOneLineError) {
  Result<QuantPlan> p = make_gguf_plan(config(48, 96, 2), "gguf-q4_0");  // 48 is not a multiple of 32
  ASSERT_FALSE(p.ok());
  const std::string m = p.status().message();
  EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  EXPECT_NE(m.find("tok_embeddings"), std::string::npos) << m;
  EXPECT_NE(m.find("48"), std::string::npos) << m;
  EXPECT_NE(m.find("q"), std::string::npos) << m;
  EXPECT_FALSE(make_gguf_plan(config(64, 128, 2), "gguf-q9_9").ok());
  EXPECT_TRUE(is_gguf_scheme("gguf-iq4_xs"));
  EXPECT_FALSE(is_gguf_scheme("w4a16-g128"));
}

TEST(GgufPlan, GgmlSpecQuantizeRejectsRowsTheBlockDoesNotDivide) {
  std::vector<float> x(2 * 576, 0.5f);
  Result<QuantizedTensor> q = quantize(ConstTensorView(x.data(), DType::kF32, {2, 576}), ggml_spec(GgmlType::kQ4_K),
                                       {.name = "blk.0.attn_q.weight"});
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.status().message(),
            "tensor 'blk.0.attn_q.weight': rows of 576 values are not a multiple of 256, which q4_K needs");
  EXPECT_EQ(to_string(ggml_spec(GgmlType::kIQ4_XS)), "gguf:iq4_xs");
  EXPECT_EQ(parse_spec("gguf:q4_k")->ggml, GgmlType::kQ4_K);
  EXPECT_FALSE(parse_spec("gguf:q4_k_m").ok());
}

}  // namespace
}  // namespace lowbit
