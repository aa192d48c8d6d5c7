// The layer-by-layer pipeline: the plan, memory that does not grow with depth, errors that
// name the tensor and layer, and — on the bundled real model and held-out text — each method
// doing what its paper says against RTN.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "lowbit/eval.h"
#include "lowbit/gguf.h"
#include "lowbit/pipeline.h"
#include "lowbit/rtn.h"
#include "lowbit/safetensors.h"
#include "lowbit/save.h"
#include "lowbit/tokenizer.h"
#include "synthetic_model.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;
using testutil::random_windows;
using testutil::synthetic_model;

TEST(Plan, DefaultsByRoleAndOverrides) {
  const Model m = synthetic_model(2, 1);
  const QuantSpec w4 = parse_spec("int4:g32:sym:fp16").value();
  QuantPlan p = make_plan(m.config, w4, std::nullopt).value();
  EXPECT_EQ(p.find("layers.1.w2")->spec, w4);
  EXPECT_FALSE(p.find("layers.0.attn_norm")->spec.has_value());
  EXPECT_FALSE(p.find("final_norm")->spec.has_value());
  EXPECT_EQ(to_string(*p.find("tok_embeddings")->spec), to_string(parse_spec("fp16:tensor:unit").value()));
  EXPECT_EQ(p.find("classifier"), nullptr);  // tied

  const std::string path = ::testing::TempDir() + "/plan_overrides.json";
  std::ofstream(path) << R"({"layers.*.w2": "int8:row", "layers.0.*": "fp32", "tok_embeddings": "fp32"})";
  p = make_plan(m.config, w4, std::nullopt, path).value();
  EXPECT_FALSE(p.find("layers.0.w2")->spec.has_value());  // the later pattern wins
  EXPECT_EQ(to_string(*p.find("layers.1.w2")->spec), "int8:row:sym:fp32");
  EXPECT_EQ(p.find("layers.1.wq")->spec, w4);
  EXPECT_FALSE(p.find("tok_embeddings")->spec.has_value());
  EXPECT_NE(plan_table(p).find("override layers.*.w2"), std::string::npos);

  std::ofstream(path) << R"({"layers.*.nothing": "int8:row"})";
  Result<QuantPlan> bad = make_plan(m.config, w4, std::nullopt, path);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("matches no tensor"), std::string::npos);
  std::ofstream(path) << R"({"layers.*.wq": "int7:row"})";
  bad = make_plan(m.config, w4, std::nullopt, path);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("layers.*.wq"), std::string::npos);
  std::ofstream(path) << "[1, 2";
  bad = make_plan(m.config, w4, std::nullopt, path);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(path), std::string::npos);
}

TEST(Pipeline, ActivationMemoryDoesNotGrowWithDepth) {
  const QuantSpec w4 = parse_spec("int4:g32:sym:fp16").value();
  int64_t peak[3] = {};
  int i = 0;
  for (int layers : {2, 4, 8}) {
    Model m = synthetic_model(layers, 3);
    LlamaModel net(m);
    PipelineOptions opt;
    opt.method = Method::kGptq;
    opt.plan = make_plan(m.config, w4, std::nullopt).value();
    opt.calib = random_windows(4, 32, m.config.vocab_size, 5);
    const PipelineReport r = quantize_model(net, opt).value();
    EXPECT_EQ(r.calib_tokens, 4 * 32);
    peak[i++] = r.peak_activation_bytes;
  }
  EXPECT_GT(peak[0], 0);
  EXPECT_EQ(peak[0], peak[1]);
  EXPECT_EQ(peak[1], peak[2]);
}

