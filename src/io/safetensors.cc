// safetensors reader and writer (https://github.com/huggingface/safetensors, "Format"), the
// Hugging Face Llama loader on top of it, and lowbit's quantized layout.
//
// The reader validates the whole header (sizes, offsets, coverage) before it hands out a
// single view. nlohmann::json throws on typed access to the wrong type, so every value is
// type-checked first and parsing uses the non-throwing overload: no exception leaves here.

#include "lowbit/safetensors.h"
#include "lowbit/sharded.h"
#include "model_internal.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "lowbit/convert.h"
#include "lowbit/file.h"
#include "lowbit/formats.h"
#include "lowbit/model.h"
#include "lowbit/quant.h"
#include "lowbit/status.h"
#include "lowbit/tensor.h"

namespace lowbit {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian and is mapped as it is");

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit (MAX_HEADER_SIZE)
constexpr size_t kHeaderAlign = 8;                 // the header is padded so the data starts 8-aligned
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kQuantConfigKey = "quantization_config";
constexpr const char* kQuantMethod = "lowbit";
constexpr int kQuantVersion = 1;

struct DTypeName {
  DType dtype;
  std::string_view name;
};
constexpr DTypeName kDTypes[] = {
    {DType::kF32, "F32"}, {DType::kF16, "F16"}, {DType::kBF16, "BF16"}, {DType::kI8, "I8"},
    {DType::kU8, "U8"},   {DType::kI32, "I32"}, {DType::kI64, "I64"},   {DType::kF64, "F64"},
    {DType::kI16, "I16"}, {DType::kU16, "U16"}, {DType::kU32, "U32"},
};
static_assert(std::size(kDTypes) == kNumDTypes, "every DType has a safetensors name");

std::string shape_string(std::span<const int64_t> shape) {
  return fmt::format("({})", fmt::join(shape, ", "));
}

// Product of dims and the byte count, overflow-checked; nullopt on overflow.
std::optional<uint64_t> byte_count(std::span<const int64_t> shape, DType dtype) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  uint64_t bytes;
  if (__builtin_mul_overflow(n, static_cast<uint64_t>(dtype_size(dtype)), &bytes)) return std::nullopt;
  if (bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return bytes;
}

// A non-negative JSON integer, or nullopt.
std::optional<uint64_t> as_uint(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

Result<SafetensorsTensorInfo> parse_tensor_info(const std::string& path, const std::string& name, const json& v) {
  const std::string where = fmt::format("{}: tensor {}", path, name);
  if (!v.is_object()) return DataLoss(where + ": header entry is not a JSON object");
  const auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) return DataLoss(where + ": missing string \"dtype\"");
  SafetensorsTensorInfo info;
  info.name = name;
  Result<DType> dtype = parse_safetensors_dtype(dt->get_ref<const std::string&>());
  if (!dtype.ok()) return Status(dtype.status().code(), where + ": " + dtype.status().message());
  info.dtype = *dtype;

  const auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) return DataLoss(where + ": missing array \"shape\"");
  for (const json& d : *sh) {
    const std::optional<uint64_t> u = as_uint(d);
    if (!u || *u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return DataLoss(fmt::format("{}: shape {} has an entry that is not a non-negative integer", where, sh->dump()));
    }
    info.shape.push_back(static_cast<int64_t>(*u));
  }
  const auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2 || !as_uint((*off)[0]) || !as_uint((*off)[1])) {
    return DataLoss(where + ": \"data_offsets\" must be [begin, end], two non-negative integers");
  }
  info.begin = *as_uint((*off)[0]);
  info.end = *as_uint((*off)[1]);
  if (info.end < info.begin) {
    return DataLoss(fmt::format("{}: data_offsets [{}, {}] end before begin", where, info.begin, info.end));
  }
  const std::optional<uint64_t> bytes = byte_count(info.shape, info.dtype);
  if (!bytes) return DataLoss(fmt::format("{}: shape {} overflows 64-bit sizes", where, shape_string(info.shape)));
  if (info.end - info.begin != *bytes) {
    return DataLoss(fmt::format("{}: data_offsets [{}, {}] hold {} bytes, but {} {} needs {}", where, info.begin,
                                info.end, info.end - info.begin, safetensors_dtype_name(info.dtype),
                                shape_string(info.shape), *bytes));
  }
  return info;
}

uint64_t read_u64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

// ---- dtype names -------------------------------------------------------------------------

std::string_view safetensors_dtype_name(DType dtype) {
  for (const DTypeName& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  LOWBIT_CHECK(false, "safetensors_dtype_name: unknown DType");
  return {};
}

Result<DType> parse_safetensors_dtype(std::string_view name) {
  for (const DTypeName& d : kDTypes) {
    if (d.name == name) return d.dtype;
  }
  return Unsupported(fmt::format("dtype {} is not supported (supported: F32 F16 BF16 I8 U8 I32 I64 F64 I16 U16 U32)",
                                 name));
}

int64_t SafetensorsTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // bounded by the validated byte count
  return n;
}

// ---- reader ------------------------------------------------------------------------------

const SafetensorsTensorInfo* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> SafetensorsFile::data(const SafetensorsTensorInfo& info) const {
  return file_->bytes().subspan(data_start_ + info.begin, info.end - info.begin);
}

Result<ConstTensorView> SafetensorsFile::tensor(std::string_view name) const {
  const SafetensorsTensorInfo* info = find(name);
  if (info == nullptr) return NotFound(fmt::format("{}: no tensor named {}", path_, name));
  if (info->shape.size() > static_cast<size_t>(kMaxDims)) {
    return Unsupported(fmt::format("{}: tensor {} has {} dims; views hold at most {}", path_, name,
                                   info->shape.size(), kMaxDims));
  }
  return ConstTensorView(data(*info).data(), info->dtype, std::span<const int64_t>(info->shape));
}

