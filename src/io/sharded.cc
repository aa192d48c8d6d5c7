// Sharded Hugging Face checkpoints: the index and its shards (sharded.h).
#include "lowbit/sharded.h"

#include <filesystem>
#include <set>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/convert.h"
#include "lowbit/file.h"
#include "lowbit/formats.h"
#include "lowbit/parallel.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>

namespace lowbit {

namespace fs = std::filesystem;
using json = nlohmann::json;

const SafetensorsFile* ShardedCheckpoint::file_of(std::string_view tensor) const {
  const auto it = where.find(tensor);
  return it == where.end() ? nullptr : &shards[it->second];
}

int64_t ShardedCheckpoint::bytes_with_prefix(std::string_view prefix) const {
  int64_t n = 0;
  for (auto it = where.lower_bound(prefix); it != where.end() && it->first.starts_with(prefix); ++it) {
    const SafetensorsTensorInfo* info = shards[it->second].find(it->first);
    if (info) n += static_cast<int64_t>(info->end - info->begin);
  }
  return n;
}

ShardedCheckpoint single_file_checkpoint(SafetensorsFile f) {
  ShardedCheckpoint ck;
  ck.index_path = f.path();
  for (const SafetensorsTensorInfo& t : f.tensors()) ck.where.emplace(t.name, 0);
  ck.shards.push_back(std::move(f));
  return ck;
}

Result<ShardedCheckpoint> open_sharded(const std::string& index_path) {
  LOWBIT_ASSIGN_OR_RETURN(std::string text, read_file(index_path));
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return DataLoss(index_path + ": not a JSON object");
  const auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object() || wm->empty()) {
    return DataLoss(index_path + ": no \"weight_map\" object naming each tensor's shard");
  }
  const fs::path dir = fs::path(index_path).parent_path();
  ShardedCheckpoint ck;
  ck.index_path = index_path;
  std::map<std::string, size_t> shard_pos;
  for (const auto& [tensor, v] : wm->items()) {
    if (!v.is_string()) return DataLoss(fmt::format("{}: weight_map entry for tensor {} is not a file name", index_path, tensor));
    const std::string shard = v.get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos || shard == "." || shard == "..") {
      return DataLoss(fmt::format("{}: tensor {} names shard '{}', not a file name in the index's folder", index_path, tensor, shard));
    }
    auto it = shard_pos.find(shard);
    if (it == shard_pos.end()) {
      const std::string path = (dir / shard).string();
      std::error_code ec;
      if (!fs::exists(path, ec)) {
        return NotFound(fmt::format("{}: shard is missing ({} names it for tensor {})", path, kShardIndexName, tensor));
      }
      LOWBIT_ASSIGN_OR_RETURN(SafetensorsFile f, open_safetensors(path));
      it = shard_pos.emplace(shard, ck.shards.size()).first;
      ck.shards.push_back(std::move(f));
    }
    const SafetensorsFile& f = ck.shards[it->second];
    if (f.find(tensor) == nullptr) {
      return DataLoss(fmt::format("{}: tensor {} is not in this shard ({} puts it here)", f.path(), tensor, kShardIndexName));
    }
    ck.where.emplace(tensor, it->second);
  }
  for (size_t s = 0; s < ck.shards.size(); ++s) {
    for (const SafetensorsTensorInfo& t : ck.shards[s].tensors()) {
      const auto w = ck.where.find(t.name);
      if (w == ck.where.end() || w->second != s) {
        return DataLoss(fmt::format("{}: tensor {} is not in {} for this shard", ck.shards[s].path(), t.name, kShardIndexName));
      }
    }
  }
  return ck;
}

Result<LlamaConfig> parse_hf_llama_config(const std::string& path);  // safetensors.cc