TEST(Pipeline, RtnMatchesApplyRtnAndSequentialMatters) {
  Model m = synthetic_model(3, 4);
  const QuantSpec w4 = parse_spec("int4:g32:sym:fp16").value();
  LlamaModel a(m), b(m);
  ASSERT_TRUE(apply_rtn(a, w4, std::nullopt).ok());
  PipelineOptions opt;
  opt.plan = make_plan(m.config, w4, std::nullopt).value();
  ASSERT_TRUE(quantize_model(b, opt).ok());
  for (int l = 0; l < 3; ++l)
    for (LinearSlot s : kLinearSlots) {
      EXPECT_EQ(a.layers()[static_cast<size_t>(l)].at(s).quant()->codes, b.layers()[static_cast<size_t>(l)].at(s).quant()->codes);
    }
  // GPTQ fed quantized vs fp32 block outputs: block 0 is the same, later blocks differ.
  LlamaModel c(m), d(m);
  opt.method = Method::kGptq;
  opt.calib = random_windows(4, 32, m.config.vocab_size, 6);
  ASSERT_TRUE(quantize_model(c, opt).ok());
  opt.sequential = false;
  ASSERT_TRUE(quantize_model(d, opt).ok());
  EXPECT_EQ(c.layers()[0].wq.quant()->codes, d.layers()[0].wq.quant()->codes);
  bool differ = false;
  for (LinearSlot s : kLinearSlots) differ |= c.layers()[2].at(s).quant()->codes != d.layers()[2].at(s).quant()->codes;
  EXPECT_TRUE(differ);
}