Result<SafetensorsFile> open_safetensors(const std::string& path) {
  LOWBIT_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::open(path));
  auto file = std::make_shared<MappedFile>(std::move(mapped));
  const std::span<const std::byte> bytes = file->bytes();
  if (bytes.size() < sizeof(uint64_t)) {
    return DataLoss(fmt::format("{}: file has {} bytes, expected at least the 8-byte safetensors header length",
                                path, bytes.size()));
  }
  const uint64_t n = read_u64(bytes.data());
  const uint64_t avail = bytes.size() - sizeof(uint64_t);
  if (n > kMaxHeaderBytes || n > avail) {
    return DataLoss(fmt::format("{}: safetensors header length {} is {} (file has {} bytes)", path, n,
                                n > avail ? "past the end of the file" : "over the 100 MB limit", bytes.size()));
  }
  const auto* text = reinterpret_cast<const char*>(bytes.data() + sizeof(uint64_t));
  const json header = json::parse(text, text + n, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return DataLoss(fmt::format("{}: safetensors header ({} bytes) is not valid JSON", path, n));
  if (!header.is_object()) return DataLoss(path + ": safetensors header is not a JSON object");

  SafetensorsFile f;
  f.path_ = path;
  f.data_start_ = static_cast<size_t>(sizeof(uint64_t) + n);
  const uint64_t buffer = avail - n;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) return DataLoss(path + ": __metadata__ is not a JSON object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) return DataLoss(fmt::format("{}: __metadata__ entry {} is not a string", path, mk));
        f.metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    LOWBIT_ASSIGN_OR_RETURN(SafetensorsTensorInfo info, parse_tensor_info(path, key, value));
    if (info.end > buffer) {
      return DataLoss(fmt::format("{}: tensor {} data_offsets [{}, {}] run past the end of the {}-byte data buffer",
                                  path, key, info.begin, info.end, buffer));
    }
    f.tensors_.push_back(std::move(info));
  }
  std::sort(f.tensors_.begin(), f.tensors_.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // The spec: the tensors cover the buffer exactly, which also rules out overlaps.
  uint64_t pos = 0;
  const SafetensorsTensorInfo* prev = nullptr;
  for (const SafetensorsTensorInfo& t : f.tensors_) {
    if (t.begin < pos) {
      return DataLoss(fmt::format("{}: tensors {} [{}, {}] and {} [{}, {}] overlap", path, prev->name, prev->begin,
                                  prev->end, t.name, t.begin, t.end));
    }
    if (t.begin > pos) {
      return DataLoss(fmt::format("{}: hole in the data buffer: bytes [{}, {}) before tensor {} belong to no tensor",
                                  path, pos, t.begin, t.name));
    }
    pos = t.end;
    prev = &t;
  }
  if (pos != buffer) {
    return DataLoss(fmt::format("{}: hole in the data buffer: bytes [{}, {}) after the last tensor belong to no tensor",
                                path, pos, buffer));
  }
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_.emplace(f.tensors_[i].name, i);
  f.file_ = std::move(file);
  return f;
}

// ---- writer ------------------------------------------------------------------------------

Status write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsPiecewiseEntry> pieces;
  pieces.reserve(tensors.size());
  for (const SafetensorsEntry& t : tensors) {
    const std::optional<uint64_t> bytes = byte_count(t.shape, t.dtype);
    if (!t.name.empty() && t.name != kMetadataKey && (!bytes || *bytes != t.bytes.size())) {
      return InvalidArgument(fmt::format("{}: tensor {} has {} bytes, but {} {} needs {}", path, t.name,
                                         t.bytes.size(), safetensors_dtype_name(t.dtype), shape_string(t.shape),
                                         bytes ? fmt::format("{}", *bytes) : std::string("more than 2^63")));
    }
    const std::span<const std::byte> b = t.bytes;
    pieces.push_back({t.name, t.dtype, t.shape, [b](const auto& emit) { return b.empty() ? OkStatus() : emit(b); }});
  }
  return write_safetensors_piecewise(path, pieces, metadata);
}

Status write_safetensors_piecewise(const std::string& path, const std::vector<SafetensorsPiecewiseEntry>& tensors,
                                   const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) {
    json meta = json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header[kMetadataKey] = std::move(meta);
  }
  uint64_t pos = 0;
  std::vector<uint64_t> sizes;
  for (const SafetensorsPiecewiseEntry& t : tensors) {
    if (t.name.empty() || t.name == kMetadataKey) {
      return InvalidArgument(fmt::format("{}: tensor name '{}' is not allowed", path, t.name));
    }
    if (header.contains(t.name)) return InvalidArgument(fmt::format("{}: tensor {} is given twice", path, t.name));
    const std::optional<uint64_t> bytes = byte_count(t.shape, t.dtype);
    if (!bytes) return InvalidArgument(fmt::format("{}: tensor {} {} needs more than 2^63 bytes", path, t.name, shape_string(t.shape)));
    header[t.name] = {{"dtype", std::string(safetensors_dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {pos, pos + *bytes}}};
    pos += *bytes;
    sizes.push_back(*bytes);
  }
  std::string text;
  try {  // dump() throws only on invalid UTF-8 in a name or a metadata string
    text = header.dump();
  } catch (const json::exception&) {
    return InvalidArgument(path + ": a tensor name or metadata string is not valid UTF-8");
  }
  text.append((kHeaderAlign - text.size() % kHeaderAlign) % kHeaderAlign, ' ');
  std::string prefix(sizeof(uint64_t), '\0');
  const uint64_t n = text.size();
  std::memcpy(prefix.data(), &n, sizeof n);

  LOWBIT_ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::create(path));
  LOWBIT_RETURN_IF_ERROR(out.write(prefix + text));
  for (size_t i = 0; i < tensors.size(); ++i) {
    uint64_t written = 0;
    const auto emit = [&](std::span<const std::byte> b) -> Status {
      written += b.size();
      if (written > sizes[i]) return OkStatus();  // reported below, without writing past the tensor
      return out.write(b);
    };
    LOWBIT_RETURN_IF_ERROR(tensors[i].produce(emit));
    if (written != sizes[i]) {
      return Internal(fmt::format("{}: tensor {}: {} bytes produced, {} expected", path, tensors[i].name, written, sizes[i]));
    }
  }
  return out.commit();
}

