// GGUF (ggml's model container, versions 2 and 3): a validating reader, bit-exact reference
// dequantization of the common ggml block types, a Llama loader and a generic writer.
// Layouts and formulas are in docs/formats.md ("GGUF").
//
//   LOWBIT_ASSIGN_OR_RETURN(GgufFile f, open_gguf("model.gguf"));
//   LOWBIT_ASSIGN_OR_RETURN(uint32_t layers, f.get_u32("llama.block_count"));
//   const GgufTensor* t = f.find_tensor("blk.0.attn_q.weight");   // dims [in, out] (ggml order)
//   LOWBIT_ASSIGN_OR_RETURN(Tensor w, dequantize_tensor(f, *t));   // f32 (out, in)
//   LOWBIT_ASSIGN_OR_RETURN(Model m, load_gguf("model.gguf"));     // or load_model(path)
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "lowbit/file.h"
#include "lowbit/ggml_blocks.h"
#include "lowbit/model.h"
#include "lowbit/quant.h"
#include "lowbit/status.h"
#include "lowbit/tensor.h"

namespace lowbit {

struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;  // ggml's: "q4_K", "bf16", ...
  int64_t block_size;     // elements per block (1 for plain types)
  int64_t type_size;      // bytes per block
  bool dequantize;        // dequantize_tensor() supports it
};
// Null for an id ggml does not define.
const GgmlTypeTraits* ggml_type_traits(uint32_t id);
std::string_view ggml_type_name(GgmlType type);

// GGUF metadata value types (gguf_type), by their on-disk ids.
enum class GgufValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};
std::string_view gguf_value_type_name(GgufValueType type);  // "u32", "string", "array", ...

// One metadata value: a scalar, a string, or an array of scalars or strings (GGUF allows
// nested arrays; no known model uses them and the reader rejects them).
struct GgufValue {
  using Scalar = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool,
                              std::string, uint64_t, int64_t, double>;

  GgufValueType type = GgufValueType::kU8;
  Scalar scalar;                             // type != kArray
  GgufValueType array_type = GgufValueType::kU8;  // type == kArray: the element type
  std::vector<Scalar> array;                 // type == kArray

  static GgufValue of(Scalar v);  // the type follows the alternative held
  static GgufValue u32(uint32_t v) { return of(v); }
  static GgufValue i32(int32_t v) { return of(v); }
  static GgufValue u64(uint64_t v) { return of(v); }
  static GgufValue f32(float v) { return of(v); }
  static GgufValue boolean(bool v) { return of(v); }
  static GgufValue str(std::string v) { return of(std::move(v)); }
  // An array of `element_type`; every element must hold that type's alternative.
  static GgufValue array_of(GgufValueType element_type, std::vector<Scalar> elements);

  bool operator==(const GgufValue&) const = default;
};

struct GgufTensor {
  std::string name;
  std::vector<int64_t> dims;  // ggml order, fastest first: a (out, in) matrix is [in, out]
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;        // from the start of the data section
  const std::byte* data = nullptr;  // into the mapping; valid while the GgufFile (or a copy of its `file`) lives
  uint64_t nbytes = 0;

  int64_t numel() const;
  // The row-major shape lowbit uses: dims reversed, (ne3, ne2, ne1, ne0).
  std::vector<int64_t> shape() const { return {dims.rbegin(), dims.rend()}; }
};

// A parsed, validated GGUF file. Everything in it has been bounds-checked against the file.
struct GgufFile {
  std::string path;
  uint32_t version = 0;
  uint64_t alignment = 32;    // general.alignment, default 32
  uint64_t data_offset = 0;   // start of the data section in the file
  std::vector<std::pair<std::string, GgufValue>> metadata;  // file order
  std::vector<GgufTensor> tensors;                          // file order
  std::shared_ptr<MappedFile> file;

  const GgufValue* find(std::string_view key) const;
  const GgufTensor* find_tensor(std::string_view name) const;

