// llama2.c checkpoint reader: the real stories260K (v0) against direct reads of the file,
// synthetic v0 / v1 / v2 checkpoints written here in export.py's layouts, and one test per
// kind of broken input.

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "lowbit/model.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

const std::string kStories = LOWBIT_SOURCE_DIR "/../shared/models/stories260K.bin";

// ---------------------------------------------------------------------------------------------
// Synthetic checkpoints

struct Params {
  int32_t dim = 8, hidden = 12, layers = 2, heads = 2, kv_heads = 1, vocab = 16, seq_len = 4;
  bool shared = true;
  int head_size() const { return dim / heads; }
  int kv_dim() const { return head_size() * kv_heads; }
};

// Deterministic values in [-1, 1), different for every tensor name.
std::vector<float> synth_values(const std::string& name, size_t n) {
  uint64_t s = 1469598103934665603ull;
  for (char ch : name) s = (s ^ static_cast<unsigned char>(ch)) * 1099511628211ull;
  std::vector<float> v(n);
  for (auto& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<float>(static_cast<int32_t>(s >> 40) - (1 << 23)) / static_cast<float>(1 << 23);
  }
  return v;
}

// Every tensor of a synthetic model, by the reader's names, plus how to write it.
struct Synth {
  Params p;
  std::map<std::string, std::vector<float>> t;
  std::map<std::string, std::pair<int64_t, int64_t>> shape;  // (rows, cols); cols 0 for a vector

  explicit Synth(Params params) : p(params) {
    add("tok_embeddings", p.vocab, p.dim);
    for (int l = 0; l < p.layers; ++l) {
      const std::string L = "layers." + std::to_string(l) + ".";
      add(L + "attn_norm", p.dim, 0);
      add(L + "wq", p.dim, p.dim);
      add(L + "wk", p.kv_dim(), p.dim);
      add(L + "wv", p.kv_dim(), p.dim);
      add(L + "wo", p.dim, p.dim);
      add(L + "ffn_norm", p.dim, 0);
      add(L + "w1", p.hidden, p.dim);
      add(L + "w2", p.dim, p.hidden);
      add(L + "w3", p.hidden, p.dim);
    }
    add("final_norm", p.dim, 0);
    if (!p.shared) add("classifier", p.vocab, p.dim);
  }
  void add(const std::string& name, int64_t rows, int64_t cols) {
    t[name] = synth_values(name, static_cast<size_t>(rows * (cols ? cols : 1)));
    shape[name] = {rows, cols};
  }
  std::vector<std::string> layer_names(const std::string& what) const {
    std::vector<std::string> names;
    for (int l = 0; l < p.layers; ++l) names.push_back("layers." + std::to_string(l) + "." + what);
    return names;
  }
};

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}
void put_floats(std::string& out, const std::vector<float>& v) {
  out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}
void put_params(std::string& out, const Params& p, int32_t vocab) {
  for (int32_t v : {p.dim, p.hidden, p.layers, p.heads, p.kv_heads, vocab, p.seq_len}) put(out, v);
}

// export.py legacy_export.
std::string write_v0(const Synth& s) {
  std::string out;
  put_params(out, s.p, s.p.shared ? s.p.vocab : -s.p.vocab);
  put_floats(out, s.t.at("tok_embeddings"));
  for (const char* what : {"attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"}) {
    for (const auto& n : s.layer_names(what)) put_floats(out, s.t.at(n));
  }
  put_floats(out, s.t.at("final_norm"));
  const size_t half = static_cast<size_t>(s.p.seq_len * s.p.head_size() / 2);
  put_floats(out, std::vector<float>(half, 0.5f));   // freq_cis_real (skipped by the reader)
  put_floats(out, std::vector<float>(half, -0.5f));  // freq_cis_imag
  if (!s.p.shared) put_floats(out, s.t.at("classifier"));
  return out;
}

void put_versioned_header(std::string& out, const Params& p, int32_t version, int32_t group_size) {
  put(out, uint32_t{0x616b3432});
  put(out, version);
  put_params(out, p, p.vocab);
  put(out, static_cast<uint8_t>(p.shared ? 1 : 0));
  if (version == 2) put(out, group_size);
  out.resize(256, '\0');
}

const char* const kMatrices[] = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};