// ---- Hugging Face Llama ------------------------------------------------------------------

int64_t hf_rope_source_row(int64_t r, int64_t head_dim) {
  const int64_t h = r / head_dim, j = r % head_dim;
  return h * head_dim + (j % 2 == 0 ? j / 2 : head_dim / 2 + j / 2);
}

std::vector<int64_t> hf_rope_order(int64_t rows, int64_t head_dim) {
  std::vector<int64_t> order(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) order[static_cast<size_t>(r)] = hf_rope_source_row(r, head_dim);
  return order;
}

std::vector<int64_t> inverse_order(std::span<const int64_t> order) {
  std::vector<int64_t> inv(order.size());
  for (size_t r = 0; r < order.size(); ++r) inv[static_cast<size_t>(order[r])] = static_cast<int64_t>(r);
  return inv;
}


Result<QuantizedTensor> permute_rows(const QuantizedTensor& q, std::span<const int64_t> src) {
  LOWBIT_CHECK(static_cast<int64_t>(src.size()) == q.rows, "permute_rows: order length != rows");
  const BlockGrid g = q.grid();
  const bool move_scales = g.block_rows == 1 && g.grid_rows == q.rows && q.rows > 1;
  if (!move_scales) {
    for (int64_t r = 0; r < q.rows; ++r) {
      if (r / g.block_rows != src[static_cast<size_t>(r)] / g.block_rows) {
        return Unsupported(fmt::format("{} blocks of {} rows would mix under the row permutation", to_string(q.spec),
                                       g.block_rows));
      }
    }
  }
  QuantizedTensor out = q;
  const auto rb = static_cast<size_t>(q.row_bytes);
  const size_t scale_row = q.scale_codes.size() / static_cast<size_t>(std::max<int64_t>(g.grid_rows, 1));
  const auto gc = static_cast<size_t>(g.grid_cols);
  for (size_t r = 0; r < src.size(); ++r) {
    const auto s = static_cast<size_t>(src[r]);
    std::memcpy(out.codes.data() + r * rb, q.codes.data() + s * rb, rb);
    if (!move_scales) continue;
    std::memcpy(out.scale_codes.data() + r * scale_row, q.scale_codes.data() + s * scale_row, scale_row);
    std::copy_n(q.scales.begin() + static_cast<std::ptrdiff_t>(s * gc), gc, out.scales.begin() + static_cast<std::ptrdiff_t>(r * gc));
    if (!q.zero_points.empty()) {
      std::copy_n(q.zero_points.begin() + static_cast<std::ptrdiff_t>(s * gc), gc,
                  out.zero_points.begin() + static_cast<std::ptrdiff_t>(r * gc));
    }
  }
  return out;
}

namespace {

// Bounds no real model reaches; they keep every product far inside 64 bits.
constexpr int64_t kMaxDim = int64_t{1} << 20;
constexpr int64_t kMaxHiddenDim = int64_t{1} << 22;
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxSeqLen = int64_t{1} << 24;

class ConfigReader {
 public:
  ConfigReader(std::string path, const json& j) : path_(std::move(path)), j_(j) {}

  // An integer in [1, max]; `fallback` when the key is absent (or null).
  Result<int64_t> integer(const char* key, int64_t max, std::optional<int64_t> fallback = std::nullopt) const {
    const auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      if (fallback) return *fallback;
      return DataLoss(fmt::format("{}: {} is missing", path_, key));
    }
    if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > max) {
      return DataLoss(fmt::format("{}: {} is {}, expected an integer in 1..{}", path_, key, it->dump(), max));
    }
    return it->get<int64_t>();
  }
  Result<double> number(const char* key, double fallback) const {
    const auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return fallback;
    if (!it->is_number() || !(it->get<double>() > 0.0) || !std::isfinite(it->get<double>())) {
      return DataLoss(fmt::format("{}: {} is {}, expected a positive number", path_, key, it->dump()));
    }
    return it->get<double>();
  }
  Result<bool> boolean(const char* key, bool fallback) const {
    const auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) return DataLoss(fmt::format("{}: {} is {}, expected true or false", path_, key, it->dump()));
    return it->get<bool>();
  }
  std::optional<std::string> string(const char* key) const {
    const auto it = j_.find(key);
    if (it == j_.end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
  }
  bool present(const char* key) const {
    const auto it = j_.find(key);
    return it != j_.end() && !it->is_null();
  }

 private:
  std::string path_;
  const json& j_;
};

