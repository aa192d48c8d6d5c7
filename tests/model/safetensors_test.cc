// safetensors: write/read round trips (every dtype, metadata), lowbit's quantized layout
// (bit-exact), a tiny Hugging Face Llama checkpoint written here (F16 / BF16 / F32) that must
// load and run like a rotate-half reference forward pass, one test per kind of broken input,
// and the cross-check with the safetensors PyPI package (SafetensorsCrossCheck, driven by
// tests/model/safetensors_crosscheck.py through CTest).

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "lowbit/convert.h"
#include "lowbit/file.h"
#include "lowbit/llama.h"
#include "lowbit/model.h"
#include "lowbit/quant.h"
#include "lowbit/safetensors.h"
#include "lowbit/sharded.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace lowbit {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("lowbit_st_" + std::to_string(::getpid()) + "_" + info->test_suite_name() + "_" + info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Deterministic values in [-1, 1), different for every name.
std::vector<float> synth(const std::string& name, size_t n, float scale = 1.0f) {
  uint64_t s = 1469598103934665603ull;
  for (char ch : name) s = (s ^ static_cast<unsigned char>(ch)) * 1099511628211ull;
  std::vector<float> v(n);
  for (auto& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = scale * static_cast<float>(static_cast<int32_t>(s >> 40) - (1 << 23)) / static_cast<float>(1 << 23);
  }
  return v;
}

std::vector<std::byte> synth_bytes(const std::string& name, size_t n) {
  std::vector<std::byte> b(n);
  const std::vector<float> v = synth(name, n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>(static_cast<int>((v[i] + 1.0f) * 127.5f) & 0xFF);
  return b;
}

template <class T>
std::span<const std::byte> bytes_of(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

void write_bytes(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
}

// A safetensors file from a raw header and `data_bytes` zero bytes: for broken inputs.
std::string raw_file(const std::string& header, size_t data_bytes, uint64_t declared = UINT64_MAX) {
  const uint64_t n = declared == UINT64_MAX ? header.size() : declared;
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(data_bytes, '\0');
}

// ---------------------------------------------------------------------------------------------
// Container round trips

TEST(Safetensors, RoundTripEveryDtypeAndMetadata) {
  TempDir tmp;
  const std::vector<DType> dtypes = {DType::kF32, DType::kF16, DType::kBF16, DType::kI8,  DType::kU8, DType::kI32,
                                     DType::kI64, DType::kF64, DType::kI16,  DType::kU16, DType::kU32};
  std::vector<std::vector<std::byte>> data;
  std::vector<SafetensorsEntry> entries;
  std::vector<std::vector<int64_t>> shapes = {{3, 5}, {7}, {2, 1, 3}, {}, {4, 0}, {1, 2, 3, 1}};
  for (size_t i = 0; i < dtypes.size(); ++i) {
    const std::vector<int64_t> shape = shapes[i % shapes.size()];
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const std::string name = "t." + std::string(safetensors_dtype_name(dtypes[i]));
    data.push_back(synth_bytes(name, static_cast<size_t>(n) * dtype_size(dtypes[i])));
    entries.push_back({name, dtypes[i], shape, data.back()});
  }
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "ünïcode \"quoted\""}, {"empty", ""}};
  const std::string path = tmp.file("all.safetensors");
  ASSERT_TRUE(write_safetensors(path, entries, meta).ok());

  // Header length: a multiple of 8, so the data buffer starts 8-aligned.
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);

  Result<SafetensorsFile> f = open_safetensors(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->metadata(), meta);
  ASSERT_EQ(f->tensors().size(), entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    SCOPED_TRACE(entries[i].name);
    const SafetensorsTensorInfo* info = f->find(entries[i].name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->dtype, entries[i].dtype);
    EXPECT_EQ(info->shape, entries[i].shape);
    Result<ConstTensorView> v = f->tensor(entries[i].name);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(v->dtype(), entries[i].dtype);
    EXPECT_EQ(v->ndim(), static_cast<int>(entries[i].shape.size()));
    ASSERT_EQ(v->nbytes(), data[i].size());
    if (!data[i].empty()) {
      EXPECT_EQ(std::memcmp(v->data(), data[i].data(), data[i].size()), 0);
    }
    // Zero copy: the view points into the mapping.
    const std::byte* base = f->file()->bytes().data();
    EXPECT_GE(static_cast<const std::byte*>(v->data()), base);
    EXPECT_LE(static_cast<const std::byte*>(v->data()), base + f->file()->size());
  }
  // Tensors are written in the given order.
  EXPECT_EQ(f->tensors().front().name, entries.front().name);
  EXPECT_FALSE(f->tensor("nope").ok());
  EXPECT_EQ(f->tensor("nope").status().code(), StatusCode::kNotFound);
}

TEST(Safetensors, EmptyFileAndNoMetadata) {
  TempDir tmp;
  const std::string path = tmp.file("empty.safetensors");
  ASSERT_TRUE(write_safetensors(path, {}, {}).ok());
  Result<SafetensorsFile> f = open_safetensors(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_TRUE(f->metadata().empty());
}

TEST(Safetensors, WriterRejectsBadEntriesAndLeavesNothing) {
  TempDir tmp;
  const std::vector<float> v = {1, 2, 3};
  const std::string path = tmp.file("bad.safetensors");
  Status s = write_safetensors(path, {{"a", DType::kF32, {2, 2}, bytes_of(v)}});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tensor a has 12 bytes, but F32 (2, 2) needs 16"), std::string::npos) << s.message();
  s = write_safetensors(path, {{"a", DType::kF32, {3}, bytes_of(v)}, {"a", DType::kF32, {3}, bytes_of(v)}});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  s = write_safetensors(path, {{"__metadata__", DType::kF32, {3}, bytes_of(v)}});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(fs::is_empty(tmp.path()));  // no output, no temp file left behind
}

// The piecewise writer gives write_safetensors' bytes for the same tensors, whatever the pieces;
// a producer that hands over too few or too many bytes (or fails) leaves nothing behind.
TEST(Safetensors, PiecewiseWriterEqualsWholeAndRefusesWrongByteCounts) {
  TempDir tmp;
  const std::vector<float> a = synth("a", 37), b = synth("b", 6);
  ASSERT_TRUE(write_safetensors(tmp.file("whole.safetensors"), {{"a", DType::kF32, {37}, bytes_of(a)}, {"b", DType::kF32, {2, 3}, bytes_of(b)}},
                                {{"k", "v"}}).ok());
  const auto in_pieces = [](const std::vector<float>& v, size_t piece) {
    return [&v, piece](const std::function<Status(std::span<const std::byte>)>& emit) -> Status {
      for (size_t i = 0; i < v.size(); i += piece) {
        LOWBIT_RETURN_IF_ERROR(emit(std::as_bytes(std::span<const float>(v.data() + i, std::min(piece, v.size() - i)))));
      }
      return OkStatus();
    };
  };
  ASSERT_TRUE(write_safetensors_piecewise(tmp.file("pieces.safetensors"),
                                          {{"a", DType::kF32, {37}, in_pieces(a, 5)}, {"b", DType::kF32, {2, 3}, in_pieces(b, 4)}}, {{"k", "v"}})
                  .ok());
  EXPECT_EQ(read_file(tmp.file("whole.safetensors")).value(), read_file(tmp.file("pieces.safetensors")).value());

  const std::vector<float> short_a(a.begin(), a.begin() + 36), long_a = synth("long", 38);
  for (const auto* v : {&short_a, &long_a}) {
    const Status s = write_safetensors_piecewise(tmp.file("bad.safetensors"), {{"a", DType::kF32, {37}, in_pieces(*v, 7)}});
    EXPECT_EQ(s.code(), StatusCode::kInternal);
    EXPECT_NE(s.message().find(fmt::format("tensor a: {} bytes produced, 148 expected", v->size() * 4)), std::string::npos) << s.message();
  }
  const Status s = write_safetensors_piecewise(tmp.file("bad.safetensors"), {{"a", DType::kF32, {1}, [](const auto&) { return IoError("disk gone"); }}});
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_FALSE(fs::exists(tmp.file("bad.safetensors")));
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator{}), 2);  // no temp file left
}

