// GGUF reader, dequantizer, Llama loader and writer. The container follows ggml's
// docs/gguf.md (v2 and v3 share one layout; v3 added big-endian files, which we reject); block
// layouts follow ggml-common.h and the dequantization ggml-quants.c's dequantize_row_*.
//
// open_gguf parses the whole header with bounds-checked reads and checks every tensor's
// byte range against the file before anything touches tensor data.

#include "lowbit/gguf.h"
#include "lowbit/ggml_quant.h"
#include "model_internal.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "lowbit/convert.h"
#include "lowbit/file.h"
#include "lowbit/formats.h"
#include "lowbit/ggml_matmul.h"
#include "lowbit/model.h"
#include "lowbit/parallel.h"
#include "lowbit/quant.h"
#include "lowbit/status.h"
#include "lowbit/tensor.h"

namespace lowbit {
namespace {

static_assert(std::endian::native == std::endian::little, "GGUF files are read as little-endian");

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint32_t kVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;  // GGUF_DEFAULT_ALIGNMENT
constexpr int kMaxGgufDims = 4;             // GGML_MAX_DIMS
// Bounds no real file reaches; they reject garbage before any allocation is sized from it.
constexpr int64_t kMaxElements = int64_t{1} << 40;
constexpr uint64_t kMaxTensors = uint64_t{1} << 20;
constexpr uint64_t kMaxKeys = uint64_t{1} << 20;

// ---------------------------------------------------------------------------------------------
// ggml type table. The block layouts and their dequantizers live in lowbit/ggml_blocks.h.

constexpr int kQK = kGgmlQK;  // QK4_0 = QK8_0

// clang-format off
constexpr std::array<GgmlTypeTraits, 32> kGgmlTypes = {{
  // type              name       block   bytes/block            dequantize
  {GgmlType::kF32,     "f32",     1,      4,                     true},
  {GgmlType::kF16,     "f16",     1,      2,                     true},
  {GgmlType::kQ4_0,    "q4_0",    kQK,    sizeof(BlockQ4_0),     true},
  {GgmlType::kQ4_1,    "q4_1",    kQK,    sizeof(BlockQ4_1),     true},
  {GgmlType::kQ5_0,    "q5_0",    kQK,    sizeof(BlockQ5_0),     true},
  {GgmlType::kQ5_1,    "q5_1",    kQK,    sizeof(BlockQ5_1),     true},
  {GgmlType::kQ8_0,    "q8_0",    kQK,    sizeof(BlockQ8_0),     true},
  {GgmlType::kQ8_1,    "q8_1",    32,     4 + 4 + 32,            false},
  {GgmlType::kQ2_K,    "q2_K",    kGgmlQK_K, sizeof(BlockQ2_K),  true},
  {GgmlType::kQ3_K,    "q3_K",    kGgmlQK_K, sizeof(BlockQ3_K),  true},
  {GgmlType::kQ4_K,    "q4_K",    kGgmlQK_K, sizeof(BlockQ4_K),  true},
  {GgmlType::kQ5_K,    "q5_K",    kGgmlQK_K, sizeof(BlockQ5_K),  true},
  {GgmlType::kQ6_K,    "q6_K",    kGgmlQK_K, sizeof(BlockQ6_K),  true},
  {GgmlType::kQ8_K,    "q8_K",    256,    4 + 256 + 32,          false},
  {GgmlType::kIQ2_XXS, "iq2_xxs", 256,    2 + 64,                false},
  {GgmlType::kIQ2_XS,  "iq2_xs",  256,    2 + 64 + 8,            false},
  {GgmlType::kIQ3_XXS, "iq3_xxs", 256,    2 + 64 + 32,           false},
  {GgmlType::kIQ1_S,   "iq1_s",   256,    2 + 32 + 16,           false},
  {GgmlType::kIQ4_NL,  "iq4_nl",  kGgmlQK, sizeof(BlockIQ4_NL),  true},
  {GgmlType::kIQ3_S,   "iq3_s",   256,    2 + 64 + 32 + 8 + 4,   false},
  {GgmlType::kIQ2_S,   "iq2_s",   256,    2 + 64 + 16,           false},
  {GgmlType::kIQ4_XS,  "iq4_xs",  kGgmlQK_K, sizeof(BlockIQ4_XS), true},
  {GgmlType::kI8,      "i8",      1,      1,                     false},
  {GgmlType::kI16,     "i16",     1,      2,                     false},
  {GgmlType::kI32,     "i32",     1,      4,                     false},
  {GgmlType::kI64,     "i64",     1,      8,                     false},
  {GgmlType::kF64,     "f64",     1,      8,                     false},
  {GgmlType::kIQ1_M,   "iq1_m",   256,    32 + 16 + 8,           false},
  {GgmlType::kBF16,    "bf16",    1,      2,                     true},
  {GgmlType::kTQ1_0,   "tq1_0",   256,    2 + 4 * 13,            false},
  {GgmlType::kTQ2_0,   "tq2_0",   256,    2 + 64,                false},
  {GgmlType::kMXFP4,   "mxfp4",   32,     1 + 16,                false},
}};
// clang-format on

constexpr std::array<std::string_view, 13> kValueTypeNames = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};

// Bytes of one scalar of a fixed-size value type; 0 for string and array.
constexpr size_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8: case GgufValueType::kI8: case GgufValueType::kBool: return 1;
    case GgufValueType::kU16: case GgufValueType::kI16: return 2;
    case GgufValueType::kU32: case GgufValueType::kI32: case GgufValueType::kF32: return 4;
    case GgufValueType::kU64: case GgufValueType::kI64: case GgufValueType::kF64: return 8;
    case GgufValueType::kString: case GgufValueType::kArray: return 0;
  }
  return 0;
}

// The variant alternative that holds a value of type t (kArray has none).
constexpr size_t alternative_of(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8: return 0;
    case GgufValueType::kI8: return 1;
    case GgufValueType::kU16: return 2;
    case GgufValueType::kI16: return 3;
    case GgufValueType::kU32: return 4;
    case GgufValueType::kI32: return 5;
    case GgufValueType::kF32: return 6;
    case GgufValueType::kBool: return 7;
    case GgufValueType::kString: return 8;
    case GgufValueType::kU64: return 9;
    case GgufValueType::kI64: return 10;
    case GgufValueType::kF64: return 11;
    case GgufValueType::kArray: return 12;
  }
  return 12;
}

constexpr std::array<GgufValueType, 12> kTypeOfAlternative = {
    GgufValueType::kU8,  GgufValueType::kI8,  GgufValueType::kU16,   GgufValueType::kI16,
    GgufValueType::kU32, GgufValueType::kI32, GgufValueType::kF32,   GgufValueType::kBool,
    GgufValueType::kString, GgufValueType::kU64, GgufValueType::kI64, GgufValueType::kF64};

// ---------------------------------------------------------------------------------------------
// Parsing

