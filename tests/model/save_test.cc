// save_model and load-back on the bundled stories260K: fp32 and RTN-quantized models saved as
// safetensors and GGUF come back with bit-identical weights (quantized ones as the same
// QuantizedTensors), identical logits and identical greedy generations; failed saves leave the
// previous output intact; the tokenizer vocabulary GGUF embeds is the same from either file.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "lowbit/convert.h"
#include "lowbit/file.h"
#include "lowbit/gguf.h"
#include "lowbit/llama.h"
#include "lowbit/model.h"
#include "lowbit/rtn.h"
#include "lowbit/safetensors.h"
#include "lowbit/save.h"
#include "lowbit/tokenizer.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

const std::string kShared = std::string(LOWBIT_SOURCE_DIR) + "/../shared/models/";
const std::string kModel = kShared + "stories260K.bin";
const std::string kTokModel = kShared + "tok512.model";
const std::string kTokBin = kShared + "tok512.bin";

constexpr Linear LayerLinears::*kLinears[] = {&LayerLinears::wq, &LayerLinears::wk, &LayerLinears::wv,
                                               &LayerLinears::wo, &LayerLinears::w1, &LayerLinears::w2,
                                               &LayerLinears::w3};
constexpr ConstTensorView LayerWeights::*kMatrices[] = {&LayerWeights::wq, &LayerWeights::wk, &LayerWeights::wv,
                                                        &LayerWeights::wo, &LayerWeights::w1, &LayerWeights::w2,
                                                        &LayerWeights::w3};

bool same_bits(ConstTensorView a, ConstTensorView b) {
  return a.numel() == b.numel() && std::memcmp(a.data(), b.data(), static_cast<size_t>(a.numel()) * 4) == 0;
}

bool same_quant(const QuantizedTensor& a, const QuantizedTensor& b) {
  return a.spec == b.spec && a.rows == b.rows && a.cols == b.cols && a.row_bytes == b.row_bytes && a.codes == b.codes &&
         a.scale_codes == b.scale_codes && a.zero_points == b.zero_points &&
         std::memcmp(&a.tensor_scale, &b.tensor_scale, 4) == 0 && a.scales.size() == b.scales.size() &&
         std::memcmp(a.scales.data(), b.scales.data(), a.scales.size() * 4) == 0;
}

// f32 -> f16 -> f32, as a GGUF F16 fallback stores a dequantized linear.
std::vector<float> through_f16(const QuantizedTensor& q) {
  std::vector<float> x(static_cast<size_t>(q.numel()));
  EXPECT_TRUE(dequantize(q, TensorView(x.data(), DType::kF32, {q.rows, q.cols})).ok());
  std::vector<uint16_t> h(x.size());
  f32_to_f16(x, h);
  f16_to_f32(h, x);
  return x;
}

class SaveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kModel)) GTEST_SKIP() << kModel << " not found (../shared is missing)";
    dir_ = fs::temp_directory_path() / ("lowbit_save_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    Result<Model> m = load_model(kModel);
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    model_ = std::make_unique<Model>(std::move(*m));
    Result<std::unique_ptr<Tokenizer>> tok = load_tokenizer(kTokModel, 512);
    ASSERT_TRUE(tok.ok());
    Result<std::vector<int>> ids = (*tok)->encode("Once upon a time", true, false);
    ASSERT_TRUE(ids.ok());
    prompt_ = *ids;
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }
  std::string out(const std::string& name) const { return (dir_ / name).string(); }

  std::vector<float> logits(const LlamaModel& net) const {
    Session s(net);
    std::vector<float> l;
    EXPECT_TRUE(s.forward(prompt_, 0, &l).ok());
    return l;
  }
  std::vector<int> greedy(const LlamaModel& net) const {
    GenerateOptions g;
    g.max_new_tokens = 64;
    Result<std::vector<int>> r = generate(net, prompt_, g);
    EXPECT_TRUE(r.ok());
    return r.ok() ? *r : std::vector<int>{};
  }

  // Saves `net`, loads it back and checks it is the same model. A linear the GGUF had to store
  // as F16 must come back as exactly those F16 values; `expected` is `net` with those swapped in.
  void round_trip(const LlamaModel& net, ModelFormat format, const std::string& name, bool fallback_f16 = false) {
    SaveOptions opt;
    opt.format = format;
    opt.tokenizer_path = kTokModel;
    opt.gguf_fallback_f16 = fallback_f16;
    const std::string path = out(name);
    Result<SaveReport> r = save_model(net, path, opt);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_GT(r->bytes, 0);
    Result<Model> back = load_model(path);
    ASSERT_TRUE(back.ok()) << back.status().to_string();
    const LlamaModel loaded(*back);
    LlamaModel expected = net;
    std::deque<std::vector<float>> rounded;

    const auto fields = [](const LlamaConfig& c) {
      return std::tuple(c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len,
                        c.rope_theta, c.norm_eps, c.shared_classifier);
    };
    EXPECT_EQ(fields(net.config()), fields(loaded.config()));
    EXPECT_TRUE(same_bits(net.weights().tok_embeddings, loaded.weights().tok_embeddings));
    EXPECT_TRUE(same_bits(net.weights().final_norm, loaded.weights().final_norm));
    EXPECT_TRUE(same_bits(net.weights().classifier, loaded.weights().classifier));
    for (size_t l = 0; l < net.layers().size(); ++l) {
      EXPECT_TRUE(same_bits(net.weights().layers[l].attn_norm, loaded.weights().layers[l].attn_norm));
      EXPECT_TRUE(same_bits(net.weights().layers[l].ffn_norm, loaded.weights().layers[l].ffn_norm));
      for (size_t i = 0; i < std::size(kLinears); ++i) {
        const Linear& x = net.layers()[l].*kLinears[i];
        const Linear& y = loaded.layers()[l].*kLinears[i];
        const ConstTensorView yw = loaded.weights().layers[l].*kMatrices[i];
        SCOPED_TRACE(testing::Message() << name << " layer " << l << " linear " << i);
        if (x.quant() == nullptr) {
          EXPECT_EQ(y.quant(), nullptr);
          EXPECT_TRUE(same_bits(net.weights().layers[l].*kMatrices[i], yw));
        } else if (y.quant() != nullptr) {
          EXPECT_TRUE(same_quant(*x.quant(), *y.quant()));
          // The f32 view the reader gives beside it is the same dequantization.
          std::vector<float> d(static_cast<size_t>(x.quant()->numel()));
          ASSERT_TRUE(dequantize(*x.quant(), TensorView(d.data(), DType::kF32, {x.quant()->rows, x.quant()->cols})).ok());
          EXPECT_EQ(std::memcmp(d.data(), yw.data(), d.size() * 4), 0);
        } else {
          ASSERT_EQ(format, ModelFormat::kGguf) << "only GGUF stores a quantized linear as F16";
          const std::vector<float>& f16 = rounded.emplace_back(through_f16(*x.quant()));
          EXPECT_EQ(std::memcmp(f16.data(), yw.data(), f16.size() * 4), 0);
          expected.layers()[l].*kLinears[i] = Linear::fp32(ConstTensorView(f16.data(), DType::kF32, {x.out_features(), x.in_features()}));
        }
      }
    }
    EXPECT_EQ(net.activation_quant().linear_input, loaded.activation_quant().linear_input);
    EXPECT_EQ(net.activation_quant().kv, loaded.activation_quant().kv);
    EXPECT_EQ(model_size(expected).bpw_total(), model_size(loaded).bpw_total());
    const std::vector<float> la = logits(expected), lb = logits(loaded);
    ASSERT_EQ(la.size(), lb.size());
    EXPECT_EQ(std::memcmp(la.data(), lb.data(), la.size() * 4), 0) << "logits differ";
    EXPECT_EQ(greedy(expected), greedy(loaded));
  }

  fs::path dir_;
  std::unique_ptr<Model> model_;
  std::vector<int> prompt_;
};

TEST_F(SaveTest, Fp32RoundTripsThroughBothFormats) {
  const LlamaModel net(*model_);
  round_trip(net, ModelFormat::kSafetensors, "fp32");
  round_trip(net, ModelFormat::kGguf, "fp32.gguf");
  // And the greedy story is still the pinned llama2.c one (llama_test.cc pins it).
  Result<Model> back = load_model(out("fp32.gguf"));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(greedy(LlamaModel(*back)), greedy(net));
}