// ---------------------------------------------------------------------------------------------
// Broken files

struct BadCase {
  const char* what;
  std::string file;
  StatusCode code;
  const char* message;  // a substring the error must contain
};

TEST(Safetensors, RejectsBrokenFiles) {
  TempDir tmp;
  const std::string f32x4 = R"("dtype":"F32","shape":[4])";
  const std::vector<BadCase> cases = {
      {"shorter than the length field", std::string(5, '\0'), StatusCode::kDataLoss, "at least the 8-byte"},
      {"header length past the end", raw_file(R"({})", 0, 1000), StatusCode::kDataLoss, "past the end of the file"},
      {"absurd header length", raw_file(R"({})", 0, uint64_t{1} << 40), StatusCode::kDataLoss, "header length"},
      {"non-JSON header", raw_file("{not json", 0), StatusCode::kDataLoss, "is not valid JSON"},
      {"header not an object", raw_file("[1, 2]", 0), StatusCode::kDataLoss, "not a JSON object"},
      {"metadata not strings", raw_file(R"({"__metadata__":{"a":1}})", 0), StatusCode::kDataLoss,
       "__metadata__ entry a is not a string"},
      {"unsupported dtype", raw_file(R"({"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", 4),
       StatusCode::kUnsupported, "tensor w: dtype F8_E4M3 is not supported"},
      {"negative dim", raw_file(R"({"w":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}})", 4),
       StatusCode::kDataLoss, "not a non-negative integer"},
      {"dtype/shape/offset mismatch", raw_file(R"({"w":{)" + f32x4 + R"(,"data_offsets":[0,12]}})", 12),
       StatusCode::kDataLoss, "tensor w: data_offsets [0, 12] hold 12 bytes, but F32 (4) needs 16"},
      {"offsets outside the file", raw_file(R"({"w":{)" + f32x4 + R"(,"data_offsets":[8,24]}})", 16),
       StatusCode::kDataLoss, "tensor w data_offsets [8, 24] run past the end"},
      {"bad data_offsets", raw_file(R"({"w":{)" + f32x4 + R"(,"data_offsets":[0]}})", 16), StatusCode::kDataLoss,
       "\"data_offsets\" must be [begin, end]"},
      {"overlapping tensors",
       raw_file(R"({"a":{)" + f32x4 + R"(,"data_offsets":[0,16]},"b":{)" + f32x4 + R"(,"data_offsets":[8,24]}})", 24),
       StatusCode::kDataLoss, "tensors a [0, 16] and b [8, 24] overlap"},
      {"hole between tensors",
       raw_file(R"({"a":{)" + f32x4 + R"(,"data_offsets":[0,16]},"b":{)" + f32x4 + R"(,"data_offsets":[20,36]}})", 36),
       StatusCode::kDataLoss, "hole in the data buffer: bytes [16, 20) before tensor b"},
      {"trailing bytes", raw_file(R"({"a":{)" + f32x4 + R"(,"data_offsets":[0,16]}})", 20), StatusCode::kDataLoss,
       "bytes [16, 20) after the last tensor"},
      {"shape overflow",
       raw_file(R"({"w":{"dtype":"I64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
       StatusCode::kDataLoss, "overflows"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string path = tmp.file("bad.safetensors");
    write_bytes(path, c.file);
    Result<SafetensorsFile> f = open_safetensors(path);
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), c.code) << f.status().to_string();
    EXPECT_NE(f.status().message().find(c.message), std::string::npos) << f.status().message();
    EXPECT_NE(f.status().message().find(path), std::string::npos) << f.status().message();
    EXPECT_EQ(f.status().message().find('\n'), std::string::npos);
  }
  EXPECT_EQ(open_safetensors(tmp.file("missing.safetensors")).status().code(), StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------------------------
// Quantized layout

void expect_same(const QuantizedTensor& a, const QuantizedTensor& b) {
  EXPECT_EQ(a.spec, b.spec);
  EXPECT_EQ(a.shape.to_string(), b.shape.to_string());
  EXPECT_EQ(a.rows, b.rows);
  EXPECT_EQ(a.cols, b.cols);
  EXPECT_EQ(a.row_bytes, b.row_bytes);
  EXPECT_EQ(a.codes, b.codes);
  EXPECT_EQ(a.scale_codes, b.scale_codes);
  ASSERT_EQ(a.scales.size(), b.scales.size());
  EXPECT_EQ(std::memcmp(a.scales.data(), b.scales.data(), a.scales.size() * sizeof(float)), 0);
  EXPECT_EQ(a.zero_points, b.zero_points);
  EXPECT_EQ(std::memcmp(&a.tensor_scale, &b.tensor_scale, sizeof(float)), 0);
}

std::vector<float> dequantized(const QuantizedTensor& q) {
  std::vector<int64_t> dims(q.shape.dims.begin(), q.shape.dims.begin() + q.shape.ndim);
  Result<Tensor> t = Tensor::empty(DType::kF32, dims);
  LOWBIT_CHECK(t.ok(), "alloc");
  LOWBIT_CHECK(dequantize(q, t->view()).ok(), "dequantize");
  return {t->data_as<float>(), t->data_as<float>() + t->numel()};
}

TEST(SafetensorsQuantized, RoundTripIsBitExact) {
  TempDir tmp;
  const std::vector<std::pair<std::string, std::vector<int64_t>>> cases = {
      {"int4:g128:sym:fp16", {96, 300}},         // ragged last group, odd row bytes
      {"uint4:g32:asym:fp16", {33, 71}},          // odd cols: a padding nibble per row
      {"e4m3:block128x128:sym:fp32", {130, 257}},  // ragged 2-D blocks
      {"e2m1:g32:sym:e8m0", {4, 8, 64}},           // 3-D, some all-zero groups (e8m0 has no zero)
      {"uint8:row:asym:e8m0", {6, 40}},            // a constant row: scale 0 stored as e8m0 NaN
      {"e2m1:g16:sym:e4m3*fp32", {8, 48}},         // NVFP4: two-level scale
  };
  std::map<std::string, QuantizedTensor> qs;
  std::vector<std::vector<float>> inputs;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& [text, shape] = cases[i];
    Result<QuantSpec> spec = parse_spec(text);
    ASSERT_TRUE(spec.ok()) << text << ": " << spec.status().to_string();
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> x = synth(text, static_cast<size_t>(n), 3.0f);
    if (text == "e2m1:g32:sym:e8m0") std::fill(x.begin() + 64, x.begin() + 160, 0.0f);
    if (text == "uint8:row:asym:e8m0") std::fill(x.begin() + 40, x.begin() + 80, 0.0f);
    Result<QuantizedTensor> q = quantize(ConstTensorView(x.data(), DType::kF32, std::span<const int64_t>(shape)), *spec);
    ASSERT_TRUE(q.ok()) << text << ": " << q.status().to_string();
    qs.emplace("model.layers." + std::to_string(i) + ".w", std::move(*q));
  }
  const std::vector<float> norm = synth("norm", 16);
  const std::string path = tmp.file("q.safetensors");
  Status s = write_quantized_safetensors(path, qs, {{"model.norm.weight", DType::kF32, {16}, bytes_of(norm)}},
                                         {{"producer", "test"}});
  ASSERT_TRUE(s.ok()) << s.to_string();

  Result<SafetensorsFile> f = open_safetensors(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->metadata().at("producer"), "test");
  EXPECT_NE(f->metadata().at("quantization_config").find(R"("quant_method":"lowbit")"), std::string::npos);
  EXPECT_EQ(f->find("model.layers.0.w.qweight")->dtype, DType::kU8);
  EXPECT_EQ(f->find("model.layers.0.w.qweight")->shape, (std::vector<int64_t>{96, 150}));
  EXPECT_EQ(f->find("model.layers.0.w.scales")->dtype, DType::kF16);
  EXPECT_EQ(f->find("model.layers.0.w.scales")->shape, (std::vector<int64_t>{96, 3}));
  EXPECT_EQ(f->find("model.layers.1.w.zeros")->dtype, DType::kI32);
  EXPECT_EQ(f->find("model.layers.0.w.zeros"), nullptr);
  EXPECT_EQ(f->find("model.layers.2.w.scales")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f->find("model.layers.3.w.scales")->dtype, DType::kU8);
  EXPECT_EQ(f->find("model.layers.5.w.tensor_scale")->shape, std::vector<int64_t>{});
  EXPECT_NE(f->find("model.norm.weight"), nullptr);

  Result<std::map<std::string, QuantizedTensor>> back = read_quantized_safetensors(path);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  ASSERT_EQ(back->size(), qs.size());
  for (const auto& [name, q] : qs) {
    SCOPED_TRACE(name + " " + to_string(q.spec));
    ASSERT_TRUE(back->contains(name));
    expect_same(q, back->at(name));
    const std::vector<float> a = dequantized(q), b = dequantized(back->at(name));
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  }
}

TEST(SafetensorsQuantized, ReaderValidates) {
  TempDir tmp;
  const std::vector<float> x = synth("w", 4 * 64);
  Result<QuantizedTensor> q = quantize(ConstTensorView(x.data(), DType::kF32, {4, 64}), *parse_spec("int4:g32:sym:fp16"));
  ASSERT_TRUE(q.ok());
  const std::string path = tmp.file("q.safetensors");
  // A file whose quantization_config promises a different group size than the scales hold.
  std::vector<uint16_t> scales(4 * 2, 0x3c00);
  const std::string cfg = R"({"quant_method":"lowbit","version":1,"tensors":{"w":{"spec":"int4:g16:sym:fp16","shape":[4,64]}}})";
  ASSERT_TRUE(write_safetensors(path,
                                {{"w.qweight", DType::kU8, {4, 32}, bytes_of(q->codes)},
                                 {"w.scales", DType::kF16, {4, 2}, bytes_of(scales)}},
                                {{"quantization_config", cfg}})
                  .ok());
  Result<std::map<std::string, QuantizedTensor>> r = read_quantized_safetensors(path);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("tensor w.scales is F16 (4, 2), expected F16 (4, 4)"), std::string::npos)
      << r.status().message();
  // A bad spec string.
  const std::string bad = R"({"quant_method":"lowbit","version":1,"tensors":{"w":{"spec":"int7:g16","shape":[4,64]}}})";
  ASSERT_TRUE(write_safetensors(path, {}, {{"quantization_config", bad}}).ok());
  r = read_quantized_safetensors(path);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("quantized tensor w"), std::string::npos) << r.status().message();
  // Plain files are not quantized ones.
  ASSERT_TRUE(write_safetensors(path, {}, {}).ok());
  EXPECT_EQ(read_quantized_safetensors(path).status().code(), StatusCode::kNotFound);
  // The writer owns quantization_config.
  EXPECT_EQ(write_quantized_safetensors(path, {}, {}, {{"quantization_config", "x"}}).code(),
            StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face Llama checkpoints

struct TinyLlama {
  int dim = 16, hidden = 32, layers = 2, heads = 2, kv_heads = 1, vocab = 24, seq_len = 32;
  int hd() const { return dim / heads; }
  int kv_dim() const { return hd() * kv_heads; }
  float theta = 10000.0f, eps = 1e-5f;
  bool tied = false;
  // HF name -> (shape, values in HF layout: what the file holds after rounding to its dtype)
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> t;

  void add(const std::string& name, std::vector<int64_t> shape, float scale = 0.5f, float offset = 0.0f) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v = synth(name, static_cast<size_t>(n), scale);
    for (float& x : v) x += offset;
    t[name] = {std::move(shape), std::move(v)};
  }
  TinyLlama() {
    add("model.embed_tokens.weight", {vocab, dim}, 1.0f);
    for (int l = 0; l < layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      add(p + "input_layernorm.weight", {dim}, 0.2f, 1.0f);
      add(p + "self_attn.q_proj.weight", {dim, dim});
      add(p + "self_attn.k_proj.weight", {kv_dim(), dim});
      add(p + "self_attn.v_proj.weight", {kv_dim(), dim});
      add(p + "self_attn.o_proj.weight", {dim, dim});
      add(p + "post_attention_layernorm.weight", {dim}, 0.2f, 1.0f);
      add(p + "mlp.gate_proj.weight", {hidden, dim});
      add(p + "mlp.down_proj.weight", {dim, hidden});
      add(p + "mlp.up_proj.weight", {hidden, dim});
    }
    add("model.norm.weight", {dim}, 0.2f, 1.0f);
    add("lm_head.weight", {vocab, dim});
  }

  std::string config(const std::string& model_type = "llama") const {
    std::ostringstream o;
    o << R"({"architectures":["LlamaForCausalLM"],"model_type":")" << model_type << R"(","hidden_size":)" << dim
      << R"(,"intermediate_size":)" << hidden << R"(,"num_hidden_layers":)" << layers << R"(,"num_attention_heads":)"
      << heads << R"(,"num_key_value_heads":)" << kv_heads << R"(,"vocab_size":)" << vocab
      << R"(,"max_position_embeddings":)" << seq_len << R"(,"rope_theta":10000.0,"rms_norm_eps":1e-05,)"
      << R"("hidden_act":"silu","rope_scaling":null,"tie_word_embeddings":)" << (tied ? "true" : "false")
      << R"(,"torch_dtype":"float16"})";
    return o.str();
  }

  // Writes config.json + model.safetensors into `dir` in `dtype`, rounding t's values to it.
  void write(const fs::path& dir, DType dtype, const std::string& skip = "") {
    fs::create_directories(dir);
    write_bytes((dir / "config.json").string(), config());
    std::vector<std::vector<uint8_t>> store;
    std::vector<SafetensorsEntry> entries;
    for (auto& [name, st] : t) {
      if (name == skip) continue;
      std::vector<float>& v = st.second;
      std::vector<uint8_t> b(v.size() * dtype_size(dtype));
      if (dtype == DType::kF32) {
        std::memcpy(b.data(), v.data(), b.size());
      } else {
        const Format f = dtype == DType::kF16 ? Format::kFp16 : Format::kBf16;
        encode_span(f, v, b);
        decode_span(f, b, v);  // the reference sees exactly what the file holds
      }
      store.push_back(std::move(b));
      entries.push_back({name, dtype, st.first, std::as_bytes(std::span<const uint8_t>(store.back()))});
    }
    ASSERT_TRUE(write_safetensors((dir / "model.safetensors").string(), entries, {{"format", "pt"}}).ok());
  }
  const std::vector<float>& w(const std::string& name) const { return t.at(name).second; }
};

// Hugging Face's rotate_half RoPE on one head vector x (hd): pairs (i, i + hd/2).
void rope_rotate_half(float* x, int hd, int pos, float theta) {
  for (int i = 0; i < hd / 2; ++i) {
    const double freq = std::pow(static_cast<double>(theta), -2.0 * i / hd);
    const double c = std::cos(pos * freq), s = std::sin(pos * freq);
    const double a = x[i], b = x[i + hd / 2];
    x[i] = static_cast<float>(a * c - b * s);
    x[i + hd / 2] = static_cast<float>(b * c + a * s);
  }
}

// lowbit's (llama2.c's) interleaved RoPE on one head vector: pairs (2i, 2i + 1).
void rope_interleaved(float* x, int hd, int pos, float theta) {
  for (int i = 0; i < hd; i += 2) {
    const double freq = std::pow(static_cast<double>(theta), -static_cast<double>(i) / hd);
    const double c = std::cos(pos * freq), s = std::sin(pos * freq);
    const double a = x[i], b = x[i + 1];
    x[i] = static_cast<float>(a * c - b * s);
    x[i + 1] = static_cast<float>(a * s + b * c);
  }
}

// y (rows) = W (rows, cols) x (cols)
std::vector<float> matvec(const std::vector<float>& w, const std::vector<float>& x, int rows, int cols) {
  std::vector<float> y(static_cast<size_t>(rows));
  for (int r = 0; r < rows; ++r) {
    double acc = 0;
    for (int c = 0; c < cols; ++c) acc += static_cast<double>(w[static_cast<size_t>(r * cols + c)]) * x[static_cast<size_t>(c)];
    y[static_cast<size_t>(r)] = static_cast<float>(acc);
  }
  return y;
}

// The q·k score of a query head and a key head after RoPE: in HF layout with rotate_half
// equals lowbit's permuted rows with interleaved pairs, for any positions.
TEST(SafetensorsLlama, RopePermutationMatchesRotateHalf) {
  const int hd = 8, heads = 2;
  const std::vector<float> q = synth("q", hd * heads), k = synth("k", hd);
  for (int pq : {0, 1, 5, 17}) {
    for (int pk : {0, 3, 17}) {
      for (int h = 0; h < heads; ++h) {
        std::vector<float> qh(q.begin() + h * hd, q.begin() + (h + 1) * hd), kh = k;
        rope_rotate_half(qh.data(), hd, pq, 10000.0f);
        rope_rotate_half(kh.data(), hd, pk, 10000.0f);
        double hf = 0;
        for (int i = 0; i < hd; ++i) hf += static_cast<double>(qh[static_cast<size_t>(i)]) * kh[static_cast<size_t>(i)];

        // Permuting the weight's rows permutes the projected vector the same way.
        std::vector<float> qp(hd), kp(hd), qn(hd);
        for (int r = 0; r < hd; ++r) {
          qp[static_cast<size_t>(r)] = q[static_cast<size_t>(h * hd + hf_rope_source_row(r, hd))];
          kp[static_cast<size_t>(r)] = k[static_cast<size_t>(hf_rope_source_row(r, hd))];
          qn[static_cast<size_t>(r)] = q[static_cast<size_t>(h * hd + r)];
        }
        std::vector<float> kn = k;
        rope_interleaved(qp.data(), hd, pq, 10000.0f);
        rope_interleaved(kp.data(), hd, pk, 10000.0f);
        rope_interleaved(qn.data(), hd, pq, 10000.0f);
        rope_interleaved(kn.data(), hd, pk, 10000.0f);
        double lb = 0, unpermuted = 0;
        for (int i = 0; i < hd; ++i) {
          lb += static_cast<double>(qp[static_cast<size_t>(i)]) * kp[static_cast<size_t>(i)];
          unpermuted += static_cast<double>(qn[static_cast<size_t>(i)]) * kn[static_cast<size_t>(i)];
        }
        EXPECT_NEAR(lb, hf, 1e-5) << "pq=" << pq << " pk=" << pk << " head " << h;
        if (pq != pk) {
          EXPECT_GT(std::fabs(unpermuted - hf), 1e-3) << "the test must tell the layouts apart";
        }
      }
    }
  }
  // Row order within a head of 8: 0 4 1 5 2 6 3 7 (then the next head).
  const std::vector<int64_t> want = {0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13};
  for (size_t r = 0; r < want.size(); ++r) EXPECT_EQ(hf_rope_source_row(static_cast<int64_t>(r), 8), want[r]);
}

// A straightforward Hugging Face LlamaForCausalLM forward (rotate_half RoPE, GQA) over HF
// weights: logits (n, vocab).
std::vector<float> hf_forward(const TinyLlama& m, const std::vector<int>& toks) {
  const int D = m.dim, H = m.heads, hd = m.hd(), KV = m.kv_dim(), F = m.hidden, V = m.vocab;
  const int n = static_cast<int>(toks.size());
  auto rmsnorm = [&](const std::vector<float>& x, const std::vector<float>& w) {
    double ss = 0;
    for (float v : x) ss += static_cast<double>(v) * v;
    const double r = 1.0 / std::sqrt(ss / D + m.eps);
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = static_cast<float>(x[i] * r * w[i]);
    return y;
  };
  std::vector<std::vector<float>> x(static_cast<size_t>(n));
  for (int t = 0; t < n; ++t) {
    const auto& e = m.w("model.embed_tokens.weight");
    x[static_cast<size_t>(t)].assign(e.begin() + toks[static_cast<size_t>(t)] * D, e.begin() + (toks[static_cast<size_t>(t)] + 1) * D);
  }
  for (int l = 0; l < m.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<std::vector<float>> q(static_cast<size_t>(n)), k(static_cast<size_t>(n)), v(static_cast<size_t>(n));
    for (int t = 0; t < n; ++t) {
      const std::vector<float> xn = rmsnorm(x[static_cast<size_t>(t)], m.w(p + "input_layernorm.weight"));
      q[static_cast<size_t>(t)] = matvec(m.w(p + "self_attn.q_proj.weight"), xn, D, D);
      k[static_cast<size_t>(t)] = matvec(m.w(p + "self_attn.k_proj.weight"), xn, KV, D);
      v[static_cast<size_t>(t)] = matvec(m.w(p + "self_attn.v_proj.weight"), xn, KV, D);
      for (int h = 0; h < H; ++h) rope_rotate_half(q[static_cast<size_t>(t)].data() + h * hd, hd, t, m.theta);
      for (int h = 0; h < m.kv_heads; ++h) rope_rotate_half(k[static_cast<size_t>(t)].data() + h * hd, hd, t, m.theta);
    }
    for (int t = 0; t < n; ++t) {
      std::vector<float> att(static_cast<size_t>(D), 0.0f);
      for (int h = 0; h < H; ++h) {
        const int kvh = h / (H / m.kv_heads);
        std::vector<double> s(static_cast<size_t>(t + 1));
        double mx = -1e300;
        for (int u = 0; u <= t; ++u) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += static_cast<double>(q[static_cast<size_t>(t)][static_cast<size_t>(h * hd + i)]) * k[static_cast<size_t>(u)][static_cast<size_t>(kvh * hd + i)];
          s[static_cast<size_t>(u)] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[static_cast<size_t>(u)]);
        }
        double z = 0;
        for (double& e : s) z += (e = std::exp(e - mx));
        for (int u = 0; u <= t; ++u) {
          for (int i = 0; i < hd; ++i) att[static_cast<size_t>(h * hd + i)] += static_cast<float>(s[static_cast<size_t>(u)] / z * v[static_cast<size_t>(u)][static_cast<size_t>(kvh * hd + i)]);
        }
      }
      const std::vector<float> o = matvec(m.w(p + "self_attn.o_proj.weight"), att, D, D);
      for (int i = 0; i < D; ++i) x[static_cast<size_t>(t)][static_cast<size_t>(i)] += o[static_cast<size_t>(i)];
      const std::vector<float> xn = rmsnorm(x[static_cast<size_t>(t)], m.w(p + "post_attention_layernorm.weight"));
      std::vector<float> g = matvec(m.w(p + "mlp.gate_proj.weight"), xn, F, D);
      const std::vector<float> up = matvec(m.w(p + "mlp.up_proj.weight"), xn, F, D);
      for (int i = 0; i < F; ++i) g[static_cast<size_t>(i)] = g[static_cast<size_t>(i)] / (1.0f + std::exp(-g[static_cast<size_t>(i)])) * up[static_cast<size_t>(i)];
      const std::vector<float> down = matvec(m.w(p + "mlp.down_proj.weight"), g, D, F);
      for (int i = 0; i < D; ++i) x[static_cast<size_t>(t)][static_cast<size_t>(i)] += down[static_cast<size_t>(i)];
    }
  }
  std::vector<float> logits;
  const std::string head = m.tied ? "model.embed_tokens.weight" : "lm_head.weight";
  for (int t = 0; t < n; ++t) {
    const std::vector<float> y = matvec(m.w(head), rmsnorm(x[static_cast<size_t>(t)], m.w("model.norm.weight")), V, D);
    logits.insert(logits.end(), y.begin(), y.end());
  }
  return logits;
}