// A plan's fp16 embedding cast is stored as F16 by both writers (half the bytes of the F32 it
// was), and loads back to the same table; an embedding rounded by another spec stays F32.
TEST(Pipeline, Fp16CastEmbeddingIsSavedAsF16) {
  const fs::path dir = fs::temp_directory_path() / ("lowbit_pipeline_emb16_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string overrides = (dir / "plan.json").string();
  std::ofstream(overrides) << R"({"tok_embeddings": "int8:row:sym:fp16"})";
  const QuantSpec w4 = parse_spec("int4:g32:sym:fp16").value();
  for (const bool fp16 : {true, false}) {
    Model m = synthetic_model(2, 9);
    LlamaModel net(m);
    PipelineOptions opt;
    opt.plan = make_plan(m.config, w4, std::nullopt, fp16 ? "" : overrides).value();
    ASSERT_TRUE(quantize_model(net, opt).ok());
    ASSERT_TRUE(net.embedding_spec().has_value());
    EXPECT_EQ(is_fp16_cast(*net.embedding_spec()), fp16);
    const std::string st = (dir / "st").string(), gg = (dir / "m.gguf").string();
    Result<SaveReport> saved = save_model(net, st, {.format = ModelFormat::kSafetensors});
    ASSERT_TRUE(saved.ok()) << saved.status().to_string();
    saved = save_model(net, gg, {.format = ModelFormat::kGguf, .gguf_fallback_f16 = true});  // the synthetic rows are not all 32-wide
    ASSERT_TRUE(saved.ok()) << saved.status().to_string();
    Result<SafetensorsFile> sf = open_safetensors(st + "/model.safetensors");
    ASSERT_TRUE(sf.ok()) << sf.status().to_string();
    EXPECT_EQ(sf->find("model.embed_tokens.weight")->dtype, fp16 ? DType::kF16 : DType::kF32);
    Result<GgufFile> gf = open_gguf(gg);
    ASSERT_TRUE(gf.ok()) << gf.status().to_string();
    EXPECT_EQ(gf->find_tensor("token_embd.weight")->type, fp16 ? GgmlType::kF16 : GgmlType::kF32);
    const ConstTensorView want = net.weights().tok_embeddings;
    for (const std::string& path : {st, gg}) {
      Result<Model> back = load_model(path);
      ASSERT_TRUE(back.ok()) << path << ": " << back.status().to_string();
      const ConstTensorView got = back->weights.tok_embeddings;
      ASSERT_EQ(got.numel(), want.numel()) << path;
      EXPECT_EQ(std::memcmp(got.data(), want.data(), static_cast<size_t>(want.numel()) * 4), 0) << path << ": the table changed";
    }
  }
  fs::remove_all(dir);
}

// runnable = false keeps RTN's linears as stored only (no packing, no fp32 copy): the same codes
// and scales as a runnable run, kernel() "stored", forward() refused; a calibrated method refuses it.
TEST(Pipeline, StoredOnlyLinearsHoldTheSameCodes) {
  Model m = synthetic_model(2, 11);
  const QuantSpec w4 = parse_spec("int4:g32:sym:fp16").value();
  LlamaModel a(m), b(m);
  PipelineOptions opt;
  opt.plan = make_plan(m.config, w4, std::nullopt).value();
  ASSERT_TRUE(quantize_model(a, opt).ok());
  opt.runnable = false;
  ASSERT_TRUE(quantize_model(b, opt).ok());
  for (size_t l = 0; l < 2; ++l) {
    for (LinearSlot s : kLinearSlots) {
      const Linear& x = a.layers()[l].at(s);
      const Linear& y = b.layers()[l].at(s);
      ASSERT_NE(y.quant(), nullptr);
      EXPECT_EQ(x.quant()->codes, y.quant()->codes);
      EXPECT_EQ(x.quant()->scale_codes, y.quant()->scale_codes);
      EXPECT_NE(x.kernel(), "stored");
      EXPECT_EQ(y.kernel(), "stored");
    }
  }
  std::vector<float> in(static_cast<size_t>(m.config.dim), 1.0f), out(static_cast<size_t>(m.config.dim));
  EXPECT_DEATH(b.layers()[0].wq.forward(in.data(), 1, out.data()), "stored-only linear");
  opt.method = Method::kGptq;
  opt.calib = random_windows(2, 16, m.config.vocab_size, 3);
  LlamaModel c(m);
  const Status st = quantize_model(c, opt).status();
  EXPECT_NE(st.message().find("must be runnable"), std::string::npos) << st.to_string();
}

TEST(Pipeline, ErrorsNameTensorAndLayer) {
  Model m = synthetic_model(2, 7);
  const QuantSpec w4 = parse_spec("int4:g32:sym:fp16").value();
  PipelineOptions opt;
  opt.plan = make_plan(m.config, w4, std::nullopt).value();
  opt.method = Method::kGptq;
  {
    LlamaModel net(m);
    Result<PipelineReport> r = quantize_model(net, opt);  // no calibration
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("calibration"), std::string::npos);
  }
  opt.calib = random_windows(2, 16, m.config.vocab_size, 8);
  {
    opt.method = Method::kSmoothQuant;  // weight-only plan
    LlamaModel net(m);
    Result<PipelineReport> r = quantize_model(net, opt);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("w8a8"), std::string::npos);
    opt.method = Method::kOutliers;
    r = quantize_model(net, opt);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("int8-channel"), std::string::npos);
  }
  // A NaN weight in block 1's w3: the error names it.
  const_cast<float*>(m.weights.layers[1].w3.data_as<float>())[5] = std::nanf("");
  opt.method = Method::kRtn;
  LlamaModel net(m);
  Result<PipelineReport> r = quantize_model(net, opt);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("layers.1.w3"), std::string::npos) << r.status().message();
  // Under GPTQ the NaN reaches the activations first: the error names the layer.
  opt.method = Method::kGptq;
  LlamaModel net2(m);
  r = quantize_model(net2, opt);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("layers.1"), std::string::npos) << r.status().message();
}

TEST(Pipeline, OutlierSplitForwardIsExact) {
  // With activation quant off, the split linear computes main·x + part·x_outliers(fp16).
  Model m = synthetic_model(1, 9);
  PipelineOptions opt;
  opt.method = Method::kOutliers;
  opt.plan = make_plan(m.config, parse_spec("int8:row").value(), std::nullopt).value();
  opt.calib = random_windows(2, 16, m.config.vocab_size, 10);
  opt.outlier_threshold = 1.5f;  // random activations: some columns exceed it
  LlamaModel net(m);
  const PipelineReport r = quantize_model(net, opt).value();
  int64_t total = 0;
  for (const LinearReport& lr : r.linears) total += lr.outlier_cols;
  EXPECT_GT(total, 0);
  const ModelSize size = model_size(net);
  EXPECT_GT(size.bpw_total(), 8.0);  // the fp16 columns cost extra
  std::vector<float> logits;
  Session s(net);
  const int toks[] = {1, 2, 3, 4};
  ASSERT_TRUE(s.forward(toks, 0, &logits).ok());
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
}

