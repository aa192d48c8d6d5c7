// Sharded Hugging Face checkpoints: model.safetensors.index.json ({"weight_map": {tensor: shard
// file}}) and the shard files beside it, each memory mapped and validated; tensors stay in their
// stored dtype (views into the mappings) until a reader converts them. load_safetensors reads a
// folder holding an index through this; the streaming quantizer (stream.h) reads one block at a
// time from it.
//
//   LOWBIT_ASSIGN_OR_RETURN(ShardedCheckpoint ck, open_sharded("Llama-3-8B/model.safetensors.index.json"));
//   const SafetensorsFile* f = ck.file_of("model.layers.0.mlp.up_proj.weight");  // null if absent
//   LOWBIT_ASSIGN_OR_RETURN(ConstTensorView w, f->tensor("model.layers.0.mlp.up_proj.weight"));  // BF16
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <string>
#include <span>
#include <string_view>
#include <thread>
#include <vector>

#include "lowbit/model.h"
#include "lowbit/safetensors.h"
#include "lowbit/status.h"

namespace lowbit {

inline constexpr const char* kShardIndexName = "model.safetensors.index.json";

struct ShardedCheckpoint {
  std::string index_path;                 // the index (or, for one file, the file itself)
  std::vector<SafetensorsFile> shards;    // in the order the index first names them
  std::map<std::string, size_t, std::less<>> where;  // tensor name -> position in shards

  const SafetensorsFile* file_of(std::string_view tensor) const;  // null if no shard holds it
  // Bytes of all tensors whose names start with `prefix` ("model.layers.3."), as stored.
  int64_t bytes_with_prefix(std::string_view prefix) const;
};

// Reads the index and maps every shard it names. One-line errors naming the file and tensor:
// the index not JSON or without a "weight_map" object of strings; a shard name that is not a
// plain file name in the index's folder; a shard that is missing (naming a tensor the index
// puts there) or not valid safetensors (open_safetensors' errors); a tensor the index names that
// its shard does not hold; a tensor a shard holds that the index does not name for that shard.
Result<ShardedCheckpoint> open_sharded(const std::string& index_path);
// One unsharded file seen through the same interface.
ShardedCheckpoint single_file_checkpoint(SafetensorsFile f);
// A Hugging Face folder's config.json and weights (the index and its shards, or model.safetensors),
// mapped, nothing converted.
struct HfCheckpoint {
  LlamaConfig config;
  ShardedCheckpoint weights;
  DType stored = DType::kF32;  // the dtype of the first block's q_proj (what the shards mostly hold)
};
Result<HfCheckpoint> open_hf_checkpoint(const std::string& dir);
// Every tensor a Llama of `config` needs, present with the shape config.json implies and an
// F32 / F16 / BF16 dtype (lm_head optional), before anything is converted or written. Errors
// name the shard (or index) and the tensor.
Status check_llama_tensors(const HfCheckpoint& ck);
// One weight as an owned f32 tensor of `shape` (the stored F32 / F16 / BF16 converted); with
// permute_head_dim > 0, q/k rows reordered from Hugging Face's rotate-half layout to the
// interleaved pairs load_safetensors gives. Errors name the shard and the tensor.
Result<Tensor> load_f32(const ShardedCheckpoint& ck, const std::string& name, const std::vector<int64_t>& shape,
                        int64_t permute_head_dim = 0);
// The same into `out` (numel values): a caller that loads tensors of the same shapes again and
// again (a streamed quantize, block after block) keeps its buffers instead of faulting in fresh
// pages for every block.
Status load_f32_into(const ShardedCheckpoint& ck, const std::string& name, const std::vector<int64_t>& shape,
                     std::span<float> out, int64_t permute_head_dim = 0);
// Rows [first_row, end_row) of the same (no permutation unless the range is the whole tensor):
// a (end_row - first_row, cols) tensor, for tables read a chunk at a time.
Result<Tensor> load_f32_rows(const ShardedCheckpoint& ck, const std::string& name, const std::vector<int64_t>& shape,
                             int64_t first_row, int64_t end_row, int64_t permute_head_dim = 0);
// Drops the mapped pages of a tensor (or of its rows [first_row, end_row)) from this process
// (they stay in the page cache): a streamed reader calls it once they are converted, so
// resident memory stays one block.
void release_pages(const ShardedCheckpoint& ck, const std::string& name, int64_t first_row = -1, int64_t end_row = -1);

// Rows of one tensor read with O_DIRECT into one reused buffer, converted as load_f32_rows
// converts them (same values, same errors): a streamed pass over a multi-GB table then goes
// around the page cache, whose fresh pages cost more CPU than the disk's reading on some VMs
// (docs/results.md). Where the file system refuses O_DIRECT, the mapping serves (load_f32_rows,
// then release_pages). `ck` must outlive the reader.
class DirectRowReader {
 public:
  static Result<DirectRowReader> open(const ShardedCheckpoint& ck, const std::string& name, const std::vector<int64_t>& shape);
  DirectRowReader(DirectRowReader&& o) noexcept;  // only before the first prefetch
  DirectRowReader& operator=(DirectRowReader&&) = delete;
  DirectRowReader(const DirectRowReader&) = delete;
  ~DirectRowReader();  // waits for a prefetch still reading
  // Rows [first_row, end_row) as f32 into `out` ((end_row - first_row) x cols values).
  Status rows_into(int64_t first_row, int64_t end_row, std::span<float> out);
  // Starts reading rows [first_row, end_row) on a thread of its own, into a second buffer: a
  // chunked pass reads chunk i + 1 while it converts, quantizes and writes chunk i. The next
  // rows_into of exactly that range takes them (a read error then is its error); any other
  // range waits for the prefetch, drops it and reads as usual. Nothing where the mapping serves.
  void prefetch(int64_t first_row, int64_t end_row);
  bool direct() const { return fd_ >= 0; }

