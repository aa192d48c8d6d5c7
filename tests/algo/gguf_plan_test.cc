// make_gguf_plan: llama.cpp's per-tensor rules and fallbacks as a named plan, and the one-line error
// for a row no type of the plan can hold. apply_scheme with a gguf-* scheme (what `eval --scheme
// gguf-q4_k_m` runs), and the file it saves loading back as blocks ggml_matmul runs (no fp32 copy).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <cstring>
#include <random>
#include <set>
#include <tuple>
#include <string>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "lowbit/ggml_matmul.h"
#include "lowbit/pipeline.h"
#include "lowbit/rtn.h"
#include "lowbit/save.h"
#include "synthetic_model.h"

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

std::vector<float> logits_of(const LlamaModel& net) {
  Session s(net);
  std::vector<float> out;
  EXPECT_TRUE(s.forward(std::vector<int>{1, 5, 7, 3, 30, 11}, 0, &out).ok());
  return out;
}

constexpr const char* kSlots[] = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
const Linear& slot(const LlamaModel& net, int l, int i) {
  const LayerLinears& ll = net.layers()[static_cast<size_t>(l)];
  const Linear* all[] = {&ll.wq, &ll.wk, &ll.wv, &ll.wo, &ll.w1, &ll.w2, &ll.w3};
  return *all[i];
}

struct SchemeCase {
  const char* scheme;
  int dim, hidden;  // 256/512: k-quants hold every row; 288/576: q4_K/q6_K fall back to q5_0/q5_1/q8_0
};
void PrintTo(const SchemeCase& c, std::ostream* os) { *os << c.scheme << " at width " << c.dim; }
class GgufScheme : public ::testing::TestWithParam<SchemeCase> {};

TEST_P(GgufScheme, AppliesInMemoryAndTheSavedFileRunsFromItsBlocks) {
  const std::string scheme = GetParam().scheme;
  const Model m = testutil::synthetic_model(2, 17, GetParam().dim, GetParam().hidden);
  LlamaModel net(m);
  Result<Scheme> s = find_scheme(scheme);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(apply_scheme(net, *s).ok());
  Result<QuantPlan> plan = make_gguf_plan(m.config, scheme);
  ASSERT_TRUE(plan.ok());
  std::set<std::string> types_seen;
  for (int l = 0; l < 2; ++l) {
    for (int i = 0; i < 7; ++i) {
      const std::string name = "layers." + std::to_string(l) + "." + kSlots[i];
      const QuantizedTensor* q = slot(net, l, i).quant();
      ASSERT_NE(q, nullptr) << name;
      EXPECT_EQ(q->spec.ggml, plan->find(name)->spec->ggml) << name;  // the plan's type, tensor by tensor
      types_seen.insert(std::string(ggml_block_info(q->spec.ggml)->name));
    }
  }
  const std::vector<float> in_memory = logits_of(net);

  RecordProperty("types", fmt::format("{}", fmt::join(types_seen, ",")));
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    fmt::format("lowbit_gguf_scheme_{}_{}_{}", ::getpid(), scheme, GetParam().dim);
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "m.gguf").string();
  Result<SaveReport> r = save_model(net, path, SaveOptions{.format = ModelFormat::kGguf});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  Result<Model> loaded = load_model(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  const LlamaModel back(*loaded);
  int as_blocks = 0, expected_blocks = 0;
  for (int l = 0; l < 2; ++l) {
    for (int i = 0; i < 7; ++i) {
      const GgmlType t = plan->find("layers." + std::to_string(l) + "." + kSlots[i])->spec->ggml;
      const Linear& lin = slot(back, l, i);
      // Q4_K / Q6_K stay blocks (ggml_matmul); Q4_0 / Q8_0 run on lowbit's int4/int8 kernels; the other
      // types are dequantized at load (see gguf.cc runs_as_blocks).
      if (t == GgmlType::kQ4_K || t == GgmlType::kQ6_K) ++expected_blocks;
      if (t == GgmlType::kQ4_0 || t == GgmlType::kQ8_0) {
        EXPECT_NE(lin.quant(), nullptr);
      }
      if (lin.ggml() != nullptr) {
        EXPECT_EQ(lin.ggml()->type, t);
        EXPECT_EQ(lin.kernel(), ggml_kernel_name(t, ggml_kernel_isa()));
        ++as_blocks;
      }
    }
  }
  EXPECT_EQ(as_blocks, expected_blocks);
  const std::vector<float> from_file = logits_of(back);
  ASSERT_EQ(from_file.size(), in_memory.size());
  float mag = 0;
  for (float v : in_memory) mag = std::max(mag, std::fabs(v));
  for (size_t i = 0; i < in_memory.size(); ++i) {
    ASSERT_NEAR(from_file[i], in_memory[i], 1e-4f * mag + 1e-6f) << scheme << " logit " << i;
  }
  std::filesystem::remove_all(dir);
}