// export.py version1_export.
std::string write_v1(const Synth& s) {
  std::string out;
  put_versioned_header(out, s.p, 1, 0);
  for (const auto& n : s.layer_names("attn_norm")) put_floats(out, s.t.at(n));
  for (const auto& n : s.layer_names("ffn_norm")) put_floats(out, s.t.at(n));
  put_floats(out, s.t.at("final_norm"));
  put_floats(out, s.t.at("tok_embeddings"));
  for (const char* what : kMatrices) {
    for (const auto& n : s.layer_names(what)) put_floats(out, s.t.at(n));
  }
  if (!s.p.shared) put_floats(out, s.t.at("classifier"));
  return out;
}

// export.py quantize_q80: scale = max|w| / 127 per group, codes = round(w / scale) (ties to
// even, as torch.round). Returns the codes and scales; `deq` gets codes * scale as runq.c computes it.
void quantize_q80(const std::vector<float>& w, int gs, std::vector<int8_t>& q, std::vector<float>& s,
                  std::vector<float>& deq) {
  q.resize(w.size());
  s.resize(w.size() / static_cast<size_t>(gs));
  deq.resize(w.size());
  for (size_t g = 0; g < s.size(); ++g) {
    float amax = 0;
    for (int j = 0; j < gs; ++j) amax = std::max(amax, std::fabs(w[g * gs + j]));
    s[g] = amax / 127.0f;
    for (int j = 0; j < gs; ++j) {
      const size_t i = g * gs + j;
      q[i] = static_cast<int8_t>(std::nearbyint(w[i] / s[g]));
      deq[i] = static_cast<float>(q[i]) * s[g];
    }
  }
}

// export.py version2_export: fp32 norms, then per quantized tensor its int8 codes followed by
// its fp32 scales. `expected` gets the dequantized values the reader should produce.
std::string write_v2(const Synth& s, int gs, std::map<std::string, std::vector<float>>* expected) {
  std::string out;
  put_versioned_header(out, s.p, 2, gs);
  for (const auto& n : s.layer_names("attn_norm")) put_floats(out, s.t.at(n));
  for (const auto& n : s.layer_names("ffn_norm")) put_floats(out, s.t.at(n));
  put_floats(out, s.t.at("final_norm"));
  std::vector<std::string> order = {"tok_embeddings"};
  for (const char* what : kMatrices) {
    for (const auto& n : s.layer_names(what)) order.push_back(n);
  }
  if (!s.p.shared) order.push_back("classifier");
  for (const auto& n : order) {
    std::vector<int8_t> q;
    std::vector<float> sc, deq;
    quantize_q80(s.t.at(n), gs, q, sc, deq);
    out.append(reinterpret_cast<const char*>(q.data()), q.size());
    put_floats(out, sc);
    (*expected)[n] = deq;
  }
  return out;
}

// The reader's view for a name.
ConstTensorView view_of(const Model& m, const std::string& name) {
  if (name == "tok_embeddings") return m.weights.tok_embeddings;
  if (name == "final_norm") return m.weights.final_norm;
  if (name == "classifier") return m.weights.classifier;
  const size_t dot = name.find('.', 7);
  const auto& L = m.weights.layers.at(std::stoul(name.substr(7, dot - 7)));
  const std::string what = name.substr(dot + 1);
  const std::map<std::string, ConstTensorView> by = {
      {"attn_norm", L.attn_norm}, {"wq", L.wq}, {"wk", L.wk}, {"wv", L.wv}, {"wo", L.wo},
      {"ffn_norm", L.ffn_norm}, {"w1", L.w1}, {"w2", L.w2}, {"w3", L.w3}};
  return by.at(what);
}

void expect_config(const LlamaConfig& c, const Params& p) {
  EXPECT_EQ(c.dim, p.dim);
  EXPECT_EQ(c.hidden_dim, p.hidden);
  EXPECT_EQ(c.n_layers, p.layers);
  EXPECT_EQ(c.n_heads, p.heads);
  EXPECT_EQ(c.n_kv_heads, p.kv_heads);
  EXPECT_EQ(c.vocab_size, p.vocab);
  EXPECT_EQ(c.seq_len, p.seq_len);
  EXPECT_EQ(c.shared_classifier, p.shared);
}