// Hugging Face LlamaConfig -> LlamaConfig. Defaults are LlamaConfig's (transformers).
Result<LlamaConfig> parse_llama_config(const std::string& path) {
  LOWBIT_ASSIGN_OR_RETURN(std::string text, read_file(path));
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return DataLoss(path + ": not a JSON object");
  const ConfigReader r(path, j);
  const std::optional<std::string> type = r.string("model_type");
  if (!type) return DataLoss(path + ": model_type is missing (supported: llama)");
  if (*type != "llama") return Unsupported(fmt::format("{}: model_type {} is not supported (supported: llama)", path, *type));
  if (const auto act = r.string("hidden_act"); act && *act != "silu") {
    return Unsupported(fmt::format("{}: hidden_act {} is not supported (supported: silu)", path, *act));
  }
  if (r.present("rope_scaling")) return Unsupported(path + ": rope_scaling is not supported (plain RoPE only)");
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    LOWBIT_ASSIGN_OR_RETURN(bool bias, r.boolean(key, false));
    if (bias) return Unsupported(fmt::format("{}: {} = true is not supported", path, key));
  }

  LOWBIT_ASSIGN_OR_RETURN(int64_t dim, r.integer("hidden_size", kMaxDim));
  LOWBIT_ASSIGN_OR_RETURN(int64_t hidden, r.integer("intermediate_size", kMaxHiddenDim));
  LOWBIT_ASSIGN_OR_RETURN(int64_t layers, r.integer("num_hidden_layers", kMaxLayers));
  LOWBIT_ASSIGN_OR_RETURN(int64_t heads, r.integer("num_attention_heads", dim));
  LOWBIT_ASSIGN_OR_RETURN(int64_t kv_heads, r.integer("num_key_value_heads", heads, heads));
  LOWBIT_ASSIGN_OR_RETURN(int64_t vocab, r.integer("vocab_size", kMaxVocab));
  LOWBIT_ASSIGN_OR_RETURN(int64_t seq_len, r.integer("max_position_embeddings", kMaxSeqLen));
  LOWBIT_ASSIGN_OR_RETURN(double theta, r.number("rope_theta", 10000.0));
  LOWBIT_ASSIGN_OR_RETURN(double eps, r.number("rms_norm_eps", 1e-6));
  LOWBIT_ASSIGN_OR_RETURN(bool tied, r.boolean("tie_word_embeddings", false));
  if (dim % heads != 0) {
    return DataLoss(fmt::format("{}: num_attention_heads={} does not divide hidden_size={}", path, heads, dim));
  }
  if (heads % kv_heads != 0) {
    return DataLoss(fmt::format("{}: num_key_value_heads={} does not divide num_attention_heads={}", path, kv_heads,
                                heads));
  }
  if ((dim / heads) % 2 != 0) {
    return DataLoss(fmt::format("{}: head size hidden_size/num_attention_heads={} is odd; RoPE rotates pairs", path,
                                dim / heads));
  }
  LOWBIT_ASSIGN_OR_RETURN(int64_t head_dim, r.integer("head_dim", kMaxDim, dim / heads));
  if (head_dim != dim / heads) {
    return Unsupported(fmt::format("{}: head_dim={} differs from hidden_size/num_attention_heads={}", path, head_dim,
                                   dim / heads));
  }
  LlamaConfig c;
  c.dim = static_cast<int>(dim);
  c.hidden_dim = static_cast<int>(hidden);
  c.n_layers = static_cast<int>(layers);
  c.n_heads = static_cast<int>(heads);
  c.n_kv_heads = static_cast<int>(kv_heads);
  c.vocab_size = static_cast<int>(vocab);
  c.seq_len = static_cast<int>(seq_len);
  c.rope_theta = static_cast<float>(theta);
  c.norm_eps = static_cast<float>(eps);
  c.shared_classifier = tied;
  return c;
}


// Converts `src` (F32 / F16 / BF16 bytes, (rows, cols)) to f32 rows, row r of the result
// from row source_row(r).
void convert_rows(DType dtype, std::span<const std::byte> src, int64_t rows, int64_t cols, int64_t head_dim,
                  bool permute, float* out) {
  const size_t esize = dtype_size(dtype);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t s = permute ? hf_rope_source_row(r, head_dim) : r;
    const auto* in = reinterpret_cast<const uint8_t*>(src.data()) + static_cast<size_t>(s * cols) * esize;
    const std::span<float> dst(out + r * cols, static_cast<size_t>(cols));
    const std::span<const uint8_t> bytes(in, static_cast<size_t>(cols) * esize);
    switch (dtype) {
      case DType::kF16: decode_span(Format::kFp16, bytes, dst); break;
      case DType::kBF16: decode_span(Format::kBf16, bytes, dst); break;
      default: std::memcpy(dst.data(), in, bytes.size()); break;  // F32, possibly unaligned
    }
  }
}