// Together these use all twelve block types (checked below).
INSTANTIATE_TEST_SUITE_P(Schemes, GgufScheme,
                         ::testing::Values(SchemeCase{"gguf-q4_k_m", 256, 512}, SchemeCase{"gguf-q4_k_s", 256, 512},
                                           SchemeCase{"gguf-q3_k_m", 256, 512}, SchemeCase{"gguf-q2_k", 256, 512},
                                           SchemeCase{"gguf-q5_k_m", 256, 512}, SchemeCase{"gguf-iq4_xs", 256, 512},
                                           SchemeCase{"gguf-q4_k_m", 288, 576}, SchemeCase{"gguf-q5_k_m", 288, 576},
                                           SchemeCase{"gguf-iq4_nl", 288, 576}, SchemeCase{"gguf-q4_0", 288, 576},
                                           SchemeCase{"gguf-q4_1", 288, 576}),
                         [](const auto& info) { return std::string(info.param.scheme).substr(5) + "_" + std::to_string(info.param.dim); });

// GPTQ's sequential pass feeds block l+1 the outputs of block l as quantized. Linears quantized
// to ggml blocks run there from their dequantized weights through the F32 GEMM (not the ggml
// fp32-input tile path): the stream it hands on matches the quantized model's own blocks, and the
// model keeps running its blocks afterwards.
TEST(GgufScheme, GptqSequentialPassMatchesTheQuantizedBlocks) {
  const Model m = testutil::synthetic_model(2, 17, 256, 512);
  LlamaModel net(m);
  PipelineOptions opt;
  opt.plan = make_gguf_plan(m.config, "gguf-q4_k_m").value();
  opt.method = Method::kGptq;
  opt.calib = testutil::random_windows(3, 16, m.config.vocab_size, 5);
  opt.embeddings = false;
  std::vector<std::vector<float>> stream(opt.calib.size());
  for (size_t w = 0; w < opt.calib.size(); ++w) {
    stream[w].resize(opt.calib[w].size() * static_cast<size_t>(m.config.dim));
    ASSERT_TRUE(embed_tokens(net, opt.calib[w], stream[w].data()).ok());
  }
  const std::vector<std::vector<float>> entering = stream;
  opt.residual = &stream;
  ASSERT_TRUE(quantize_model(net, opt).ok());
  for (int l = 0; l < 2; ++l) {
    for (int i = 0; i < 7; ++i) {
      const Linear& lin = slot(net, l, i);
      ASSERT_NE(lin.quant(), nullptr);
      EXPECT_NE(lin.ggml(), nullptr) << "layers." << l << "." << kSlots[i] << " no longer runs its blocks";
    }
  }
  for (size_t w = 0; w < entering.size(); ++w) {
    std::vector<float> x = entering[w];
    for (int l = 0; l < 2; ++l) ASSERT_TRUE(run_block(net, l, x.data(), static_cast<int64_t>(opt.calib[w].size())).ok());
    ASSERT_EQ(x.size(), stream[w].size());
    float mag = 0;
    for (float v : x) mag = std::max(mag, std::fabs(v));
    ASSERT_GT(mag, 0.0f);
    for (size_t k = 0; k < x.size(); ++k) ASSERT_NEAR(stream[w][k], x[k], 1e-4f * mag) << "window " << w << " value " << k;
  }
}