// Every tensor has its shape and exactly the expected values.
void expect_tensors(const Model& m, const Synth& s, const std::map<std::string, std::vector<float>>& values) {
  for (const auto& [name, want] : values) {
    SCOPED_TRACE(name);
    const ConstTensorView v = view_of(m, name);
    const auto [rows, cols] = s.shape.at(name);
    ASSERT_EQ(v.dtype(), DType::kF32);
    ASSERT_EQ(v.ndim(), cols ? 2 : 1);
    EXPECT_EQ(v.dim(0), rows);
    if (cols) {
      EXPECT_EQ(v.dim(1), cols);
    }
    ASSERT_TRUE(v.is_contiguous());
    ASSERT_EQ(static_cast<size_t>(v.numel()), want.size());
    const float* got = v.data_as<float>();
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(got[i], want[i]) << "index " << i;
    }
  }
  if (s.p.shared) {
    EXPECT_EQ(m.weights.classifier.data(), m.weights.tok_embeddings.data());
    EXPECT_EQ(m.weights.classifier.shape().to_string(), m.weights.tok_embeddings.shape().to_string());
  }
}

bool points_into(const Model& m, const ConstTensorView& v) {
  const auto* b = m.file->bytes().data();
  const auto* p = static_cast<const std::byte*>(v.data());
  return p >= b && p + v.nbytes() <= b + m.file->size();
}

class Llama2cTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("lowbit_llama2c_") + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    ASSERT_TRUE(fs::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& bytes) const {
    const std::string p = (dir_ / name).string();
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }
  // Loading `bytes` fails with `code`, a message naming the file and containing `what`.
  void expect_error(const std::string& name, const std::string& bytes, StatusCode code,
                    const std::string& what) const {
    const std::string p = write(name, bytes);
    for (auto load : {&load_llama2c, &load_model}) {
      Result<Model> m = load(p);
      ASSERT_FALSE(m.ok()) << name << " loaded";
      EXPECT_EQ(m.status().code(), code) << m.status().to_string();
      EXPECT_NE(m.status().message().find(p), std::string::npos) << m.status().message();
      EXPECT_NE(m.status().message().find(what), std::string::npos)
          << "expected '" << what << "' in: " << m.status().message();
      EXPECT_EQ(m.status().message().find('\n'), std::string::npos) << m.status().message();
    }
  }
  fs::path dir_;
};

// ---------------------------------------------------------------------------------------------
// The real model

float read_float_at(const std::string& path, uint64_t offset) {
  std::ifstream f(path, std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  float v = 0;
  f.read(reinterpret_cast<char*>(&v), sizeof v);
  EXPECT_TRUE(f.good()) << "cannot read " << path << " at " << offset;
  return v;
}

TEST_F(Llama2cTest, Stories260KConfigAndViews) {
  if (!fs::exists(kStories)) GTEST_SKIP() << "../shared/models/stories260K.bin not found";
  Result<Model> r = load_llama2c(kStories);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const Model& m = *r;
  const LlamaConfig& c = m.config;
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.seq_len, 512);
  EXPECT_TRUE(c.shared_classifier);
  EXPECT_EQ(c.head_dim(), 8);
  EXPECT_EQ(c.kv_dim(), 32);
  EXPECT_EQ(m.path, kStories);
  ASSERT_NE(m.file, nullptr);
  EXPECT_TRUE(m.owned.empty());  // fp32: nothing copied
  ASSERT_EQ(m.weights.layers.size(), 5u);

  // The classifier is the embedding, not a copy.
  EXPECT_EQ(m.weights.classifier.data(), m.weights.tok_embeddings.data());
  EXPECT_EQ(m.weights.classifier.shape().to_string(), "(512, 64)");

  // Shapes, and every view inside the mapping.
  EXPECT_EQ(m.weights.tok_embeddings.shape().to_string(), "(512, 64)");
  EXPECT_EQ(m.weights.final_norm.shape().to_string(), "(64)");
  EXPECT_TRUE(points_into(m, m.weights.tok_embeddings));
  EXPECT_TRUE(points_into(m, m.weights.final_norm));
  for (const LayerWeights& L : m.weights.layers) {
    EXPECT_EQ(L.attn_norm.shape().to_string(), "(64)");
    EXPECT_EQ(L.wq.shape().to_string(), "(64, 64)");
    EXPECT_EQ(L.wk.shape().to_string(), "(32, 64)");
    EXPECT_EQ(L.wv.shape().to_string(), "(32, 64)");
    EXPECT_EQ(L.wo.shape().to_string(), "(64, 64)");
    EXPECT_EQ(L.ffn_norm.shape().to_string(), "(64)");
    EXPECT_EQ(L.w1.shape().to_string(), "(172, 64)");
    EXPECT_EQ(L.w2.shape().to_string(), "(64, 172)");
    EXPECT_EQ(L.w3.shape().to_string(), "(172, 64)");
    for (const auto* v : {&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo, &L.ffn_norm, &L.w1, &L.w2, &L.w3}) {
      EXPECT_TRUE(points_into(m, *v));
    }
  }
}

