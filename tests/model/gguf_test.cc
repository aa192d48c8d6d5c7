// GGUF: write_gguf -> open_gguf round trips (f32, f16, q8_0, q4_0 from lowbit's quantize(),
// metadata of every type), hand-built ggml blocks with values worked out from the layouts,
// a tiny Llama through load_gguf and the forward pass, one test per kind of broken input,
// and the cross-check against the `gguf` Python package (GgufCrossCheck.*, driven by CTest
// through tests/model/gguf_crosscheck.py; skipped when LOWBIT_GGUF_CROSSCHECK_DIR is unset).

#include "lowbit/ggml_matmul.h"
#include "lowbit/gguf.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <utility>
#include <optional>
#include <string>
#include <vector>

#include "lowbit/formats.h"
#include "lowbit/llama.h"
#include "lowbit/model.h"
#include "lowbit/quant.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Helpers

class TempDir {
 public:
  TempDir() : path_(fs::temp_directory_path() / ("lowbit_gguf_test_" + std::to_string(::getpid()))) {
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::vector<float> random_values(uint64_t seed, size_t n, float scale = 1.0f) {
  std::vector<float> v(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = scale * static_cast<float>(static_cast<int32_t>(s >> 40) - (1 << 23)) / static_cast<float>(1 << 23);
  }
  return v;
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

std::vector<float> dequantized(const QuantizedTensor& q) {
  Result<Tensor> t = Tensor::empty(DType::kF32, {q.rows, q.cols});
  EXPECT_TRUE(t.ok());
  EXPECT_TRUE(dequantize(q, t->view()).ok());
  const float* p = t->data_as<float>();
  return {p, p + t->numel()};
}

std::vector<float> f16_round_trip(const std::vector<float>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = decode(Format::kFp16, encode(Format::kFp16, x[i]));
  return y;
}

QuantizedTensor quantize_or_die(const std::vector<float>& x, int64_t rows, int64_t cols, const char* spec) {
  Result<QuantSpec> s = parse_spec(spec);
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  Result<QuantizedTensor> q = quantize(ConstTensorView(x.data(), DType::kF32, {rows, cols}), *s);
  EXPECT_TRUE(q.ok()) << q.status().to_string();
  return std::move(q).value();
}

std::vector<float> dequantize_all(const GgufFile& f, const GgufTensor& t) {
  Result<Tensor> d = dequantize_tensor(f, t);
  EXPECT_TRUE(d.ok()) << d.status().to_string();
  if (!d.ok()) return {};
  const float* p = d->data_as<float>();
  return {p, p + d->numel()};
}

// A GGUF file assembled byte by byte, for layouts write_gguf does not produce and for broken input.
struct RawGguf {
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    std::vector<uint8_t> bytes;
    std::optional<uint64_t> offset;  // default: packed, aligned to 32
  };
  uint32_t version = 3;
  std::vector<std::string> kv;  // each: key + type + value, already encoded
  std::vector<Tensor> tensors;

  template <class T>
  static void put(std::string& s, T v) { s.append(reinterpret_cast<const char*>(&v), sizeof v); }
  static void put_str(std::string& s, const std::string& v) {
    put<uint64_t>(s, v.size());
    s += v;
  }
  void kv_string(const std::string& key, const std::string& v) {
    std::string e;
    put_str(e, key);
    put<uint32_t>(e, 8);
    put_str(e, v);
    kv.push_back(e);
  }
  void kv_u32(const std::string& key, uint32_t v) {
    std::string e;
    put_str(e, key);
    put<uint32_t>(e, 4);
    put<uint32_t>(e, v);
    kv.push_back(e);
  }
  std::string bytes() const {
    std::string s = "GGUF";
    put<uint32_t>(s, version);
    put<uint64_t>(s, tensors.size());
    put<uint64_t>(s, kv.size());
    for (const auto& e : kv) s += e;
    uint64_t off = 0;
    std::vector<uint64_t> offsets;
    for (const auto& t : tensors) {
      put_str(s, t.name);
      put<uint32_t>(s, static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) put<uint64_t>(s, d);
      put<uint32_t>(s, t.type);
      const uint64_t o = t.offset.value_or(off);
      put<uint64_t>(s, o);
      offsets.push_back(o);
      off = (o + t.bytes.size() + 31) / 32 * 32;
    }
    s.resize((s.size() + 31) / 32 * 32, '\0');
    const size_t data = s.size();
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (data + offsets[i] > s.size()) s.resize(static_cast<size_t>(data + offsets[i]), '\0');
      s.append(reinterpret_cast<const char*>(tensors[i].bytes.data()), tensors[i].bytes.size());
    }
    return s;
  }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<uint8_t> half_bytes(uint16_t h) { return {static_cast<uint8_t>(h & 0xFF), static_cast<uint8_t>(h >> 8)}; }

// One tensor of `type` with `bytes`, opened and dequantized.
std::vector<float> dequantize_raw(const TempDir& dir, uint32_t type, uint64_t n, const std::vector<uint8_t>& bytes) {
  RawGguf g;
  g.tensors.push_back({"t", {n}, type, bytes, {}});
  const std::string path = dir.file("raw.gguf");
  write_bytes(path, g.bytes());
  Result<GgufFile> f = open_gguf(path);
  EXPECT_TRUE(f.ok()) << f.status().to_string();
  if (!f.ok()) return {};
  return dequantize_all(*f, f->tensors[0]);
}

// ---------------------------------------------------------------------------------------------
// Round trips through write_gguf

TEST(GgufTest, RoundTripFloatAndQuantizedTensors) {
  TempDir dir;
  const int64_t rows = 5, cols = 96;
  const auto x = random_values(1, rows * cols, 3.0f);
  const QuantizedTensor q8 = quantize_or_die(x, rows, cols, "int8:g32:sym:fp16");
  const QuantizedTensor q4 = quantize_or_die(x, rows, cols, "int4:g32:sym:fp16");
  const auto v = random_values(2, 7);

  GgufWriteSpec spec;
  spec.tensors.push_back({"a.f32", {rows, cols}, x, GgmlType::kF32, nullptr});
  spec.tensors.push_back({"a.f16", {rows, cols}, x, GgmlType::kF16, nullptr});
  spec.tensors.push_back({"a.q8_0", {rows, cols}, {}, GgmlType::kF32, &q8});
  spec.tensors.push_back({"a.q4_0", {rows, cols}, {}, GgmlType::kF32, &q4});
  spec.tensors.push_back({"vec", {7}, v, GgmlType::kF32, nullptr});
  const std::string path = dir.file("rt.gguf");
  ASSERT_TRUE(write_gguf(path, spec).ok());

  Result<GgufFile> f = open_gguf(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->version, 3u);
  ASSERT_EQ(f->tensors.size(), 5u);
  for (const auto& t : f->tensors) {
    EXPECT_EQ(t.offset % 32, 0u) << t.name;
    EXPECT_EQ((t.data - f->file->bytes().data()) % 32, 0) << t.name;
  }
  const GgufTensor* t = f->find_tensor("a.q4_0");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->type, GgmlType::kQ4_0);
  EXPECT_EQ(t->dims, (std::vector<int64_t>{cols, rows}));  // ggml order: [in, out]
  EXPECT_EQ(t->shape(), (std::vector<int64_t>{rows, cols}));
  EXPECT_EQ(t->nbytes, static_cast<uint64_t>(rows * cols / 32 * 18));
  EXPECT_EQ(f->find_tensor("a.q8_0")->nbytes, static_cast<uint64_t>(rows * cols / 32 * 34));

  const auto f32 = dequantize_all(*f, *f->find_tensor("a.f32"));
  const auto f16 = dequantize_all(*f, *f->find_tensor("a.f16"));
  const auto d8 = dequantize_all(*f, *f->find_tensor("a.q8_0"));
  const auto d4 = dequantize_all(*f, *f->find_tensor("a.q4_0"));
  const auto dv = dequantize_all(*f, *f->find_tensor("vec"));
  ASSERT_EQ(f32.size(), x.size());
  EXPECT_TRUE(same_bits(f32.data(), x.data(), x.size()));
  EXPECT_TRUE(same_bits(f16.data(), f16_round_trip(x).data(), x.size()));
  EXPECT_TRUE(same_bits(d8.data(), dequantized(q8).data(), x.size()));
  EXPECT_TRUE(same_bits(d4.data(), dequantized(q4).data(), x.size()));
  EXPECT_TRUE(same_bits(dv.data(), v.data(), v.size()));
}

// ggml Q4_0: element j of a block is the low nibble of qs[j], element j+16 the high nibble,
// both stored as code + 8. Checked on the written bytes themselves.
// gguf_layout + encode_gguf_tensor + PatchFile, the streamed save's parts: tensors written at
// their offsets in another order, each in row chunks, across a reopen that keeps the file, give
// write_gguf's file byte for byte; a layout refuses what write_gguf refuses.
TEST(GgufTest, LayoutWrittenPiecewiseIsWriteGgufsFile) {
  TempDir dir;
  const int64_t rows = 7, cols = 256;
  const auto x = random_values(21, rows * cols, 2.0f);
  const QuantizedTensor q8 = quantize_or_die(x, rows, cols, "int8:g32:sym:fp16");
  const QuantizedTensor qk = quantize_or_die(x, rows, cols, "gguf:q4_K");
  const auto v = random_values(22, 5);
  GgufWriteSpec spec;
  spec.metadata.emplace_back("general.architecture", GgufValue::str("llama"));
  spec.metadata.emplace_back("general.alignment", GgufValue::u32(64));
  spec.tensors.push_back({"a.f32", {rows, cols}, x, GgmlType::kF32, nullptr});
  spec.tensors.push_back({"vec", {5}, v, GgmlType::kF32, nullptr});
  spec.tensors.push_back({"a.f16", {rows, cols}, x, GgmlType::kF16, nullptr});
  spec.tensors.push_back({"a.q8_0", {rows, cols}, {}, GgmlType::kF32, &q8});
  spec.tensors.push_back({"a.q4_k", {rows, cols}, {}, GgmlType::kF32, &qk});
  const std::string whole = dir.file("whole.gguf");
  ASSERT_TRUE(write_gguf(whole, spec).ok());

  std::vector<GgufTensorDecl> decls;
  for (const GgufWriteTensor& t : spec.tensors) {
    GgmlType type{};
    ASSERT_TRUE(encode_gguf_tensor(t, &type).ok()) << t.name;
    decls.push_back({t.name, t.shape, type});
  }
  EXPECT_EQ(decls[3].type, GgmlType::kQ8_0);
  EXPECT_EQ(decls[4].type, GgmlType::kQ4_K);
  Result<GgufLayout> l = gguf_layout(spec.metadata, decls);
  ASSERT_TRUE(l.ok()) << l.status().to_string();
  const std::string piece = dir.file("piece.gguf");
  for (size_t order : {4u, 2u, 0u, 3u, 1u}) {  // a reopen per tensor, keeping what is there
    Result<PatchFile> f = PatchFile::open(piece, l->file_size, /*keep=*/order != 4u);
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    ASSERT_TRUE(f->write_at(0, std::as_bytes(std::span(l->header))).ok());
    const GgufWriteTensor& t = spec.tensors[order];
    uint64_t at = l->offsets[order];
    const int64_t n = t.shape[0], c = t.shape.size() == 2 ? t.shape[1] : n, chunk = t.shape.size() == 2 ? 3 : n;
    for (int64_t r0 = 0; r0 < (t.shape.size() == 2 ? n : 1); r0 += chunk) {
      const int64_t r1 = std::min(t.shape.size() == 2 ? n : 1, r0 + chunk);
      GgufWriteTensor part = t;
      std::optional<QuantizedTensor> qr;
      if (t.shape.size() == 2) {
        part.shape = {r1 - r0, c};
        const std::vector<float> rows_x(x.begin() + r0 * c, x.begin() + r1 * c);
        if (t.quant != nullptr) {
          qr = quantize_or_die(rows_x, r1 - r0, c, t.quant == &q8 ? "int8:g32:sym:fp16" : "gguf:q4_K");
          part.quant = &*qr;
        } else {
          part.data = std::span<const float>(t.data.data() + r0 * c, static_cast<size_t>((r1 - r0) * c));
        }
      }
      Result<std::vector<uint8_t>> bytes = encode_gguf_tensor(part);
      ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
      ASSERT_TRUE(f->write_at(at, std::as_bytes(std::span<const uint8_t>(*bytes))).ok());
      at += bytes->size();
    }
    EXPECT_EQ(at, l->offsets[order] + l->sizes[order]) << t.name;
    ASSERT_TRUE(f->close().ok());
  }
  EXPECT_EQ(read_file(piece).value(), read_file(whole).value());
  Result<GgufFile> g = open_gguf(piece);
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  for (size_t i = 0; i < decls.size(); ++i) {
    EXPECT_EQ(g->find_tensor(decls[i].name)->data - g->file->bytes().data(), static_cast<std::ptrdiff_t>(l->offsets[i]));
  }

  decls.push_back(decls[0]);
  EXPECT_NE(gguf_layout(spec.metadata, decls).status().message().find("'a.f32' appears twice"), std::string::npos);
  decls.pop_back();
  decls[4].shape = {rows, 96};  // q4_K blocks are 256 wide
  EXPECT_NE(gguf_layout(spec.metadata, decls).status().message().find("do not hold whole q4_K blocks"), std::string::npos);
}

TEST(GgufTest, Q4_0NibbleLayoutMatchesGgml) {
  TempDir dir;
  std::vector<float> x(32);
  // -7..7 then 7..-7: absmax 7 gives scale 1 exactly, so the codes are the values.
  for (int j = 0; j < 16; ++j) x[static_cast<size_t>(j)] = static_cast<float>(j % 15 - 7);
  for (int j = 16; j < 32; ++j) x[static_cast<size_t>(j)] = static_cast<float>(7 - (j - 16) % 15);
  const QuantizedTensor q = quantize_or_die(x, 1, 32, "int4:g32:sym:fp16");
  ASSERT_EQ(q.scales[0], 1.0f);
  GgufWriteSpec spec;
  spec.tensors.push_back({"q", {1, 32}, {}, GgmlType::kF32, &q});
  const std::string path = dir.file("nib.gguf");
  ASSERT_TRUE(write_gguf(path, spec).ok());
  Result<GgufFile> f = open_gguf(path);
  ASSERT_TRUE(f.ok());
  const auto* b = reinterpret_cast<const uint8_t*>(f->tensors[0].data);
  EXPECT_EQ(b[0] | (b[1] << 8), 0x3C00);  // d = 1.0 in fp16
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(b[2 + j] & 0x0F, static_cast<int>(x[static_cast<size_t>(j)]) + 8) << j;
    EXPECT_EQ(b[2 + j] >> 4, static_cast<int>(x[static_cast<size_t>(j + 16)]) + 8) << j;
  }
  const auto d = dequantize_all(*f, f->tensors[0]);
  EXPECT_TRUE(same_bits(d.data(), x.data(), 32));
}

