// QuantSpec, QuantizedTensor, quantize / dequantize: how lowbit quantizes a tensor,
// as a runtime value. Every later layer (algorithms, kernels, writers, KV cache,
// training) takes a QuantSpec as data — no template parameter per format.
//
//   LOWBIT_ASSIGN_OR_RETURN(QuantSpec spec, parse_spec("int4:g128:sym:fp16"));
//   LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(weight_view, spec));   // (out, in)
//   Tensor w_hat = ...;  dequantize(q, w_hat.view());
//   double bpw = q.bits_per_weight();                                           // 4.125
//
// A tensor is quantized as a 2-D matrix (rows, cols): leading dimensions are flattened
// into rows, the last dimension is cols (the reduction axis of a weight (out, in) or the
// hidden axis of activations (tokens, hidden)). Every granularity is a grid of blocks
// over that matrix; see docs/schemes.md.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/formats.h"
#include "lowbit/ggml_blocks.h"
#include "lowbit/status.h"
#include "lowbit/tensor.h"

namespace lowbit {

enum class Granularity : uint8_t {
  kTensor,  // one scale for the whole tensor
  kRow,     // one scale per row: per output channel of a weight, per token of activations
  kCol,     // one scale per column: per input channel (axis 1)
  kGroup,   // groups of `group` consecutive columns within a row (ragged last group)
  kBlock,   // 2-D blocks of block_rows x block_cols (ragged edges); 1x128 = DeepSeek-V3 tiles
};

enum class ClipRule : uint8_t {
  kAbsMax,      // the block's max |x|
  kPercentile,  // the `percentile`-th percentile of |x| in the block (exact selection)
  kMse,         // the clip ratio in (0, 1] minimising the block's quantization MSE (grid search)
};

enum class ScaleRule : uint8_t {
  kDivide,      // scale = clip / (largest element value), rounded to the scale format
  kMxFloor,     // OCP MX: scale = 2^(floor(log2(amax)) - emax of the element format)
  kPow2Ceil,    // scale rounded up to a power of two (never clips)
  kUnit,        // scale 1: a plain cast to the element format (fp16 / bf16 weights)
};

struct QuantSpec {
  Format element = Format::kInt8;
  Granularity granularity = Granularity::kTensor;
  int64_t group = 0;       // kGroup: group size along cols (>= 1)
  int64_t block_rows = 0;  // kBlock
  int64_t block_cols = 0;  // kBlock
  bool symmetric = true;   // false: affine with a zero point (integer elements only)
  Format scale_format = Format::kFp32;  // fp32 fp16 bf16 e8m0 e4m3
  bool tensor_scale = false;  // NVFP4: block scales (e4m3) times one fp32 tensor scale
  ScaleRule scale_rule = ScaleRule::kDivide;
  ClipRule clip = ClipRule::kAbsMax;
  double percentile = 99.9;  // kPercentile, in (0, 100]
  Rounding rounding = Rounding::kNearestEven;
  uint64_t seed = 0;         // kStochastic
  bool saturate = true;      // clamp element overflow (false: spec cast, may give inf/NaN)
  // Not kF32: the tensor is stored as ggml blocks of this type (lowbit/ggml_blocks.h; text form
  // "gguf:q4_K"): codes hold the blocks row by row, the fields above are ignored, cols must be a
  // multiple of the type's block size. See docs/schemes.md ("GGUF block types").
  GgmlType ggml = GgmlType::kF32;

  bool operator==(const QuantSpec&) const = default;
};

// Parses the text form: "<element>:<granularity>[:sym|asym][:<scale format>][:<option>...]".
//   granularity: tensor | row (alias channel, token) | col | g<G> | block<R>x<C> (alias tile<R>x<C>)
//   scale format: fp32 (default) fp16 bf16 e8m0 e4m3, or e4m3*fp32 (two-level, NVFP4)
//   options: absmax | p<percent> (p99.9) | mse | divide | pow2 | mxfloor | unit | rne | sr<seed> | sat | nosat
// Errors name the field and list the accepted values.
Result<QuantSpec> parse_spec(std::string_view text);
// The canonical text form; parse_spec(to_string(s)) == s.
std::string to_string(const QuantSpec& spec);
// The spec of a ggml block type ("gguf:<type>").
QuantSpec ggml_spec(GgmlType type);
// Checks a spec built in code: group >= 1, element/affine compatibility, scale formats.
Status validate(const QuantSpec& spec);

// Index of the P-th percentile among n sorted values: ceil(P/100 · n) − 1, with P/100 · n
// snapped to an integer when it is one up to rounding (99.9/100 · 1000 is 999.0000000000001).
size_t percentile_index(double p, size_t n);

// Largest magnitude an element can take before scaling: 127 for int8, 448 for e4m3, 1 for nf4.
double element_qmax(const QuantSpec& spec);

// The block grid of a spec over a (rows, cols) matrix.
struct BlockGrid {
  int64_t rows = 0, cols = 0;              // the matrix
  int64_t block_rows = 0, block_cols = 0;  // block shape (edges may be ragged)
  int64_t grid_rows = 0, grid_cols = 0;    // number of blocks along each axis
  int64_t num_blocks() const { return grid_rows * grid_cols; }
};
BlockGrid block_grid(const QuantSpec& spec, int64_t rows, int64_t cols);

struct QuantizedTensor {
  QuantSpec spec;
  Shape shape;               // logical shape of the original tensor
  int64_t rows = 0, cols = 0;  // the 2-D view: rows = product of leading dims
  int64_t row_bytes = 0;       // packed bytes per row of codes (rows start on a byte boundary)
  std::vector<uint8_t> codes;        // (rows, row_bytes), element format's storage layout
  std::vector<uint8_t> scale_codes;  // (grid_rows, grid_cols) in scale_format's storage layout
  std::vector<float> scales;         // the same scales decoded to fp32 (tensor scale folded in)
  std::vector<int32_t> zero_points;  // (grid_rows, grid_cols); empty when symmetric
  float tensor_scale = 1.0f;         // second-level scale (NVFP4); 1 otherwise