  // Typed getters: NotFound if the key is missing, InvalidArgument if it holds another type
  // (integer getters accept any integer type whose value fits). Messages name the file and key.
  Result<uint32_t> get_u32(std::string_view key) const;
  Result<uint64_t> get_u64(std::string_view key) const;
  Result<int64_t> get_i64(std::string_view key) const;
  Result<float> get_f32(std::string_view key) const;  // f32, or an f64 that converts exactly
  Result<bool> get_bool(std::string_view key) const;
  Result<std::string> get_string(std::string_view key) const;
  Result<uint64_t> get_array_length(std::string_view key) const;
};

// Maps and parses `path`, validating magic, version (2 or 3), counts, string and array
// lengths, value and tensor types, dims (1..4, each >= 1, at most 2^40 elements, ne0 a
// multiple of the block size), alignment, and that every tensor's bytes lie in the file.
// Errors: NotFound/IoError (open), DataLoss (corrupt), Unsupported (version, big-endian).
Result<GgufFile> open_gguf(const std::string& path);

// The tensor as f32, shape t.shape() (row-major, dims reversed), bit-exact to ggml's
// reference dequantize_row_* for F32, F16, BF16 and every type in ggml_block_types() (Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS).
// Other types: Unsupported naming the type and the tensor.
Result<Tensor> dequantize_tensor(const GgufFile& file, const GgufTensor& t);

// A Llama model (general.architecture "llama") from a GGUF file: F32 tensors are views into
// the mapping, the others are dequantized into Model::owned. No output.weight: tied classifier.
Result<Model> load_gguf(const std::string& path);

// One tensor to write. `shape` is lowbit's row-major order ((out, in) or (n)); the file gets
// it reversed, as ggml expects.
struct GgufWriteTensor {
  std::string name;
  std::vector<int64_t> shape;
  // Float source: `data` (numel values) stored as `type`, kF32 or kF16 (round to nearest even).
  std::span<const float> data{};
  GgmlType type = GgmlType::kF32;
  // Quantized source (instead of data; `type` is then ignored): int8:g32:sym:fp16 -> Q8_0,
  // int4:g32:sym:fp16 -> Q4_0. Must outlive the write_gguf call.
  const QuantizedTensor* quant = nullptr;
};

struct GgufWriteSpec {
  std::vector<std::pair<std::string, GgufValue>> metadata;  // written in this order
  std::vector<GgufWriteTensor> tensors;                     // written in this order
};

// A GGUF file laid out before its tensors' data exists: the header (metadata, every tensor's
// name, shape, type and offset) depends only on the declarations, so the data can be written
// at its offsets in any order, in pieces, across runs (quantize --stream --format gguf, --resume).
// write_gguf lays its files out with this.
struct GgufTensorDecl {
  std::string name;
  std::vector<int64_t> shape;  // lowbit's row-major order, as GgufWriteTensor's
  GgmlType type = GgmlType::kF32;
};
struct GgufLayout {
  std::string header;              // magic .. tensor infos, zero-padded to the data's start
  std::vector<uint64_t> offsets;   // each tensor's data, in bytes from the file's start
  std::vector<uint64_t> sizes;     // each tensor's bytes: rows x the type's row bytes
  uint64_t file_size = 0;          // the last tensor padded to the alignment, as write_gguf ends
};
// Errors as write_gguf's (a key or tensor twice, a bad shape, rows that hold no whole blocks).
Result<GgufLayout> gguf_layout(const std::vector<std::pair<std::string, GgufValue>>& metadata,
                               const std::vector<GgufTensorDecl>& tensors);
// One tensor's data as write_gguf stores it (its floats, or its blocks), with write_gguf's
// checks; the type stored in *type. Rows are independent: the bytes of rows [r0, r1) of a
// tensor are those of the tensor of just those rows.
Result<std::vector<uint8_t>> encode_gguf_tensor(const GgufWriteTensor& t, GgmlType* type = nullptr);

// Writes a GGUF v3 file atomically (temp file + rename). Alignment: general.alignment if the
// metadata sets it (a u32 power of two), else 32. Every tensor is checked before a byte is
// written; errors name the tensor or key.
Status write_gguf(const std::string& path, const GgufWriteSpec& spec);

}  // namespace lowbit