TEST(GgufTest, MetadataRoundTrip) {
  TempDir dir;
  GgufWriteSpec spec;
  using V = GgufValue;
  spec.metadata = {
      {"k.u8", V::of(uint8_t{200})},
      {"k.i8", V::of(int8_t{-100})},
      {"k.u16", V::of(uint16_t{60000})},
      {"k.i16", V::of(int16_t{-30000})},
      {"k.u32", V::u32(4000000000u)},
      {"k.i32", V::i32(-2000000000)},
      {"k.f32", V::f32(0.1f)},
      {"k.bool", V::boolean(true)},
      {"k.str", V::str("héllo")},
      {"k.u64", V::u64(uint64_t{1} << 60)},
      {"k.i64", V::of(int64_t{-(int64_t{1} << 60)})},
      {"k.f64", V::of(0.1)},
      {"k.strs", V::array_of(GgufValueType::kString, {std::string("a"), std::string(""), std::string("ccc")})},
      {"k.f32s", V::array_of(GgufValueType::kF32, {1.5f, -2.0f})},
      {"k.empty", V::array_of(GgufValueType::kI32, {})},
      {"general.alignment", V::u32(64)},
  };
  const auto x = random_values(3, 10);
  spec.tensors.push_back({"t0", {10}, x, GgmlType::kF32, nullptr});
  spec.tensors.push_back({"t1", {2, 5}, x, GgmlType::kF16, nullptr});
  const std::string path = dir.file("meta.gguf");
  ASSERT_TRUE(write_gguf(path, spec).ok());
  Result<GgufFile> f = open_gguf(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  ASSERT_EQ(f->metadata.size(), spec.metadata.size());
  for (size_t i = 0; i < spec.metadata.size(); ++i) {
    EXPECT_EQ(f->metadata[i].first, spec.metadata[i].first);
    EXPECT_TRUE(f->metadata[i].second == spec.metadata[i].second) << spec.metadata[i].first;
  }
  EXPECT_EQ(f->alignment, 64u);
  EXPECT_EQ(f->data_offset % 64, 0u);
  EXPECT_EQ(f->find_tensor("t1")->offset % 64, 0u);

  EXPECT_EQ(f->get_u32("k.u32").value(), 4000000000u);
  EXPECT_EQ(f->get_u32("k.u8").value(), 200u);  // any integer that fits
  EXPECT_EQ(f->get_i64("k.i64").value(), -(int64_t{1} << 60));
  EXPECT_EQ(f->get_f32("k.f32").value(), 0.1f);
  EXPECT_EQ(f->get_bool("k.bool").value(), true);
  EXPECT_EQ(f->get_string("k.str").value(), "héllo");
  EXPECT_EQ(f->get_array_length("k.strs").value(), 3u);

  Result<uint32_t> missing = f->get_u32("llama.block_count");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), path + ": metadata key 'llama.block_count' is missing");
  Result<uint32_t> wrong = f->get_u32("k.str");
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().message(), path + ": metadata 'k.str' is a string, expected an integer (u32)");
  EXPECT_FALSE(f->get_u32("k.i32").ok());   // negative
  EXPECT_FALSE(f->get_u32("k.u64").ok());   // too big
  EXPECT_FALSE(f->get_f32("k.f64").ok());   // 0.1 is not an f32
  EXPECT_FALSE(f->get_string("k.strs").ok());
}