class SafetensorsLlamaDtype : public ::testing::TestWithParam<DType> {};

TEST_P(SafetensorsLlamaDtype, LoadsAndRunsLikeTheHuggingFaceForward) {
  TempDir tmp;
  TinyLlama tiny;
  tiny.write(tmp.path() / "m", GetParam());
  // Through load_model's dispatch (a directory), and through the .safetensors path.
  Result<Model> m = load_model((tmp.path() / "m").string());
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  ASSERT_TRUE(load_model((tmp.path() / "m" / "model.safetensors").string()).ok());
  const LlamaConfig& c = m->config;
  EXPECT_EQ(c.dim, 16);
  EXPECT_EQ(c.hidden_dim, 32);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.n_heads, 2);
  EXPECT_EQ(c.n_kv_heads, 1);
  EXPECT_EQ(c.vocab_size, 24);
  EXPECT_EQ(c.seq_len, 32);
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_FALSE(c.shared_classifier);

  // Unpermuted weights: exactly the file's values as f32; q/k rows permuted.
  const LayerWeights& L1 = m->weights.layers[1];
  const auto same = [](ConstTensorView v, const std::vector<float>& want) {
    ASSERT_EQ(v.dtype(), DType::kF32);
    ASSERT_EQ(static_cast<size_t>(v.numel()), want.size());
    EXPECT_EQ(std::memcmp(v.data(), want.data(), want.size() * sizeof(float)), 0);
  };
  same(L1.wv, tiny.w("model.layers.1.self_attn.v_proj.weight"));
  same(L1.w2, tiny.w("model.layers.1.mlp.down_proj.weight"));
  same(m->weights.classifier, tiny.w("lm_head.weight"));
  same(m->weights.final_norm, tiny.w("model.norm.weight"));
  EXPECT_EQ(L1.wq.dim(0), 16);
  EXPECT_EQ(L1.wk.dim(0), 8);
  const std::vector<float>& hq = tiny.w("model.layers.1.self_attn.q_proj.weight");
  for (int64_t r = 0; r < 16; ++r) {
    for (int64_t col = 0; col < 16; ++col) {
      EXPECT_EQ(L1.wq.at<float>(r, col), hq[static_cast<size_t>(hf_rope_source_row(r, 8) * 16 + col)]);
    }
  }
  if (GetParam() == DType::kF32) {  // zero copy where no conversion is needed
    const std::byte* base = m->file->bytes().data();
    const auto* p = static_cast<const std::byte*>(L1.wv.data());
    EXPECT_TRUE(p >= base && p < base + m->file->size());
  }

  // End to end: lowbit's forward (interleaved RoPE) equals the HF forward (rotate_half).
  const std::vector<int> toks = {1, 5, 9, 23, 0, 7, 7, 3, 12, 18};
  const std::vector<float> want = hf_forward(tiny, toks);
  const LlamaModel net(*m);
  Session s(net);
  std::vector<float> got;
  ASSERT_TRUE(s.forward(toks, 0, &got).ok());
  ASSERT_EQ(got.size(), want.size());
  double max_err = 0, max_abs = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    max_err = std::max(max_err, static_cast<double>(std::fabs(got[i] - want[i])));
    max_abs = std::max(max_abs, static_cast<double>(std::fabs(want[i])));
  }
  EXPECT_LT(max_err, 1e-4 * std::max(1.0, max_abs)) << "max |logit| " << max_abs;
}