// Bounds-checked little-endian reads from the mapping. The first failure sticks; callers
// check ok() at natural points and report status().
class Cursor {
 public:
  Cursor(const std::string& path, std::span<const std::byte> bytes) : path_(path), bytes_(bytes) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }

  template <class T>
  Status read(T* out, std::string_view what) {
    if (remaining() < sizeof(T)) return truncated(what, sizeof(T));
    std::memcpy(out, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return OkStatus();
  }

  Status read_string(std::string* out, std::string_view what) {
    uint64_t len{};
    LOWBIT_RETURN_IF_ERROR(read(&len, what));
    if (len > remaining()) {
      return DataLoss(fmt::format("{}: {} has length {} at offset {}, past the end of the file ({} bytes)",
                                  path_, what, len, pos_ - sizeof len, bytes_.size()));
    }
    out->assign(reinterpret_cast<const char*>(bytes_.data() + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return OkStatus();
  }

 private:
  Status truncated(std::string_view what, size_t need) const {
    return DataLoss(fmt::format("{}: truncated: {} needs {} bytes at offset {}, file has {}", path_, what,
                                need, pos_, bytes_.size()));
  }

  const std::string& path_;
  std::span<const std::byte> bytes_;
  size_t pos_ = 0;
};

template <class T>
Status read_scalar_as(Cursor& c, GgufValue::Scalar* out, std::string_view what) {
  T v{};
  LOWBIT_RETURN_IF_ERROR(c.read(&v, what));
  *out = v;
  return OkStatus();
}

Status read_scalar(const std::string& path, Cursor& c, GgufValueType type, GgufValue::Scalar* out,
                   const std::string& what) {
  switch (type) {
    case GgufValueType::kU8: return read_scalar_as<uint8_t>(c, out, what);
    case GgufValueType::kI8: return read_scalar_as<int8_t>(c, out, what);
    case GgufValueType::kU16: return read_scalar_as<uint16_t>(c, out, what);
    case GgufValueType::kI16: return read_scalar_as<int16_t>(c, out, what);
    case GgufValueType::kU32: return read_scalar_as<uint32_t>(c, out, what);
    case GgufValueType::kI32: return read_scalar_as<int32_t>(c, out, what);
    case GgufValueType::kF32: return read_scalar_as<float>(c, out, what);
    case GgufValueType::kU64: return read_scalar_as<uint64_t>(c, out, what);
    case GgufValueType::kI64: return read_scalar_as<int64_t>(c, out, what);
    case GgufValueType::kF64: return read_scalar_as<double>(c, out, what);
    case GgufValueType::kBool: {
      uint8_t b{};
      LOWBIT_RETURN_IF_ERROR(c.read(&b, what));
      if (b > 1) return DataLoss(fmt::format("{}: {} is a bool with byte value {} (expected 0 or 1)", path, what, b));
      *out = b == 1;
      return OkStatus();
    }
    case GgufValueType::kString: {
      std::string s;
      LOWBIT_RETURN_IF_ERROR(c.read_string(&s, what));
      *out = std::move(s);
      return OkStatus();
    }
    case GgufValueType::kArray: break;
  }
  return Internal("read_scalar on an array type");
}

Status read_value_type(const std::string& path, Cursor& c, GgufValueType* out, const std::string& what) {
  uint32_t id{};
  LOWBIT_RETURN_IF_ERROR(c.read(&id, what + " type"));
  if (id >= kValueTypeNames.size()) {
    return DataLoss(fmt::format("{}: {} has unknown value type {} (expected 0..12)", path, what, id));
  }
  *out = static_cast<GgufValueType>(id);
  return OkStatus();
}

Status read_value(const std::string& path, Cursor& c, GgufValue* v, const std::string& what) {
  LOWBIT_RETURN_IF_ERROR(read_value_type(path, c, &v->type, what));
  if (v->type != GgufValueType::kArray) return read_scalar(path, c, v->type, &v->scalar, what);

  LOWBIT_RETURN_IF_ERROR(read_value_type(path, c, &v->array_type, what + " element"));
  if (v->array_type == GgufValueType::kArray) {
    return Unsupported(fmt::format("{}: {} is an array of arrays, which is not supported", path, what));
  }
  uint64_t n{};
  LOWBIT_RETURN_IF_ERROR(c.read(&n, what + " length"));
  // Every element takes at least this many bytes (a string its u64 length), so a length the
  // rest of the file cannot hold is rejected before anything is reserved.
  const size_t min_bytes = v->array_type == GgufValueType::kString ? sizeof(uint64_t) : scalar_size(v->array_type);
  if (n > c.remaining() / min_bytes) {
    return DataLoss(fmt::format("{}: {} is an array of {} {} elements, past the end of the file", path, what, n,
                                kValueTypeNames[static_cast<size_t>(v->array_type)]));
  }
  v->array.resize(static_cast<size_t>(n));
  for (auto& e : v->array) LOWBIT_RETURN_IF_ERROR(read_scalar(path, c, v->array_type, &e, what));
  return OkStatus();
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }  // callers keep x far below 2^63

bool is_pow2(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

std::string dims_string(std::span<const int64_t> dims) { return fmt::format("[{}]", fmt::join(dims, ", ")); }

Status read_tensor_info(const std::string& path, Cursor& c, size_t index, GgufTensor* t) {
  const std::string what = fmt::format("tensor #{}", index);
  LOWBIT_RETURN_IF_ERROR(c.read_string(&t->name, what + " name"));
  const std::string tname = "tensor " + t->name;
  uint32_t n_dims{};
  LOWBIT_RETURN_IF_ERROR(c.read(&n_dims, tname + " n_dims"));
  if (n_dims < 1 || n_dims > kMaxGgufDims) {
    return DataLoss(fmt::format("{}: {} has {} dims (expected 1..{})", path, tname, n_dims, kMaxGgufDims));
  }
  t->dims.resize(n_dims);
  uint64_t numel = 1;
  for (auto& d : t->dims) {
    uint64_t v{};
    LOWBIT_RETURN_IF_ERROR(c.read(&v, tname + " dims"));
    if (v < 1 || v > static_cast<uint64_t>(kMaxElements) || __builtin_mul_overflow(numel, v, &numel) ||
        numel > static_cast<uint64_t>(kMaxElements)) {
      return DataLoss(fmt::format("{}: {} has dim {} (dims must be >= 1 with at most 2^40 elements in all)", path,
                                  tname, v));
    }
    d = static_cast<int64_t>(v);
  }
  uint32_t type_id{};
  LOWBIT_RETURN_IF_ERROR(c.read(&type_id, tname + " type"));
  const GgmlTypeTraits* tt = ggml_type_traits(type_id);
  if (tt == nullptr) return DataLoss(fmt::format("{}: {} has unknown ggml type {}", path, tname, type_id));
  t->type = tt->type;
  if (t->dims[0] % tt->block_size != 0) {
    return DataLoss(fmt::format("{}: {} has ne0={}, not a multiple of {}'s block size {}", path, tname, t->dims[0],
                                tt->name, tt->block_size));
  }
  // numel <= 2^40 and type_size <= 300: no overflow.
  t->nbytes = numel / static_cast<uint64_t>(tt->block_size) * static_cast<uint64_t>(tt->type_size);
  LOWBIT_RETURN_IF_ERROR(c.read(&t->offset, tname + " offset"));
  return OkStatus();
}

Result<GgufFile> parse(const std::string& path, std::shared_ptr<MappedFile> mapped) {
  const auto bytes = mapped->bytes();
  Cursor c(path, bytes);
  GgufFile f;
  f.path = path;

  if (bytes.size() < 4 || std::memcmp(bytes.data(), kMagic, 4) != 0) {
    return DataLoss(path + ": not a GGUF file (expected the magic \"GGUF\" in its first 4 bytes)");
  }
  uint32_t magic{};
  LOWBIT_RETURN_IF_ERROR(c.read(&magic, "magic"));
  LOWBIT_RETURN_IF_ERROR(c.read(&f.version, "version"));
  if (f.version == __builtin_bswap32(kVersion) || f.version == __builtin_bswap32(2u)) {
    return Unsupported(path + ": big-endian GGUF is not supported");
  }
  if (f.version != 2 && f.version != 3) {
    return Unsupported(fmt::format("{}: GGUF version {} is not supported (expected 2 or 3)", path, f.version));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  LOWBIT_RETURN_IF_ERROR(c.read(&n_tensors, "tensor_count"));
  LOWBIT_RETURN_IF_ERROR(c.read(&n_kv, "metadata_kv_count"));
  // A key-value pair takes at least 13 bytes (key length, value type, 1-byte value), a tensor info 32.
  if (n_kv > kMaxKeys || n_kv > c.remaining() / 13) {
    return DataLoss(fmt::format("{}: metadata_kv_count {} is more than the file can hold", path, n_kv));
  }
  if (n_tensors > kMaxTensors || n_tensors > c.remaining() / 32) {
    return DataLoss(fmt::format("{}: tensor_count {} is more than the file can hold", path, n_tensors));
  }

  std::set<std::string, std::less<>> keys;
  f.metadata.reserve(static_cast<size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    LOWBIT_RETURN_IF_ERROR(c.read_string(&key, fmt::format("metadata key #{}", i)));
    if (!keys.insert(key).second) return DataLoss(fmt::format("{}: metadata key '{}' appears twice", path, key));
    GgufValue v;
    LOWBIT_RETURN_IF_ERROR(read_value(path, c, &v, fmt::format("metadata '{}'", key)));
    f.metadata.emplace_back(std::move(key), std::move(v));
  }

  f.alignment = kDefaultAlignment;
  if (const GgufValue* a = f.find("general.alignment")) {
    if (a->type != GgufValueType::kU32 || !is_pow2(std::get<uint32_t>(a->scalar))) {
      return DataLoss(path + ": metadata 'general.alignment' must be a u32 power of two");
    }
    f.alignment = std::get<uint32_t>(a->scalar);
  }

  std::set<std::string, std::less<>> names;
  f.tensors.resize(static_cast<size_t>(n_tensors));
  for (size_t i = 0; i < f.tensors.size(); ++i) {
    LOWBIT_RETURN_IF_ERROR(read_tensor_info(path, c, i, &f.tensors[i]));
    if (!names.insert(f.tensors[i].name).second) {
      return DataLoss(fmt::format("{}: tensor {} appears twice", path, f.tensors[i].name));
    }
  }

  f.data_offset = align_up(c.pos(), f.alignment);
  const uint64_t file_size = bytes.size();
  for (GgufTensor& t : f.tensors) {
    if (t.offset % f.alignment != 0) {
      return DataLoss(fmt::format("{}: tensor {} offset {} is not a multiple of the alignment {}", path, t.name,
                                  t.offset, f.alignment));
    }
    uint64_t begin, end;
    if (__builtin_add_overflow(f.data_offset, t.offset, &begin) || __builtin_add_overflow(begin, t.nbytes, &end) ||
        end > file_size) {
      return DataLoss(fmt::format("{}: tensor {} ({} {}, {} bytes at data offset {}) extends past the end of the "
                                  "file ({} bytes; truncated?)",
                                  path, t.name, ggml_type_name(t.type), dims_string(t.dims), t.nbytes, t.offset,
                                  file_size));
    }
    t.data = bytes.data() + begin;
  }
  // Two tensors may not share bytes: a writer never does that, and one forged offset would
  // otherwise make a tensor an alias of another.
  std::vector<const GgufTensor*> by_offset;
  for (const GgufTensor& t : f.tensors) {
    if (t.nbytes > 0) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensor& a = *by_offset[i - 1];
    const GgufTensor& b = *by_offset[i];
    if (b.offset < a.offset + a.nbytes) {
      return DataLoss(fmt::format("{}: tensors {} and {} overlap (data offsets {} and {}, {} bytes)", path, a.name, b.name,
                                  a.offset, b.offset, a.nbytes));
    }
  }
  f.file = std::move(mapped);
  return f;
}

// ---------------------------------------------------------------------------------------------
// Dequantization: float types here, block types through lowbit/ggml_blocks.h. `n` is a multiple of
// the block size.

float half(ggml_half h) { return decode(Format::kFp16, h); }

template <class Block>
Block load_block(const std::byte* src, int64_t i) {
  Block b;
  std::memcpy(&b, src + i * static_cast<int64_t>(sizeof(Block)), sizeof(Block));
  return b;
}

void dequant_f16(const std::byte* src, float* y, int64_t n) {
  std::vector<uint16_t> h(static_cast<size_t>(n));  // the mapping may be only 2-byte aligned
  std::memcpy(h.data(), src, h.size() * sizeof(uint16_t));
  f16_to_f32(h, std::span(y, static_cast<size_t>(n)));
}

void dequant_bf16(const std::byte* src, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, sizeof h);
    const uint32_t bits = uint32_t{h} << 16;
    std::memcpy(y + i, &bits, sizeof bits);
  }
}

void dequant_f32(const std::byte* src, float* y, int64_t n) {
  std::memcpy(y, src, static_cast<size_t>(n) * sizeof(float));
}

using DequantFn = void (*)(const std::byte*, float*, int64_t);

DequantFn dequant_fn(GgmlType t) {
  switch (t) {
    case GgmlType::kF32: return dequant_f32;
    case GgmlType::kF16: return dequant_f16;
    case GgmlType::kBF16: return dequant_bf16;
    default: return nullptr;
  }
}

// ---------------------------------------------------------------------------------------------
// Llama loading

constexpr int64_t kMaxDim = int64_t{1} << 20;
constexpr int64_t kMaxHiddenDim = int64_t{1} << 22;
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxSeqLen = int64_t{1} << 24;

Status check_range(const std::string& path, std::string_view key, int64_t value, int64_t max) {
  if (value < 1 || value > max) {
    return DataLoss(fmt::format("{}: metadata '{}'={} is out of range (expected 1..{})", path, key, value, max));
  }
  return OkStatus();
}

Result<int64_t> get_count(const GgufFile& f, std::string_view key, int64_t max) {
  LOWBIT_ASSIGN_OR_RETURN(uint64_t v, f.get_u64(key));
  const int64_t s = v > static_cast<uint64_t>(max) ? max + 1 : static_cast<int64_t>(v);
  LOWBIT_RETURN_IF_ERROR(check_range(f.path, key, s, max));
  return s;
}

// The value at `key`, or `fallback` when the key is absent (a present key of the wrong type is an error).
Result<float> get_f32_or(const GgufFile& f, std::string_view key, float fallback) {
  if (f.find(key) == nullptr) return fallback;
  return f.get_f32(key);
}

Result<LlamaConfig> llama_config(const GgufFile& f, const Architecture& arch) {
  const std::string& path = f.path;
  LlamaConfig c;
  // Keys are "<arch>.embedding_length" ...: the architecture's own prefix.
  const auto key = [&](std::string_view k) { return fmt::format("{}.{}", arch.name, k); };
  LOWBIT_ASSIGN_OR_RETURN(int64_t dim, get_count(f, key("embedding_length"), kMaxDim));
  LOWBIT_ASSIGN_OR_RETURN(int64_t hidden, get_count(f, key("feed_forward_length"), kMaxHiddenDim));
  LOWBIT_ASSIGN_OR_RETURN(int64_t layers, get_count(f, key("block_count"), kMaxLayers));
  LOWBIT_ASSIGN_OR_RETURN(int64_t heads, get_count(f, key("attention.head_count"), dim));
  int64_t kv_heads = heads;
  if (f.find(key("attention.head_count_kv")) != nullptr) {
    LOWBIT_ASSIGN_OR_RETURN(kv_heads, get_count(f, key("attention.head_count_kv"), heads));
  }
  LOWBIT_ASSIGN_OR_RETURN(int64_t seq_len, get_count(f, key("context_length"), kMaxSeqLen));
  if (dim % heads != 0) {
    return DataLoss(fmt::format("{}: head_count={} does not divide embedding_length={}", path, heads, dim));
  }
  if (heads % kv_heads != 0) {
    return DataLoss(fmt::format("{}: head_count_kv={} does not divide head_count={}", path, kv_heads, heads));
  }
  const int64_t head_dim = dim / heads;
  if (head_dim % 2 != 0) {
    return DataLoss(fmt::format("{}: head size {} is odd; RoPE rotates pairs, expected it even", path, head_dim));
  }
  if (f.find(key("rope.dimension_count")) != nullptr) {
    LOWBIT_ASSIGN_OR_RETURN(uint64_t rot, f.get_u64(key("rope.dimension_count")));
    if (rot != static_cast<uint64_t>(head_dim)) {
      return Unsupported(fmt::format("{}: {}={} (partial RoPE) is not supported; expected "
                                     "the head size {}",
                                     path, key("rope.dimension_count"), rot, head_dim));
    }
  }
  c.dim = static_cast<int>(dim);
  c.hidden_dim = static_cast<int>(hidden);
  c.n_layers = static_cast<int>(layers);
  c.n_heads = static_cast<int>(heads);
  c.n_kv_heads = static_cast<int>(kv_heads);
  c.seq_len = static_cast<int>(seq_len);
  c.arch = std::string(arch.name);
  c.rope_style = arch.rope;
  c.qkv_bias = arch.qkv_bias;
  LOWBIT_ASSIGN_OR_RETURN(c.rope_theta, get_f32_or(f, key("rope.freq_base"), 10000.0f));
  LOWBIT_ASSIGN_OR_RETURN(c.norm_eps, get_f32_or(f, key("attention.layer_norm_rms_epsilon"), 1e-5f));
  if (!(c.rope_theta > 0.0f) || !std::isfinite(c.rope_theta)) {
    return DataLoss(fmt::format("{}: {}={} (expected a positive number)", path, key("rope.freq_base"), c.rope_theta));
  }
  if (!(c.norm_eps >= 0.0f) || !std::isfinite(c.norm_eps)) {
    return DataLoss(fmt::format("{}: {}={} (expected >= 0)", path, key("attention.layer_norm_rms_epsilon"), c.norm_eps));
  }
  return c;
}


// Binds `dest` to tensor `name` of ggml dims `expect` ([in, out] for a (out, in) matrix).
Status bind(Model& m, const GgufFile& f, const std::string& name, std::vector<int64_t> expect, ConstTensorView* dest) {
  const GgufTensor* t = f.find_tensor(name);
  if (t == nullptr) return NotFound(fmt::format("{}: tensor {} is missing", f.path, name));
  if (t->dims != expect) {
    return DataLoss(fmt::format("{}: tensor {} has dims {} (ggml order), expected {}", f.path, name,
                                dims_string(t->dims), dims_string(expect)));
  }
  const std::vector<int64_t> shape = t->shape();
  const int64_t n = t->numel();
  if (t->type == GgmlType::kF32 && reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0) {
    const auto* data = reinterpret_cast<const float*>(t->data);
    LOWBIT_RETURN_IF_ERROR(check_finite(f.path, name, data, n));
    *dest = ConstTensorView(data, DType::kF32, std::span<const int64_t>(shape));
    return OkStatus();
  }
  LOWBIT_ASSIGN_OR_RETURN(Tensor owned, dequantize_tensor(f, *t));
  LOWBIT_RETURN_IF_ERROR(check_finite(f.path, name, owned.data_as<float>(), n));
  *dest = ConstTensorView(owned.data(), DType::kF32, std::span<const int64_t>(shape));
  m.owned.push_back(std::move(owned));  // the heap buffer, and so the view, survives the move
  return OkStatus();
}

// A Q8_0 / Q4_0 matrix as the QuantizedTensor it is: int8:g32:sym:fp16 / int4:g32:sym:fp16 with
// the block's d as the group's fp16 scale and Q4_0's nibble - 8 as the int4 code. lowbit's
// dequantization, code * scale in f32, is then ggml's x * d bit for bit.
QuantizedTensor quantized_from_blocks(const GgufTensor& t) {
  const bool int4 = t.type == GgmlType::kQ4_0;
  QuantizedTensor q;
  q.spec.element = int4 ? Format::kInt4 : Format::kInt8;
  q.spec.granularity = Granularity::kGroup;
  q.spec.group = kQK;
  q.spec.scale_format = Format::kFp16;
  const std::vector<int64_t> shape = t.shape();
  q.shape = Shape::row_major(shape);
  q.cols = t.dims[0];
  q.rows = t.numel() / q.cols;
  q.row_bytes = static_cast<int64_t>(packed_bytes(q.spec.element, static_cast<size_t>(q.cols)));
  const int64_t groups = q.cols / kQK, blocks = q.rows * groups;
  q.codes.assign(static_cast<size_t>(q.rows * q.row_bytes), 0);
  q.scale_codes.resize(static_cast<size_t>(blocks) * sizeof(ggml_half));
  q.scales.resize(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* row = q.codes.data() + (b / groups) * q.row_bytes;
    const int64_t c0 = (b % groups) * kQK;
    ggml_half d;
    if (int4) {
      const auto blk = load_block<BlockQ4_0>(t.data, b);
      d = blk.d;
      // lowbit int4: two's complement nibbles, element c in byte c/2, low nibble first.
      for (int j = 0; j < kQK / 2; ++j) {
        for (const auto& [c, nib] : {std::pair{c0 + j, blk.qs[j] & 0x0F}, std::pair{c0 + j + kQK / 2, blk.qs[j] >> 4}}) {
          const auto code = static_cast<uint8_t>((nib - 8) & 0x0F);
          row[c / 2] = static_cast<uint8_t>(row[c / 2] | (c % 2 == 0 ? code : code << 4));
        }
      }
    } else {
      const auto blk = load_block<BlockQ8_0>(t.data, b);
      d = blk.d;
      std::memcpy(row + c0, blk.qs, kQK);
    }
    std::memcpy(q.scale_codes.data() + b * static_cast<int64_t>(sizeof d), &d, sizeof d);
    q.scales[static_cast<size_t>(b)] = half(d);
  }
  return q;
}

// A Q4_K / Q6_K tensor (runs_as_blocks) of dims `expect`, kept as its blocks under `lowbit_name` in
// Model::ggml; `dest` stays empty. Every super-block scale (d, and Q4_K's dmin) must be finite: the one
// pass over the blocks a load makes.
Status bind_blocks(Model& m, const GgufFile& f, const GgufTensor& t, const std::vector<int64_t>& expect,
                   const std::string& lowbit_name) {
  if (t.dims != expect) {
    return DataLoss(fmt::format("{}: tensor {} has dims {} (ggml order), expected {}", f.path, t.name,
                                dims_string(t.dims), dims_string(expect)));
  }
  const GgmlMatrix w{.type = t.type, .blocks = t.data, .rows = t.dims[1], .cols = t.dims[0]};
  const bool q4 = t.type == GgmlType::kQ4_K;
  const int64_t blocks = t.numel() / kGgmlQK_K, size = q4 ? sizeof(BlockQ4_K) : sizeof(BlockQ6_K);
  const size_t d_at = q4 ? offsetof(BlockQ4_K, d) : offsetof(BlockQ6_K, d);
  for (int64_t b = 0; b < blocks; ++b) {
    for (size_t at : q4 ? std::vector<size_t>{d_at, offsetof(BlockQ4_K, dmin)} : std::vector<size_t>{d_at}) {
      uint16_t h;
      std::memcpy(&h, t.data + b * size + static_cast<int64_t>(at), sizeof h);
      if ((h & 0x7C00u) == 0x7C00u) {
        return DataLoss(fmt::format("{}: tensor {} block {} has a non-finite scale (fp16 bits 0x{:04x})", f.path, t.name, b, h));
      }
    }
  }
  m.ggml.insert_or_assign(lowbit_name, w);
  return OkStatus();
}

// bind() for a linear weight: Q8_0 / Q4_0 tensors are also kept as QuantizedTensors under
// `lowbit_name` (Model::quantized), so they run on lowbit's int8/int4 kernels and are counted as what
// they are; Q4_K / Q6_K ones only as their blocks (bind_blocks, ggml_matmul), with no fp32 copy.
// ggml_matmul serves every block type, but the other types are still dequantized here: save_model,
// the streaming writer and the training layer read an unquantized linear's fp32 weights, and only
// the Q4_K/Q6_K (Qwen) path has been taught otherwise in the consumers that need it.
bool runs_as_blocks(GgmlType type) { return type == GgmlType::kQ4_K || type == GgmlType::kQ6_K; }

Status bind_linear(Model& m, const GgufFile& f, const std::string& name, std::vector<int64_t> expect,
                   ConstTensorView* dest, const std::string& lowbit_name) {
  if (const GgufTensor* t = f.find_tensor(name); t != nullptr && runs_as_blocks(t->type)) {
    return bind_blocks(m, f, *t, expect, lowbit_name);
  }
  LOWBIT_RETURN_IF_ERROR(bind(m, f, name, std::move(expect), dest));
  const GgufTensor* t = f.find_tensor(name);
  if (t->type == GgmlType::kQ8_0 || t->type == GgmlType::kQ4_0) m.quantized.emplace(lowbit_name, quantized_from_blocks(*t));
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Writing

void put_bytes(std::string& out, const void* p, size_t n) { out.append(static_cast<const char*>(p), n); }
template <class T>
void put(std::string& out, T v) { put_bytes(out, &v, sizeof v); }
void put_string(std::string& out, std::string_view s) {
  put<uint64_t>(out, s.size());
  out.append(s);
}

void put_scalar(std::string& out, const GgufValue::Scalar& s) {
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          put_string(out, v);
        } else if constexpr (std::is_same_v<T, bool>) {
          put<uint8_t>(out, v ? 1 : 0);
        } else {
          put<T>(out, v);
        }
      },
      s);
}