// ---------------------------------------------------------------------------------------------
// Hand-built blocks. The expected values are worked out from the layouts in docs/formats.md;
// a few are spelled out as numbers.

TEST(GgufTest, HandBuiltQ8_0AndPlainTypes) {
  TempDir dir;
  std::vector<uint8_t> q8 = half_bytes(0x3800);  // d = 0.5
  for (int j = 0; j < 32; ++j) q8.push_back(static_cast<uint8_t>(static_cast<int8_t>(j - 16)));
  auto y = dequantize_raw(dir, 8, 32, q8);
  ASSERT_EQ(y.size(), 32u);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[static_cast<size_t>(j)], 0.5f * static_cast<float>(j - 16));

  std::vector<uint8_t> bf;
  for (uint16_t h : {0x3F80, 0xC040, 0x7F80, 0x0001}) bf.insert(bf.end(), {static_cast<uint8_t>(h), static_cast<uint8_t>(h >> 8)});
  y = dequantize_raw(dir, 30, 4, bf);
  ASSERT_EQ(y.size(), 4u);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -3.0f);
  EXPECT_TRUE(std::isinf(y[2]));
  EXPECT_EQ(y[3], std::ldexp(1.0f, -133));  // bf16 subnormal 2^-126 * 2^-7

  std::vector<uint8_t> h;
  for (uint16_t v : {0x3C00, 0x3555, 0x0001, 0xFBFF}) h.insert(h.end(), {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8)});
  y = dequantize_raw(dir, 1, 4, h);
  ASSERT_EQ(y.size(), 4u);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], 0.333251953125f);
  EXPECT_EQ(y[2], std::ldexp(1.0f, -24));
  EXPECT_EQ(y[3], -65504.0f);
}

TEST(GgufTest, HandBuiltQ4_1) {
  TempDir dir;
  std::vector<uint8_t> b = half_bytes(0x3400);  // d = 0.25
  const auto m = half_bytes(0xBC00);            // m = -1
  b.insert(b.end(), m.begin(), m.end());
  for (int j = 0; j < 16; ++j) b.push_back(static_cast<uint8_t>(j | ((15 - j) << 4)));
  const auto y = dequantize_raw(dir, 3, 32, b);
  ASSERT_EQ(y.size(), 32u);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[static_cast<size_t>(j)], 0.25f * static_cast<float>(j) - 1.0f);
    EXPECT_EQ(y[static_cast<size_t>(j + 16)], 0.25f * static_cast<float>(15 - j) - 1.0f);
  }
  EXPECT_EQ(y[3], -0.25f);
  EXPECT_EQ(y[16], 2.75f);
}