INSTANTIATE_TEST_SUITE_P(Safetensors, SafetensorsLlamaDtype, ::testing::Values(DType::kF16, DType::kBF16, DType::kF32),
                         [](const auto& info) { return std::string(safetensors_dtype_name(info.param)); });

TEST(SafetensorsLlama, TiedOrMissingLmHeadSharesTheEmbedding) {
  TempDir tmp;
  TinyLlama tiny;
  tiny.write(tmp.path() / "nohead", DType::kBF16, "lm_head.weight");
  Result<Model> m = load_safetensors((tmp.path() / "nohead").string());
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_TRUE(m->config.shared_classifier);
  EXPECT_EQ(m->weights.classifier.data(), m->weights.tok_embeddings.data());

  tiny.tied = true;
  tiny.write(tmp.path() / "tied", DType::kF16);  // lm_head stored too: ignored, as in transformers
  m = load_safetensors((tmp.path() / "tied").string());
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_TRUE(m->config.shared_classifier);
  EXPECT_EQ(m->weights.classifier.data(), m->weights.tok_embeddings.data());
}

TEST(SafetensorsLlama, RejectsBrokenCheckpoints) {
  TempDir tmp;
  TinyLlama tiny;
  const fs::path dir = tmp.path() / "m";

  tiny.write(dir, DType::kF16, "model.layers.1.mlp.up_proj.weight");
  Result<Model> m = load_safetensors(dir.string());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kNotFound);
  EXPECT_NE(m.status().message().find("tensor model.layers.1.mlp.up_proj.weight is missing (expected shape (32, 16))"),
            std::string::npos)
      << m.status().message();

  tiny.write(dir, DType::kF16);
  write_bytes((dir / "config.json").string(), tiny.config("mistral"));
  m = load_safetensors(dir.string());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(m.status().message().find("model_type mistral is not supported (supported: llama)"), std::string::npos)
      << m.status().message();

  write_bytes((dir / "config.json").string(), R"({"model_type":"llama","hidden_size":"16"})");
  m = load_safetensors(dir.string());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("hidden_size is \"16\", expected an integer"), std::string::npos)
      << m.status().message();

  write_bytes((dir / "config.json").string(), "{oops");
  EXPECT_EQ(load_safetensors(dir.string()).status().code(), StatusCode::kDataLoss);

  tiny.dim = 32;  // config says 32, the file holds 16-wide weights
  write_bytes((dir / "config.json").string(), tiny.config());
  m = load_safetensors(dir.string());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("tensor model.embed_tokens.weight has shape (24, 16), expected (24, 32)"),
            std::string::npos)
      << m.status().message();
  tiny.dim = 16;

  fs::remove(dir / "config.json");
  m = load_model(dir.string());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kNotFound);
  EXPECT_NE(m.status().message().find("config.json is missing"), std::string::npos) << m.status().message();

  fs::remove(dir / "model.safetensors");
  write_bytes((dir / "config.json").string(), tiny.config());
  write_bytes((dir / "model.safetensors.index.json").string(), R"({"weight_map":{}})");
  m = load_safetensors(dir.string());
  EXPECT_EQ(m.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(m.status().message().find("model.safetensors.index.json: no \"weight_map\" object"), std::string::npos)
      << m.status().message();
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints (model.safetensors.index.json + shards)

// Splits dir/model.safetensors into one shard per block (+ one for the rest) and writes the
// index, as Hugging Face's save_pretrained does; returns the shard names.
std::vector<std::string> shard_checkpoint(const fs::path& dir) {
  const SafetensorsFile whole = open_safetensors((dir / "model.safetensors").string()).value();
  std::map<std::string, std::vector<SafetensorsEntry>> by_shard;
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  for (const SafetensorsTensorInfo& t : whole.tensors()) {
    const std::string shard = t.name.starts_with("model.layers.0.") ? "model-00001-of-00003.safetensors"
                              : t.name.starts_with("model.layers.1.") ? "model-00002-of-00003.safetensors"
                                                                      : "model-00003-of-00003.safetensors";
    by_shard[shard].push_back({t.name, t.dtype, t.shape, whole.data(t)});
    index["weight_map"][t.name] = shard;
  }
  std::vector<std::string> names;
  for (const auto& [shard, entries] : by_shard) {
    EXPECT_TRUE(write_safetensors((dir / shard).string(), entries).ok());
    names.push_back(shard);
  }
  write_bytes((dir / "model.safetensors.index.json").string(), index.dump());
  fs::remove(dir / "model.safetensors");
  return names;
}

class ShardedDtype : public ::testing::TestWithParam<DType> {};

TEST_P(ShardedDtype, LoadsTheSameWeightsAsOneFile) {
  TempDir tmp;
  TinyLlama tiny;
  tiny.write(tmp.path() / "one", GetParam());
  tiny.write(tmp.path() / "sh", GetParam());
  EXPECT_EQ(shard_checkpoint(tmp.path() / "sh").size(), 3u);
  const Model a = load_safetensors((tmp.path() / "one").string()).value();
  Result<Model> b = load_model((tmp.path() / "sh").string());
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  ASSERT_TRUE(load_safetensors((tmp.path() / "sh" / "model.safetensors.index.json").string()).ok());
  const auto same = [](ConstTensorView x, ConstTensorView y) {
    ASSERT_EQ(x.numel(), y.numel());
    EXPECT_EQ(std::memcmp(x.data(), y.data(), static_cast<size_t>(x.numel()) * sizeof(float)), 0);
  };
  same(a.weights.tok_embeddings, b->weights.tok_embeddings);
  same(a.weights.classifier, b->weights.classifier);
  same(a.weights.final_norm, b->weights.final_norm);
  for (size_t l = 0; l < a.weights.layers.size(); ++l) {
    const LayerWeights &x = a.weights.layers[l], &y = b->weights.layers[l];
    for (auto m : {&LayerWeights::attn_norm, &LayerWeights::wq, &LayerWeights::wk, &LayerWeights::wv, &LayerWeights::wo,
                   &LayerWeights::ffn_norm, &LayerWeights::w1, &LayerWeights::w2, &LayerWeights::w3}) {
      same(x.*m, y.*m);
    }
  }
  const ShardedCheckpoint ck = open_sharded((tmp.path() / "sh" / "model.safetensors.index.json").string()).value();
  EXPECT_EQ(ck.shards.size(), 3u);
  EXPECT_EQ(ck.file_of("model.layers.1.mlp.up_proj.weight")->path(), (tmp.path() / "sh" / "model-00002-of-00003.safetensors").string());
  EXPECT_EQ(ck.file_of("model.layers.7.mlp.up_proj.weight"), nullptr);
  const int64_t esize = static_cast<int64_t>(dtype_size(GetParam()));
  EXPECT_EQ(ck.bytes_with_prefix("model.layers.0."), esize * (2 * 16 + 16 * 16 * 2 + 8 * 16 * 2 + 3 * 32 * 16));

  // DirectRowReader (O_DIRECT reads into one buffer, or the mapping where the file system refuses
  // them) gives load_f32_rows' values for any rows of any tensor: starts and ends that are not
  // on a block boundary, one row, all rows, reads in any order.
  for (const bool direct : {true, false}) {  // LOWBIT_DIRECT_IO=0: the mapping serves
  if (!direct) ::setenv("LOWBIT_DIRECT_IO", "0", 1);
  for (const SafetensorsFile& f : ck.shards) {
    for (const SafetensorsTensorInfo& t : f.tensors()) {
      const std::vector<int64_t> shape = t.shape.size() == 1 ? std::vector<int64_t>{t.shape[0]} : t.shape;
      Result<DirectRowReader> r = DirectRowReader::open(ck, t.name, shape);
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      if (!direct) {
        EXPECT_FALSE(r->direct());
      }
      const int64_t rows = shape[0], cols = shape.size() == 2 ? shape[1] : 1;
      for (const auto& [r0, r1] : {std::pair<int64_t, int64_t>{0, rows}, {rows - 1, rows}, {rows / 3, rows / 2 + 1}, {0, 1}, {1, rows}}) {
        if (r0 < 0 || r0 > r1) continue;
        std::vector<float> got(static_cast<size_t>((r1 - r0) * cols));
        ASSERT_TRUE(r->rows_into(r0, r1, got).ok()) << t.name;
        const Tensor want = load_f32_rows(ck, t.name, shape, r0, r1).value();
        EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << t.name << " rows " << r0 << ".." << r1;
        // Prefetched (the read of that range takes it), and after a prefetch of another range (dropped).
        for (const int64_t other : {r0, rows - 1}) {
          std::fill(got.begin(), got.end(), -1.0f);
          r->prefetch(other, other == r0 ? r1 : rows);
          ASSERT_TRUE(r->rows_into(r0, r1, got).ok()) << t.name;
          EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << t.name << " rows " << r0 << ".." << r1 << " prefetched from " << other;
        }
      }
      std::vector<float> none;
      EXPECT_FALSE(r->rows_into(2, 1, none).ok()) << t.name;
    }
  }
  ::unsetenv("LOWBIT_DIRECT_IO");
  }
}

// TensorPrefetch (a thread reading whole tensors into one buffer, with O_DIRECT or through the
// page cache, on ext4 and on tmpfs, which refuses O_DIRECT) gives load_f32's values, the rope
// permutation included, batch after batch in one reused buffer.
TEST_P(ShardedDtype, TensorPrefetchGivesTheMappedValues) {
  TempDir tmp;
  TinyLlama tiny;
  std::vector<fs::path> dirs = {tmp.path() / "sh"};
  if (fs::is_directory("/dev/shm")) dirs.push_back(fs::path("/dev/shm") / ("lowbit_prefetch_" + std::to_string(::getpid())));
  for (const fs::path& dir : dirs) {
    tiny.write(dir, GetParam());
    shard_checkpoint(dir);
  }
  for (const bool direct : {true, false}) {  // LOWBIT_DIRECT_IO=0: pread through the page cache
    if (!direct) ::setenv("LOWBIT_DIRECT_IO", "0", 1);
    for (const fs::path& dir : dirs) {
      const ShardedCheckpoint ck = open_sharded((dir / "model.safetensors.index.json").string()).value();
      TensorPrefetch pf(ck);
      EXPECT_TRUE(pf.wait().ok());  // nothing started
      std::vector<std::string> all;  // every tensor of all three shards, then two of them again
      for (const SafetensorsFile& f : ck.shards) {
        for (const SafetensorsTensorInfo& t : f.tensors()) all.push_back(t.name);
      }
      for (const std::vector<std::string>& batch :
           {all, std::vector<std::string>{"model.layers.1.self_attn.q_proj.weight", "model.norm.weight"}}) {
        ASSERT_TRUE(pf.start(batch).ok());
        ASSERT_TRUE(pf.wait().ok()) << dir;
        if (!direct) {
          EXPECT_FALSE(pf.direct());
        }
        for (const std::string& name : batch) {
          const SafetensorsTensorInfo* t = ck.file_of(name)->find(name);
          const std::vector<int64_t> shape = t->shape;
          const int64_t permute = name.find("q_proj") != std::string::npos || name.find("k_proj") != std::string::npos ? 4 : 0;
          std::vector<float> got(static_cast<size_t>(std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>())));
          ASSERT_TRUE(pf.load_f32_into(name, shape, got, permute).ok()) << name;
          const Tensor want = load_f32(ck, name, shape, permute).value();
          EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << name << " in " << dir;
        }
      }
      std::vector<float> out(16);
      EXPECT_EQ(pf.load_f32_into("model.layers.0.mlp.up_proj.weight", {32, 16}, out).code(), StatusCode::kNotFound);  // not in the batch
      EXPECT_EQ(pf.load_f32_into("model.norm.weight", {17}, out).code(), StatusCode::kDataLoss);  // not the shape config.json implies
      const Status missing = pf.start({"model.norm.weight", "model.layers.9.mlp.up_proj.weight"});
      EXPECT_EQ(missing.code(), StatusCode::kNotFound);
      EXPECT_NE(missing.message().find("model.layers.9.mlp.up_proj.weight"), std::string::npos) << missing.message();
    }
    ::unsetenv("LOWBIT_DIRECT_IO");
  }
  for (size_t i = 1; i < dirs.size(); ++i) fs::remove_all(dirs[i]);
}