Status check_value(const std::string& key, const GgufValue& v) {
  const auto bad = [&](std::string_view what) {
    return InvalidArgument(fmt::format("GGUF metadata '{}': {}", key, what));
  };
  if (static_cast<uint32_t>(v.type) > 12) return bad("unknown value type");
  if (v.type != GgufValueType::kArray) {
    if (v.scalar.index() != alternative_of(v.type)) return bad("value does not hold its declared type");
    return OkStatus();
  }
  if (static_cast<uint32_t>(v.array_type) > 12 || v.array_type == GgufValueType::kArray) {
    return bad("array elements must be scalars or strings");
  }
  for (const auto& e : v.array) {
    if (e.index() != alternative_of(v.array_type)) return bad("an array element does not hold the array's type");
  }
  return OkStatus();
}

void put_value(std::string& out, const GgufValue& v) {
  put<uint32_t>(out, static_cast<uint32_t>(v.type));
  if (v.type != GgufValueType::kArray) {
    put_scalar(out, v.scalar);
    return;
  }
  put<uint32_t>(out, static_cast<uint32_t>(v.array_type));
  put<uint64_t>(out, v.array.size());
  for (const auto& e : v.array) put_scalar(out, e);
}

std::string spec_text(const QuantSpec& s) { return to_string(s); }