// qh = 0xAAAA5555 (bytes 55 55 AA AA): bit j is the fifth bit of element j.
TEST(GgufTest, HandBuiltQ5_0AndQ5_1) {
  TempDir dir;
  const uint32_t qh = 0xAAAA5555u;
  std::vector<uint8_t> tail = {0x55, 0x55, 0xAA, 0xAA};
  for (int j = 0; j < 16; ++j) tail.push_back(static_cast<uint8_t>(j | ((15 - j) << 4)));
  const auto q = [&](int e) {
    const int lo = e < 16 ? e : 15 - (e - 16);
    return lo | static_cast<int>(((qh >> e) & 1) << 4);
  };

  std::vector<uint8_t> b0 = half_bytes(0x4000);  // d = 2
  b0.insert(b0.end(), tail.begin(), tail.end());
  const auto y0 = dequantize_raw(dir, 6, 32, b0);
  ASSERT_EQ(y0.size(), 32u);
  for (int e = 0; e < 32; ++e) EXPECT_EQ(y0[static_cast<size_t>(e)], 2.0f * static_cast<float>(q(e) - 16)) << e;
  EXPECT_EQ(y0[0], 0.0f);     // 0 | 16 - 16
  EXPECT_EQ(y0[1], -30.0f);   // (1 - 16) * 2
  EXPECT_EQ(y0[16], -2.0f);   // (15 - 16) * 2
  EXPECT_EQ(y0[17], 28.0f);   // (14 | 16) - 16 = 14

  std::vector<uint8_t> b1 = half_bytes(0x3800);  // d = 0.5
  const auto m = half_bytes(0x3C00);             // m = 1
  b1.insert(b1.end(), m.begin(), m.end());
  b1.insert(b1.end(), tail.begin(), tail.end());
  const auto y1 = dequantize_raw(dir, 7, 32, b1);
  ASSERT_EQ(y1.size(), 32u);
  for (int e = 0; e < 32; ++e) EXPECT_EQ(y1[static_cast<size_t>(e)], 0.5f * static_cast<float>(q(e)) + 1.0f) << e;
  EXPECT_EQ(y1[0], 9.0f);
  EXPECT_EQ(y1[17], 16.0f);
}

TEST(GgufTest, HandBuiltQ4_K) {
  TempDir dir;
  std::vector<uint8_t> b = half_bytes(0x3C00);  // d = 1
  const auto dmin = half_bytes(0x3800);          // dmin = 0.5
  b.insert(b.end(), dmin.begin(), dmin.end());
  // scales[0..3]: low 6 bits = scales 0..3, top 2 bits = bits 4-5 of scales 4..7;
  // scales[4..7]: the same for mins; scales[8..11]: low nibble = low bits of scales 4..7,
  // high nibble = low bits of mins 4..7.
  const std::vector<uint8_t> scales = {0x41, 0x02, 0x03, 0xC4, 0x85, 0x06, 0x07, 0x08, 0x21, 0x43, 0x65, 0x87};
  b.insert(b.end(), scales.begin(), scales.end());
  std::vector<uint8_t> qs(128);
  for (int i = 0; i < 128; ++i) qs[static_cast<size_t>(i)] = static_cast<uint8_t>((i * 7 + 3) & 0xFF);
  b.insert(b.end(), qs.begin(), qs.end());
  ASSERT_EQ(b.size(), 144u);

  const int sc[8] = {1, 2, 3, 4, 1 | (1 << 4), 3, 5, 7 | (3 << 4)};  // 17, 55 take their top bits from bytes 0 and 3
  const int mn[8] = {5, 6, 7, 8, 2 | (2 << 4), 4, 6, 8};             // 34: top bits from byte 4
  const auto y = dequantize_raw(dir, 12, 256, b);
  ASSERT_EQ(y.size(), 256u);
  // Chunk k of 64 elements reads qs[32k .. 32k+31]: low nibbles with (sc, min)[2k], then high with [2k+1].
  for (int k = 0; k < 4; ++k) {
    for (int l = 0; l < 32; ++l) {
      const int byte = qs[static_cast<size_t>(32 * k + l)];
      EXPECT_EQ(y[static_cast<size_t>(64 * k + l)],
                static_cast<float>(sc[2 * k]) * static_cast<float>(byte & 0xF) - 0.5f * static_cast<float>(mn[2 * k]));
      EXPECT_EQ(y[static_cast<size_t>(64 * k + 32 + l)],
                static_cast<float>(sc[2 * k + 1]) * static_cast<float>(byte >> 4) - 0.5f * static_cast<float>(mn[2 * k + 1]));
    }
  }
  EXPECT_EQ(y[0], 0.5f);     // 1 * 3 - 0.5 * 5
  EXPECT_EQ(y[32], -3.0f);   // 2 * 0 - 0.5 * 6
  EXPECT_EQ(y[229], 656.0f); // qs[101] = 0xC6: 55 * 12 - 0.5 * 8
}

TEST(GgufTest, HandBuiltQ6_K) {
  TempDir dir;
  std::vector<uint8_t> ql(128), qh(64);
  for (int i = 0; i < 128; ++i) ql[static_cast<size_t>(i)] = static_cast<uint8_t>((i * 5 + 1) & 0xFF);
  for (int i = 0; i < 64; ++i) qh[static_cast<size_t>(i)] = static_cast<uint8_t>((i * 3) & 0xFF);
  std::vector<uint8_t> b = ql;
  b.insert(b.end(), qh.begin(), qh.end());
  for (int i = 0; i < 16; ++i) b.push_back(static_cast<uint8_t>(static_cast<int8_t>(i - 8)));  // scales
  const auto d = half_bytes(0x3800);  // d = 0.5, last
  b.insert(b.end(), d.begin(), d.end());
  ASSERT_EQ(b.size(), 210u);

  const auto y = dequantize_raw(dir, 14, 256, b);
  ASSERT_EQ(y.size(), 256u);
  // Element e: half h = e / 128 uses ql[64h..], qh[32h..], scales[8h..]; within it quarter k = r / 32,
  // l = r % 32: low 4 bits from ql[l + 32 (k & 1)] (k < 2: low nibble, else high), high 2 bits
  // from qh[l] >> 2k; scale index l / 16 + 2k; value d * scale * (q - 32).
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, r = e % 128, k = r / 32, l = r % 32;
    const int lq = ql[static_cast<size_t>(64 * h + l + 32 * (k & 1))];
    const int lo = k < 2 ? (lq & 0xF) : (lq >> 4);
    const int hi = (qh[static_cast<size_t>(32 * h + l)] >> (2 * k)) & 3;
    const int s = 8 * h + l / 16 + 2 * k - 8;
    EXPECT_EQ(y[static_cast<size_t>(e)], 0.5f * static_cast<float>(s) * static_cast<float>((lo | (hi << 4)) - 32)) << e;
  }
  EXPECT_EQ(y[0], 124.0f);   // 0.5 * -8 * (1 - 32)
  EXPECT_EQ(y[200], 44.0f);  // ql[72] = 0x69 -> 6, qh[40] = 0x78 -> 3: 54 - 32 = 22; scale 12 - 8 = 4
}