Result<HfCheckpoint> open_hf_checkpoint(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return InvalidArgument(fmt::format("{}: not a folder (a Hugging Face checkpoint is a folder)", dir));
  const fs::path d(dir);
  if (!fs::exists(d / "config.json", ec)) {
    return NotFound(fmt::format("{}: config.json is missing (a Hugging Face checkpoint needs it beside the weights)", dir));
  }
  HfCheckpoint ck;
  LOWBIT_ASSIGN_OR_RETURN(ck.config, parse_hf_llama_config((d / "config.json").string()));
  if (fs::exists(d / "model.safetensors", ec)) {
    LOWBIT_ASSIGN_OR_RETURN(SafetensorsFile f, open_safetensors((d / "model.safetensors").string()));
    ck.weights = single_file_checkpoint(std::move(f));
  } else if (fs::exists(d / kShardIndexName, ec)) {
    LOWBIT_ASSIGN_OR_RETURN(ck.weights, open_sharded((d / kShardIndexName).string()));
  } else {
    return NotFound(fmt::format("{}: neither model.safetensors nor {} is there", dir, kShardIndexName));
  }
  if (const SafetensorsFile* f = ck.weights.file_of("model.layers.0.self_attn.q_proj.weight")) {
    ck.stored = f->find("model.layers.0.self_attn.q_proj.weight")->dtype;
  }
  return ck;
}

namespace {

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

Result<const SafetensorsTensorInfo*> checked(const ShardedCheckpoint& ck, const std::string& name, const std::vector<int64_t>& shape) {
  const SafetensorsFile* f = ck.file_of(name);
  if (f == nullptr) return NotFound(fmt::format("{}: tensor {} is missing (expected shape {})", ck.index_path, name, shape_text(shape)));
  const SafetensorsTensorInfo* info = f->find(name);
  if (info->shape != shape) {
    return DataLoss(fmt::format("{}: tensor {} has shape {}, expected {} from config.json", f->path(), name, shape_text(info->shape), shape_text(shape)));
  }
  if (info->dtype != DType::kF32 && info->dtype != DType::kF16 && info->dtype != DType::kBF16) {
    return Unsupported(fmt::format("{}: tensor {} has dtype {}; weights must be F32, F16 or BF16", f->path(), name, safetensors_dtype_name(info->dtype)));
  }
  return info;
}

}  // namespace

Status check_llama_tensors(const HfCheckpoint& ck) {
  const LlamaConfig& c = ck.config;
  const int64_t d = c.dim, h = c.hidden_dim, kv = c.kv_dim(), v = c.vocab_size;
  LOWBIT_RETURN_IF_ERROR(checked(ck.weights, "model.embed_tokens.weight", {v, d}).status());
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    const std::pair<const char*, std::vector<int64_t>> t[] = {
        {"input_layernorm.weight", {d}}, {"post_attention_layernorm.weight", {d}}, {"self_attn.q_proj.weight", {d, d}},
        {"self_attn.k_proj.weight", {kv, d}}, {"self_attn.v_proj.weight", {kv, d}}, {"self_attn.o_proj.weight", {d, d}},
        {"mlp.gate_proj.weight", {h, d}}, {"mlp.up_proj.weight", {h, d}}, {"mlp.down_proj.weight", {d, h}}};
    for (const auto& [n, s] : t) LOWBIT_RETURN_IF_ERROR(checked(ck.weights, p + n, s).status());
  }
  LOWBIT_RETURN_IF_ERROR(checked(ck.weights, "model.norm.weight", {d}).status());
  if (!c.shared_classifier && ck.weights.file_of("lm_head.weight")) {
    LOWBIT_RETURN_IF_ERROR(checked(ck.weights, "lm_head.weight", {v, d}).status());
  }
  return OkStatus();
}

Result<Tensor> load_f32(const ShardedCheckpoint& ck, const std::string& name, const std::vector<int64_t>& shape,
                        int64_t permute_head_dim) {
  return load_f32_rows(ck, name, shape, 0, shape.empty() ? 0 : shape[0], permute_head_dim);
}

