// safetensors (Hugging Face): a u64 little-endian header length N, N bytes of JSON naming each
// tensor's dtype, shape and byte range, then the raw little-endian tensor bytes. lowbit reads it
// zero copy (views into a shared mapping), writes it atomically, loads Llama checkpoints
// (config.json + model.safetensors) and stores quantized tensors in its own layout
// (<name>.qweight / .scales / .zeros + a "quantization_config" metadata entry; docs/formats.md).
//
//   LOWBIT_ASSIGN_OR_RETURN(SafetensorsFile f, open_safetensors("model.safetensors"));
//   LOWBIT_ASSIGN_OR_RETURN(ConstTensorView w, f.tensor("model.embed_tokens.weight"));  // raw dtype
//   LOWBIT_ASSIGN_OR_RETURN(Model m, load_safetensors("TinyLlama/"));  // config.json + weights, f32
//   LOWBIT_RETURN_IF_ERROR(write_safetensors("out.safetensors", {{"w", DType::kF32, {2, 3}, bytes}}, {}));
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/file.h"
#include "lowbit/model.h"
#include "lowbit/quant.h"
#include "lowbit/status.h"
#include "lowbit/tensor.h"

namespace lowbit {

// The safetensors dtype name of a lowbit storage type: "F32", "F16", "BF16", "I8", "U8", "I32",
// "I64" (and "F64", "I16", "U16", "U32", which DType also holds).
std::string_view safetensors_dtype_name(DType dtype);
// The reverse; Unsupported naming the dtype for the rest of the spec (BOOL, F8_E4M3, U64, ...).
Result<DType> parse_safetensors_dtype(std::string_view name);

struct SafetensorsTensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // any number of dims; [] is a scalar (one element)
  uint64_t begin = 0, end = 0;  // data_offsets: relative to the byte buffer after the header
  int64_t numel() const;
};

// An opened, fully validated file. Copies share the mapping.
class SafetensorsFile {
 public:
  SafetensorsFile() = default;

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Every tensor, in data-offset order.
  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }
  const SafetensorsTensorInfo* find(std::string_view name) const;  // null if absent
  // Zero-copy view of a tensor in its stored dtype. NotFound naming the file and tensor;
  // Unsupported for more than kMaxDims dims. The data need not be aligned for the dtype (the
  // format has no alignment rule): check before data_as<T>(), or read through bytes().
  Result<ConstTensorView> tensor(std::string_view name) const;
  std::span<const std::byte> data(const SafetensorsTensorInfo& info) const;
  const std::shared_ptr<MappedFile>& file() const { return file_; }

 private:
  friend Result<SafetensorsFile> open_safetensors(const std::string& path);

  std::string path_;
  std::shared_ptr<MappedFile> file_;
  size_t data_start_ = 0;  // 8 + N
  std::map<std::string, std::string> metadata_;
  std::vector<SafetensorsTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors_
};

// Maps and validates the whole header before any tensor is touched: header length (at most
// 100 MB and inside the file), a JSON object, "__metadata__" string -> string, each tensor's
// dtype, shape and data_offsets (end - begin == numel x dtype size, overflow-checked), and the
// spec's rule that tensors cover the data buffer exactly: no overlap, no hole, no trailing
// bytes. Errors are one line naming the file and the tensor.
Result<SafetensorsFile> open_safetensors(const std::string& path);

// One tensor to write: raw little-endian bytes (numel x dtype_size), which must outlive the call.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;
};

// Writes through AtomicFile (nothing half-written). The header is padded with spaces to a
// multiple of 8 so the data buffer starts 8-aligned; tensors follow in the given order.
// InvalidArgument for an empty, duplicate or "__metadata__" name or a byte count that does not
// match the shape.
Status write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

// A tensor too large to hold whole (a streamed save's 128256 x 4096 embedding): `produce` is
// called once, in file order, and hands `emit` exactly shape x dtype bytes in any number of
// pieces; anything else fails the write (Internal, nothing written).
struct SafetensorsPiecewiseEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::function<Status(const std::function<Status(std::span<const std::byte>)>& emit)> produce;
};
// write_safetensors with the bytes produced while the file is written (the same header and
// layout write_safetensors gives for the same names, dtypes, shapes and bytes).
Status write_safetensors_piecewise(const std::string& path, const std::vector<SafetensorsPiecewiseEntry>& tensors,
                                   const std::map<std::string, std::string>& metadata = {});

// Hugging Face Llama checkpoints: a directory holding config.json (LlamaConfig, model_type
// "llama") and model.safetensors, or the path of a .safetensors file with config.json beside
// it. F32 weights are views into the mapping; F16 / BF16 ones are converted to f32 into
// Model::owned, as are q_proj and k_proj, whose rows are reordered from Hugging Face's
// rotate-half RoPE layout to the interleaved pairs the forward pass uses (docs/formats.md).
// Sharded checkpoints (model.safetensors.index.json) are Unsupported.
Result<Model> load_safetensors(const std::string& path_or_dir);

// The row order load_safetensors gives q_proj / k_proj: row `r` of the result is row
// hf_rope_source_row(r, head_dim) of the Hugging Face weight.
int64_t hf_rope_source_row(int64_t r, int64_t head_dim);

// lowbit's quantized layout. For each quantized tensor `name`:
//   name.qweight       U8   (rows, row_bytes)        packed element codes
//   name.scales        F32|F16|BF16 (the scale format's storage), U8 for e8m0 / e4m3
//                           (grid_rows, grid_cols)
//   name.zeros         I32  (grid_rows, grid_cols)   asymmetric specs only
//   name.tensor_scale  F32  ()                       two-level (e4m3*fp32) specs only
// and metadata "quantization_config" = {"quant_method": "lowbit", "version": 1,
// "tensors": {name: {"spec": "<QuantSpec text>", "shape": [...]}}}. `plain` tensors (norms,
// embeddings) are written as they are, after the quantized ones. InvalidArgument if `metadata`
// already holds "quantization_config" or a name collides.
Status write_quantized_safetensors(const std::string& path,
                                   const std::map<std::string, QuantizedTensor>& quantized,
                                   const std::vector<SafetensorsEntry>& plain = {},
                                   const std::map<std::string, std::string>& metadata = {});
// For writers that produce a quantized tensor piecewise: the storage dtype of `scale_format`'s
// codes (the ".scales" entry), and the "quantization_config" metadata entry (key, value)
// write_quantized_safetensors stores for tensors name -> (spec, logical shape).
DType quantized_scale_dtype(Format scale_format);
std::pair<std::string, std::string> quantization_config_entry(
    const std::map<std::string, std::pair<QuantSpec, std::vector<int64_t>>>& tensors);
// Reads every tensor quantization_config describes, validating spec strings (parse_spec),
// dtypes and sizes (block_grid). Bit-exact inverse of write_quantized_safetensors.
Result<std::map<std::string, QuantizedTensor>> read_quantized_safetensors(const std::string& path);
// The same, from an already opened file.
Result<std::map<std::string, QuantizedTensor>> read_quantized_safetensors(const SafetensorsFile& file);

}  // namespace lowbit