// Each spec through safetensors (which holds any QuantSpec); GGUF where it has the type.
class SaveQuantTest : public SaveTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(SaveQuantTest, RtnRoundTrips) {
  LlamaModel net(*model_);
  Result<QuantSpec> spec = parse_spec(GetParam());
  ASSERT_TRUE(spec.ok());
  ASSERT_TRUE(apply_rtn(net, *spec, std::nullopt).ok());
  round_trip(net, ModelFormat::kSafetensors, "st");
  if (spec->element == Format::kInt8 && spec->group == 32) {
    // Q8_0; ffn_down's rows (172) are not a multiple of 32 and go to F16.
    round_trip(net, ModelFormat::kGguf, "q.gguf");
  } else {
    round_trip(net, ModelFormat::kGguf, "f16.gguf", /*fallback_f16=*/true);
  }
}

INSTANTIATE_TEST_SUITE_P(Specs, SaveQuantTest,
                         ::testing::Values("int8:g32:sym:fp16", "int4:g32:sym:fp16", "int4:g128:sym:fp16",
                                           "e4m3:block128x128", "int4:g32:asym:bf16", "nf4:g64",
                                           "e2m1:g16:sym:e4m3*fp32", "uint3:g64:asym:fp16", "int3:g32:sym:fp16",
                                           "int5:g64:sym:fp16", "uint5:g32:asym:fp16", "int6:g32:sym:fp16", "uint6:g128:asym:bf16",
                                           // 4-row blocks mix q/k rows Hugging Face's order separates:
                                           // stored in lowbit's order, flagged
                                           "int8:block4x16:sym:fp16"));

TEST_F(SaveTest, Q4_0RoundTripsAsQ4_0) {
  LlamaModel net(*model_);
  ASSERT_TRUE(apply_rtn(net, *parse_spec("int4:g32:sym:fp16"), std::nullopt).ok());
  SaveOptions opt{.format = ModelFormat::kGguf, .tokenizer_path = kTokBin};
  Result<SaveReport> r = save_model(net, out("q4.gguf"), opt);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  Result<GgufFile> f = open_gguf(out("q4.gguf"));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->find_tensor("blk.0.attn_q.weight")->type, GgmlType::kQ4_0);
  EXPECT_EQ(f->find_tensor("blk.0.ffn_down.weight")->type, GgmlType::kF16);
  EXPECT_EQ(*f->get_u32("general.file_type"), 2u);  // LLAMA_FTYPE_MOSTLY_Q4_0
  EXPECT_EQ(r->warnings.size(), 5u);                 // one F16 fallback per layer
}

TEST_F(SaveTest, ActivationSpecsRoundTrip) {
  LlamaModel net(*model_);
  ASSERT_TRUE(apply_scheme(net, *find_scheme("w8a8")).ok());
  net.activation_quant().kv = *parse_spec("e4m3:row");
  round_trip(net, ModelFormat::kSafetensors, "w8a8");
}