TEST_F(Llama2cTest, Stories260KValuesMatchDirectReads) {
  if (!fs::exists(kStories)) GTEST_SKIP() << "../shared/models/stories260K.bin not found";
  Result<Model> r = load_model(kStories);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const Model& m = *r;
  // Offsets in floats after the 28-byte header, written out from run.c's memory_map_weights.
  const uint64_t D = 64, H = 172, L = 5, KV = 32, V = 512;
  const uint64_t emb = 0, att = emb + V * D, wq = att + L * D, wk = wq + L * D * D, wv = wk + L * KV * D,
                 wo = wv + L * KV * D, ffn = wo + L * D * D, w1 = ffn + L * D, w2 = w1 + L * H * D,
                 w3 = w2 + L * D * H, fin = w3 + L * H * D;
  auto at = [&](uint64_t floats) { return read_float_at(kStories, 28 + 4 * floats); };
  const auto& W = m.weights;
  EXPECT_EQ(W.tok_embeddings.at<float>(3, 5), at(emb + 3 * D + 5));
  EXPECT_EQ(W.tok_embeddings.at<float>(511, 63), at(emb + 511 * D + 63));
  EXPECT_EQ(W.classifier.at<float>(400, 1), at(emb + 400 * D + 1));
  EXPECT_EQ(W.layers[0].attn_norm.at<float>(0), at(att));
  EXPECT_EQ(W.layers[3].attn_norm.at<float>(17), at(att + 3 * D + 17));
  EXPECT_EQ(W.layers[2].wq.at<float>(7, 11), at(wq + 2 * D * D + 7 * D + 11));
  EXPECT_EQ(W.layers[4].wk.at<float>(31, 63), at(wk + 4 * KV * D + 31 * D + 63));
  EXPECT_EQ(W.layers[1].wv.at<float>(20, 2), at(wv + 1 * KV * D + 20 * D + 2));
  EXPECT_EQ(W.layers[3].wo.at<float>(63, 0), at(wo + 3 * D * D + 63 * D));
  EXPECT_EQ(W.layers[4].ffn_norm.at<float>(63), at(ffn + 4 * D + 63));
  EXPECT_EQ(W.layers[0].w1.at<float>(171, 5), at(w1 + 171 * D + 5));
  EXPECT_EQ(W.layers[2].w2.at<float>(10, 100), at(w2 + 2 * D * H + 10 * H + 100));
  EXPECT_EQ(W.layers[4].w3.at<float>(99, 33), at(w3 + 4 * H * D + 99 * D + 33));
  EXPECT_EQ(W.final_norm.at<float>(5), at(fin + 5));
  // The norms of a trained model are not all ones: a shifted offset would show here.
  EXPECT_NE(W.final_norm.at<float>(5), W.final_norm.at<float>(6));
}

// ---------------------------------------------------------------------------------------------
// Synthetic checkpoints load with the right values

TEST_F(Llama2cTest, V0SharedAndUnsharedClassifier) {
  for (bool shared : {true, false}) {
    SCOPED_TRACE(shared ? "shared" : "unshared");
    Params p;
    p.shared = shared;
    const Synth s(p);
    const std::string path = write(shared ? "v0s.bin" : "v0u.bin", write_v0(s));
    Result<Model> r = load_llama2c(path);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    expect_config(r->config, p);
    expect_tensors(*r, s, s.t);
    EXPECT_TRUE(points_into(*r, r->weights.classifier));
    if (!shared) {
      EXPECT_NE(r->weights.classifier.data(), r->weights.tok_embeddings.data());
    }
  }
}