TEST(GgufScheme, TheCasesCoverEveryBlockType) {
  std::set<GgmlType> seen;
  for (const auto& [scheme, dim, hidden] : {std::tuple{"gguf-q4_k_m", 256, 512}, {"gguf-q4_k_s", 256, 512},
                                            {"gguf-q3_k_m", 256, 512}, {"gguf-q2_k", 256, 512}, {"gguf-q5_k_m", 256, 512},
                                            {"gguf-iq4_xs", 256, 512}, {"gguf-q4_k_m", 288, 576}, {"gguf-q5_k_m", 288, 576},
                                            {"gguf-iq4_nl", 288, 576}, {"gguf-q4_0", 288, 576}, {"gguf-q4_1", 288, 576}}) {
    LlamaConfig c = testutil::synthetic_model(2, 1, dim, hidden).config;
    Result<QuantPlan> p = make_gguf_plan(c, scheme);
    ASSERT_TRUE(p.ok()) << scheme << ": " << p.status().to_string();
    for (const PlanEntry& e : p->entries) {
      if (e.spec && e.spec->ggml != GgmlType::kF32) seen.insert(e.spec->ggml);
    }
  }
  for (const GgmlBlockInfo& b : ggml_block_types()) EXPECT_TRUE(seen.count(b.type)) << b.name << " is not used by any case";
}

TEST(GgufScheme, ApplyNamesTheTensorARowDoesNotFit) {
  const Model m = testutil::synthetic_model(1, 3, 48, 96);  // 48 is not a multiple of 32
  LlamaModel net(m);
  const Status st = apply_scheme(net, *find_scheme("gguf-q4_0"));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.message().find('\n'), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("48"), std::string::npos) << st.message();
}

// qwen2 (issue 20: Qwen2.5-Coder rows): the GGUF writer keeps the architecture (its keys, NEOX row
// order, q/k/v biases); a model running from Q4_K/Q6_K blocks saves with every block-run matrix
// decoded to F32, bit-exact to ggml's dequantization (what `lowbit convert` of a k-quant GGUF does);
// safetensors refuses qwen2 in one line and writes nothing.
Model qwen2_model() {
  Model m = testutil::synthetic_model(2, 29, 256, 512);
  LlamaConfig& c = m.config;
  c.arch = "qwen2";
  c.rope_style = RopeStyle::kNeox;
  c.qkv_bias = true;
  c.rope_theta = 1e6f;
  std::mt19937_64 rng(7);
  std::normal_distribution<float> nd(0.0f, 0.5f);
  for (LayerWeights& lw : m.weights.layers) {
    for (auto [dst, n] : {std::pair{&lw.bq, c.dim}, std::pair{&lw.bk, c.kv_dim()}, std::pair{&lw.bv, c.kv_dim()}}) {
      Tensor t = Tensor::empty(DType::kF32, {n}).value();
      for (int64_t i = 0; i < n; ++i) t.data_as<float>()[i] = nd(rng);
      m.owned.push_back(std::move(t));
      *dst = ConstTensorView(m.owned.back().view());
    }
  }
  // An untied output (as Qwen2.5's GGUFs store output.weight): token_embd is then quantized to the base type.
  c.shared_classifier = false;
  Tensor head = Tensor::empty(DType::kF32, {c.vocab_size, c.dim}).value();
  for (int64_t i = 0; i < head.numel(); ++i) head.data_as<float>()[i] = 0.1f * nd(rng);
  m.owned.push_back(std::move(head));
  m.weights.classifier = ConstTensorView(m.owned.back().view());
  return m;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, float rel, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  float mag = 0;
  for (float v : want) mag = std::max(mag, std::fabs(v));
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], rel * mag + 1e-6f) << what << " logit " << i;
}