TEST_F(SaveTest, UnsupportedGgufSpecIsAnErrorNamingTheTensor) {
  LlamaModel net(*model_);
  ASSERT_TRUE(apply_rtn(net, *parse_spec("int4:g128:sym:fp16"), std::nullopt).ok());
  Result<SaveReport> r = save_model(net, out("bad.gguf"), {.format = ModelFormat::kGguf});
  ASSERT_FALSE(r.ok());
  const std::string msg = r.status().message();
  EXPECT_NE(msg.find("blk.0.attn_q.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("int4:g128:sym:fp16"), std::string::npos) << msg;
  EXPECT_NE(msg.find("int8:g32:sym:fp16 -> Q8_0"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  EXPECT_FALSE(fs::exists(out("bad.gguf")));
}

// Every file under `dir` (or the file itself) with its bytes.
std::map<std::string, std::string> snapshot(const fs::path& p) {
  std::map<std::string, std::string> files;
  if (fs::is_directory(p)) {
    for (const auto& e : fs::directory_iterator(p)) files[e.path().filename().string()] = *read_file(e.path().string());
  } else {
    files[p.filename().string()] = *read_file(p.string());
  }
  return files;
}

TEST_F(SaveTest, FailedSaveLeavesThePreviousOutputIntact) {
  const LlamaModel fp32(*model_);
  LlamaModel q(*model_);
  ASSERT_TRUE(apply_rtn(q, *parse_spec("int4:g128:sym:fp16"), std::nullopt).ok());
  SaveOptions opt{.format = ModelFormat::kGguf, .tokenizer_path = kTokModel};
  ASSERT_TRUE(save_model(fp32, out("m.gguf"), opt).ok());
  const auto before = snapshot(out("m.gguf"));
  EXPECT_FALSE(save_model(q, out("m.gguf"), opt).ok());  // int4:g128 has no GGUF type
  EXPECT_EQ(snapshot(out("m.gguf")), before);

  opt.format = ModelFormat::kSafetensors;
  ASSERT_TRUE(save_model(fp32, out("st"), opt).ok());
  const auto st_before = snapshot(out("st"));
  SaveOptions bad = opt;
  bad.extra_metadata = {{"note", "\xff not UTF-8"}};  // fails while writing model.safetensors
  EXPECT_FALSE(save_model(q, out("st"), bad).ok());
  bad = opt;
  bad.tokenizer_path = kShared + "tokenizer.model";  // vocab 32000, the model has 512
  if (fs::exists(bad.tokenizer_path)) {
    EXPECT_FALSE(save_model(q, out("st"), bad).ok());
  }
  EXPECT_EQ(snapshot(out("st")), st_before);
  // No temp folders or files left beside the outputs.
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir_)) ++entries;
  EXPECT_EQ(entries, 2u);

  // A successful save over an existing folder replaces it whole.
  ASSERT_TRUE(save_model(q, out("st"), opt).ok());
  Result<Model> back = load_model(out("st"));
  ASSERT_TRUE(back.ok());
  EXPECT_FALSE(back->quantized.empty());
}

TEST_F(SaveTest, RefusesToReplaceAFolderHoldingOtherFiles) {
  fs::create_directories(out("busy"));
  ASSERT_TRUE(write_file_atomic(out("busy/notes.txt"), "mine").ok());
  Result<SaveReport> r = save_model(LlamaModel(*model_), out("busy"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("notes.txt"), std::string::npos) << r.status().message();
  EXPECT_EQ(*read_file(out("busy/notes.txt")), "mine");
}

TEST_F(SaveTest, ExtraMetadataIsWrittenAndOursIsProtected) {
  const LlamaModel net(*model_);
  SaveOptions opt{.format = ModelFormat::kGguf, .extra_metadata = {{"lowbit.method", "rtn"}}};
  ASSERT_TRUE(save_model(net, out("x.gguf"), opt).ok());
  Result<GgufFile> f = open_gguf(out("x.gguf"));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(*f->get_string("lowbit.method"), "rtn");
  opt.extra_metadata = {{"general.architecture", "gpt2"}};
  EXPECT_FALSE(save_model(net, out("y.gguf"), opt).ok());
  opt.format = ModelFormat::kSafetensors;
  opt.extra_metadata = {{"lowbit.method", "rtn"}};
  ASSERT_TRUE(save_model(net, out("x"), opt).ok());
  Result<SafetensorsFile> st = open_safetensors(out("x/model.safetensors"));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->metadata().at("lowbit.method"), "rtn");
}

TEST_F(SaveTest, VocabularyIsTheSameFromEitherTokenizerFile) {
  Result<TokenizerVocab> a = read_tokenizer_vocab(kTokModel), b = read_tokenizer_vocab(kTokBin);
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_EQ(a->tokens, b->tokens);
  EXPECT_EQ(a->scores, b->scores);
  EXPECT_EQ(a->types, b->types);
  EXPECT_EQ(a->bos, b->bos);
  EXPECT_EQ(a->eos, b->eos);
  EXPECT_EQ(a->unk, b->unk);
  ASSERT_EQ(a->tokens.size(), 512u);
  EXPECT_EQ(a->tokens[1], "<s>");
  EXPECT_EQ(a->types[0], TokenizerVocab::kUnknown);
  EXPECT_EQ(a->types[3], TokenizerVocab::kByte);
  EXPECT_EQ(a->tokens[259], "\xe2\x96\x81t");  // "▁t"
  EXPECT_FALSE(read_tokenizer_vocab(kModel).ok());
}

TEST(ModelFormat, ParsesBothNames) {
  EXPECT_EQ(*parse_model_format("gguf"), ModelFormat::kGguf);
  EXPECT_EQ(*parse_model_format("safetensors"), ModelFormat::kSafetensors);
  EXPECT_FALSE(parse_model_format("onnx").ok());
}

}  // namespace
}  // namespace lowbit