std::vector<std::string> split_names(const std::string& list) {
  std::vector<std::string> out;
  for (size_t pos = 0; pos < list.size();) {
    const size_t end = std::min(list.find(',', pos), list.size());
    out.push_back(list.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

class WeightLoader {
 public:
  WeightLoader(Model& m, const ShardedCheckpoint& ck, std::map<std::string, QuantizedTensor> quantized,
               std::vector<std::string> interleaved)
      : m_(m), ck_(ck), quantized_(std::move(quantized)), interleaved_(std::move(interleaved)) {}

  bool has(const std::string& name) const { return ck_.file_of(name) != nullptr || quantized_.contains(name); }

  // One weight of shape `shape` ((rows) or (rows, cols)), as f32. `permute_head_dim` > 0
  // reorders rows from rotate-half to interleaved RoPE pairs. A weight the file stores in
  // lowbit's quantized layout goes to Model::quantized under `lowbit_name` (linears only) and,
  // dequantized, to `dest`.
  Status load(const std::string& name, std::initializer_list<int64_t> shape, ConstTensorView* dest,
              int64_t permute_head_dim = 0, const std::string& lowbit_name = "") {
    const SafetensorsFile* file = ck_.file_of(name);
    const SafetensorsFile& f_ = file ? *file : ck_.shards.front();
    const SafetensorsTensorInfo* info = file ? file->find(name) : nullptr;
    const std::vector<int64_t> want(shape);
    if (info == nullptr && quantized_.contains(name)) {
      return load_quantized(name, want, dest, permute_head_dim, lowbit_name);
    }
    if (info == nullptr) {
      return NotFound(fmt::format("{}: tensor {} is missing (expected shape {})", ck_.index_path, name, shape_string(want)));
    }
    used_.push_back(name);
    if (info->shape != want) {
      return DataLoss(fmt::format("{}: tensor {} has shape {}, expected {} from config.json", f_.path(), name,
                                  shape_string(info->shape), shape_string(want)));
    }
    if (info->dtype != DType::kF32 && info->dtype != DType::kF16 && info->dtype != DType::kBF16) {
      return Unsupported(fmt::format("{}: tensor {} has dtype {}; weights must be F32, F16 or BF16", f_.path(), name,
                                     safetensors_dtype_name(info->dtype)));
    }
    const std::span<const std::byte> src = f_.data(*info);
    const int64_t rows = want[0], cols = want.size() == 2 ? want[1] : 1;
    const bool aligned = reinterpret_cast<uintptr_t>(src.data()) % alignof(float) == 0;
    if (info->dtype == DType::kF32 && aligned && permute_head_dim == 0 && &f_ == &ck_.shards.front()) {
      const auto* data = reinterpret_cast<const float*>(src.data());
      LOWBIT_RETURN_IF_ERROR(check_finite(f_.path(), name, data, rows * cols));
      *dest = ConstTensorView(data, DType::kF32, std::span<const int64_t>(want));
      return OkStatus();
    }
    LOWBIT_ASSIGN_OR_RETURN(Tensor t, Tensor::empty(DType::kF32, std::span<const int64_t>(want)));
    convert_rows(info->dtype, src, rows, cols, permute_head_dim, permute_head_dim > 0, t.data_as<float>());
    LOWBIT_RETURN_IF_ERROR(check_finite(f_.path(), name, t.data_as<float>(), rows * cols));
    *dest = t.view();
    m_.owned.push_back(std::move(t));  // the heap buffer, and so the view, survives the move
    return OkStatus();
  }

  void mark_used(const std::string& name) { used_.push_back(name); }

  Status load_quantized(const std::string& name, const std::vector<int64_t>& want, ConstTensorView* dest,
                        int64_t permute_head_dim, const std::string& lowbit_name) {
    const QuantizedTensor& stored = quantized_.at(name);
    const SafetensorsFile* file = ck_.file_of(name + ".qweight");
    const SafetensorsFile& f_ = file ? *file : ck_.shards.front();
    for (const char* part : {".qweight", ".scales", ".zeros", ".tensor_scale"}) used_.push_back(name + part);
    if (lowbit_name.empty()) {
      return Unsupported(fmt::format("{}: tensor {} is quantized; lowbit runs only linear weights quantized",
                                     f_.path(), name));
    }
    const std::vector<int64_t> shape(stored.shape.dims.begin(), stored.shape.dims.begin() + stored.shape.ndim);
    if (shape != want) {
      return DataLoss(fmt::format("{}: quantized tensor {} has shape {}, expected {} from config.json", f_.path(), name,
                                  shape_string(shape), shape_string(want)));
    }
    QuantizedTensor q = stored;
    if (permute_head_dim > 0 && std::find(interleaved_.begin(), interleaved_.end(), name) == interleaved_.end()) {
      Result<QuantizedTensor> p = permute_rows(stored, hf_rope_order(stored.rows, permute_head_dim));
      if (!p.ok()) {
        return Unsupported(fmt::format("{}: quantized tensor {} is in Hugging Face's RoPE row order, which {}: {}",
                                       f_.path(), name, "cannot be undone exactly", p.status().message()));
      }
      q = std::move(*p);
    }
    LOWBIT_ASSIGN_OR_RETURN(Tensor t, Tensor::empty(DType::kF32, std::span<const int64_t>(want)));
    if (Status st = dequantize(q, t.view()); !st.ok()) {
      return DataLoss(fmt::format("{}: quantized tensor {}: {}", f_.path(), name, st.message()));
    }
    LOWBIT_RETURN_IF_ERROR(check_finite(f_.path(), name, t.data_as<float>(), t.numel()));
    *dest = t.view();
    m_.owned.push_back(std::move(t));
    m_.quantized.emplace(lowbit_name, std::move(q));
    return OkStatus();
  }

  // Tensors in the file that no weight used (Hugging Face's old rotary_emb.inv_freq buffers
  // are recomputed by the forward pass and skipped).
  Status check_unused() const {
    const std::set<std::string> used(used_.begin(), used_.end());
    for (const SafetensorsFile& f : ck_.shards) {
      for (const SafetensorsTensorInfo& t : f.tensors()) {
        if (t.name.ends_with(".rotary_emb.inv_freq")) continue;
        if (!used.contains(t.name)) {
          return Unsupported(fmt::format("{}: unexpected tensor {} (not part of a Llama model lowbit can run)",
                                         f.path(), t.name));
        }
      }
    }
    return OkStatus();
  }

 private:
  Model& m_;
  const ShardedCheckpoint& ck_;
  std::map<std::string, QuantizedTensor> quantized_;  // by file name ("model.layers.0.self_attn.q_proj.weight")
  std::vector<std::string> interleaved_;               // quantized q/k stored in lowbit's row order
  std::vector<std::string> used_;
};

}  // namespace

Result<LlamaConfig> parse_hf_llama_config(const std::string& path) { return parse_llama_config(path); }

Result<Model> load_safetensors(const std::string& path_or_dir) {
  std::error_code ec;
  fs::path dir, weights;
  bool sharded = false;
  if (fs::is_directory(path_or_dir, ec)) {
    dir = path_or_dir;
    weights = dir / "model.safetensors";
    if (!fs::exists(weights, ec) && fs::exists(dir / kShardIndexName, ec)) {
      weights = dir / kShardIndexName;
      sharded = true;
    }
  } else if (fs::path(path_or_dir).filename() == kShardIndexName) {
    weights = path_or_dir;
    dir = weights.parent_path().empty() ? fs::path(".") : weights.parent_path();
    sharded = true;
  } else {
    weights = path_or_dir;
    dir = weights.parent_path().empty() ? fs::path(".") : weights.parent_path();
  }
  const std::string config_path = (dir / "config.json").string();
  if (!fs::exists(config_path, ec)) {
    return NotFound(fmt::format("{}: config.json is missing (a Hugging Face checkpoint needs it beside the weights)",
                                dir.string()));
  }
  LOWBIT_ASSIGN_OR_RETURN(LlamaConfig c, parse_llama_config(config_path));
  ShardedCheckpoint ck;
  if (sharded) {
    LOWBIT_ASSIGN_OR_RETURN(ck, open_sharded(weights.string()));
  } else {
    LOWBIT_ASSIGN_OR_RETURN(SafetensorsFile one, open_safetensors(weights.string()));
    ck = single_file_checkpoint(std::move(one));
  }
  const SafetensorsFile& f = ck.shards.front();  // metadata: the first shard's (lowbit writes it in each)

  Model m;
  m.config = c;
  m.path = path_or_dir;
  m.file = f.file();  // zero-copy views only into this mapping; other shards' weights are copied
  m.weights.layers.resize(static_cast<size_t>(c.n_layers));
  const int64_t dim = c.dim, hd = c.head_dim(), vocab = c.vocab_size;
  std::map<std::string, QuantizedTensor> quantized;
  for (const SafetensorsFile& shard : ck.shards) {
    if (!shard.metadata().contains(kQuantConfigKey)) continue;
    LOWBIT_ASSIGN_OR_RETURN(auto part, read_quantized_safetensors(shard));
    quantized.merge(part);
  }
  const auto meta = [&](const char* key) {
    const auto it = f.metadata().find(key);
    return it == f.metadata().end() ? std::string() : it->second;
  };
  LOWBIT_RETURN_IF_ERROR(read_activation_specs(f.path(), meta, &m.activations, c.head_dim()));
  WeightLoader w(m, ck, std::move(quantized), split_names(meta(kInterleavedRopeKey)));
  LlamaWeights& lw = m.weights;
  LOWBIT_RETURN_IF_ERROR(w.load("model.embed_tokens.weight", {vocab, dim}, &lw.tok_embeddings));
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = lw.layers[static_cast<size_t>(l)];
    const std::string p = fmt::format("model.layers.{}.", l);
    LOWBIT_RETURN_IF_ERROR(w.load(p + "input_layernorm.weight", {dim}, &L.attn_norm));
    LOWBIT_RETURN_IF_ERROR(w.load(p + "post_attention_layernorm.weight", {dim}, &L.ffn_norm));
    for (const SlotInfo& s : kSlotInfo) {
      LOWBIT_RETURN_IF_ERROR(w.load(fmt::format("{}{}.weight", p, s.hf), {extent(c, s.out), extent(c, s.in)},
                                    &(L.*s.weight), s.rope ? hd : 0, linear_name(l, s)));
    }
  }
  LOWBIT_RETURN_IF_ERROR(w.load("model.norm.weight", {dim}, &lw.final_norm));
  if (!c.shared_classifier && w.has("lm_head.weight")) {
    LOWBIT_RETURN_IF_ERROR(w.load("lm_head.weight", {vocab, dim}, &lw.classifier, 0, kClassifierName));
  } else {
    w.mark_used("lm_head.weight");  // tied: Hugging Face ignores a stored copy too
    m.config.shared_classifier = true;
    lw.classifier = lw.tok_embeddings;
  }
  LOWBIT_RETURN_IF_ERROR(w.check_unused());
  return m;
}

// ---- lowbit quantized layout -------------------------------------------------------------

namespace {

// Storage dtype of a scale format's codes.
DType scale_dtype(Format f) {
  switch (f) {
    case Format::kFp32: return DType::kF32;
    case Format::kFp16: return DType::kF16;
    case Format::kBf16: return DType::kBF16;
    default: return DType::kU8;  // e8m0, e4m3
  }
}

// (rows, cols) of the 2-D matrix quantize() sees for a logical shape.
void matrix_of(std::span<const int64_t> shape, int64_t* rows, int64_t* cols) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  *cols = shape.empty() ? 1 : shape.back();
  *rows = *cols == 0 ? 0 : n / *cols;
}

template <class T>
std::span<const std::byte> as_bytes_of(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

bool element_is_zero(const QuantizedTensor& q, int64_t r, int64_t c) {
  const int32_t code = q.code_at(r, c);
  if (traits(q.spec.element).kind == FormatKind::kInteger) return code == 0;
  return decode(q.spec.element, static_cast<uint32_t>(code)) == 0.0f;
}

// The fp32 scale quantize() kept for block b, from its code. Two codes are ambiguous:
// a NaN code is how a zero scale is stored when the scale format has no zero (affine
// constant blocks in e8m0), and e8m0's code 0 (2^-127) also stands for the zero scale of an
// all-zero block. Either reading dequantizes to the same values; this one gives back the
// exact fp32 scale quantize() produced.
float scale_from_code(const QuantizedTensor& q, const BlockGrid& g, int64_t b, uint32_t code) {
  const Format sf = q.spec.scale_format;
  float s = decode(sf, code);
  if (std::isnan(s)) return s;  // the caller refuses it, naming the block
  if (sf == Format::kE8m0 && code == 0 && !q.spec.tensor_scale) {
    const int64_t r0 = (b / g.grid_cols) * g.block_rows, c0 = (b % g.grid_cols) * g.block_cols;
    bool all_zero = true;
    for (int64_t r = r0; r < std::min(g.rows, r0 + g.block_rows) && all_zero; ++r) {
      for (int64_t c = c0; c < std::min(g.cols, c0 + g.block_cols) && all_zero; ++c) all_zero = element_is_zero(q, r, c);
    }
    if (all_zero) return 0.0f;
  }
  if (q.spec.tensor_scale) s *= q.tensor_scale;
  return s;
}

// Unpacks scale code b of a packed scale row (the layout pack_row writes).
uint32_t scale_code_at(Format f, const std::vector<uint8_t>& packed, int64_t b) {
  const auto i = static_cast<size_t>(b);
  switch (traits(f).bits) {
    case 8: return packed[i];
    case 16: return static_cast<uint32_t>(packed[2 * i]) | (static_cast<uint32_t>(packed[2 * i + 1]) << 8);
    default: {
      uint32_t c;
      std::memcpy(&c, packed.data() + 4 * i, 4);
      return c;
    }
  }
}

}  // namespace

DType quantized_scale_dtype(Format scale_format) { return scale_dtype(scale_format); }

std::pair<std::string, std::string> quantization_config_entry(
    const std::map<std::string, std::pair<QuantSpec, std::vector<int64_t>>>& tensors) {
  json described = json::object();
  for (const auto& [name, t] : tensors) described[name] = {{"spec", to_string(t.first)}, {"shape", t.second}};
  const json config = {{"quant_method", kQuantMethod}, {"version", kQuantVersion}, {"tensors", described}};
  return {kQuantConfigKey, config.dump()};
}

Status write_quantized_safetensors(const std::string& path, const std::map<std::string, QuantizedTensor>& quantized,
                                   const std::vector<SafetensorsEntry>& plain,
                                   const std::map<std::string, std::string>& metadata) {
  if (metadata.contains(kQuantConfigKey)) {
    return InvalidArgument(fmt::format("{}: metadata key {} is written by lowbit itself", path, kQuantConfigKey));
  }
  json described = json::object();
  std::vector<SafetensorsEntry> entries;
  for (const auto& [name, q] : quantized) {
    const BlockGrid g = q.grid();
    const std::vector<int64_t> shape(q.shape.dims.begin(), q.shape.dims.begin() + q.shape.ndim);
    const int64_t nblocks = g.num_blocks();
    if (static_cast<int64_t>(q.codes.size()) != q.rows * q.row_bytes ||
        q.scale_codes.size() != packed_bytes(q.spec.scale_format, static_cast<size_t>(nblocks)) ||
        (!q.spec.symmetric && static_cast<int64_t>(q.zero_points.size()) != nblocks)) {
      return InvalidArgument(fmt::format("{}: quantized tensor {} has buffers that do not match its spec {} and "
                                         "shape {}",
                                         path, name, to_string(q.spec), shape_string(shape)));
    }
    described[name] = {{"spec", to_string(q.spec)}, {"shape", shape}};
    entries.push_back({name + ".qweight", DType::kU8, {q.rows, q.row_bytes}, as_bytes_of(q.codes)});
    entries.push_back({name + ".scales", scale_dtype(q.spec.scale_format), {g.grid_rows, g.grid_cols},
                       as_bytes_of(q.scale_codes)});
    if (!q.spec.symmetric) {
      entries.push_back({name + ".zeros", DType::kI32, {g.grid_rows, g.grid_cols}, as_bytes_of(q.zero_points)});
    }
    if (q.spec.tensor_scale) {
      entries.push_back({name + ".tensor_scale", DType::kF32, {},
                         std::as_bytes(std::span<const float>(&q.tensor_scale, 1))});
    }
  }
  entries.insert(entries.end(), plain.begin(), plain.end());
  const json config = {{"quant_method", kQuantMethod}, {"version", kQuantVersion}, {"tensors", described}};
  std::map<std::string, std::string> meta = metadata;
  try {
    meta[kQuantConfigKey] = config.dump();
  } catch (const json::exception&) {
    return InvalidArgument(path + ": a quantized tensor name is not valid UTF-8");
  }
  return write_safetensors(path, entries, meta);
}

Result<std::map<std::string, QuantizedTensor>> read_quantized_safetensors(const std::string& path) {
  LOWBIT_ASSIGN_OR_RETURN(SafetensorsFile f, open_safetensors(path));
  return read_quantized_safetensors(f);
}

Result<std::map<std::string, QuantizedTensor>> read_quantized_safetensors(const SafetensorsFile& f) {
  const std::string& path = f.path();
  const auto it = f.metadata().find(kQuantConfigKey);
  if (it == f.metadata().end()) return NotFound(path + ": no quantization_config metadata (not a lowbit quantized file)");
  const json cfg = json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  if (cfg.is_discarded() || !cfg.is_object()) return DataLoss(path + ": quantization_config is not a JSON object");
  const auto method = cfg.find("quant_method");
  if (method == cfg.end() || !method->is_string() || method->get<std::string>() != kQuantMethod) {
    return Unsupported(path + ": quantization_config quant_method is not \"lowbit\"");
  }
  const auto version = cfg.find("version");
  if (version == cfg.end() || !version->is_number_integer() || version->get<int64_t>() != kQuantVersion) {
    return Unsupported(fmt::format("{}: quantization_config version {} is not supported (expected {})", path,
                                   version == cfg.end() ? std::string("missing") : version->dump(), kQuantVersion));
  }
  const auto tensors = cfg.find("tensors");
  if (tensors == cfg.end() || !tensors->is_object()) return DataLoss(path + ": quantization_config has no \"tensors\" object");

  std::map<std::string, QuantizedTensor> out;
  for (const auto& [name, desc] : tensors->items()) {
    const std::string where = fmt::format("{}: quantized tensor {}", path, name);
    if (!desc.is_object()) return DataLoss(where + ": description is not a JSON object");
    const auto spec_text = desc.find("spec");
    if (spec_text == desc.end() || !spec_text->is_string()) return DataLoss(where + ": missing string \"spec\"");
    Result<QuantSpec> spec = parse_spec(spec_text->get<std::string>());
    if (!spec.ok()) return DataLoss(where + ": " + spec.status().message());
    const auto shape_json = desc.find("shape");
    std::vector<int64_t> shape;
    if (shape_json == desc.end() || !shape_json->is_array() || shape_json->empty() ||
        shape_json->size() > static_cast<size_t>(kMaxDims)) {
      return DataLoss(fmt::format("{}: \"shape\" must be an array of 1..{} dims", where, kMaxDims));
    }
    for (const json& d : *shape_json) {
      const std::optional<uint64_t> u = as_uint(d);
      if (!u || *u > (uint64_t{1} << 40)) return DataLoss(fmt::format("{}: bad shape {}", where, shape_json->dump()));
      shape.push_back(static_cast<int64_t>(*u));
    }
    if (!byte_count(shape, DType::kF32)) return DataLoss(fmt::format("{}: shape {} overflows", where, shape_string(shape)));

    QuantizedTensor q;
    q.spec = *spec;
    q.shape = Shape::row_major(shape);
    matrix_of(shape, &q.rows, &q.cols);
    q.row_bytes = static_cast<int64_t>(packed_bytes(q.spec.element, static_cast<size_t>(q.cols)));
    const BlockGrid g = q.grid();

    // Each part must exist with exactly the dtype and shape the spec implies.
    const std::string& qname = name;  // a structured binding: lambdas capture it only from clang 16
    auto part = [&](const std::string& suffix, DType dtype, std::vector<int64_t> want) -> Result<std::span<const std::byte>> {
      const std::string tname = qname + suffix;
      const SafetensorsTensorInfo* info = f.find(tname);
      if (info == nullptr) return NotFound(fmt::format("{}: tensor {} is missing", path, tname));
      if (info->dtype != dtype || info->shape != want) {
        return DataLoss(fmt::format("{}: tensor {} is {} {}, expected {} {} for spec {} and shape {}", path, tname,
                                    safetensors_dtype_name(info->dtype), shape_string(info->shape),
                                    safetensors_dtype_name(dtype), shape_string(want), to_string(q.spec),
                                    shape_string(shape)));
      }
      return f.data(*info);
    };
    LOWBIT_ASSIGN_OR_RETURN(auto codes, part(".qweight", DType::kU8, {q.rows, q.row_bytes}));
    q.codes.resize(codes.size());
    if (!codes.empty()) std::memcpy(q.codes.data(), codes.data(), codes.size());
    LOWBIT_ASSIGN_OR_RETURN(auto sc, part(".scales", scale_dtype(q.spec.scale_format), {g.grid_rows, g.grid_cols}));
    q.scale_codes.resize(sc.size());
    if (!sc.empty()) std::memcpy(q.scale_codes.data(), sc.data(), sc.size());
    if (!q.spec.symmetric) {
      LOWBIT_ASSIGN_OR_RETURN(auto z, part(".zeros", DType::kI32, {g.grid_rows, g.grid_cols}));
      q.zero_points.resize(static_cast<size_t>(g.num_blocks()));
      if (!z.empty()) std::memcpy(q.zero_points.data(), z.data(), z.size());
      // quantize() clamps a zero point to the element format's code range; anything else is damage.
      const double zlo = traits(q.spec.element).lowest, zhi = traits(q.spec.element).max_finite;
      for (size_t b = 0; b < q.zero_points.size(); ++b) {
        if (q.zero_points[b] < zlo || q.zero_points[b] > zhi) {
          return DataLoss(fmt::format("{}: tensor {}.zeros block {} is {}, outside {}'s range [{}, {}]", path, name, b,
                                      q.zero_points[b], format_name(q.spec.element), zlo, zhi));
        }
      }
    } else if (f.find(name + ".zeros") != nullptr) {
      return DataLoss(fmt::format("{}: tensor {}.zeros present but spec {} is symmetric", path, name, to_string(q.spec)));
    }
    if (q.spec.tensor_scale) {
      LOWBIT_ASSIGN_OR_RETURN(auto ts, part(".tensor_scale", DType::kF32, {}));
      std::memcpy(&q.tensor_scale, ts.data(), sizeof(float));
      if (!std::isfinite(q.tensor_scale) || !(q.tensor_scale > 0.0f)) {
        return DataLoss(fmt::format("{}: tensor {}.tensor_scale is {}, expected a positive finite value", path, name,
                                    q.tensor_scale));
      }
    }
    q.scales.resize(static_cast<size_t>(g.num_blocks()));
    for (int64_t b = 0; b < g.num_blocks(); ++b) {
      const uint32_t code = scale_code_at(q.spec.scale_format, q.scale_codes, b);
      const float s = scale_from_code(q, g, b, code);
      if (!std::isfinite(s)) {
        return DataLoss(fmt::format("{}: tensor {}.scales block {} is {}", path, name, b, s));
      }
      q.scales[static_cast<size_t>(b)] = s;
    }
    out.emplace(name, std::move(q));
  }
  return out;
}

}  // namespace lowbit
