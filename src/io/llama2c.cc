// llama2.c checkpoint reader (karpathy/llama2.c): legacy version 0 and the versioned "ak42"
// export (version 1 fp32, version 2 int8 groups). Layouts follow export.py's legacy_export,
// version1_export and version2_export, and run.c / runq.c's memory_map_weights.
//
// The reader first lays the whole file out from its header with overflow-checked arithmetic,
// compares the byte count with the file, and only then touches tensor data: fp32 tensors
// become views into the mapping (zero copy), int8 ones are dequantized into Model::owned.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "lowbit/file.h"
#include "lowbit/gguf.h"
#include "lowbit/model.h"
#include "model_internal.h"
#include "lowbit/safetensors.h"
#include "lowbit/status.h"
#include "lowbit/tensor.h"

namespace lowbit {
namespace {

static_assert(std::endian::native == std::endian::little,
              "llama2.c checkpoints are little-endian and are mapped as they are");

// export.py writes struct.pack('I', 0x616b3432): the bytes "24ka" on disk.
constexpr uint32_t kLlama2cMagic = 0x616b3432;
constexpr size_t kV0HeaderBytes = 7 * sizeof(int32_t);  // dim .. seq_len
constexpr size_t kVersionedHeaderBytes = 256;           // export.py pads the header to 256
constexpr size_t kSharedFlagOffset = 8 + kV0HeaderBytes;      // uint8 after magic, version, 7 params
constexpr size_t kGroupSizeOffset = kSharedFlagOffset + 1;    // int32 (v2), unaligned

// Bounds that no real checkpoint reaches; they reject garbage headers before any size is
// computed and keep every byte count far below 2^64.
constexpr int64_t kMaxDim = int64_t{1} << 20;
constexpr int64_t kMaxHiddenDim = int64_t{1} << 22;
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxSeqLen = int64_t{1} << 24;
constexpr int64_t kMaxGroupSize = int64_t{1} << 20;

// The seven int32 parameters every llama2.c header carries, widened so that negation and
// products cannot overflow.
struct RawParams {
  int64_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

int32_t read_i32(std::span<const std::byte> bytes, size_t offset) {
  int32_t v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

RawParams read_params(std::span<const std::byte> bytes, size_t offset) {
  auto at = [&](int i) -> int64_t { return read_i32(bytes, offset + 4 * static_cast<size_t>(i)); };
  return {at(0), at(1), at(2), at(3), at(4), at(5), at(6)};
}

std::string describe(const LlamaConfig& c) {
  return fmt::format("dim={}, hidden_dim={}, layers={}, heads={}, kv_heads={}, vocab={}, seq_len={}, {}",
                     c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size,
                     c.seq_len, c.shared_classifier ? "shared classifier" : "separate classifier");
}

Status check_range(const std::string& path, const char* name, int64_t value, int64_t max) {
  if (value < 1 || value > max) {
    return DataLoss(fmt::format("{}: header {}={} is out of range (expected 1..{})", path, name,
                                value, max));
  }
  return OkStatus();
}

// Validates the header's parameters and turns them into a config.
Result<LlamaConfig> make_config(const std::string& path, const RawParams& p, bool shared) {
  LOWBIT_RETURN_IF_ERROR(check_range(path, "dim", p.dim, kMaxDim));
  LOWBIT_RETURN_IF_ERROR(check_range(path, "hidden_dim", p.hidden_dim, kMaxHiddenDim));
  LOWBIT_RETURN_IF_ERROR(check_range(path, "n_layers", p.n_layers, kMaxLayers));
  LOWBIT_RETURN_IF_ERROR(check_range(path, "n_heads", p.n_heads, p.dim));
  LOWBIT_RETURN_IF_ERROR(check_range(path, "n_kv_heads", p.n_kv_heads, p.n_heads));
  LOWBIT_RETURN_IF_ERROR(check_range(path, "vocab_size", p.vocab_size, kMaxVocab));
  LOWBIT_RETURN_IF_ERROR(check_range(path, "seq_len", p.seq_len, kMaxSeqLen));
  if (p.dim % p.n_heads != 0) {
    return DataLoss(fmt::format("{}: header n_heads={} does not divide dim={}", path, p.n_heads, p.dim));
  }
  if (p.n_heads % p.n_kv_heads != 0) {
    return DataLoss(fmt::format("{}: header n_kv_heads={} does not divide n_heads={}", path,
                                p.n_kv_heads, p.n_heads));
  }
  if ((p.dim / p.n_heads) % 2 != 0) {
    return DataLoss(fmt::format("{}: head size dim/n_heads={} is odd; RoPE rotates pairs, expected it even",
                                path, p.dim / p.n_heads));
  }
  LlamaConfig c;
  c.dim = static_cast<int>(p.dim);
  c.hidden_dim = static_cast<int>(p.hidden_dim);
  c.n_layers = static_cast<int>(p.n_layers);
  c.n_heads = static_cast<int>(p.n_heads);
  c.n_kv_heads = static_cast<int>(p.n_kv_heads);
  c.vocab_size = static_cast<int>(p.vocab_size);
  c.seq_len = static_cast<int>(p.seq_len);
  c.shared_classifier = shared;
  return c;
}

enum class Storage { kF32, kQ8 };  // kQ8: int8 codes, then one fp32 scale per group

// One tensor's place in the file.
struct Entry {
  std::string name;
  ConstTensorView* dest;  // null: skipped (v0's RoPE tables)
  int64_t rows;
  int64_t cols;  // 0 for a vector
  Storage storage;
  uint64_t offset;         // fp32 data or int8 codes
  uint64_t scales_offset;  // kQ8 only
};

// Walks the file in the order a writer produced it, with overflow-checked byte counts.
class Layout {
 public:
  Layout(std::string path, uint64_t start, int64_t group_size)
      : path_(std::move(path)), pos_(start), group_size_(group_size) {}

  void add(std::string name, ConstTensorView* dest, int64_t rows, int64_t cols, Storage storage) {
    if (!status_.ok()) return;
    uint64_t numel;
    if (__builtin_mul_overflow(static_cast<uint64_t>(rows), static_cast<uint64_t>(cols == 0 ? 1 : cols), &numel)) {
      status_ = DataLoss(path_ + ": tensor " + name + " size from the header overflows 64 bits");
      return;
    }
    Entry e{std::move(name), dest, rows, cols, storage, pos_, 0};
    if (storage == Storage::kF32) {
      advance(numel, sizeof(float));
    } else {
      const auto gs = static_cast<uint64_t>(group_size_);
      if (numel % gs != 0) {
        status_ = DataLoss(fmt::format("{}: tensor {} has {} elements, not a multiple of the header's group_size={}",
                                       path_, e.name, numel, group_size_));
        return;
      }
      advance(numel, 1);
      e.scales_offset = pos_;
      advance(numel / gs, sizeof(float));
    }
    entries_.push_back(std::move(e));
  }
  // Every layer's copy of one tensor, layer after layer (how all llama2.c writers stack them).
  void add_layers(const LlamaConfig& c, std::string_view what, ConstTensorView LayerWeights::*member,
                  std::vector<LayerWeights>& layers, int64_t rows, int64_t cols, Storage storage) {
    for (int l = 0; l < c.n_layers; ++l) {
      add(fmt::format("layers.{}.{}", l, what), &(layers[static_cast<size_t>(l)].*member), rows, cols,
          storage);
    }
  }
  void skip_f32(int64_t count) { advance(static_cast<uint64_t>(count), sizeof(float)); }

  const Status& status() const { return status_; }
  uint64_t end() const { return pos_; }
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  void advance(uint64_t count, uint64_t elem_bytes) {
    uint64_t bytes;
    if (__builtin_mul_overflow(count, elem_bytes, &bytes) || __builtin_add_overflow(pos_, bytes, &pos_)) {
      if (status_.ok()) status_ = DataLoss(path_ + ": tensor sizes from the header overflow 64 bits");
    }
  }

  std::string path_;
  uint64_t pos_;
  int64_t group_size_;
  std::vector<Entry> entries_;
  Status status_;
};

ConstTensorView make_view(const void* data, int64_t rows, int64_t cols) {
  if (cols == 0) return ConstTensorView(data, DType::kF32, {rows});
  return ConstTensorView(data, DType::kF32, {rows, cols});
}

// runq.c's dequantize: w[i] = q[i] * s[i / group_size].
Result<Tensor> dequantize_q8(const std::byte* codes, const std::byte* scales, int64_t rows, int64_t cols,
                             int64_t group_size) {
  Result<Tensor> t = cols == 0 ? Tensor::empty(DType::kF32, {rows}) : Tensor::empty(DType::kF32, {rows, cols});
  if (!t.ok()) return t.status();
  float* out = t->data_as<float>();
  const int64_t n = t->numel();
  for (int64_t g = 0; g < n / group_size; ++g) {
    float s;
    std::memcpy(&s, scales + g * static_cast<int64_t>(sizeof(float)), sizeof s);  // may be unaligned
    for (int64_t j = g * group_size; j < (g + 1) * group_size; ++j) {
      out[j] = static_cast<float>(static_cast<int8_t>(std::to_integer<uint8_t>(codes[j]))) * s;
    }
  }
  return t;
}

// Builds the views of every entry once the layout is known to match the file.
Status materialize(Model& m, const Layout& layout, int64_t group_size) {
  const std::byte* base = m.file->bytes().data();
  for (const Entry& e : layout.entries()) {
    if (e.dest == nullptr) continue;
    const int64_t numel = e.rows * (e.cols == 0 ? 1 : e.cols);
    if (e.storage == Storage::kF32) {
      LOWBIT_CHECK(e.offset % alignof(float) == 0, "llama2.c fp32 tensor at an unaligned offset");
      const auto* data = reinterpret_cast<const float*>(base + e.offset);
      LOWBIT_RETURN_IF_ERROR(check_finite(m.path, e.name, data, numel));
      *e.dest = make_view(data, e.rows, e.cols);
    } else {
      LOWBIT_ASSIGN_OR_RETURN(Tensor t, dequantize_q8(base + e.offset, base + e.scales_offset, e.rows,
                                                       e.cols, group_size));
      LOWBIT_RETURN_IF_ERROR(check_finite(m.path, e.name, t.data_as<float>(), numel));
      *e.dest = make_view(t.data(), e.rows, e.cols);
      m.owned.push_back(std::move(t));  // the heap buffer, and so the view, survives the move
    }
  }
  if (m.config.shared_classifier) m.weights.classifier = m.weights.tok_embeddings;
  return OkStatus();
}

Status check_size(const std::string& path, const LlamaConfig& c, const Layout& layout, size_t file_size,
                  std::string_view format) {
  LOWBIT_RETURN_IF_ERROR(layout.status());
  if (layout.end() != file_size) {
    return DataLoss(fmt::format("{}: expected {} bytes from the {} header ({}), file has {}{}", path,
                                layout.end(), format, describe(c), file_size,
                                file_size < layout.end() ? " (truncated?)" : " (trailing bytes)"));
  }
  return OkStatus();
}

Model empty_model(const std::string& path, std::shared_ptr<MappedFile> file, const LlamaConfig& c) {
  Model m;
  m.config = c;
  m.path = path;
  m.file = std::move(file);
  m.weights.layers.resize(static_cast<size_t>(c.n_layers));
  return m;
}

// Legacy: 7 int32, then token_embedding, per-layer stacks, rms_final, RoPE tables, [wcls].
Result<Model> read_v0(const std::string& path, std::shared_ptr<MappedFile> file) {
  const auto bytes = file->bytes();
  if (bytes.size() < kV0HeaderBytes) {
    return DataLoss(fmt::format("{}: file has {} bytes, expected at least the {}-byte llama2.c header", path,
                                bytes.size(), kV0HeaderBytes));
  }
  RawParams p = read_params(bytes, 0);
  const bool shared = p.vocab_size > 0;  // legacy_export negates vocab_size for a separate classifier
  p.vocab_size = p.vocab_size < 0 ? -p.vocab_size : p.vocab_size;  // int64: INT32_MIN negates safely
  LOWBIT_ASSIGN_OR_RETURN(LlamaConfig c, make_config(path, p, shared));
  Model m = empty_model(path, std::move(file), c);
  auto& w = m.weights;
  const int64_t dim = c.dim, hidden = c.hidden_dim, kv_dim = c.kv_dim();
  constexpr Storage f32 = Storage::kF32;

  Layout layout(path, kV0HeaderBytes, 0);
  layout.add("tok_embeddings", &w.tok_embeddings, c.vocab_size, dim, f32);
  layout.add_layers(c, "attn_norm", &LayerWeights::attn_norm, w.layers, dim, 0, f32);
  layout.add_layers(c, "wq", &LayerWeights::wq, w.layers, dim, dim, f32);
  layout.add_layers(c, "wk", &LayerWeights::wk, w.layers, kv_dim, dim, f32);
  layout.add_layers(c, "wv", &LayerWeights::wv, w.layers, kv_dim, dim, f32);
  layout.add_layers(c, "wo", &LayerWeights::wo, w.layers, dim, dim, f32);
  layout.add_layers(c, "ffn_norm", &LayerWeights::ffn_norm, w.layers, dim, 0, f32);
  layout.add_layers(c, "w1", &LayerWeights::w1, w.layers, hidden, dim, f32);
  layout.add_layers(c, "w2", &LayerWeights::w2, w.layers, dim, hidden, f32);
  layout.add_layers(c, "w3", &LayerWeights::w3, w.layers, hidden, dim, f32);
  layout.add("final_norm", &w.final_norm, dim, 0, f32);
  // freq_cis_real and freq_cis_imag, (seq_len, head_size/2) each: recomputed by the forward pass.
  layout.skip_f32(2 * static_cast<int64_t>(c.seq_len) * (c.head_dim() / 2));
  if (!c.shared_classifier) layout.add("classifier", &w.classifier, c.vocab_size, dim, f32);

  LOWBIT_RETURN_IF_ERROR(check_size(path, c, layout, m.file->size(), "version-0"));
  LOWBIT_RETURN_IF_ERROR(materialize(m, layout, 0));
  return m;
}

// "ak42": magic, version, 7 int32 params, uint8 shared_classifier, [v2: int32 group_size], zero
// padding to 256 bytes; then the norms, the embedding, per-layer stacks and [wcls].
Result<Model> read_versioned(const std::string& path, std::shared_ptr<MappedFile> file) {
  const auto bytes = file->bytes();
  if (bytes.size() < kVersionedHeaderBytes) {
    return DataLoss(fmt::format("{}: file has {} bytes, expected at least the {}-byte llama2.c version header",
                                path, bytes.size(), kVersionedHeaderBytes));
  }
  const int32_t version = read_i32(bytes, 4);
  if (version != 1 && version != 2) {
    return Unsupported(fmt::format("{}: llama2.c checkpoint version {} is not supported (expected 1 or 2)",
                                   path, version));
  }
  const RawParams p = read_params(bytes, 8);
  const auto shared_flag = std::to_integer<uint8_t>(bytes[kSharedFlagOffset]);
  if (shared_flag > 1) {
    return DataLoss(fmt::format("{}: header shared_classifier={} (expected 0 or 1)", path, shared_flag));
  }
  LOWBIT_ASSIGN_OR_RETURN(LlamaConfig c, make_config(path, p, shared_flag == 1));
  int64_t group_size = 0;
  if (version == 2) {
    group_size = read_i32(bytes, kGroupSizeOffset);
    LOWBIT_RETURN_IF_ERROR(check_range(path, "group_size", group_size, kMaxGroupSize));
  }

  Model m = empty_model(path, std::move(file), c);
  auto& w = m.weights;
  const int64_t dim = c.dim, hidden = c.hidden_dim, kv_dim = c.kv_dim();
  constexpr Storage f32 = Storage::kF32;
  const Storage mat = version == 2 ? Storage::kQ8 : Storage::kF32;

  Layout layout(path, kVersionedHeaderBytes, group_size);
  layout.add_layers(c, "attn_norm", &LayerWeights::attn_norm, w.layers, dim, 0, f32);
  layout.add_layers(c, "ffn_norm", &LayerWeights::ffn_norm, w.layers, dim, 0, f32);
  layout.add("final_norm", &w.final_norm, dim, 0, f32);
  layout.add("tok_embeddings", &w.tok_embeddings, c.vocab_size, dim, mat);
  layout.add_layers(c, "wq", &LayerWeights::wq, w.layers, dim, dim, mat);
  layout.add_layers(c, "wk", &LayerWeights::wk, w.layers, kv_dim, dim, mat);
  layout.add_layers(c, "wv", &LayerWeights::wv, w.layers, kv_dim, dim, mat);
  layout.add_layers(c, "wo", &LayerWeights::wo, w.layers, dim, dim, mat);
  layout.add_layers(c, "w1", &LayerWeights::w1, w.layers, hidden, dim, mat);
  layout.add_layers(c, "w2", &LayerWeights::w2, w.layers, dim, hidden, mat);
  layout.add_layers(c, "w3", &LayerWeights::w3, w.layers, hidden, dim, mat);
  if (!c.shared_classifier) layout.add("classifier", &w.classifier, c.vocab_size, dim, mat);

  LOWBIT_RETURN_IF_ERROR(check_size(path, c, layout, m.file->size(), fmt::format("version-{}", version)));
  LOWBIT_RETURN_IF_ERROR(materialize(m, layout, group_size));
  return m;
}

bool starts_with(std::span<const std::byte> bytes, std::string_view prefix) {
  return bytes.size() >= prefix.size() && std::memcmp(bytes.data(), prefix.data(), prefix.size()) == 0;
}

bool has_llama2c_magic(std::span<const std::byte> bytes) {
  if (bytes.size() < sizeof(uint32_t)) return false;
  uint32_t magic;
  std::memcpy(&magic, bytes.data(), sizeof magic);
  return magic == kLlama2cMagic;
}

Result<std::shared_ptr<MappedFile>> map(const std::string& path) {
  LOWBIT_ASSIGN_OR_RETURN(MappedFile f, MappedFile::open(path));
  if (f.size() == 0) return DataLoss(path + ": empty file, expected a model checkpoint");
  return std::make_shared<MappedFile>(std::move(f));
}

Result<Model> read_llama2c(const std::string& path, std::shared_ptr<MappedFile> file) {
  if (has_llama2c_magic(file->bytes())) return read_versioned(path, std::move(file));
  return read_v0(path, std::move(file));
}

}  // namespace

// Index of the first NaN or Inf in x[0, n), or -1. Branch-free in chunks so it vectorizes:
// every fp32 weight of a checkpoint goes through it.
int64_t first_non_finite(const float* x, int64_t n) {
  constexpr int64_t kChunk = 4096;
  constexpr uint32_t kExpMask = 0x7f800000u;
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t end = std::min(n, begin + kChunk);
    uint32_t bad = 0;
    for (int64_t i = begin; i < end; ++i) {
      uint32_t bits;
      std::memcpy(&bits, x + i, sizeof bits);
      bad |= static_cast<uint32_t>((bits & kExpMask) == kExpMask);
    }
    if (bad) {
      for (int64_t i = begin; i < end; ++i) {
        if (!std::isfinite(x[i])) return i;
      }
    }
  }
  return -1;
}

Status check_finite(const std::string& path, const std::string& name, const float* x, int64_t n) {
  const int64_t i = first_non_finite(x, n);
  if (i < 0) return OkStatus();
  return DataLoss(fmt::format("{}: tensor {} has {} at index {}", path, name,
                              std::isnan(x[i]) ? "NaN" : (x[i] > 0 ? "+Inf" : "-Inf"), i));
}


Result<Model> load_llama2c(const std::string& path) {
  LOWBIT_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, map(path));
  return read_llama2c(path, std::move(file));
}

namespace {

// Trained LLM weights (embeddings, norms, linears) stay within a few hundred in magnitude; a
// value past this is damage. FLT_MAX or 1e30 would overflow fp32 in the first matmul and turn
// every figure into a silent NaN (PPL -nan, KLD 0).
constexpr float kMaxAbsWeight = 1e6f;

Status check_weight_values(const Model& m) {
  const auto one = [&](const std::string& name, ConstTensorView v) -> Status {
    if (v.data() == nullptr || v.dtype() != DType::kF32) return OkStatus();
    const auto* bytes = static_cast<const unsigned char*>(v.data());
    const int64_t n = v.numel();
    for (int64_t i = 0; i < n; ++i) {
      float x;
      std::memcpy(&x, bytes + i * 4, 4);
      if (!(std::fabs(x) <= kMaxAbsWeight)) {
        return DataLoss(fmt::format("{}: tensor {} has {} at index {}; weights must be finite and within +-{:g}", m.path,
                                    name, x, i, kMaxAbsWeight));
      }
    }
    return OkStatus();
  };
  const LlamaWeights& w = m.weights;
  LOWBIT_RETURN_IF_ERROR(one("token_embd (embedding)", w.tok_embeddings));
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& L = w.layers[l];
    const std::pair<const char*, const ConstTensorView*> slots[] = {
        {"attn_norm", &L.attn_norm}, {"wq", &L.wq}, {"wk", &L.wk}, {"wv", &L.wv}, {"wo", &L.wo},
        {"ffn_norm", &L.ffn_norm},   {"w1", &L.w1}, {"w2", &L.w2}, {"w3", &L.w3}};
    for (const auto& [slot, view] : slots) LOWBIT_RETURN_IF_ERROR(one(fmt::format("layers.{}.{}", l, slot), *view));
  }
  LOWBIT_RETURN_IF_ERROR(one("final_norm", w.final_norm));
  if (w.classifier.data() != w.tok_embeddings.data()) LOWBIT_RETURN_IF_ERROR(one("classifier", w.classifier));
  return OkStatus();
}

Result<Model> load_any(const std::string& path) {
  if (std::error_code ec; std::filesystem::is_directory(path, ec) || path.ends_with(".safetensors")) return load_safetensors(path);
  LOWBIT_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, map(path));
  if (starts_with(file->bytes(), "GGUF")) return load_gguf(path);
  return read_llama2c(path, std::move(file));
}

}  // namespace

Result<Model> load_model(const std::string& path) {
  LOWBIT_ASSIGN_OR_RETURN(Model m, load_any(path));
  LOWBIT_RETURN_IF_ERROR(check_weight_values(m));
  return m;
}

}  // namespace lowbit