// A tensor ready to write: its GGUF type and encoded bytes.
struct Encoded {
  GgmlType type;
  std::vector<int64_t> dims;  // ggml order
  std::vector<uint8_t> bytes;
};

// lowbit int8/int4 g32 sym fp16 -> Q8_0 / Q4_0 blocks. The checks above guarantee cols % 32 == 0.
// Straight from the packed rows (convert.h's layout), rows on every thread.
void encode_blocks(const QuantizedTensor& q, bool int4, std::vector<uint8_t>& out) {
  const int64_t groups = q.cols / kQK;
  const size_t block = int4 ? sizeof(BlockQ4_0) : sizeof(BlockQ8_0);
  out.assign(static_cast<size_t>(q.rows * groups) * block, 0);
  parallel_for(0, q.rows, std::max<int64_t>(1, 65536 / q.cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* codes = q.codes.data() + r * q.row_bytes;
      uint8_t* dst = out.data() + static_cast<size_t>(r * groups) * block;
      for (int64_t g = 0; g < groups; ++g, dst += block) {
        const size_t s = static_cast<size_t>(r * groups + g) * sizeof(ggml_half);
        std::memcpy(dst, q.scale_codes.data() + s, sizeof(ggml_half));  // d: the fp16 scale's bits
        if (int4) {
          // lowbit: element 2i in the low nibble of byte i, two's complement. ggml Q4_0: element j in
          // the low nibble of qs[j], element j+16 in the high nibble, stored as code + 8 — for a 4-bit
          // two's complement nibble u, (signed(u) + 8) mod 16 = u ^ 8. So with a = the group's bytes
          // 0..7 (elements 0..15) and b = bytes 8..15 (elements 16..31): qs[2i] takes the low nibbles of
          // a[i] and b[i], qs[2i + 1] their high nibbles.
          const uint8_t* a = codes + g * (kQK / 2);
          const uint8_t* b = a + kQK / 4;
          for (int i = 0; i < kQK / 4; ++i) {
            dst[2 + 2 * i] = static_cast<uint8_t>(((a[i] & 0x0Fu) | ((b[i] & 0x0Fu) << 4)) ^ 0x88u);
            dst[3 + 2 * i] = static_cast<uint8_t>(((a[i] >> 4) | (b[i] & 0xF0u)) ^ 0x88u);
          }
        } else {
          std::memcpy(dst + 2, codes + g * kQK, kQK);  // int8 codes are Q8_0's qs as they are
        }
      }
    }
  });
}