namespace {
// Rows [first_row, end_row) of tensor `name` (stored `dtype`, `cols` wide) as f32, row r's stored
// bytes at row_at(r); a non-finite value is DataLoss naming `path`, the tensor and its index.
template <class RowAt>
Status rows_to_f32(const std::string& path, const std::string& name, DType dtype, int64_t cols, int64_t first_row,
                   int64_t end_row, RowAt row_at, float* out) {
  const size_t esize = dtype_size(dtype);
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};  // the smallest, whatever the threads
  parallel_for(first_row, end_row, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, cols)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const auto* in = reinterpret_cast<const uint8_t*>(row_at(r));
      const std::span<const uint8_t> bytes(in, static_cast<size_t>(cols) * esize);
      float* dst = out + (r - first_row) * cols;
      switch (dtype) {
        case DType::kF16: decode_span(Format::kFp16, bytes, {dst, static_cast<size_t>(cols)}); break;
        case DType::kBF16: decode_span(Format::kBf16, bytes, {dst, static_cast<size_t>(cols)}); break;
        default: std::memcpy(dst, in, bytes.size()); break;
      }
      bool finite = true;
#pragma omp simd reduction(&& : finite)
      for (int64_t i = 0; i < cols; ++i) finite = finite && std::isfinite(dst[i]);
      if (finite) continue;
      for (int64_t i = 0; i < cols; ++i) {
        if (std::isfinite(dst[i])) continue;
        const int64_t at = r * cols + i;
        for (int64_t cur = first_bad.load(); at < cur && !first_bad.compare_exchange_weak(cur, at);) {}
        break;
      }
    }
  });
  if (const int64_t bad = first_bad.load(); bad != std::numeric_limits<int64_t>::max()) {
    return DataLoss(fmt::format("{}: tensor {} has a non-finite value at index {}", path, name, bad));
  }
  return OkStatus();
}

// Rows [first_row, end_row) of a table of `rows` (all of them when `whole`: a permuted read).
Status check_row_range(const std::string& path, const std::string& name, int64_t first_row, int64_t end_row, int64_t rows,
                       bool whole = false) {
  if (first_row < 0 || first_row > end_row || end_row > rows || (whole && (first_row != 0 || end_row != rows))) {
    return InvalidArgument(fmt::format("{}: tensor {}: rows [{}, {}) are not within its {}", path, name, first_row, end_row, rows));
  }
  return OkStatus();
}
}  // namespace

namespace {
// Rows [first_row, end_row) of tensor `name` (checked against `shape`) as f32, its stored bytes at
// `src` (the mapping, or a buffer read from the file).
Status stored_rows_into(const ShardedCheckpoint& ck, const std::string& name, const std::vector<int64_t>& shape,
                        const std::byte* src, int64_t first_row, int64_t end_row, int64_t permute_head_dim, std::span<float> out) {
  LOWBIT_ASSIGN_OR_RETURN(const SafetensorsTensorInfo* info, checked(ck, name, shape));
  const SafetensorsFile& f = *ck.file_of(name);
  if (src == nullptr) src = f.data(*info).data();
  const int64_t cols = shape.size() == 2 ? shape[1] : 1;
  const size_t row_bytes = static_cast<size_t>(cols) * dtype_size(info->dtype);
  LOWBIT_RETURN_IF_ERROR(check_row_range(f.path(), name, first_row, end_row, shape[0], permute_head_dim > 0));
  LOWBIT_CHECK(out.size() == static_cast<size_t>((end_row - first_row) * cols), "load_f32: output size");
  const auto row_at = [&](int64_t r) {
    const int64_t s = permute_head_dim > 0 ? hf_rope_source_row(r, permute_head_dim) : r;
    return src + static_cast<size_t>(s) * row_bytes;
  };
  return rows_to_f32(f.path(), name, info->dtype, cols, first_row, end_row, row_at, out.data());
}

Status load_rows_into(const ShardedCheckpoint& ck, const std::string& name, const std::vector<int64_t>& shape,
                      int64_t first_row, int64_t end_row, int64_t permute_head_dim, std::span<float> out) {
  return stored_rows_into(ck, name, shape, nullptr, first_row, end_row, permute_head_dim, out);
}

// The offset of tensor `info`'s first byte in its file `f`.
uint64_t file_offset(const SafetensorsFile& f, const SafetensorsTensorInfo& info) {
  return static_cast<uint64_t>(f.data(info).data() - f.file()->bytes().data());
}
}  // namespace