// AWQ and SmoothQuant fold their attention-output scales into wv's rows; qwen2's v bias must be
// divided with them (a bug fixed 2026-12-04), or the block computes v = (Wv x)/s + bv instead of
// (Wv x + bv)/s. Quantized at int8, the rescaled model then stays about as close to fp32 as RTN
// at the same spec; with the bias left alone, SmoothQuant's error here is >10× RTN's.
TEST(GgufQwen2, SmoothQuantAndAwqScaleTheVBias) {
  const Model m = qwen2_model();
  const std::vector<float> ref = logits_of(LlamaModel(m));
  auto max_err = [&](Method method, const char* weights, const char* acts) {
    LlamaModel net(m);
    PipelineOptions opt;
    opt.plan = make_plan(m.config, parse_spec(weights).value(),
                         acts ? std::optional<QuantSpec>(parse_spec(acts).value()) : std::nullopt).value();
    opt.method = method;
    opt.calib = testutil::random_windows(4, 32, m.config.vocab_size, 3);
    const Result<PipelineReport> r = quantize_model(net, opt);
    EXPECT_TRUE(r.ok()) << r.status().to_string();
    const std::vector<float> got = logits_of(net);
    double e = 0;
    for (size_t i = 0; i < ref.size(); ++i) e = std::max(e, static_cast<double>(std::fabs(got[i] - ref[i])));
    return e;
  };
  const double rtn8 = max_err(Method::kRtn, "int8:g32:sym:fp32", "int8:token:sym:fp32");
  const double sq8 = max_err(Method::kSmoothQuant, "int8:g32:sym:fp32", "int8:token:sym:fp32");
  EXPECT_GT(rtn8, 0.0);
  EXPECT_LT(sq8, 3 * rtn8) << "SmoothQuant " << sq8 << " vs RTN " << rtn8;
  const double rtn4 = max_err(Method::kRtn, "int4:g32:sym:fp16", nullptr);
  const double awq4 = max_err(Method::kAwq, "int4:g32:sym:fp16", nullptr);
  EXPECT_LT(awq4, 2 * rtn4) << "AWQ " << awq4 << " vs RTN " << rtn4;
}