TEST(GgufTest, TypesWithoutDequantizationAreUnsupported) {
  TempDir dir;
  RawGguf g;
  g.tensors.push_back({"blk.0.ffn_up.weight", {256}, 16, std::vector<uint8_t>(66, 0), {}});  // iq2_xxs
  const std::string path = dir.file("iq2xxs.gguf");
  write_bytes(path, g.bytes());
  Result<GgufFile> f = open_gguf(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  Result<Tensor> t = dequantize_tensor(*f, f->tensors[0]);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(t.status().message().find("blk.0.ffn_up.weight has type iq2_xxs"), std::string::npos) << t.status().message();
}

// ---------------------------------------------------------------------------------------------
// A tiny Llama

struct TinyLlama {
  static constexpr int dim = 16, hidden = 32, layers = 2, heads = 2, kv_heads = 1, vocab = 32, seq = 8;
  static constexpr int kv_dim = dim / heads * kv_heads;
  struct Entry {
    std::vector<int64_t> shape;  // lowbit order
    std::vector<float> src;
    GgmlType type;
    std::optional<QuantizedTensor> q;
    std::vector<float> expect;   // what the loader must produce
  };
  std::map<std::string, Entry> t;
  std::vector<std::string> order;

  explicit TinyLlama(bool tied) {
    add("token_embd.weight", {vocab, dim}, GgmlType::kF32);
    for (int l = 0; l < layers; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      add(p + "attn_norm.weight", {dim}, GgmlType::kF32, true);
      add(p + "attn_q.weight", {dim, dim}, GgmlType::kF32);
      add(p + "attn_k.weight", {kv_dim, dim}, GgmlType::kF16);
      add(p + "attn_v.weight", {kv_dim, dim}, GgmlType::kF32);
      add(p + "attn_output.weight", {dim, dim}, GgmlType::kF16);
      add(p + "ffn_norm.weight", {dim}, GgmlType::kF32, true);
      add(p + "ffn_gate.weight", {hidden, dim}, GgmlType::kF32);
      add(p + "ffn_down.weight", {dim, hidden}, l == 0 ? GgmlType::kQ4_0 : GgmlType::kQ8_0);  // in = 32
      add(p + "ffn_up.weight", {hidden, dim}, GgmlType::kF32);
    }
    add("output_norm.weight", {dim}, GgmlType::kF32, true);
    if (!tied) add("output.weight", {vocab, dim}, GgmlType::kF32);
  }

  void add(const std::string& name, std::vector<int64_t> shape, GgmlType type, bool norm = false) {
    Entry e;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    e.src = random_values(std::hash<std::string>{}(name), static_cast<size_t>(n), norm ? 0.2f : 0.5f);
    if (norm) for (auto& v : e.src) v += 1.0f;
    e.shape = shape;
    e.type = type;
    if (type == GgmlType::kF32) e.expect = e.src;
    if (type == GgmlType::kF16) e.expect = f16_round_trip(e.src);
    if (type == GgmlType::kQ8_0 || type == GgmlType::kQ4_0) {
      e.q = quantize_or_die(e.src, shape[0], shape[1], type == GgmlType::kQ8_0 ? "int8:g32:sym:fp16" : "int4:g32:sym:fp16");
      e.expect = dequantized(*e.q);
    }
    t[name] = std::move(e);
    order.push_back(name);
  }

  GgufWriteSpec spec() const {
    GgufWriteSpec s;
    s.metadata = {
        {"general.architecture", GgufValue::str("llama")},
        {"llama.embedding_length", GgufValue::u32(dim)},
        {"llama.feed_forward_length", GgufValue::u32(hidden)},
        {"llama.block_count", GgufValue::u32(layers)},
        {"llama.attention.head_count", GgufValue::u32(heads)},
        {"llama.attention.head_count_kv", GgufValue::u32(kv_heads)},
        {"llama.context_length", GgufValue::u32(seq)},
        {"llama.rope.freq_base", GgufValue::f32(500000.0f)},
        {"llama.attention.layer_norm_rms_epsilon", GgufValue::f32(1e-6f)},
    };
    for (const auto& name : order) {
      const Entry& e = t.at(name);
      GgufWriteTensor w{name, e.shape, e.src, e.type, e.q ? &*e.q : nullptr};
      s.tensors.push_back(w);
    }
    return s;
  }

  // The same weights, as owned fp32 tensors.
  Model reference(bool tied) const {
    Model m;
    m.config.dim = dim;
    m.config.hidden_dim = hidden;
    m.config.n_layers = layers;
    m.config.n_heads = heads;
    m.config.n_kv_heads = kv_heads;
    m.config.vocab_size = vocab;
    m.config.seq_len = seq;
    m.config.rope_theta = 500000.0f;
    m.config.norm_eps = 1e-6f;
    m.config.shared_classifier = tied;
    m.weights.layers.resize(layers);
    auto view = [&](const std::string& name) {
      const Entry& e = t.at(name);
      Result<Tensor> x = Tensor::empty(DType::kF32, std::span<const int64_t>(e.shape));
      std::memcpy(x->data(), e.expect.data(), e.expect.size() * sizeof(float));
      ConstTensorView v = std::as_const(*x).view();
      m.owned.push_back(std::move(x).value());
      return v;
    };
    m.weights.tok_embeddings = view("token_embd.weight");
    for (int l = 0; l < layers; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      auto& L = m.weights.layers[static_cast<size_t>(l)];
      L.attn_norm = view(p + "attn_norm.weight");
      L.wq = view(p + "attn_q.weight");
      L.wk = view(p + "attn_k.weight");
      L.wv = view(p + "attn_v.weight");
      L.wo = view(p + "attn_output.weight");
      L.ffn_norm = view(p + "ffn_norm.weight");
      L.w1 = view(p + "ffn_gate.weight");
      L.w2 = view(p + "ffn_down.weight");
      L.w3 = view(p + "ffn_up.weight");
    }
    m.weights.final_norm = view("output_norm.weight");
    m.weights.classifier = tied ? m.weights.tok_embeddings : view("output.weight");
    return m;
  }
};

void expect_view(const ConstTensorView& v, const TinyLlama::Entry& e, const std::string& name) {
  ASSERT_EQ(v.ndim(), static_cast<int>(e.shape.size())) << name;
  for (int d = 0; d < v.ndim(); ++d) EXPECT_EQ(v.dim(d), e.shape[static_cast<size_t>(d)]) << name;
  ASSERT_TRUE(v.is_contiguous()) << name;
  EXPECT_TRUE(same_bits(static_cast<const float*>(v.data()), e.expect.data(), e.expect.size())) << name;
}

std::vector<float> run_logits(const Model& m) {
  LlamaModel net(m);
  Session s(net);
  const std::vector<int> tokens = {1, 5, 7, 3, 30};
  std::vector<float> logits;
  EXPECT_TRUE(s.forward(tokens, 0, &logits).ok());
  return logits;
}

class GgufLlamaTest : public ::testing::TestWithParam<bool> {};

TEST_P(GgufLlamaTest, LoadsWeightsAndMatchesTheSameWeightsLoadedDirectly) {
  const bool tied = GetParam();
  TempDir dir;
  TinyLlama tiny(tied);
  const std::string path = dir.file("tiny.gguf");
  ASSERT_TRUE(write_gguf(path, tiny.spec()).ok());

  Result<Model> m = load_model(path);  // dispatches on the "GGUF" magic
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  const LlamaConfig& c = m->config;
  EXPECT_EQ(c.dim, 16);
  EXPECT_EQ(c.hidden_dim, 32);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.n_heads, 2);
  EXPECT_EQ(c.n_kv_heads, 1);
  EXPECT_EQ(c.vocab_size, 32);
  EXPECT_EQ(c.seq_len, 8);
  EXPECT_EQ(c.rope_theta, 500000.0f);
  EXPECT_EQ(c.norm_eps, 1e-6f);
  EXPECT_EQ(c.shared_classifier, tied);

  const auto& w = m->weights;
  expect_view(w.tok_embeddings, tiny.t.at("token_embd.weight"), "token_embd");
  const std::byte* map_begin = m->file->bytes().data();
  const std::byte* map_end = map_begin + m->file->size();
  const auto in_mapping = [&](const ConstTensorView& v) {
    const auto* p = static_cast<const std::byte*>(v.data());
    return p >= map_begin && p < map_end;
  };
  EXPECT_TRUE(in_mapping(w.tok_embeddings));  // f32: zero copy
  for (int l = 0; l < 2; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    const auto& L = w.layers[static_cast<size_t>(l)];
    expect_view(L.attn_norm, tiny.t.at(p + "attn_norm.weight"), p + "attn_norm");
    expect_view(L.wq, tiny.t.at(p + "attn_q.weight"), p + "wq");
    expect_view(L.wk, tiny.t.at(p + "attn_k.weight"), p + "wk");
    expect_view(L.wv, tiny.t.at(p + "attn_v.weight"), p + "wv");
    expect_view(L.wo, tiny.t.at(p + "attn_output.weight"), p + "wo");
    expect_view(L.ffn_norm, tiny.t.at(p + "ffn_norm.weight"), p + "ffn_norm");
    expect_view(L.w1, tiny.t.at(p + "ffn_gate.weight"), p + "w1");
    expect_view(L.w2, tiny.t.at(p + "ffn_down.weight"), p + "w2");
    expect_view(L.w3, tiny.t.at(p + "ffn_up.weight"), p + "w3");
    EXPECT_TRUE(in_mapping(L.wq));
    EXPECT_FALSE(in_mapping(L.wk));  // f16: dequantized into Model::owned
    EXPECT_FALSE(in_mapping(L.w2));
  }
  expect_view(w.final_norm, tiny.t.at("output_norm.weight"), "output_norm");
  if (tied) {
    EXPECT_EQ(w.classifier.data(), w.tok_embeddings.data());
  } else {
    expect_view(w.classifier, tiny.t.at("output.weight"), "output");
  }
  EXPECT_EQ(m->owned.size(), 6u);  // 2 layers x (wk, wo, w2)

  const Model ref = tiny.reference(tied);
  const auto a = run_logits(*m);
  const auto b = run_logits(ref);
  ASSERT_EQ(a.size(), 5u * 32u);
  ASSERT_EQ(a.size(), b.size());
  // Q8_0 / Q4_0 linears load quantized and run through the packed kernels, whose float
  // accumulation order differs from the fp32 matmul over the dequantized weights.
  float scale = 0.0f;
  for (float v : b) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-5f * scale + 1e-6f) << "logit " << i;
  for (float v : a) ASSERT_TRUE(std::isfinite(v));
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, GgufLlamaTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Tied" : "Untied"; });

