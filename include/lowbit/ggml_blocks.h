// ggml's quantized block types (the tensors of GGUF files that llama.cpp runs): their byte layouts
// pinned by static_asserts, a type table (name, GGUF type id, block size, bytes, bits per weight)
// and bit-exact scalar dequantizers, one per type, over a row of blocks. Layouts and formulas are
// in docs/formats.md ("ggml block types"); the facts come from ggml-common.h / ggml-quants.c.
//
//   const GgmlBlockInfo* info = ggml_block_info(GgmlType::kQ4_K);   // 256 elements, 144 bytes
//   std::vector<float> y(cols);
//   dequantize_row_q4_K(reinterpret_cast<const BlockQ4_K*>(bytes), y.data(), cols);
//   // or, for any type in the table:
//   dequantize_row(GgmlType::kIQ4_XS, bytes, y.data(), cols);
//
// Block structs hold only bytes and uint16_t, so they are 2-byte aligned and any even offset into a
// GGUF data section (aligned to 32) may be viewed as a block array. `k` is always the number of
// elements and must be a multiple of the type's block size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace lowbit {

// ggml's tensor types (ggml.h enum ggml_type); the gaps are ids ggml has retired.
enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15,
  kIQ2_XXS = 16, kIQ2_XS = 17, kIQ3_XXS = 18, kIQ1_S = 19, kIQ4_NL = 20, kIQ3_S = 21, kIQ2_S = 22,
  kIQ4_XS = 23, kI8 = 24, kI16 = 25, kI32 = 26, kI64 = 27, kF64 = 28, kIQ1_M = 29, kBF16 = 30,
  kTQ1_0 = 34, kTQ2_0 = 35, kMXFP4 = 39,
};

using ggml_half = uint16_t;  // IEEE binary16 bits

constexpr int kGgmlQK = 32;    // QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = QK4_NL
constexpr int kGgmlQK_K = 256;  // QK_K: the k-quant and IQ4_XS super-block
constexpr int kGgmlKScaleSize = 12;  // K_SCALE_SIZE: eight 6-bit (scale, min) pairs

// IQ4_NL / IQ4_XS's non-linear 4-bit grid (ggml-common.h kvalues_iq4nl).
inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

// --- 32-element blocks. Element j of a block is nibble j (low) of qs[j] for j < 16 and the high
// nibble of qs[j - 16] otherwise; Q5's fifth bit of element j is bit j of qh (little-endian u32).
struct BlockQ4_0 { ggml_half d; uint8_t qs[kGgmlQK / 2]; };              // x = d * (q - 8)
struct BlockQ4_1 { ggml_half d, m; uint8_t qs[kGgmlQK / 2]; };           // x = d * q + m
struct BlockQ5_0 { ggml_half d; uint8_t qh[4]; uint8_t qs[kGgmlQK / 2]; };  // x = d * (q - 16)
struct BlockQ5_1 { ggml_half d, m; uint8_t qh[4]; uint8_t qs[kGgmlQK / 2]; };  // x = d * q + m
struct BlockQ8_0 { ggml_half d; int8_t qs[kGgmlQK]; };                   // x = d * q
struct BlockIQ4_NL { ggml_half d; uint8_t qs[kGgmlQK / 2]; };            // x = d * grid[q]

// --- 256-element super-blocks.
// Q2_K: 16 sub-blocks of 16; scales[s] = (4-bit min << 4) | 4-bit scale; x = d*sc*q - dmin*m, q 2-bit.
struct BlockQ2_K { uint8_t scales[kGgmlQK_K / 16]; uint8_t qs[kGgmlQK_K / 4]; ggml_half d, dmin; };
// Q3_K: 16 sub-blocks of 16 with signed 6-bit scales (stored + 32); x = d*(sc-32)*(q - 4*!hbit), q 2-bit.
struct BlockQ3_K { uint8_t hmask[kGgmlQK_K / 8]; uint8_t qs[kGgmlQK_K / 4]; uint8_t scales[12]; ggml_half d; };
// Q4_K: 8 sub-blocks of 32, 6-bit scale and min each; x = d*sc*q - dmin*m, q 4-bit.
struct BlockQ4_K { ggml_half d, dmin; uint8_t scales[kGgmlKScaleSize]; uint8_t qs[kGgmlQK_K / 2]; };
// Q5_K: as Q4_K with a fifth bit per element in qh.
struct BlockQ5_K { ggml_half d, dmin; uint8_t scales[kGgmlKScaleSize]; uint8_t qh[kGgmlQK_K / 8]; uint8_t qs[kGgmlQK_K / 2]; };
// Q6_K: 16 sub-blocks of 16 with int8 scales; x = d*sc*(q - 32), q 6-bit (4 in ql, 2 in qh).
struct BlockQ6_K { uint8_t ql[kGgmlQK_K / 2]; uint8_t qh[kGgmlQK_K / 4]; int8_t scales[kGgmlQK_K / 16]; ggml_half d; };
// IQ4_XS: 8 sub-blocks of 32 with signed 6-bit scales (stored + 32: low 4 bits in scales_l, high 2
// in scales_h); x = d*(ls-32)*grid[q].
struct BlockIQ4_XS { ggml_half d; uint16_t scales_h; uint8_t scales_l[kGgmlQK_K / 64]; uint8_t qs[kGgmlQK_K / 2]; };
// Q8_K (activations only, never stored in a GGUF): 256 int8 codes, an fp32 scale and the sums of
// each 16 codes (the k-quant dot products' min/offset terms); x = d * q.
struct BlockQ8_K { float d; int8_t qs[kGgmlQK_K]; int16_t bsums[kGgmlQK_K / 16]; };