Result<Encoded> encode_tensor(const GgufWriteTensor& t) {
  const auto bad = [&](const std::string& what) {
    return InvalidArgument(fmt::format("GGUF tensor '{}': {}", t.name, what));
  };
  if (t.name.empty()) return InvalidArgument("GGUF tensor with an empty name");
  if (t.shape.empty() || t.shape.size() > kMaxGgufDims) {
    return bad(fmt::format("shape has {} dims (expected 1..4)", t.shape.size()));
  }
  int64_t numel = 1;
  for (int64_t d : t.shape) {
    if (d < 1 || d > kMaxElements || __builtin_mul_overflow(numel, d, &numel) || numel > kMaxElements) {
      return bad(fmt::format("bad shape {} (dims must be >= 1, at most 2^40 elements)", dims_string(t.shape)));
    }
  }
  Encoded e;
  e.dims.assign(t.shape.rbegin(), t.shape.rend());
  if (t.quant != nullptr && t.quant->spec.ggml != GgmlType::kF32) {
    // ggml blocks as lowbit chose them: the codes are the tensor's bytes.
    const QuantizedTensor& q = *t.quant;
    const GgmlBlockInfo* info = ggml_block_info(q.spec.ggml);
    if (info == nullptr) return bad("unknown ggml block type");
    if (q.numel() != numel || q.cols != t.shape.back()) {
      return bad(fmt::format("shape {} does not match the quantized tensor's {}", dims_string(t.shape), q.shape.to_string()));
    }
    if (q.cols % info->block_size != 0 || q.row_bytes != ggml_row_bytes(q.spec.ggml, q.cols) ||
        q.codes.size() != static_cast<size_t>(q.rows * q.row_bytes)) {
      return bad(fmt::format("rows of {} values do not hold whole {} blocks of {}", q.cols, info->name, info->block_size));
    }
    e.type = q.spec.ggml;
    e.bytes = q.codes;
    return e;
  }
  if (t.quant != nullptr) {
    const QuantizedTensor& q = *t.quant;
    const QuantSpec& s = q.spec;
    const bool ok_spec = (s.element == Format::kInt8 || s.element == Format::kInt4) &&
                         s.granularity == Granularity::kGroup && s.group == kQK && s.symmetric &&
                         s.scale_format == Format::kFp16 && !s.tensor_scale && q.zero_points.empty();
    if (!ok_spec) {
      return bad(fmt::format("quantization spec {} has no GGUF type (accepted: int8:g32:sym:fp16 -> q8_0, "
                             "int4:g32:sym:fp16 -> q4_0)",
                             spec_text(s)));
    }
    if (q.numel() != numel || q.cols != t.shape.back()) {
      return bad(fmt::format("shape {} does not match the quantized tensor's {}", dims_string(t.shape),
                             q.shape.to_string()));
    }
    if (q.cols % kQK != 0) return bad(fmt::format("in_features {} is not a multiple of 32", q.cols));
    if (q.scale_codes.size() != static_cast<size_t>(q.rows * (q.cols / kQK)) * sizeof(ggml_half) ||
        q.codes.size() != static_cast<size_t>(q.rows * q.row_bytes)) {
      return bad("quantized tensor's codes or scales have the wrong size");
    }
    const bool int4 = s.element == Format::kInt4;
    e.type = int4 ? GgmlType::kQ4_0 : GgmlType::kQ8_0;
    encode_blocks(q, int4, e.bytes);
    return e;
  }
  if (t.data.size() != static_cast<size_t>(numel)) {
    return bad(fmt::format("data has {} values, shape {} needs {}", t.data.size(), dims_string(t.shape), numel));
  }
  e.type = t.type;
  if (t.type == GgmlType::kF32) {
    e.bytes.resize(t.data.size() * sizeof(float));
    std::memcpy(e.bytes.data(), t.data.data(), e.bytes.size());
  } else if (t.type == GgmlType::kF16) {
    // Straight into the bytes, a piece at a time through a small buffer (no second copy of the
    // whole tensor), on every thread: elementwise, any split.
    e.bytes.resize(t.data.size() * sizeof(uint16_t));
    parallel_for(0, static_cast<int64_t>(t.data.size()), int64_t{1} << 16, [&](int64_t i0, int64_t i1) {
      uint16_t h[4096];
      for (int64_t i = i0; i < i1; i += 4096) {
        const size_t a = static_cast<size_t>(i), n = static_cast<size_t>(std::min<int64_t>(4096, i1 - i));
        f32_to_f16(t.data.subspan(a, n), std::span<uint16_t>(h, n));
        std::memcpy(e.bytes.data() + 2 * a, h, 2 * n);
      }
    });
  } else {
    return bad(fmt::format("float data can be written as f32 or f16, not {} (pass a QuantizedTensor for q8_0/q4_0)",
                           ggml_type_name(t.type)));
  }
  return e;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public API

const GgmlTypeTraits* ggml_type_traits(uint32_t id) {
  for (const auto& t : kGgmlTypes) {
    if (static_cast<uint32_t>(t.type) == id) return &t;
  }
  return nullptr;
}

std::string_view ggml_type_name(GgmlType type) {
  const GgmlTypeTraits* t = ggml_type_traits(static_cast<uint32_t>(type));
  return t ? t->name : "unknown";
}

std::string_view gguf_value_type_name(GgufValueType type) {
  const auto i = static_cast<size_t>(type);
  return i < kValueTypeNames.size() ? kValueTypeNames[i] : "unknown";
}

GgufValue GgufValue::of(Scalar v) {
  GgufValue r;
  r.type = kTypeOfAlternative[v.index()];
  r.scalar = std::move(v);
  return r;
}

GgufValue GgufValue::array_of(GgufValueType element_type, std::vector<Scalar> elements) {
  GgufValue r;
  r.type = GgufValueType::kArray;
  r.array_type = element_type;
  r.array = std::move(elements);
  return r;
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  for (const auto& [k, v] : metadata) {
    if (k == key) return &v;
  }
  return nullptr;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

namespace {

Result<const GgufValue*> lookup(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.find(key);
  if (v == nullptr) return NotFound(fmt::format("{}: metadata key '{}' is missing", f.path, key));
  return v;
}

Status wrong_type(const GgufFile& f, std::string_view key, const GgufValue& v, std::string_view expected) {
  return InvalidArgument(fmt::format("{}: metadata '{}' is {}, expected {}", f.path, key,
                                     v.type == GgufValueType::kArray
                                         ? fmt::format("an array of {}", gguf_value_type_name(v.array_type))
                                         : fmt::format("a {}", gguf_value_type_name(v.type)),
                                     expected));
}

// Any integer value as a signed 128-bit number (so both u64 and i64 fit), or nullopt.
std::optional<__int128> integer_of(const GgufValue& v) {
  if (v.type == GgufValueType::kArray) return std::nullopt;
  return std::visit(
      [](const auto& x) -> std::optional<__int128> {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) return static_cast<__int128>(x);
        return std::nullopt;
      },
      v.scalar);
}

template <class T>
Result<T> get_integer(const GgufFile& f, std::string_view key, std::string_view name) {
  LOWBIT_ASSIGN_OR_RETURN(const GgufValue* v, lookup(f, key));
  const std::optional<__int128> x = integer_of(*v);
  if (!x) return wrong_type(f, key, *v, fmt::format("an integer ({})", name));
  if (*x < static_cast<__int128>(std::numeric_limits<T>::min()) ||
      *x > static_cast<__int128>(std::numeric_limits<T>::max())) {
    const std::string value = *x < 0 ? std::to_string(static_cast<int64_t>(*x)) : std::to_string(static_cast<uint64_t>(*x));
    return InvalidArgument(fmt::format("{}: metadata '{}' = {} does not fit in {}", f.path, key, value, name));
  }
  return static_cast<T>(*x);
}

}  // namespace

Result<uint32_t> GgufFile::get_u32(std::string_view key) const { return get_integer<uint32_t>(*this, key, "u32"); }
Result<uint64_t> GgufFile::get_u64(std::string_view key) const { return get_integer<uint64_t>(*this, key, "u64"); }
Result<int64_t> GgufFile::get_i64(std::string_view key) const { return get_integer<int64_t>(*this, key, "i64"); }

Result<float> GgufFile::get_f32(std::string_view key) const {
  LOWBIT_ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (v->type == GgufValueType::kF32) return std::get<float>(v->scalar);
  if (v->type == GgufValueType::kF64) {
    const double d = std::get<double>(v->scalar);
    const auto x = static_cast<float>(d);
    if (static_cast<double>(x) == d || std::isnan(d)) return x;
    return InvalidArgument(fmt::format("{}: metadata '{}' = {} is an f64 that f32 cannot hold exactly", path, key, d));
  }
  return wrong_type(*this, key, *v, "an f32");
}

Result<bool> GgufFile::get_bool(std::string_view key) const {
  LOWBIT_ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (v->type != GgufValueType::kBool) return wrong_type(*this, key, *v, "a bool");
  return std::get<bool>(v->scalar);
}

Result<std::string> GgufFile::get_string(std::string_view key) const {
  LOWBIT_ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (v->type != GgufValueType::kString) return wrong_type(*this, key, *v, "a string");
  return std::get<std::string>(v->scalar);
}

Result<uint64_t> GgufFile::get_array_length(std::string_view key) const {
  LOWBIT_ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (v->type != GgufValueType::kArray) return wrong_type(*this, key, *v, "an array");
  return static_cast<uint64_t>(v->array.size());
}

Result<GgufFile> open_gguf(const std::string& path) {
  LOWBIT_ASSIGN_OR_RETURN(MappedFile f, MappedFile::open(path));
  return parse(path, std::make_shared<MappedFile>(std::move(f)));
}

Result<Tensor> dequantize_tensor(const GgufFile& file, const GgufTensor& t) {
  const DequantFn fn = dequant_fn(t.type);
  const GgmlBlockInfo* block = ggml_block_info(t.type);
  if (fn == nullptr && block == nullptr) {
    return Unsupported(fmt::format("{}: tensor {} has type {}, which lowbit cannot dequantize (supported: f32, f16, "
                                   "bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl, iq4_xs)",
                                   file.path, t.name, ggml_type_name(t.type)));
  }
  const std::vector<int64_t> shape = t.shape();
  LOWBIT_ASSIGN_OR_RETURN(Tensor out, Tensor::empty(DType::kF32, std::span<const int64_t>(shape)));
  if (fn != nullptr) {
    fn(t.data, out.data_as<float>(), t.numel());
    return out;
  }
  // Block structs hold uint16_t fields: a file with general.alignment 1 may place a tensor at an odd
  // offset, so such a tensor is copied to an aligned buffer first.
  const void* blocks = t.data;
  std::vector<uint16_t> aligned;
  if (reinterpret_cast<uintptr_t>(t.data) % alignof(uint16_t) != 0) {
    aligned.resize((t.nbytes + 1) / 2);
    std::memcpy(aligned.data(), t.data, t.nbytes);
    blocks = aligned.data();
  }
  const bool ok = dequantize_row(t.type, blocks, out.data_as<float>(), t.numel());
  if (!ok) return Internal(fmt::format("{}: tensor {} ({}) failed to dequantize", file.path, t.name, block->name));
  return out;
}

Result<Model> load_gguf(const std::string& path) {
  LOWBIT_ASSIGN_OR_RETURN(GgufFile f, open_gguf(path));
  LOWBIT_ASSIGN_OR_RETURN(std::string arch, f.get_string("general.architecture"));
  const Architecture* a = find_architecture(arch);
  if (a == nullptr) {
    return Unsupported(fmt::format("{}: architecture {} is not supported (supported: llama, qwen2)", path, arch));
  }
  LOWBIT_ASSIGN_OR_RETURN(LlamaConfig c, llama_config(f, *a));

  // The vocabulary size is the embedding's second ggml dim; the tokenizer, when present, must agree.
  const GgufTensor* embd = f.find_tensor("token_embd.weight");
  if (embd == nullptr) return NotFound(path + ": tensor token_embd.weight is missing");
  if (embd->dims.size() != 2) {
    return DataLoss(fmt::format("{}: tensor token_embd.weight has dims {}, expected [{}, vocab]", path,
                                dims_string(embd->dims), c.dim));
  }
  const int64_t vocab = embd->dims[1];
  LOWBIT_RETURN_IF_ERROR(check_range(path, "vocab (token_embd.weight dim 1)", vocab, kMaxVocab));
  if (f.find("tokenizer.ggml.tokens") != nullptr) {
    LOWBIT_ASSIGN_OR_RETURN(uint64_t n_tokens, f.get_array_length("tokenizer.ggml.tokens"));
    if (n_tokens != static_cast<uint64_t>(vocab)) {
      return DataLoss(fmt::format("{}: tokenizer.ggml.tokens has {} entries, token_embd.weight {} rows", path,
                                  n_tokens, vocab));
    }
  }
  c.vocab_size = static_cast<int>(vocab);
  c.shared_classifier = f.find_tensor("output.weight") == nullptr;
  // Blocks past llama.block_count would be ignored silently: the file and its header disagree.
  for (const GgufTensor& t : f.tensors) {
    if (!t.name.starts_with("blk.")) continue;
    int64_t block = 0;
    size_t k = 4;
    for (; k < t.name.size() && k < 14 && t.name[k] >= '0' && t.name[k] <= '9'; ++k) block = block * 10 + (t.name[k] - '0');
    if (k > 4 && block >= c.n_layers) {
      return DataLoss(fmt::format("{}: tensor {} is in block {}, but {}.block_count is {}", path, t.name, block, arch,
                                  c.n_layers));
    }
  }

  Model m;
  m.config = c;
  m.path = path;
  m.file = f.file;
  m.weights.layers.resize(static_cast<size_t>(c.n_layers));
  const auto meta = [&](const char* key) { return f.get_string(key).value_or(""); };
  LOWBIT_RETURN_IF_ERROR(read_activation_specs(path, meta, &m.activations, c.head_dim()));
  auto& w = m.weights;
  const int64_t dim = c.dim;
  // GGUF lists dims fastest first, so a (out, in) matrix is [in, out]. llama.cpp's converter
  // already permutes wq/wk from Hugging Face's rotate-half order back to Meta's interleaved
  // pairs (llama.cpp's LLAMA_ROPE_TYPE_NORM), which is the RoPE lowbit's forward pass applies
  // (llama2.c style): the weights are used as stored, with no un-permutation.
  if (const GgufTensor* t = f.find_tensor("token_embd.weight"); t != nullptr && runs_as_blocks(t->type)) {
    LOWBIT_RETURN_IF_ERROR(bind_blocks(m, f, *t, {dim, vocab}, kTokEmbeddingsName));  // rows decoded per lookup
  } else {
    LOWBIT_RETURN_IF_ERROR(bind(m, f, "token_embd.weight", {dim, vocab}, &w.tok_embeddings));
  }
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = w.layers[static_cast<size_t>(l)];
    const std::string p = fmt::format("blk.{}.", l);
    LOWBIT_RETURN_IF_ERROR(bind(m, f, p + "attn_norm.weight", {dim}, &L.attn_norm));
    LOWBIT_RETURN_IF_ERROR(bind(m, f, p + "ffn_norm.weight", {dim}, &L.ffn_norm));
    for (const SlotInfo& s : kSlotInfo) {
      LOWBIT_RETURN_IF_ERROR(bind_linear(m, f, fmt::format("{}{}.weight", p, s.gguf), {extent(c, s.in), extent(c, s.out)},
                                         &(L.*s.weight), linear_name(l, s)));
    }
    if (c.qkv_bias) {
      const int64_t kv_dim = c.kv_dim();
      LOWBIT_RETURN_IF_ERROR(bind(m, f, p + "attn_q.bias", {dim}, &L.bq));
      LOWBIT_RETURN_IF_ERROR(bind(m, f, p + "attn_k.bias", {kv_dim}, &L.bk));
      LOWBIT_RETURN_IF_ERROR(bind(m, f, p + "attn_v.bias", {kv_dim}, &L.bv));
    }
  }
  LOWBIT_RETURN_IF_ERROR(bind(m, f, "output_norm.weight", {dim}, &w.final_norm));
  if (c.shared_classifier) {
    w.classifier = w.tok_embeddings;
    if (const auto e = m.ggml.find(kTokEmbeddingsName); e != m.ggml.end()) m.ggml.insert_or_assign(kClassifierName, e->second);
  } else {
    LOWBIT_RETURN_IF_ERROR(bind_linear(m, f, "output.weight", {dim, vocab}, &w.classifier, kClassifierName));
  }
  return m;
}