 private:
  DirectRowReader() = default;
  static constexpr uint64_t kAlign = 4096;
  struct Buffer {
    std::byte* data = nullptr;  // kAlign-aligned, cap bytes
    size_t cap = 0;
  };
  enum class Read { kOk, kRefused, kError };
  // The aligned span around rows [first_row, end_row) into `b` (grown as needed); kRefused where
  // the file system refuses O_DIRECT on reading, kError with `err` set otherwise.
  Read read_rows(int64_t first_row, int64_t end_row, Buffer& b, Status& err) const;
  Status convert(const Buffer& b, int64_t first_row, int64_t end_row, std::span<float> out) const;
  void join();
  const ShardedCheckpoint* ck_ = nullptr;
  std::string name_;
  std::vector<int64_t> shape_;
  std::string path_;
  DType dtype_ = DType::kF32;
  uint64_t offset_ = 0;  // of the tensor's first byte in its file
  int fd_ = -1;
  Buffer buf_, next_;    // rows_into's; the prefetch's
  std::thread thread_;   // the prefetch, while it reads
  int64_t next_first_ = -1, next_end_ = -1;  // the prefetched range (when thread_ ran)
  Read next_read_ = Read::kOk;
  Status next_err_;
};

// Whole tensors' stored bytes read on a thread of its own — with O_DIRECT around the page cache
// where the file system takes it (direct_io_enabled()), else with plain pread — into one buffer
// reused by every batch, then converted as load_f32_into converts them (same values, same
// errors). A streamed quantize reads block l + 1 while block l computes, so the disk and the CPU
// work at once:
//
//   TensorPrefetch pf(ck);
//   LOWBIT_RETURN_IF_ERROR(pf.start({"model.layers.0.mlp.up_proj.weight", ...}));
//   ...                                       // compute
//   LOWBIT_RETURN_IF_ERROR(pf.wait());        // the batch's read errors, if any
//   LOWBIT_RETURN_IF_ERROR(pf.load_f32_into("model.layers.0.mlp.up_proj.weight", shape, out));
//
// `ck` must outlive the prefetcher; the destructor waits for a batch still being read.
class TensorPrefetch {
 public:
  explicit TensorPrefetch(const ShardedCheckpoint& ck);
  TensorPrefetch(const TensorPrefetch&) = delete;
  TensorPrefetch& operator=(const TensorPrefetch&) = delete;
  ~TensorPrefetch();
  // Starts reading `names` (every one in the checkpoint: NotFound naming the index and tensor
  // otherwise). The previous batch must have been waited for.
  Status start(std::vector<std::string> names);
  // Blocks until the batch is in the buffer: OK, or the first read error (naming the file and
  // tensor). Waiting with no batch started is OK.
  Status wait();
  // Tensor `name` of the batch waited for as f32 (load_f32_into's checks, conversion and errors).
  Status load_f32_into(const std::string& name, const std::vector<int64_t>& shape, std::span<float> out,
                       int64_t permute_head_dim = 0) const;
  // Frees the buffer (the next start allocates it again).
  void release();
  size_t buffer_bytes() const { return cap_; }
  bool direct() const { return direct_; }  // whether the last batch went around the page cache

 private:
  struct Range { std::string name; size_t file; uint64_t a0, a1, lo; size_t at; };  // [a0, a1) aligned, tensor at `lo`, buffer offset `at`
  static constexpr uint64_t kAlign = 4096;
  Status read_all();
  const ShardedCheckpoint& ck_;
  std::vector<Range> ranges_;
  static constexpr int kFdNotYet = -1, kFdRefused = -2;
  std::vector<int> direct_fds_, plain_fds_;  // per shard, opened on first use; O_DIRECT refused stays refused
  std::byte* buf_ = nullptr;  // kAlign-aligned, cap_ bytes
  size_t cap_ = 0;
  bool direct_ = false;
  std::thread thread_;
  Status result_;
  bool pending_ = false;
};

}  // namespace lowbit