Result<Tensor> load_f32_rows(const ShardedCheckpoint& ck, const std::string& name, const std::vector<int64_t>& shape,
                             int64_t first_row, int64_t end_row, int64_t permute_head_dim) {
  LOWBIT_RETURN_IF_ERROR(checked(ck, name, shape).status());
  std::vector<int64_t> out_shape = shape;
  out_shape[0] = std::max<int64_t>(0, end_row - first_row);
  LOWBIT_ASSIGN_OR_RETURN(Tensor t, Tensor::empty(DType::kF32, std::span<const int64_t>(out_shape)));
  LOWBIT_RETURN_IF_ERROR(load_rows_into(ck, name, shape, first_row, end_row, permute_head_dim,
                                        std::span<float>(t.data_as<float>(), static_cast<size_t>(t.numel()))));
  return t;
}

Status load_f32_into(const ShardedCheckpoint& ck, const std::string& name, const std::vector<int64_t>& shape,
                     std::span<float> out, int64_t permute_head_dim) {
  return load_rows_into(ck, name, shape, 0, shape.empty() ? 0 : shape[0], permute_head_dim, out);
}

// ---- DirectRowReader ----

DirectRowReader::~DirectRowReader() {
  join();
  if (fd_ >= 0) ::close(fd_);
  std::free(buf_.data);
  std::free(next_.data);
}

DirectRowReader::DirectRowReader(DirectRowReader&& o) noexcept
    : ck_(o.ck_), name_(std::move(o.name_)), shape_(std::move(o.shape_)), path_(std::move(o.path_)), dtype_(o.dtype_),
      offset_(o.offset_), fd_(std::exchange(o.fd_, -1)), buf_(std::exchange(o.buf_, {})), next_(std::exchange(o.next_, {})) {
  LOWBIT_CHECK(!o.thread_.joinable(), "DirectRowReader moved while it prefetches");
}

Result<DirectRowReader> DirectRowReader::open(const ShardedCheckpoint& ck, const std::string& name, const std::vector<int64_t>& shape) {
  LOWBIT_ASSIGN_OR_RETURN(const SafetensorsTensorInfo* info, checked(ck, name, shape));
  const SafetensorsFile& f = *ck.file_of(name);
  DirectRowReader r;
  r.ck_ = &ck;
  r.name_ = name;
  r.shape_ = shape;
  r.path_ = f.path();
  r.dtype_ = info->dtype;
  r.offset_ = file_offset(f, *info);
  if (direct_io_enabled()) r.fd_ = ::open(f.path().c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);  // -1 (e.g. EINVAL): the mapping serves
  return r;
}

DirectRowReader::Read DirectRowReader::read_rows(int64_t first_row, int64_t end_row, Buffer& b, Status& err) const {
  const uint64_t row_bytes = static_cast<uint64_t>(shape_.size() == 2 ? shape_[1] : 1) * dtype_size(dtype_);
  const uint64_t lo = offset_ + static_cast<uint64_t>(first_row) * row_bytes, hi = offset_ + static_cast<uint64_t>(end_row) * row_bytes;
  const uint64_t a0 = lo / kAlign * kAlign, a1 = (hi + kAlign - 1) / kAlign * kAlign;
  if (a1 - a0 > b.cap) {
    std::free(b.data);
    b.cap = static_cast<size_t>(a1 - a0);
    b.data = static_cast<std::byte*>(std::aligned_alloc(kAlign, b.cap));
    if (b.data == nullptr) {
      b.cap = 0;
      err = IoError(fmt::format("{}: tensor {}: no memory for a read buffer of {} bytes", path_, name_, a1 - a0));
      return Read::kError;
    }
  }
  uint64_t got = 0;
  while (a0 + got < hi) {
    const ssize_t n = ::pread(fd_, b.data + got, static_cast<size_t>(a1 - a0 - got), static_cast<off_t>(a0 + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EINVAL || errno == EOPNOTSUPP) && got == 0) return Read::kRefused;
    if (n < 0) {
      err = IoError(fmt::format("{}: tensor {}: reading rows [{}, {}): {}", path_, name_, first_row, end_row, std::strerror(errno)));
      return Read::kError;
    }
    if (n == 0) {
      err = DataLoss(fmt::format("{}: tensor {}: the file ends inside rows [{}, {})", path_, name_, first_row, end_row));
      return Read::kError;
    }
    got += static_cast<uint64_t>(n);
  }
  return Read::kOk;
}