// ---------------------------------------------------------------------------------------------
// Broken input: one test per kind, each an error (never a crash) that names the file.

Status open_status(const TempDir& dir, const std::string& bytes) {
  const std::string path = dir.file("bad.gguf");
  write_bytes(path, bytes);
  Result<GgufFile> f = open_gguf(path);
  return f.ok() ? OkStatus() : f.status();
}

void expect_error(const Status& s, StatusCode code, const std::string& fragment) {
  ASSERT_FALSE(s.ok()) << "expected an error containing: " << fragment;
  EXPECT_EQ(s.code(), code) << s.to_string();
  EXPECT_NE(s.message().find(fragment), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("bad.gguf"), std::string::npos) << s.message();
}

RawGguf one_f32_tensor() {
  RawGguf g;
  g.kv_string("general.name", "x");
  g.tensors.push_back({"w", {4}, 0, std::vector<uint8_t>(16, 0), {}});
  return g;
}

TEST(GgufTest, BadInputIsAnErrorNotACrash) {
  TempDir dir;
  ASSERT_TRUE(open_status(dir, one_f32_tensor().bytes()).ok());

  std::string s = one_f32_tensor().bytes();
  s[3] = 'X';
  expect_error(open_status(dir, s), StatusCode::kDataLoss, "not a GGUF file");

  expect_error(open_status(dir, one_f32_tensor().bytes().substr(0, 12)), StatusCode::kDataLoss, "truncated");
  expect_error(open_status(dir, one_f32_tensor().bytes().substr(0, 30)), StatusCode::kDataLoss,
               "metadata_kv_count 1 is more than the file can hold");
  RawGguf only_kv;
  only_kv.kv_string("general.name", "x");
  expect_error(open_status(dir, only_kv.bytes().substr(0, 44)), StatusCode::kDataLoss,
               "truncated: metadata 'general.name' type needs 4 bytes at offset 44");

  RawGguf g = one_f32_tensor();
  g.version = 1;
  expect_error(open_status(dir, g.bytes()), StatusCode::kUnsupported, "GGUF version 1 is not supported");
  g.version = 0x03000000;
  expect_error(open_status(dir, g.bytes()), StatusCode::kUnsupported, "big-endian");

  g = one_f32_tensor();
  g.tensors[0].offset = 1024;
  expect_error(open_status(dir, g.bytes().substr(0, 128)), StatusCode::kDataLoss, "extends past the end of the file");
  // The last bytes of the tensor cut off.
  s = one_f32_tensor().bytes();
  expect_error(open_status(dir, s.substr(0, s.size() - 1)), StatusCode::kDataLoss, "extends past the end");

  g = one_f32_tensor();
  g.tensors[0].offset = 8;
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "not a multiple of the alignment 32");

  g = one_f32_tensor();
  g.tensors[0].dims = {uint64_t{1} << 41};
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "at most 2^40");
  g.tensors[0].dims = {uint64_t{1} << 21, uint64_t{1} << 21};
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "at most 2^40");
  g.tensors[0].dims = {~uint64_t{0}, ~uint64_t{0}};
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "at most 2^40");
  g.tensors[0].dims = {4, 0};
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "dims must be >= 1");
  g.tensors[0].dims = {1, 1, 1, 1, 4};
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "has 5 dims (expected 1..4)");

  g = one_f32_tensor();
  g.tensors[0].type = 99;
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "tensor w has unknown ggml type 99");
  g.tensors[0].type = 4;  // retired q4_2
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "unknown ggml type 4");
  g.tensors[0].type = 8;  // q8_0 with 4 elements: not a whole block
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "not a multiple of q8_0's block size 32");

  // The string value's u64 length claims far more bytes than the file has.
  g = RawGguf{};
  std::string kv;
  RawGguf::put_str(kv, "general.name");
  RawGguf::put<uint32_t>(kv, 8);
  RawGguf::put<uint64_t>(kv, uint64_t{1} << 40);
  kv += "abc";
  g.kv.push_back(kv);
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "past the end of the file");

  // An array of 2^60 u32 elements.
  g = RawGguf{};
  kv.clear();
  RawGguf::put_str(kv, "k");
  RawGguf::put<uint32_t>(kv, 9);
  RawGguf::put<uint32_t>(kv, 4);
  RawGguf::put<uint64_t>(kv, uint64_t{1} << 60);
  g.kv.push_back(kv);
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "past the end of the file");

  // Unknown value type, bad bool, duplicate key, bad alignment, huge counts.
  g = RawGguf{};
  kv.clear();
  RawGguf::put_str(kv, "k");
  RawGguf::put<uint32_t>(kv, 13);
  RawGguf::put<uint32_t>(kv, 0);
  g.kv.push_back(kv);
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "unknown value type 13");
  g = RawGguf{};
  kv.clear();
  RawGguf::put_str(kv, "k");
  RawGguf::put<uint32_t>(kv, 7);
  RawGguf::put<uint8_t>(kv, 2);
  g.kv.push_back(kv);
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "bool with byte value 2");
  g = one_f32_tensor();
  g.kv_string("general.name", "y");
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "'general.name' appears twice");
  g = one_f32_tensor();
  g.kv_u32("general.alignment", 24);
  expect_error(open_status(dir, g.bytes()), StatusCode::kDataLoss, "power of two");
  s = "GGUF";
  RawGguf::put<uint32_t>(s, 3);
  RawGguf::put<uint64_t>(s, ~uint64_t{0});
  RawGguf::put<uint64_t>(s, 0);
  expect_error(open_status(dir, s), StatusCode::kDataLoss, "tensor_count");

  Result<GgufFile> missing = open_gguf(dir.file("nope.gguf"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

TEST(GgufTest, LoadGgufRejectsOtherArchitecturesAndMissingTensors) {
  TempDir dir;
  TinyLlama tiny(true);
  GgufWriteSpec spec = tiny.spec();
  spec.metadata[0].second = GgufValue::str("gpt2");
  const std::string path = dir.file("gpt2.gguf");
  ASSERT_TRUE(write_gguf(path, spec).ok());
  Result<Model> m = load_gguf(path);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kUnsupported);
  EXPECT_EQ(m.status().message(), path + ": architecture gpt2 is not supported (supported: llama, qwen2)");

  spec = tiny.spec();
  spec.tensors.erase(spec.tensors.begin() + 18);  // blk.1.ffn_up.weight
  ASSERT_EQ(spec.tensors[17].name, "blk.1.ffn_down.weight");
  ASSERT_TRUE(write_gguf(path, spec).ok());
  m = load_gguf(path);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(m.status().message(), path + ": tensor blk.1.ffn_up.weight is missing");

  spec = tiny.spec();
  spec.metadata.erase(spec.metadata.begin() + 3);  // llama.block_count
  ASSERT_TRUE(write_gguf(path, spec).ok());
  m = load_gguf(path);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().message(), path + ": metadata key 'llama.block_count' is missing");

  // A matrix stored (out, in) the wrong way round.
  spec = tiny.spec();
  spec.tensors[3].shape = {16, 8};  // blk.0.attn_k.weight should be (8, 16)
  ASSERT_TRUE(write_gguf(path, spec).ok());
  m = load_gguf(path);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("tensor blk.0.attn_k.weight has dims [8, 16] (ggml order), expected [16, 8]"),
            std::string::npos)
      << m.status().message();
}