static_assert(sizeof(BlockQ8_K) == 292 && offsetof(BlockQ8_K, qs) == 4 && offsetof(BlockQ8_K, bsums) == 260, "ggml block_q8_K");
static_assert(sizeof(BlockQ4_0) == 18 && offsetof(BlockQ4_0, qs) == 2, "ggml block_q4_0");
static_assert(sizeof(BlockQ4_1) == 20 && offsetof(BlockQ4_1, m) == 2 && offsetof(BlockQ4_1, qs) == 4, "ggml block_q4_1");
static_assert(sizeof(BlockQ5_0) == 22 && offsetof(BlockQ5_0, qh) == 2 && offsetof(BlockQ5_0, qs) == 6, "ggml block_q5_0");
static_assert(sizeof(BlockQ5_1) == 24 && offsetof(BlockQ5_1, qh) == 4 && offsetof(BlockQ5_1, qs) == 8, "ggml block_q5_1");
static_assert(sizeof(BlockQ8_0) == 34 && offsetof(BlockQ8_0, qs) == 2, "ggml block_q8_0");
static_assert(sizeof(BlockIQ4_NL) == 18 && offsetof(BlockIQ4_NL, qs) == 2, "ggml block_iq4_nl");
static_assert(sizeof(BlockQ2_K) == 84 && offsetof(BlockQ2_K, qs) == 16 && offsetof(BlockQ2_K, d) == 80 &&
              offsetof(BlockQ2_K, dmin) == 82, "ggml block_q2_K");
static_assert(sizeof(BlockQ3_K) == 110 && offsetof(BlockQ3_K, qs) == 32 && offsetof(BlockQ3_K, scales) == 96 &&
              offsetof(BlockQ3_K, d) == 108, "ggml block_q3_K");
static_assert(sizeof(BlockQ4_K) == 144 && offsetof(BlockQ4_K, dmin) == 2 && offsetof(BlockQ4_K, scales) == 4 &&
              offsetof(BlockQ4_K, qs) == 16, "ggml block_q4_K");
static_assert(sizeof(BlockQ5_K) == 176 && offsetof(BlockQ5_K, scales) == 4 && offsetof(BlockQ5_K, qh) == 16 &&
              offsetof(BlockQ5_K, qs) == 48, "ggml block_q5_K");
static_assert(sizeof(BlockQ6_K) == 210 && offsetof(BlockQ6_K, qh) == 128 && offsetof(BlockQ6_K, scales) == 192 &&
              offsetof(BlockQ6_K, d) == 208, "ggml block_q6_K");
static_assert(sizeof(BlockIQ4_XS) == 136 && offsetof(BlockIQ4_XS, scales_h) == 2 &&
              offsetof(BlockIQ4_XS, scales_l) == 4 && offsetof(BlockIQ4_XS, qs) == 8, "ggml block_iq4_xs");

// Row dequantizers: y[0..k) from k / block_size blocks; bit-exact to ggml's dequantize_row_*.
void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t k);
void dequantize_row_q4_1(const BlockQ4_1* x, float* y, int64_t k);
void dequantize_row_q5_0(const BlockQ5_0* x, float* y, int64_t k);
void dequantize_row_q5_1(const BlockQ5_1* x, float* y, int64_t k);
void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t k);
void dequantize_row_q2_K(const BlockQ2_K* x, float* y, int64_t k);
void dequantize_row_q3_K(const BlockQ3_K* x, float* y, int64_t k);
void dequantize_row_q4_K(const BlockQ4_K* x, float* y, int64_t k);
void dequantize_row_q5_K(const BlockQ5_K* x, float* y, int64_t k);
void dequantize_row_q6_K(const BlockQ6_K* x, float* y, int64_t k);
void dequantize_row_iq4_nl(const BlockIQ4_NL* x, float* y, int64_t k);
void dequantize_row_iq4_xs(const BlockIQ4_XS* x, float* y, int64_t k);

// ggml's quantize_row_q8_K_ref: per 256 values, iscale = -127 / (the value of largest magnitude,
// the first if tied), q = round-half-even(iscale * x) (at most 127), d = 1 / iscale, bsums; an
// all-zero block gets d = 0 and zero codes and sums. Bit-exact to ggml for finite x.
void quantize_row_q8_K(const float* x, BlockQ8_K* y, int64_t k);

// Sub-block scale/min unpacking shared by kernels and quantizers.
// Q4_K/Q5_K: the j-th (0..7) 6-bit scale and min from the 12 packed bytes (ggml get_scale_min_k4).
void ggml_scale_min_k4(int j, const uint8_t* packed, uint8_t* scale, uint8_t* min);
// Q3_K: the 16 signed scales (stored value - 32, so -32..31).
void ggml_q3_K_scales(const uint8_t packed[12], int8_t out[16]);

using GgmlDequantizeRowFn = void (*)(const void* blocks, float* y, int64_t k);

// One row of the type table.
struct GgmlBlockInfo {
  GgmlType type;
  std::string_view name;   // ggml's name: "q4_K", "iq4_xs", ...
  int64_t block_size;      // elements per block
  int64_t type_size;       // bytes per block
  double bpw;              // bits per weight: 8 * type_size / block_size
  GgmlDequantizeRowFn dequantize;
};

// The twelve block types above, in GGUF type-id order.
std::span<const GgmlBlockInfo> ggml_block_types();
// Null for a type that is not one of them.
const GgmlBlockInfo* ggml_block_info(GgmlType type);
// By ggml's name, case-insensitive ("q4_k", "Q4_K"); null if unknown.
const GgmlBlockInfo* ggml_block_info(std::string_view name);

// Any type in the table; false (and y untouched) for other types or k not a multiple of the block.
bool dequantize_row(GgmlType type, const void* blocks, float* y, int64_t k);

}  // namespace lowbit