Status DirectRowReader::convert(const Buffer& b, int64_t first_row, int64_t end_row, std::span<float> out) const {
  const int64_t cols = shape_.size() == 2 ? shape_[1] : 1;
  const uint64_t row_bytes = static_cast<uint64_t>(cols) * dtype_size(dtype_);
  const uint64_t lo = offset_ + static_cast<uint64_t>(first_row) * row_bytes;
  const std::byte* base = b.data + (lo - lo / kAlign * kAlign);
  return rows_to_f32(path_, name_, dtype_, cols, first_row, end_row,
                     [&](int64_t r) { return base + static_cast<uint64_t>(r - first_row) * row_bytes; }, out.data());
}

void DirectRowReader::join() {
  if (thread_.joinable()) thread_.join();
}

void DirectRowReader::prefetch(int64_t first_row, int64_t end_row) {
  join();
  next_first_ = next_end_ = -1;
  if (fd_ < 0 || !check_row_range(path_, name_, first_row, end_row, shape_[0]).ok() || first_row == end_row) return;
  next_first_ = first_row;
  next_end_ = end_row;
  thread_ = std::thread([this, first_row, end_row] { next_read_ = read_rows(first_row, end_row, next_, next_err_); });
}

Status DirectRowReader::rows_into(int64_t first_row, int64_t end_row, std::span<float> out) {
  LOWBIT_RETURN_IF_ERROR(check_row_range(path_, name_, first_row, end_row, shape_[0]));
  const int64_t cols = shape_.size() == 2 ? shape_[1] : 1;
  LOWBIT_CHECK(out.size() == static_cast<size_t>((end_row - first_row) * cols), "DirectRowReader::rows_into: output size");
  const bool prefetched = thread_.joinable() && first_row == next_first_ && end_row == next_end_;
  join();  // a prefetch of another range is dropped
  Read got = Read::kRefused;
  Status err;
  if (prefetched) {
    std::swap(buf_, next_);
    got = next_read_;
    err = next_err_;
  } else if (fd_ >= 0) {
    got = read_rows(first_row, end_row, buf_, err);
  }
  next_first_ = next_end_ = -1;
  if (got == Read::kError) return err;
  if (got == Read::kRefused) {  // O_DIRECT refused on reading (or never open): the mapping serves, as load_f32_rows reads it
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    LOWBIT_RETURN_IF_ERROR(load_rows_into(*ck_, name_, shape_, first_row, end_row, 0, out));
    release_pages(*ck_, name_, first_row, end_row);
    return OkStatus();
  }
  return convert(buf_, first_row, end_row, out);
}

// ---- TensorPrefetch ----

TensorPrefetch::TensorPrefetch(const ShardedCheckpoint& ck)
    : ck_(ck), direct_fds_(ck.shards.size(), kFdNotYet), plain_fds_(ck.shards.size(), kFdNotYet) {}

TensorPrefetch::~TensorPrefetch() {
  if (thread_.joinable()) thread_.join();
  for (int fd : direct_fds_) if (fd >= 0) ::close(fd);
  for (int fd : plain_fds_) if (fd >= 0) ::close(fd);
  std::free(buf_);
}

void TensorPrefetch::release() {
  LOWBIT_CHECK(!pending_, "TensorPrefetch::release while a batch is read");
  std::free(buf_);
  buf_ = nullptr;
  cap_ = 0;
  ranges_.clear();
}

Status TensorPrefetch::start(std::vector<std::string> names) {
  LOWBIT_CHECK(!pending_, "TensorPrefetch::start before the previous batch was waited for");
  ranges_.clear();
  size_t total = 0;
  for (std::string& name : names) {
    const auto it = ck_.where.find(name);
    if (it == ck_.where.end()) return NotFound(fmt::format("{}: no tensor {}", ck_.index_path, name));
    const SafetensorsFile& f = ck_.shards[it->second];
    const SafetensorsTensorInfo& info = *f.find(name);
    const uint64_t lo = file_offset(f, info), hi = lo + (info.end - info.begin);
    const uint64_t a0 = lo / kAlign * kAlign, a1 = (hi + kAlign - 1) / kAlign * kAlign;
    ranges_.push_back({std::move(name), it->second, a0, a1, lo, total});
    total += static_cast<size_t>(a1 - a0);
  }
  if (total > cap_) {
    std::free(buf_);
    buf_ = static_cast<std::byte*>(std::aligned_alloc(kAlign, total));
    cap_ = buf_ ? total : 0;
    if (buf_ == nullptr) return IoError(fmt::format("{}: no memory for a read buffer of {} bytes", ck_.index_path, total));
  }
  pending_ = true;
  result_ = OkStatus();
  thread_ = std::thread([this] { result_ = read_all(); });
  return OkStatus();
}