// A stored NaN reaches TensorPrefetch's caller as load_f32's error; a shard cut short after it
// was opened is DataLoss naming the shard and the tensor, never a read past the buffer.
TEST(Sharded, TensorPrefetchNamesNonFiniteValuesAndCutFiles) {
  TempDir tmp;
  std::vector<uint16_t> v(40 * 24, 0x3f80);  // bf16 1.0
  v[19 * 24 + 2] = 0x7f80;                   // +inf at index 458
  const std::string path = (tmp.path() / "t.safetensors").string();
  ASSERT_TRUE(write_safetensors(path, {{"a", DType::kBF16, {40, 24}, std::as_bytes(std::span<const uint16_t>(v))},
                                       {"w", DType::kBF16, {40, 24}, std::as_bytes(std::span<const uint16_t>(v))}}).ok());
  const ShardedCheckpoint ck = single_file_checkpoint(open_safetensors(path).value());
  TensorPrefetch pf(ck);
  ASSERT_TRUE(pf.start({"w"}).ok());
  ASSERT_TRUE(pf.wait().ok());
  std::vector<float> out(40 * 24);
  const Status got = pf.load_f32_into("w", {40, 24}, out);
  const Result<Tensor> want = load_f32(ck, "w", {40, 24});
  ASSERT_FALSE(got.ok());
  ASSERT_FALSE(want.ok());
  EXPECT_EQ(got.to_string(), want.status().to_string());
  EXPECT_NE(got.message().find("index 458"), std::string::npos) << got.message();

  fs::resize_file(path, fs::file_size(path) - 100);  // cut inside the last tensor
  for (const bool direct : {true, false}) {
    if (!direct) ::setenv("LOWBIT_DIRECT_IO", "0", 1);
    ASSERT_TRUE(pf.start({"a", "w"}).ok());
    const Status cut = pf.wait();
    EXPECT_EQ(cut.code(), StatusCode::kDataLoss) << cut.to_string();
    EXPECT_NE(cut.message().find(path + ": tensor w: the file ends inside it"), std::string::npos) << cut.message();
    ::unsetenv("LOWBIT_DIRECT_IO");
  }
}