TEST_F(Llama2cTest, V1SharedAndUnsharedClassifier) {
  for (bool shared : {true, false}) {
    SCOPED_TRACE(shared ? "shared" : "unshared");
    Params p;
    p.shared = shared;
    p.layers = 3;
    p.heads = 4;
    p.kv_heads = 2;
    const Synth s(p);
    const std::string path = write("v1.bin", write_v1(s));
    Result<Model> r = load_model(path);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    expect_config(r->config, p);
    expect_tensors(*r, s, s.t);
    EXPECT_TRUE(r->owned.empty());
    EXPECT_TRUE(points_into(*r, r->weights.layers[2].w3));
  }
}

TEST_F(Llama2cTest, V2DequantizesGroups) {
  for (bool shared : {true, false}) {
    SCOPED_TRACE(shared ? "shared" : "unshared");
    Params p;
    p.shared = shared;
    const Synth s(p);
    const int gs = 4;
    std::map<std::string, std::vector<float>> expected;
    const std::string path = write("v2.bin", write_v2(s, gs, &expected));
    Result<Model> r = load_model(path);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    // Moving the model must not invalidate the views into its owned buffers.
    Model m = std::move(r).value();
    expect_config(m.config, p);
    EXPECT_FALSE(m.owned.empty());
    // Norms stay fp32 views into the file; matrices are the dequantized codes.
    std::map<std::string, std::vector<float>> norms;
    for (const auto& [name, v] : s.t) {
      if (name.find("norm") != std::string::npos) norms[name] = v;
    }
    expect_tensors(m, s, norms);
    expect_tensors(m, s, expected);
    EXPECT_TRUE(points_into(m, m.weights.layers[1].ffn_norm));
    EXPECT_FALSE(points_into(m, m.weights.layers[1].wq));
    // And the dequantized values are within half a step of the originals.
    const auto& w = s.t.at("layers.1.w2");
    const float* got = m.weights.layers[1].w2.data_as<float>();
    for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(got[i], w[i], 1.0f / 127) << i;
  }
}

TEST_F(Llama2cTest, V2GroupsSpanRowsLikeRunq) {
  // hidden=12 with group 8: w2 rows (12 floats) straddle groups; runq.c indexes scales by the
  // flat index, and so does the reader.
  Params p;
  const Synth s(p);
  std::map<std::string, std::vector<float>> expected;
  const std::string path = write("v2g8.bin", write_v2(s, 8, &expected));
  Result<Model> r = load_llama2c(path);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  expect_tensors(*r, s, expected);
}

// ---------------------------------------------------------------------------------------------
// Broken input

std::string with_i32(std::string bytes, size_t offset, int32_t v) {
  std::memcpy(bytes.data() + offset, &v, sizeof v);
  return bytes;
}

TEST_F(Llama2cTest, MissingFile) {
  const std::string p = (dir_ / "nope.bin").string();
  for (auto load : {&load_llama2c, &load_model}) {
    Result<Model> m = load(p);
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().code(), StatusCode::kNotFound);
    EXPECT_NE(m.status().message().find(p), std::string::npos) << m.status().message();
  }
}

TEST_F(Llama2cTest, EmptyAndShortFiles) {
  expect_error("empty.bin", "", StatusCode::kDataLoss, "empty file");
  expect_error("short.bin", std::string(10, '\1'), StatusCode::kDataLoss, "28-byte");
  std::string v1 = write_v1(Synth(Params{}));
  expect_error("short_v1.bin", v1.substr(0, 100), StatusCode::kDataLoss, "256-byte");
}

TEST_F(Llama2cTest, TruncatedAndExtraBytes) {
  const std::string v0 = write_v0(Synth(Params{}));
  const std::string n = std::to_string(v0.size());
  expect_error("trunc.bin", v0.substr(0, v0.size() - 4), StatusCode::kDataLoss,
               "expected " + n + " bytes from the version-0 header (dim=8, hidden_dim=12, layers=2");
  expect_error("trunc.bin", v0.substr(0, v0.size() - 4), StatusCode::kDataLoss,
               "file has " + std::to_string(v0.size() - 4) + " (truncated?)");
  expect_error("extra.bin", v0 + std::string(4, '\0'), StatusCode::kDataLoss, "(trailing bytes)");
  const std::string v1 = write_v1(Synth(Params{}));
  expect_error("trunc1.bin", v1.substr(0, v1.size() - 1), StatusCode::kDataLoss, "version-1 header");
  std::map<std::string, std::vector<float>> e;
  const std::string v2 = write_v2(Synth(Params{}), 4, &e);
  expect_error("trunc2.bin", v2.substr(0, v2.size() - 1), StatusCode::kDataLoss, "version-2 header");
  expect_error("extra2.bin", v2 + "x", StatusCode::kDataLoss, "(trailing bytes)");
}