TEST(GgufQwen2, SavesArchitectureBiasesAndDecodesBlockRunMatrices) {
  const Model m = qwen2_model();
  LlamaModel net(m);
  ASSERT_TRUE(apply_scheme(net, *find_scheme("gguf-q4_k_m")).ok());
  const std::vector<float> in_memory = logits_of(net);
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / fmt::format("lowbit_gguf_qwen2_{}", ::getpid());
  std::filesystem::create_directories(dir);
  const std::string q = (dir / "q.gguf").string(), f = (dir / "f32.gguf").string();
  ASSERT_TRUE(save_model(net, q, SaveOptions{.format = ModelFormat::kGguf}).ok());
  Result<Model> loaded = load_model(q);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->config.arch, "qwen2");
  EXPECT_TRUE(loaded->config.qkv_bias);
  EXPECT_EQ(loaded->config.rope_style, RopeStyle::kNeox);
  EXPECT_EQ(loaded->config.rope_theta, 1e6f);
  for (int l = 0; l < 2; ++l) {
    const LayerWeights& a = m.weights.layers[static_cast<size_t>(l)];
    const LayerWeights& b = loaded->weights.layers[static_cast<size_t>(l)];
    for (auto [x, y] : {std::pair{a.bq, b.bq}, std::pair{a.bk, b.bk}, std::pair{a.bv, b.bv}}) {
      ASSERT_EQ(y.numel(), x.numel());
      EXPECT_EQ(std::memcmp(x.data(), y.data(), static_cast<size_t>(x.numel()) * sizeof(float)), 0) << "layer " << l;
    }
  }
  const LlamaModel back(*loaded);
  // token_embd stored as Q4_K blocks (q4_k_m's base type, as llama-quantize writes it), not F32; the
  // model size counts those bytes.
  ASSERT_NE(net.embedding_quant(), nullptr);
  EXPECT_EQ(net.embedding_quant()->spec.ggml, GgmlType::kQ4_K);
  ASSERT_NE(back.embedding_blocks(), nullptr) << "token_embd was not written as blocks";
  EXPECT_EQ(back.embedding_blocks()->type, GgmlType::kQ4_K);
  const int64_t emb_q4k = m.config.vocab_size * m.config.dim / 256 * 144;
  EXPECT_EQ(model_size(net).other_bytes, model_size(back).other_bytes);
  EXPECT_LT(model_size(net).other_bytes, 4 * m.config.vocab_size * m.config.dim + emb_q4k);  // not the fp32 embedding
  int blocks = 0;
  for (int l = 0; l < 2; ++l)
    for (int i = 0; i < 7; ++i) blocks += slot(back, l, i).ggml() != nullptr;
  ASSERT_GT(blocks, 0);  // Q4_K/Q6_K linears run from their blocks
  const std::vector<float> from_file = logits_of(back);
  expect_close(from_file, in_memory, 1e-4f, "qwen2 gguf-q4_k_m saved and loaded");

  // The block-run model saved unquantized: every matrix F32, equal to ggml's dequantization of its blocks.
  Result<SaveReport> r = save_model(back, f, SaveOptions{.format = ModelFormat::kGguf});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  Result<Model> f32 = load_model(f);
  ASSERT_TRUE(f32.ok()) << f32.status().to_string();
  const LlamaModel plain(*f32);
  for (int l = 0; l < 2; ++l) {
    for (int i = 0; i < 7; ++i) {
      const Linear& src = slot(back, l, i);
      const ConstTensorView w = f32->weights.layers[static_cast<size_t>(l)].*linear_weight_member(kLinearSlots[i]);
      EXPECT_EQ(slot(plain, l, i).ggml(), nullptr);
      ASSERT_EQ(w.dim(0), src.out_features());
      std::vector<float> row(static_cast<size_t>(src.in_features()));
      for (int64_t rr = 0; rr < src.out_features(); ++rr) {
        if (src.ggml() != nullptr) {
          ASSERT_TRUE(ggml_decode_row(*src.ggml(), rr, row.data()).ok());
        } else {
          const ConstTensorView v = loaded->weights.layers[static_cast<size_t>(l)].*linear_weight_member(kLinearSlots[i]);
          std::memcpy(row.data(), v.data_as<float>() + rr * src.in_features(), row.size() * sizeof(float));
        }
        ASSERT_EQ(std::memcmp(row.data(), w.data_as<float>() + rr * src.in_features(), row.size() * sizeof(float)), 0)
            << "layers." << l << "." << kSlots[i] << " row " << rr;
      }
    }
  }
  expect_close(logits_of(plain), from_file, 1e-5f, "qwen2 blocks decoded to F32");

  // `quantize` on the k-quant file itself (each block's Q4_K/Q6_K linears decoded for that block
  // only, run from that decode while GPTQ gathers its statistics, then dropped) quantizes exactly
  // what quantizing its F32 decode quantizes: RTN and GPTQ bit for bit.
  for (Method method : {Method::kRtn, Method::kGptq}) {
    LlamaModel from_blocks(*loaded), from_f32(*f32);
    PipelineOptions opt;
    opt.plan = make_plan(m.config, parse_spec("int4:g32:sym:fp16").value(), std::nullopt).value();
    opt.method = method;
    if (method == Method::kGptq) opt.calib = testutil::random_windows(3, 16, m.config.vocab_size, 5);
    ASSERT_TRUE(quantize_model(from_blocks, opt).ok());
    ASSERT_TRUE(quantize_model(from_f32, opt).ok());
    for (int l = 0; l < 2; ++l) {
      for (int i = 0; i < 7; ++i) {
        const Linear& a = slot(from_blocks, l, i);
        const Linear& b = slot(from_f32, l, i);
        ASSERT_NE(a.quant(), nullptr);
        ASSERT_NE(b.quant(), nullptr);
        EXPECT_EQ(a.ggml(), nullptr) << "layers." << l << "." << kSlots[i] << " still runs its k-quant blocks";
        EXPECT_EQ(a.quant()->codes, b.quant()->codes) << method_name(method) << " layers." << l << "." << kSlots[i];
        EXPECT_EQ(a.quant()->scales, b.quant()->scales) << method_name(method) << " layers." << l << "." << kSlots[i];
      }
    }
    expect_close(logits_of(from_blocks), logits_of(from_f32), 1e-5f, "quantized from blocks vs from F32");
  }

  const std::string st = (dir / "st").string();
  Result<SaveReport> refused = save_model(net, st, SaveOptions{.format = ModelFormat::kSafetensors});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kUnsupported);
  EXPECT_EQ(refused.status().message().find('\n'), std::string::npos);
  EXPECT_NE(refused.status().message().find("qwen2"), std::string::npos) << refused.status().message();
  EXPECT_FALSE(std::filesystem::exists(st));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace lowbit