// A NaN and an inf in a stored table: the O_DIRECT reader refuses them with load_f32_rows' message,
// which names the first (rows are converted in parallel).
TEST(Sharded, DirectRowReaderNamesANonFiniteValueAsTheMappedReaderDoes) {
  TempDir tmp;
  std::vector<uint16_t> v(40 * 24, 0x3f80);  // bf16 1.0
  v[17 * 24 + 5] = 0x7fc0;                   // NaN in row 17
  v[19 * 24 + 2] = 0x7f80;                   // +inf in row 19: the first one (index 413) is named
  const std::string path = (tmp.path() / "t.safetensors").string();
  ASSERT_TRUE(write_safetensors(path, {{"w", DType::kBF16, {40, 24}, std::as_bytes(std::span<const uint16_t>(v))}}).ok());
  const ShardedCheckpoint ck = single_file_checkpoint(open_safetensors(path).value());
  DirectRowReader r = DirectRowReader::open(ck, "w", {40, 24}).value();
  std::vector<float> out(10 * 24);
  const Status direct = r.rows_into(10, 20, out);
  const Result<Tensor> mapped = load_f32_rows(ck, "w", {40, 24}, 10, 20);
  ASSERT_FALSE(direct.ok());
  ASSERT_FALSE(mapped.ok());
  EXPECT_EQ(direct.to_string(), mapped.status().to_string());
  EXPECT_NE(direct.to_string().find("index 413"), std::string::npos) << direct.to_string();
  EXPECT_TRUE(r.rows_into(20, 30, out).ok());
  r.prefetch(10, 20);  // the same error through a prefetch
  EXPECT_EQ(r.rows_into(10, 20, out).to_string(), mapped.status().to_string());

  // The file cut short after it was opened: a prefetch's short read is the read's DataLoss.
  if (r.direct()) {
    fs::resize_file(path, fs::file_size(path) - 24 * 2 * 5);  // the last five rows
    r.prefetch(30, 40);
    const Status cut = r.rows_into(30, 40, out);
    EXPECT_EQ(cut.code(), StatusCode::kDataLoss) << cut.to_string();
    EXPECT_NE(cut.message().find("tensor w: the file ends inside rows [30, 40)"), std::string::npos) << cut.message();
  }
}