TEST_F(Llama2cTest, WrongMagicOrVersion) {
  const std::string v1 = write_v1(Synth(Params{}));
  // A damaged magic makes the file a legacy one whose "dim" is the magic's neighbour bytes.
  std::string bad_magic = v1;
  bad_magic[0] = 'X';
  expect_error("magic.bin", bad_magic, StatusCode::kDataLoss, "out of range");
  expect_error("version3.bin", with_i32(v1, 4, 3), StatusCode::kUnsupported, "version 3 is not supported");
  expect_error("version0.bin", with_i32(v1, 4, 0), StatusCode::kUnsupported, "version 0 is not supported");
  // v1 bytes labelled v2 (group size 0 in the padding): rejected, not misread.
  expect_error("v1as2.bin", with_i32(v1, 4, 2), StatusCode::kDataLoss, "group_size=0");
  std::string bad_flag = v1;
  bad_flag[36] = 7;
  expect_error("flag.bin", bad_flag, StatusCode::kDataLoss, "shared_classifier=7");
}

TEST_F(Llama2cTest, GgufGoesToTheGgufReader) {
  // A GGUF header with no metadata: load_model hands it to load_gguf, which names what is missing.
  const std::string p = write("m.gguf", std::string("GGUF\3\0\0\0", 8) + std::string(64, '\0'));
  Result<Model> m = load_model(p);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find(p + ": "), std::string::npos) << m.status().message();
  EXPECT_NE(m.status().message().find("general.architecture"), std::string::npos) << m.status().message();
}

TEST_F(Llama2cTest, HeaderThatDoesNotMatchTheFileSize) {
  const std::string v0 = write_v0(Synth(Params{}));
  // hidden 12 -> 13: every later tensor shifts, the total no longer matches.
  expect_error("hidden.bin", with_i32(v0, 4, 13), StatusCode::kDataLoss, "hidden_dim=13");
  expect_error("layers.bin", with_i32(v0, 8, 3), StatusCode::kDataLoss, "layers=3");
  // Sign flip of vocab = a classifier the file does not have.
  expect_error("vocabsign.bin", with_i32(v0, 20, -16), StatusCode::kDataLoss, "separate classifier");
  const std::string v1 = write_v1(Synth(Params{}));
  expect_error("v1dim.bin", with_i32(v1, 8, 16), StatusCode::kDataLoss, "dim=16");
  // v1 flag says unshared, but no classifier follows.
  std::string unshared = v1;
  unshared[36] = 0;
  expect_error("v1flag.bin", unshared, StatusCode::kDataLoss, "separate classifier");
}

TEST_F(Llama2cTest, HeadsThatDoNotDivide) {
  const std::string v0 = write_v0(Synth(Params{}));
  expect_error("heads3.bin", with_i32(v0, 12, 3), StatusCode::kDataLoss, "n_heads=3 does not divide dim=8");
  expect_error("kv3.bin", with_i32(with_i32(v0, 12, 4), 16, 3), StatusCode::kDataLoss,
               "n_kv_heads=3 does not divide n_heads=4");
  expect_error("kv_gt.bin", with_i32(v0, 16, 4), StatusCode::kDataLoss, "n_kv_heads=4 is out of range");
  // head size 8/8 = 1: odd, RoPE needs pairs.
  expect_error("odd.bin", with_i32(v0, 12, 8), StatusCode::kDataLoss, "is odd");
  std::map<std::string, std::vector<float>> e;
  const std::string v2 = write_v2(Synth(Params{}), 4, &e);
  expect_error("gs5.bin", with_i32(v2, 37, 5), StatusCode::kDataLoss, "not a multiple of the header's group_size=5");
}