Status TensorPrefetch::wait() {
  if (thread_.joinable()) thread_.join();
  pending_ = false;
  return result_;
}

// On the prefetch thread: every range, in order, into the buffer.
Status TensorPrefetch::read_all() {
  direct_ = direct_io_enabled();
  for (const Range& r : ranges_) {
    const SafetensorsFile& f = ck_.shards[r.file];
    int& dfd = direct_fds_[r.file];
    int& pfd = plain_fds_[r.file];
    if (direct_ && dfd == kFdNotYet) {
      dfd = ::open(f.path().c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
      if (dfd < 0) dfd = kFdRefused;  // asked once per shard, not per batch
    }
    uint64_t got = 0;
    while (r.a0 + got < r.a1) {
      int fd = direct_ ? dfd : pfd;
      if (fd < 0) {  // O_DIRECT refused (or off): through the page cache
        direct_ = false;
        if (pfd < 0) pfd = ::open(f.path().c_str(), O_RDONLY | O_CLOEXEC);
        if (pfd < 0) return IoError(fmt::format("{}: tensor {}: cannot open: {}", f.path(), r.name, std::strerror(errno)));
        fd = pfd;
      }
      const ssize_t n = ::pread(fd, buf_ + r.at + got, static_cast<size_t>(r.a1 - r.a0 - got), static_cast<off_t>(r.a0 + got));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && fd == dfd && (errno == EINVAL || errno == EOPNOTSUPP)) {  // O_DIRECT refused on reading
        ::close(dfd);
        dfd = kFdRefused;
        direct_ = false;
        continue;
      }
      if (n < 0) return IoError(fmt::format("{}: tensor {}: reading: {}", f.path(), r.name, std::strerror(errno)));
      if (n == 0) break;  // the end of the file: the last range's padding
      got += static_cast<uint64_t>(n);
    }
    const uint64_t need = r.lo - r.a0 + f.find(r.name)->end - f.find(r.name)->begin;
    if (got < need) return DataLoss(fmt::format("{}: tensor {}: the file ends inside it", f.path(), r.name));
  }
  return OkStatus();
}

Status TensorPrefetch::load_f32_into(const std::string& name, const std::vector<int64_t>& shape, std::span<float> out,
                                     int64_t permute_head_dim) const {
  LOWBIT_CHECK(!pending_, "TensorPrefetch::load_f32_into before wait");
  const auto r = std::find_if(ranges_.begin(), ranges_.end(), [&](const Range& x) { return x.name == name; });
  if (r == ranges_.end()) return NotFound(fmt::format("{}: tensor {} is not in the prefetched batch", ck_.index_path, name));
  return stored_rows_into(ck_, name, shape, buf_ + r->at + (r->lo - r->a0), 0, shape.empty() ? 0 : shape[0], permute_head_dim, out);
}

void release_pages(const ShardedCheckpoint& ck, const std::string& name, int64_t first_row, int64_t end_row) {
  const SafetensorsFile* f = ck.file_of(name);
  if (f == nullptr) return;
  const SafetensorsTensorInfo* info = f->find(name);
  std::span<const std::byte> b = f->data(*info);
  if (first_row >= 0 && !info->shape.empty() && info->shape[0] > 0) {
    const size_t row_bytes = b.size() / static_cast<size_t>(info->shape[0]);
    const size_t lo_b = std::min(b.size(), static_cast<size_t>(first_row) * row_bytes);
    const size_t hi_b = std::min(b.size(), static_cast<size_t>(std::max(first_row, end_row)) * row_bytes);
    b = b.subspan(lo_b, hi_b - lo_b);
  }
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(b.data()) + page - 1) / page * page;  // whole pages inside the range
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(b.data()) + b.size()) / page * page;
  if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

}  // namespace lowbit