TEST(GgufTest, WriterRejectsSpecsGgufCannotHoldAndWritesNothing) {
  TempDir dir;
  const auto x = random_values(4, 4 * 128);
  const std::string path = dir.file("w.gguf");
  for (const char* text : {"int4:g128:sym:fp16", "int8:g32:sym:fp32", "int4:g32:asym:fp16", "int8:row:sym:fp16"}) {
    const QuantizedTensor q = quantize_or_die(x, 4, 128, text);
    GgufWriteSpec spec;
    spec.tensors.push_back({"blk.0.attn_q.weight", {4, 128}, {}, GgmlType::kF32, &q});
    Status s = write_gguf(path, spec);
    ASSERT_FALSE(s.ok()) << text;
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("blk.0.attn_q.weight"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("accepted: int8:g32:sym:fp16 -> q8_0, int4:g32:sym:fp16 -> q4_0"), std::string::npos)
        << s.message();
    EXPECT_FALSE(fs::exists(path));
  }
  GgufWriteSpec spec;
  spec.tensors.push_back({"a", {4, 128}, x, GgmlType::kQ4_K, nullptr});
  EXPECT_EQ(write_gguf(path, spec).code(), StatusCode::kInvalidArgument);
  spec.tensors[0] = {"a", {4, 127}, x, GgmlType::kF32, nullptr};
  EXPECT_EQ(write_gguf(path, spec).code(), StatusCode::kInvalidArgument);
  spec.tensors[0] = {"a", {4, 128}, x, GgmlType::kF32, nullptr};
  spec.tensors.push_back(spec.tensors[0]);
  EXPECT_EQ(write_gguf(path, spec).code(), StatusCode::kInvalidArgument);
  spec.tensors.pop_back();
  spec.metadata.push_back({"k", GgufValue{GgufValueType::kU32, std::string("not a u32"), {}, {}}});
  EXPECT_EQ(write_gguf(path, spec).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(path));
}

// ---------------------------------------------------------------------------------------------
// Cross-check with the `gguf` Python package (tests/model/gguf_crosscheck.py). CTest runs the
// script's "write" step first, then this test with LOWBIT_GGUF_CROSSCHECK_DIR set, then the
// script's "read" step on what this test wrote.

const char* crosscheck_dir() { return std::getenv("LOWBIT_GGUF_CROSSCHECK_DIR"); }

std::vector<float> read_f32_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  EXPECT_TRUE(in.good()) << path;
  const auto n = static_cast<size_t>(in.tellg()) / sizeof(float);
  std::vector<float> v(n);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(float)));
  return v;
}

void write_f32_file(const std::string& path, const std::vector<float>& v) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
}

// Every tensor of the Python-written file (each ggml type lowbit dequantizes, from gguf's
// quantize() and from random block bytes) equals gguf.quants.dequantize() bit for bit.
TEST(GgufCrossCheck, DequantizeMatchesGgufPython) {
  const char* dir = crosscheck_dir();
  if (dir == nullptr) GTEST_SKIP() << "LOWBIT_GGUF_CROSSCHECK_DIR is not set (CTest's gguf_crosscheck tests set it)";
  const std::string path = std::string(dir) + "/py_types.gguf";
  Result<GgufFile> f = open_gguf(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->get_string("general.architecture").value_or(""), "lowbit-crosscheck");
  EXPECT_EQ(f->get_u32("crosscheck.u32").value_or(0), 123456789u);
  EXPECT_EQ(f->get_f32("crosscheck.f32").value_or(0), 0.1f);
  EXPECT_EQ(f->get_array_length("crosscheck.strings").value_or(0), 3u);
  std::set<GgmlType> seen;
  ASSERT_GE(f->tensors.size(), 10u);
  for (const GgufTensor& t : f->tensors) {
    const auto got = dequantize_all(*f, t);
    const auto want = read_f32_file(std::string(dir) + "/" + t.name + ".f32");
    ASSERT_EQ(got.size(), want.size()) << t.name;
    EXPECT_TRUE(same_bits(got.data(), want.data(), got.size())) << t.name;
    seen.insert(t.type);
  }
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0, GgmlType::kQ4_0,
                        GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ2_K, GgmlType::kQ3_K,
                        GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K, GgmlType::kIQ4_NL, GgmlType::kIQ4_XS}) {
    EXPECT_TRUE(seen.count(type)) << ggml_type_name(type) << " not covered by the Python file";
  }
}