// ---- on the real model --------------------------------------------------------------------

const std::string kShared = std::string(LOWBIT_SOURCE_DIR) + "/../shared";
const std::string kModel = kShared + "/models/stories260K.bin";
const std::string kTok = kShared + "/models/tok512.model";
const std::string kText = kShared + "/data/tinystories_val.txt";

class RealModel : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const std::string& p : {kModel, kTok, kText}) {
      if (!std::filesystem::exists(p)) GTEST_SKIP() << p << " not found (../shared is missing)";
    }
    model_ = std::make_unique<Model>(load_model(kModel).value());
    auto tok = load_tokenizer(kTok, model_->config.vocab_size).value();
    auto tokens = [&](const std::string& split, size_t max) {
      std::vector<int> out;
      const std::vector<std::string> stories = load_stories(kText, split).value();
      for (const std::string& s : stories) {
        const std::vector<int> ids = tok->encode(s, true, false).value();
        out.insert(out.end(), ids.begin(), ids.end());
        if (out.size() > max) break;
      }
      return out;
    };
    const std::vector<int> calib = tokens("calib", 8192);
    for (size_t p = 0; p + 256 <= calib.size() && calib_.size() < 8; p += 256) calib_.emplace_back(calib.begin() + p, calib.begin() + p + 256);
    eval_ = tokens("eval", 6000);
  }
  double kld(const std::string& weights, const std::string& acts, Method method, double alpha = 0.5) {
    LlamaModel net(*model_), ref(*model_);
    PipelineOptions opt;
    opt.method = method;
    opt.smooth_alpha = alpha;
    std::optional<QuantSpec> a;
    if (!acts.empty()) a = parse_spec(acts).value();
    opt.plan = make_plan(model_->config, parse_spec(weights).value(), a).value();
    for (PlanEntry& e : opt.plan.entries)
      if (e.role == "embedding") e.spec.reset();  // compare the linears alone
    opt.calib = calib_;
    EXPECT_TRUE(quantize_model(net, opt).ok());
    EvalOptions eo;
    eo.ctx = 128;
    eo.max_windows = 40;
    return evaluate(net, ref, eval_, eo).value().kld_mean;
  }
  std::unique_ptr<Model> model_;
  std::vector<std::vector<int>> calib_;
  std::vector<int> eval_;
};

TEST_F(RealModel, GptqBeatsRtnOnHeldOutText) {
  const double rtn = kld("int4:g32:sym:fp16", "", Method::kRtn);
  const double gptq = kld("int4:g32:sym:fp16", "", Method::kGptq);
  RecordProperty("kld_rtn", std::to_string(rtn));
  RecordProperty("kld_gptq", std::to_string(gptq));
  std::printf("[   info   ] w4-g32 KLD: rtn %.5f gptq %.5f\n", rtn, gptq);
  EXPECT_LT(gptq, rtn);
}

TEST_F(RealModel, SmoothQuantHelpsW8A8) {
  const double plain = kld("int8:row", "int8:token", Method::kRtn);
  const double smooth = kld("int8:row", "int8:token", Method::kSmoothQuant);
  std::printf("[   info   ] w8a8 KLD: plain %.6f smoothquant %.6f\n", plain, smooth);
  EXPECT_LT(smooth, plain);
}

TEST_F(RealModel, AwqBeatsRtn) {
  const double rtn = kld("int4:g32:sym:fp16", "", Method::kRtn);
  const double awq = kld("int4:g32:sym:fp16", "", Method::kAwq);
  std::printf("[   info   ] w4-g32 KLD: rtn %.5f awq %.5f\n", rtn, awq);
  EXPECT_LT(awq, rtn);
}

}  // namespace
}  // namespace lowbit