INSTANTIATE_TEST_SUITE_P(Safetensors, ShardedDtype, ::testing::Values(DType::kF16, DType::kBF16, DType::kF32),
                         [](const auto& info) { return std::string(safetensors_dtype_name(info.param)); });

TEST(Sharded, BrokenCheckpointsNameTheFileAndTensor) {
  TempDir tmp;
  TinyLlama tiny;
  const fs::path dir = tmp.path() / "m";
  const std::string index = (dir / "model.safetensors.index.json").string();
  auto expect_error = [&](StatusCode code, const std::string& what) {
    Result<Model> m = load_model(dir.string());
    ASSERT_FALSE(m.ok()) << what;
    EXPECT_EQ(m.status().code(), code) << m.status().message();
    EXPECT_NE(m.status().message().find(what), std::string::npos) << m.status().message();
    EXPECT_EQ(m.status().message().find('\n'), std::string::npos) << m.status().message();
  };
  auto rewrite_index = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = nlohmann::json::parse(read_file(index).value());
    edit(j);
    write_bytes(index, j.dump());
  };

  // A shard the index names is missing.
  tiny.write(dir, DType::kBF16);
  shard_checkpoint(dir);
  fs::remove(dir / "model-00002-of-00003.safetensors");
  expect_error(StatusCode::kNotFound, (dir / "model-00002-of-00003.safetensors").string() +
                                          ": shard is missing (model.safetensors.index.json names it for tensor model.layers.1.");

  // The index names a tensor its shard does not hold.
  fs::remove_all(dir);
  tiny.write(dir, DType::kBF16);
  shard_checkpoint(dir);
  rewrite_index([](nlohmann::json& j) { j["weight_map"]["model.layers.0.mlp.up_proj.weight"] = "model-00003-of-00003.safetensors"; });
  expect_error(StatusCode::kDataLoss, "model-00003-of-00003.safetensors: tensor model.layers.0.mlp.up_proj.weight is not in this shard");

  // A shard holds a tensor the index does not name.
  fs::remove_all(dir);
  tiny.write(dir, DType::kBF16);
  shard_checkpoint(dir);
  rewrite_index([](nlohmann::json& j) { j["weight_map"].erase("model.layers.1.mlp.down_proj.weight"); });
  expect_error(StatusCode::kDataLoss, "model-00002-of-00003.safetensors: tensor model.layers.1.mlp.down_proj.weight is not in model.safetensors.index.json");

  // A shard name that leaves the folder.
  rewrite_index([](nlohmann::json& j) { j["weight_map"]["model.norm.weight"] = "../x.safetensors"; });
  expect_error(StatusCode::kDataLoss, "tensor model.norm.weight names shard '../x.safetensors', not a file name");

  // Shape disagreeing with config.json: named with the shard that holds the tensor.
  fs::remove_all(dir);
  tiny.write(dir, DType::kBF16);
  shard_checkpoint(dir);
  tiny.hidden = 48;
  write_bytes((dir / "config.json").string(), tiny.config());
  expect_error(StatusCode::kDataLoss, "model-00001-of-00003.safetensors: tensor model.layers.0.mlp.gate_proj.weight has shape (32, 16), expected (48, 16) from config.json");
  tiny.hidden = 32;

  // A dtype weights cannot have.
  fs::remove_all(dir);
  tiny.write(dir, DType::kBF16);
  shard_checkpoint(dir);
  {
    const std::string path = (dir / "model-00003-of-00003.safetensors").string();
    const SafetensorsFile f = open_safetensors(path).value();
    std::vector<SafetensorsEntry> entries;
    std::vector<std::vector<std::byte>> keep;
    for (const SafetensorsTensorInfo& t : f.tensors()) {
      if (t.name == "model.norm.weight") {
        keep.emplace_back(static_cast<size_t>(t.numel()) * 4);
        entries.push_back({t.name, DType::kI32, t.shape, keep.back()});
      } else {
        entries.push_back({t.name, t.dtype, t.shape, f.data(t)});
      }
    }
    const std::string tmpfile = path + ".new";
    ASSERT_TRUE(write_safetensors(tmpfile, entries).ok());
    fs::rename(tmpfile, path);
  }
  expect_error(StatusCode::kUnsupported, "model-00003-of-00003.safetensors: tensor model.norm.weight has dtype I32; weights must be F32, F16 or BF16");
}