TEST_F(Llama2cTest, AbsurdDims) {
  const std::string v0 = write_v0(Synth(Params{}));
  const int32_t kMin = std::numeric_limits<int32_t>::min();
  const int32_t kMax = std::numeric_limits<int32_t>::max();
  expect_error("dim.bin", with_i32(v0, 0, (1 << 20) + 2), StatusCode::kDataLoss, "dim=1048578 is out of range");
  expect_error("dim0.bin", with_i32(v0, 0, 0), StatusCode::kDataLoss, "dim=0 is out of range");
  expect_error("dimneg.bin", with_i32(v0, 0, -8), StatusCode::kDataLoss, "dim=-8 is out of range");
  expect_error("hidden.bin", with_i32(v0, 4, kMax), StatusCode::kDataLoss, "hidden_dim=2147483647 is out of range");
  expect_error("layers.bin", with_i32(v0, 8, 5000), StatusCode::kDataLoss, "n_layers=5000 is out of range");
  expect_error("heads0.bin", with_i32(v0, 12, 0), StatusCode::kDataLoss, "n_heads=0 is out of range");
  expect_error("vocab.bin", with_i32(v0, 20, 1 << 25), StatusCode::kDataLoss, "vocab_size=33554432 is out of range");
  expect_error("vocabmin.bin", with_i32(v0, 20, kMin), StatusCode::kDataLoss, "vocab_size=2147483648 is out of range");
  expect_error("vocab0.bin", with_i32(v0, 20, 0), StatusCode::kDataLoss, "vocab_size=0 is out of range");
  expect_error("seq.bin", with_i32(v0, 24, 1 << 25), StatusCode::kDataLoss, "seq_len=33554432 is out of range");
  // Every dim at its bound at once: sizes must not overflow, the size check must catch it.
  std::string big = with_i32(with_i32(with_i32(v0, 0, 1 << 20), 4, 1 << 22), 8, 1024);
  big = with_i32(with_i32(big, 20, -(1 << 24)), 24, 1 << 24);
  expect_error("big.bin", big, StatusCode::kDataLoss, "file has " + std::to_string(big.size()));
  const std::string v1 = write_v1(Synth(Params{}));
  expect_error("v1vocab.bin", with_i32(v1, 28, -16), StatusCode::kDataLoss, "vocab_size=-16 is out of range");
  std::map<std::string, std::vector<float>> e;
  const std::string v2 = write_v2(Synth(Params{}), 4, &e);
  expect_error("gsneg.bin", with_i32(v2, 37, -4), StatusCode::kDataLoss, "group_size=-4 is out of range");
}

TEST_F(Llama2cTest, NonFiniteWeightsNameTheTensor) {
  Params p;
  p.shared = false;
  Synth s(p);
  s.t["layers.1.wq"][17] = std::numeric_limits<float>::quiet_NaN();
  expect_error("nan0.bin", write_v0(s), StatusCode::kDataLoss, "tensor layers.1.wq has NaN at index 17");
  expect_error("nan1.bin", write_v1(s), StatusCode::kDataLoss, "tensor layers.1.wq has NaN at index 17");

  Synth t(p);
  t.t["classifier"][t.t["classifier"].size() - 1] = -std::numeric_limits<float>::infinity();
  expect_error("inf0.bin", write_v0(t), StatusCode::kDataLoss,
               "tensor classifier has -Inf at index " + std::to_string(p.vocab * p.dim - 1));
  Synth u(p);
  u.t["final_norm"][0] = std::numeric_limits<float>::infinity();
  expect_error("inf1.bin", write_v1(u), StatusCode::kDataLoss, "tensor final_norm has +Inf at index 0");

  // v2: a NaN scale poisons its whole group; the first element of the group is named.
  Synth v(p);
  std::map<std::string, std::vector<float>> e;
  std::string v2 = write_v2(v, 4, &e);
  // Scales of tok_embeddings follow its 16*8 codes, after the header and 2*2*8+8 norm floats.
  const size_t scales = 256 + (2 * 2 * 8 + 8) * 4 + 16 * 8;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(v2.data() + scales + 4 * 3, &nan, sizeof nan);
  expect_error("nan2.bin", v2, StatusCode::kDataLoss, "tensor tok_embeddings has NaN at index 12");

  // The skipped RoPE tables of v0 are not weights: non-finite values there are ignored.
  Synth w(Params{});
  std::string v0 = write_v0(w);
  const float inf = std::numeric_limits<float>::infinity();
  std::memcpy(v0.data() + v0.size() - 4, &inf, sizeof inf);
  Result<Model> m = load_llama2c(write("rope_inf.bin", v0));
  EXPECT_TRUE(m.ok()) << m.status().to_string();
}

}  // namespace
}  // namespace lowbit