namespace {

Result<uint64_t> checked_alignment(const std::vector<std::pair<std::string, GgufValue>>& metadata) {
  uint64_t alignment = kDefaultAlignment;
  std::set<std::string, std::less<>> keys;
  for (const auto& [key, value] : metadata) {
    if (!keys.insert(key).second) return InvalidArgument(fmt::format("GGUF metadata '{}' appears twice", key));
    LOWBIT_RETURN_IF_ERROR(check_value(key, value));
    if (key == "general.alignment") {
      if (value.type != GgufValueType::kU32 || !is_pow2(std::get<uint32_t>(value.scalar))) {
        return InvalidArgument("GGUF metadata 'general.alignment' must be a u32 power of two");
      }
      alignment = std::get<uint32_t>(value.scalar);
    }
  }
  return alignment;
}

}  // namespace

Result<std::vector<uint8_t>> encode_gguf_tensor(const GgufWriteTensor& t, GgmlType* type) {
  LOWBIT_ASSIGN_OR_RETURN(Encoded e, encode_tensor(t));
  if (type != nullptr) *type = e.type;
  return std::move(e.bytes);
}

Result<GgufLayout> gguf_layout(const std::vector<std::pair<std::string, GgufValue>>& metadata,
                               const std::vector<GgufTensorDecl>& tensors) {
  LOWBIT_ASSIGN_OR_RETURN(const uint64_t alignment, checked_alignment(metadata));
  GgufLayout l;
  std::string& header = l.header;
  put_bytes(header, kMagic, sizeof kMagic);
  put<uint32_t>(header, kVersion);
  put<uint64_t>(header, tensors.size());
  put<uint64_t>(header, metadata.size());
  for (const auto& [key, value] : metadata) {
    put_string(header, key);
    put_value(header, value);
  }
  std::set<std::string, std::less<>> names;
  uint64_t offset = 0;
  for (const GgufTensorDecl& t : tensors) {
    if (t.name.empty()) return InvalidArgument("GGUF tensor with an empty name");
    if (!names.insert(t.name).second) return InvalidArgument(fmt::format("GGUF tensor '{}' appears twice", t.name));
    if (t.shape.empty() || t.shape.size() > kMaxGgufDims) {
      return InvalidArgument(fmt::format("GGUF tensor '{}': shape has {} dims (expected 1..4)", t.name, t.shape.size()));
    }
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 1 || d > kMaxElements || __builtin_mul_overflow(numel, d, &numel) || numel > kMaxElements) {
        return InvalidArgument(fmt::format("GGUF tensor '{}': bad shape {} (dims must be >= 1, at most 2^40 elements)", t.name,
                                           dims_string(t.shape)));
      }
    }
    const int64_t cols = t.shape.back();
    const int64_t row = t.type == GgmlType::kF32 ? 4 * cols : t.type == GgmlType::kF16 ? 2 * cols : ggml_row_bytes(t.type, cols);
    if (row <= 0) {
      return InvalidArgument(fmt::format("GGUF tensor '{}': rows of {} values do not hold whole {} blocks", t.name, cols,
                                         ggml_type_name(t.type)));
    }
    put_string(header, t.name);
    put<uint32_t>(header, static_cast<uint32_t>(t.shape.size()));
    for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) put<uint64_t>(header, static_cast<uint64_t>(*d));
    put<uint32_t>(header, static_cast<uint32_t>(t.type));
    put<uint64_t>(header, offset);
    l.offsets.push_back(offset);
    l.sizes.push_back(static_cast<uint64_t>(row * (numel / cols)));
    offset = align_up(offset + l.sizes.back(), alignment);
  }
  header.resize(static_cast<size_t>(align_up(header.size(), alignment)), '\0');
  for (uint64_t& o : l.offsets) o += header.size();
  l.file_size = header.size() + offset;
  return l;
}