// ---------------------------------------------------------------------------------------------
// Cross-check with the safetensors PyPI package: tests/model/safetensors_crosscheck.py `setup`
// writes py.safetensors with safetensors.numpy.save_file plus the expected raw bytes of each
// tensor (numpy tofile) and a manifest; these tests read them, and write cpp.safetensors and
// cpp_quant.safetensors for the script's `verify` step.

const char* crosscheck_dir() { return std::getenv("LOWBIT_SAFETENSORS_CROSSCHECK_DIR"); }

TEST(SafetensorsCrossCheck, ReadsFilesWrittenByThePythonPackage) {
  const char* dir = crosscheck_dir();
  if (dir == nullptr) GTEST_SKIP() << "LOWBIT_SAFETENSORS_CROSSCHECK_DIR not set (run through ctest)";
  const fs::path d(dir);
  Result<SafetensorsFile> f = open_safetensors((d / "py.safetensors").string());
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  std::ifstream manifest(d / "manifest.txt");
  ASSERT_TRUE(manifest) << "manifest.txt missing in " << dir;
  std::string line;
  size_t tensors = 0;
  while (std::getline(manifest, line)) {
    std::istringstream ls(line);
    std::string kind, name;
    ls >> kind >> name;
    if (kind == "meta") {
      std::string value;
      std::getline(ls >> std::ws, value);
      EXPECT_EQ(f->metadata().at(name), value) << name;
      continue;
    }
    ASSERT_EQ(kind, "tensor");
    std::string dtype, dims;
    ls >> dtype >> dims;
    SCOPED_TRACE(name);
    ++tensors;
    const SafetensorsTensorInfo* info = f->find(name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(safetensors_dtype_name(info->dtype), dtype);
    std::vector<int64_t> shape;
    if (dims != "-") {
      std::istringstream ds(dims);
      for (std::string tok; std::getline(ds, tok, ',');) shape.push_back(std::stoll(tok));
    }
    EXPECT_EQ(info->shape, shape);
    Result<std::string> want = read_file((d / "expected" / (name + ".bin")).string());
    ASSERT_TRUE(want.ok()) << want.status().to_string();
    const std::span<const std::byte> got = f->data(*info);
    ASSERT_EQ(got.size(), want->size());
    if (!got.empty()) {
      EXPECT_EQ(std::memcmp(got.data(), want->data(), got.size()), 0);
    }
  }
  EXPECT_EQ(tensors, f->tensors().size());
  EXPECT_GT(tensors, 5u);
}

TEST(SafetensorsCrossCheck, WritesFilesForThePythonPackage) {
  const char* dir = crosscheck_dir();
  if (dir == nullptr) GTEST_SKIP() << "LOWBIT_SAFETENSORS_CROSSCHECK_DIR not set (run through ctest)";
  const fs::path d(dir);
  // The script computes the same values independently: v[i] = (i % 13) - 6 (scaled for floats).
  auto pattern = [](int64_t n, double scale) {
    std::vector<double> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<double>(i % 13 - 6) * scale;
    return v;
  };
  const auto p = pattern(12, 0.25);
  std::vector<float> f32(p.begin(), p.end());
  std::vector<uint8_t> f16(12 * 2), bf16(12 * 2);
  encode_span(Format::kFp16, f32, f16);
  encode_span(Format::kBf16, f32, bf16);
  std::vector<double> f64 = pattern(5, 0.125);
  std::vector<int8_t> i8;
  std::vector<uint8_t> u8;
  std::vector<int32_t> i32;
  std::vector<int64_t> i64;
  for (double x : pattern(7, 1.0)) {
    i8.push_back(static_cast<int8_t>(x));
    u8.push_back(static_cast<uint8_t>(x + 6));
    i32.push_back(static_cast<int32_t>(x) * 100000);
    i64.push_back(static_cast<int64_t>(x) * 10000000000);
  }
  Status s = write_safetensors((d / "cpp.safetensors").string(),
                               {{"f32", DType::kF32, {3, 4}, bytes_of(f32)},
                                {"f16", DType::kF16, {12}, bytes_of(f16)},
                                {"bf16", DType::kBF16, {2, 6}, bytes_of(bf16)},
                                {"f64", DType::kF64, {5}, bytes_of(f64)},
                                {"i8", DType::kI8, {7}, bytes_of(i8)},
                                {"u8", DType::kU8, {7, 1}, bytes_of(u8)},
                                {"i32", DType::kI32, {7}, bytes_of(i32)},
                                {"i64", DType::kI64, {7}, bytes_of(i64)},
                                {"scalar", DType::kF32, {}, std::as_bytes(std::span<const float>(f32.data() + 5, 1))},
                                {"empty", DType::kF32, {0, 4}, {}}},
                               {{"format", "pt"}, {"writer", "lowbit"}});
  ASSERT_TRUE(s.ok()) << s.to_string();

  // Quantized: the script dequantizes int4:g32:sym:fp16 itself from the documented layout and
  // compares with lowbit's dequantize, written beside as raw f32.
  const std::vector<float> x = synth("xcheck", 5 * 70, 2.0f);
  Result<QuantizedTensor> q = quantize(ConstTensorView(x.data(), DType::kF32, {5, 70}), *parse_spec("int4:g32:sym:fp16"));
  ASSERT_TRUE(q.ok());
  Result<QuantizedTensor> qa = quantize(ConstTensorView(x.data(), DType::kF32, {5, 70}), *parse_spec("uint4:g32:asym:fp16"));
  ASSERT_TRUE(qa.ok());
  // 3-bit: a bit stream the script unpacks with numpy.unpackbits.
  Result<QuantizedTensor> q3 = quantize(ConstTensorView(x.data(), DType::kF32, {5, 70}), *parse_spec("int3:g32:sym:fp16"));
  ASSERT_TRUE(q3.ok());
  Result<QuantizedTensor> q3a = quantize(ConstTensorView(x.data(), DType::kF32, {5, 70}), *parse_spec("uint3:g32:asym:fp16"));
  ASSERT_TRUE(q3a.ok());
  std::map<std::string, QuantizedTensor> qs;
  qs.emplace("w_sym", *q);
  qs.emplace("w_asym", *qa);
  qs.emplace("w3_sym", *q3);
  qs.emplace("w3_asym", *q3a);
  ASSERT_TRUE(write_quantized_safetensors((d / "cpp_quant.safetensors").string(), qs).ok());
  for (const auto& [name, qt] : qs) {
    const std::vector<float> deq = dequantized(qt);
    std::ofstream((d / (name + ".dequant.bin")), std::ios::binary)
        .write(reinterpret_cast<const char*>(deq.data()), static_cast<std::streamsize>(deq.size() * sizeof(float)));
  }
}

}  // namespace
}  // namespace lowbit