// A tiny Llama written by gguf.GGUFWriter loads, with the values gguf dequantizes.
TEST(GgufCrossCheck, LoadsLlamaWrittenByGgufPython) {
  const char* dir = crosscheck_dir();
  if (dir == nullptr) GTEST_SKIP() << "LOWBIT_GGUF_CROSSCHECK_DIR is not set (CTest's gguf_crosscheck tests set it)";
  const std::string path = std::string(dir) + "/py_llama.gguf";
  Result<Model> m = load_gguf(path);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(m->config.dim, 64);
  EXPECT_EQ(m->config.n_layers, 2);
  EXPECT_EQ(m->config.vocab_size, 32);
  Result<GgufFile> f = open_gguf(path);
  ASSERT_TRUE(f.ok());
  // A linear of a block type other than Q4_0/Q8_0 stays as its blocks (Model::ggml, run by
  // ggml_matmul): its rows decoded must be gguf's values bit for bit.
  const auto check = [&](const ConstTensorView& v, const std::string& name, const std::string& lowbit_name = "") {
    const auto want = read_f32_file(std::string(dir) + "/" + name + ".f32");
    if (v.data() == nullptr && m->ggml.count(lowbit_name)) {
      const GgmlMatrix& g = m->ggml.at(lowbit_name);
      ASSERT_EQ(static_cast<size_t>(g.rows * g.cols), want.size()) << name;
      std::vector<float> got(want.size());
      for (int64_t r = 0; r < g.rows; ++r) ASSERT_TRUE(ggml_decode_row(g, r, got.data() + r * g.cols).ok());
      EXPECT_TRUE(same_bits(got.data(), want.data(), want.size())) << name << " (blocks)";
      return;
    }
    ASSERT_EQ(static_cast<size_t>(v.numel()), want.size()) << name;
    EXPECT_TRUE(same_bits(static_cast<const float*>(v.data()), want.data(), want.size())) << name;
  };
  check(m->weights.tok_embeddings, "llama.token_embd.weight", "tok_embeddings");
  for (int l = 0; l < 2; ++l) {
    const std::string p = "llama.blk." + std::to_string(l) + ".", q = "layers." + std::to_string(l) + ".";
    const auto& L = m->weights.layers[static_cast<size_t>(l)];
    check(L.attn_norm, p + "attn_norm.weight");
    check(L.wq, p + "attn_q.weight", q + "wq");
    check(L.wk, p + "attn_k.weight", q + "wk");
    check(L.wv, p + "attn_v.weight", q + "wv");
    check(L.wo, p + "attn_output.weight", q + "wo");
    check(L.ffn_norm, p + "ffn_norm.weight");
    check(L.w1, p + "ffn_gate.weight", q + "w1");
    check(L.w2, p + "ffn_down.weight", q + "w2");
    check(L.w3, p + "ffn_up.weight", q + "w3");
  }
  check(m->weights.final_norm, "llama.output_norm.weight");
  check(m->weights.classifier, "llama.output.weight");
  const auto logits = run_logits(*m);
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
}

// Writes what the script's "read" step checks with gguf.GGUFReader: metadata of every type,
// f32 / f16 / q8_0 / q4_0 tensors, and the values lowbit's dequantize() gives for them.
TEST(GgufCrossCheck, WritesFilesForGgufPython) {
  const char* dir = crosscheck_dir();
  if (dir == nullptr) GTEST_SKIP() << "LOWBIT_GGUF_CROSSCHECK_DIR is not set (CTest's gguf_crosscheck tests set it)";
  const int64_t rows = 6, cols = 64;
  const auto x = random_values(11, rows * cols, 2.0f);
  const QuantizedTensor q8 = quantize_or_die(x, rows, cols, "int8:g32:sym:fp16");
  const QuantizedTensor q4 = quantize_or_die(x, rows, cols, "int4:g32:sym:fp16");
  GgufWriteSpec spec;
  using V = GgufValue;
  spec.metadata = {
      {"general.architecture", V::str("llama")},
      {"cpp.u8", V::of(uint8_t{7})},
      {"cpp.i8", V::of(int8_t{-7})},
      {"cpp.u16", V::of(uint16_t{65535})},
      {"cpp.i16", V::of(int16_t{-32768})},
      {"cpp.u32", V::u32(4000000000u)},
      {"cpp.i32", V::i32(-123456)},
      {"cpp.f32", V::f32(1.25f)},
      {"cpp.bool", V::boolean(true)},
      {"cpp.string", V::str("lowbit")},
      {"cpp.u64", V::u64(uint64_t{1} << 50)},
      {"cpp.i64", V::of(int64_t{-5})},
      {"cpp.f64", V::of(2.5)},
      {"cpp.strings", V::array_of(GgufValueType::kString, {std::string("x"), std::string("yz")})},
      {"cpp.i32s", V::array_of(GgufValueType::kI32, {int32_t{1}, int32_t{-2}, int32_t{3}})},
  };
  spec.tensors.push_back({"cpp.f32", {rows, cols}, x, GgmlType::kF32, nullptr});
  spec.tensors.push_back({"cpp.f16", {rows, cols}, x, GgmlType::kF16, nullptr});
  spec.tensors.push_back({"cpp.q8_0", {rows, cols}, {}, GgmlType::kF32, &q8});
  spec.tensors.push_back({"cpp.q4_0", {rows, cols}, {}, GgmlType::kF32, &q4});
  spec.tensors.push_back({"cpp.vec", {cols}, std::span(x).first(cols), GgmlType::kF32, nullptr});
  ASSERT_TRUE(write_gguf(std::string(dir) + "/cpp_out.gguf", spec).ok());
  write_f32_file(std::string(dir) + "/cpp.f32.f32", x);
  write_f32_file(std::string(dir) + "/cpp.f16.f32", f16_round_trip(x));
  write_f32_file(std::string(dir) + "/cpp.q8_0.f32", dequantized(q8));
  write_f32_file(std::string(dir) + "/cpp.q4_0.f32", dequantized(q4));
  write_f32_file(std::string(dir) + "/cpp.vec.f32", std::vector<float>(x.begin(), x.begin() + cols));
}

// quantize (every ggml block type lowbit writes) -> write_gguf -> open_gguf -> dequantize_tensor gives
// back lowbit's dequantize() bit for bit; the file is left for gguf_crosscheck.py, which checks that
// the gguf package reads the same types, shapes and values.
TEST(GgufCrossCheck, WritesGgmlBlockTypesForGgufPython) {
  const char* dir = crosscheck_dir();
  if (dir == nullptr) GTEST_SKIP() << "LOWBIT_GGUF_CROSSCHECK_DIR is not set (CTest's gguf_crosscheck tests set it)";
  const int64_t rows = 4, cols = 512;
  const auto x = random_values(23, rows * cols, 0.05f);
  std::vector<QuantizedTensor> qs;
  for (const GgmlBlockInfo& info : ggml_block_types()) {
    Result<QuantizedTensor> q = quantize(ConstTensorView(x.data(), DType::kF32, {rows, cols}), ggml_spec(info.type));
    ASSERT_TRUE(q.ok()) << q.status().to_string();
    qs.push_back(std::move(*q));
  }
  GgufWriteSpec spec;
  spec.metadata = {{"general.architecture", GgufValue::str("llama")}};
  for (const QuantizedTensor& q : qs) {
    spec.tensors.push_back({"blocks." + std::string(ggml_block_info(q.spec.ggml)->name), {rows, cols}, {}, GgmlType::kF32, &q});
  }
  const std::string path = std::string(dir) + "/cpp_blocks.gguf";
  ASSERT_TRUE(write_gguf(path, spec).ok());
  Result<GgufFile> f = open_gguf(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  ASSERT_EQ(f->tensors.size(), qs.size());
  for (size_t i = 0; i < qs.size(); ++i) {
    const GgufTensor& t = f->tensors[i];
    EXPECT_EQ(t.type, qs[i].spec.ggml) << t.name;
    EXPECT_EQ(t.nbytes, qs[i].codes.size()) << t.name;
    const auto got = dequantize_all(*f, t);
    const auto want = dequantized(qs[i]);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_TRUE(same_bits(got.data(), want.data(), got.size())) << t.name;
    write_f32_file(std::string(dir) + "/" + t.name + ".f32", want);
  }
}

}  // namespace
}  // namespace lowbit