Status write_gguf(const std::string& path, const GgufWriteSpec& spec) {
  // Validate and encode everything before the file is created.
  LOWBIT_RETURN_IF_ERROR(checked_alignment(spec.metadata).status());
  std::set<std::string, std::less<>> names;
  std::vector<Encoded> encoded;
  std::vector<GgufTensorDecl> decls;
  encoded.reserve(spec.tensors.size());
  for (const auto& t : spec.tensors) {
    if (!names.insert(t.name).second) return InvalidArgument(fmt::format("GGUF tensor '{}' appears twice", t.name));
    LOWBIT_ASSIGN_OR_RETURN(Encoded e, encode_tensor(t));
    decls.push_back({t.name, t.shape, e.type});
    encoded.push_back(std::move(e));
  }
  LOWBIT_ASSIGN_OR_RETURN(const GgufLayout layout, gguf_layout(spec.metadata, decls));

  LOWBIT_ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::create(path));
  LOWBIT_RETURN_IF_ERROR(out.write(layout.header));
  const std::string zeros(4096, '\0');
  for (size_t i = 0; i < encoded.size(); ++i) {
    const Encoded& e = encoded[i];
    LOWBIT_CHECK(e.bytes.size() == layout.sizes[i], "write_gguf: encoded size disagrees with the layout");
    LOWBIT_RETURN_IF_ERROR(out.write(std::as_bytes(std::span(e.bytes))));
    const uint64_t end = i + 1 < encoded.size() ? layout.offsets[i + 1] : layout.file_size;
    for (uint64_t pad = end - layout.offsets[i] - e.bytes.size(); pad != 0;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(pad, zeros.size()));
      LOWBIT_RETURN_IF_ERROR(out.write(std::string_view(zeros).substr(0, n)));
      pad -= n;
    }
  }
  return out.commit();
}

}  // namespace lowbit