  BlockGrid grid() const { return block_grid(spec, rows, cols); }
  int64_t numel() const { return rows * cols; }
  // Exact bytes of what must be stored: codes + scale codes + zero points (+ tensor scale).
  int64_t storage_bytes() const;
  double bits_per_weight() const { return numel() ? 8.0 * static_cast<double>(storage_bytes()) / static_cast<double>(numel()) : 0.0; }
  // Element (r, c)'s code: the integer value for int8/int4 (sign-extended), the raw code otherwise.
  int32_t code_at(int64_t r, int64_t c) const;
};

// Bits per element a spec costs for a (rows, cols) matrix, scale overhead included.
double bits_per_weight(const QuantSpec& spec, int64_t rows, int64_t cols);

// A named scheme: what `--scheme w4a16-g128` means. Activation specs are dynamic (scales
// computed from each tensor online); an empty activation spec leaves activations in fp32.
struct Scheme {
  std::string_view name;
  std::string_view weights;      // QuantSpec text form for linear weights
  std::string_view activations;  // QuantSpec text form for linear inputs, or ""
  std::string_view description;
};
std::span<const Scheme> named_schemes();
Result<Scheme> find_scheme(std::string_view name);  // error lists the known names

struct QuantizeOptions {
  std::string name{};         // names the tensor in error messages
  std::span<const float> clip{};  // static scales: one clip value per block from an observer (grid order)
  bool use_reference = false;   // force the scalar reference path (tests, benchmarks)
  // ggml block specs: per-column importance (cols values, e.g. diag of XᵀX) for the weighted scale
  // search; empty weighs all columns equally.
  std::span<const float> importance{};
};

// Quantizes an f32 tensor (any strides; at least one dimension). Errors: NaN/Inf in the input
// (reports the first position), a scale the scale format cannot hold, an invalid spec.
Result<QuantizedTensor> quantize(ConstTensorView x, const QuantSpec& spec, const QuantizeOptions& opt = {});
// ---- building blocks for algorithms that choose codes themselves (GPTQ) -------------------
// The code of x in a block with dequantization scale `scale` and zero point `zero` (the
// element step of docs/schemes.md; `index` feeds stochastic rounding), and the value of a code.
uint32_t quantize_value(const QuantSpec& spec, float x, float scale, int32_t zero, uint64_t index = 0);
float dequantize_value(const QuantSpec& spec, uint32_t code, float scale, int32_t zero);
// quantize_value then dequantize_value of one element (index 0), for loops that do both per
// element (GPTQ's): integer elements with round-to-nearest-even in a few instructions, other
// formats through the two calls. The same code and value as the two calls, bit for bit.
class ElementRounder {
 public:
  explicit ElementRounder(const QuantSpec& spec);
  uint32_t round(float x, float scale, int32_t zero, float* value) const {
    if (!fast_) {
      const uint32_t code = quantize_value(spec_, x, scale, zero);
      *value = dequantize_value(spec_, code, scale, zero);
      return code;
    }
    float v = scale == 0.0f ? 0.0f : x / scale;
    if (!spec_.symmetric) v += static_cast<float>(zero);
    v = v < lo_ ? lo_ : hi_ < v ? hi_ : v;  // std::clamp's order: NaN stays NaN
    const float r = (v != v ? 0.0f : std::nearbyint(v)) + 0.0f;  // ties to even (the default mode); -0 -> +0 as decode gives
    *value = (r - static_cast<float>(zero)) * scale;
    return static_cast<uint32_t>(static_cast<int32_t>(r)) & mask_;
  }

 private:
  QuantSpec spec_;
  bool fast_ = false;
  float lo_ = 0.0f, hi_ = 0.0f;
  uint32_t mask_ = 0;
};
// A (rows, cols) QuantizedTensor of `spec` with every code, scale and zero point 0, to be filled
// with set_code / copy_block_params.
QuantizedTensor empty_quantized(const QuantSpec& spec, int64_t rows, int64_t cols);
// Stores element (r, c)'s raw code (as quantize_value returns it).
void set_code(QuantizedTensor& q, int64_t r, int64_t c, uint32_t code);
// Copies block `src_block`'s scale code, scale and zero point (grid order) of `src` into block
// `dst_block` of `dst`; both have the same spec.
void copy_block_params(const QuantizedTensor& src, int64_t src_block, QuantizedTensor& dst, int64_t dst_block);

// Writes the dequantized values into `out` (f32, the quantized tensor's shape, any strides).
Status dequantize(const QuantizedTensor& q, TensorView out, bool use_reference = false);

}  // namespace lowbit
