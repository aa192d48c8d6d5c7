// Matmul straight from ggml blocks as a GGUF file stores them (every type of ggml_block_types():
// Q4_0 … Q8_0, Q2_K … Q6_K, IQ4_NL, IQ4_XS): y = x · Wᵀ where W's rows are decoded to fp32 one
// cache-sized tile at a time (bit-exact to ggml's dequantize_row_*, include/lowbit/ggml_blocks.h)
// and multiplied in fp32, so a model runs from its stored bits per weight (4.5 for Q4_K, 6.56 for
// Q6_K, 4.25 for IQ4_XS …) and never holds an fp32 copy of a matrix. Q4_K and Q6_K decode with
// per-ISA (AVX2) decoders; the other types with the scalar reference decoders at every level.
//
//   GgmlMatrix w{.type = GgmlType::kQ4_K, .blocks = t.data, .rows = out, .cols = in};  // in % 256 == 0
//   LOWBIT_RETURN_IF_ERROR(ggml_matmul(w, x, m, in, y, out));   // x (m, in) -> y (m, out)
//   ggml_kernel_name(GgmlType::kQ4_K, active_isa());             // "gemm_a16_q4K_f32__avx2"
//
// Arithmetic contract and tiling: docs/kernels.md, "ggml k-quant matmul". The scalar level
// (src/kernels/ref/ggml_ref.cc) is the twin the AVX2 one (src/kernels/x86/ggml_avx2.cc) is tested
// against: decoding bit for bit, the products within fp32 summation-order rounding.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "lowbit/cpu.h"
#include "lowbit/ggml_blocks.h"
#include "lowbit/status.h"
#include "lowbit/tensor.h"

namespace lowbit {

// A (rows, cols) = (out, in) matrix of ggml blocks, row after row; a view (the caller owns the bytes,
// typically the mapped GGUF). cols is a multiple of the type's block size.
struct GgmlMatrix {
  GgmlType type = GgmlType::kQ4_K;
  const void* blocks = nullptr;
  int64_t rows = 0, cols = 0;

  int64_t row_bytes() const;  // cols / block_size * type_size
  int64_t bytes() const { return rows * row_bytes(); }
};

// What the activations are multiplied as.
//  kF32: fp32, exact up to fp32 summation rounding (the product llama.cpp computes on an F32 GGUF).
//  kQ8K: each token's 256-column blocks quantized to int8 with one fp32 scale (ggml's Q8_K,
//        quantize_row_q8_K, bit-exact) and multiplied with the Q4_K / Q6_K codes in integers, as
//        llama.cpp runs k-quant files: one rounding of x per element (relative error ≤ 1/254 of the
//        block's largest |x|), ~4× fewer instructions per weight. Other block types ignore it (fp32).
enum class GgmlActs { kF32, kQ8K };

// Types ggml_matmul serves: every type with a ggml_block_info (the twelve block types).
bool ggml_matmul_supports(GgmlType type);
// Types with an integer Q8_K path (GgmlActs::kQ8K): Q4_K and Q6_K.
bool ggml_q8_supports(GgmlType type);
// y (m, w.rows), row stride ldy  =  x (m, w.cols), row stride ldx  ·  Wᵀ. Threads over row blocks
// (parallel_for). Errors: an unsupported type, cols not a multiple of the type's block, bad strides.
// With kQ8K every ISA level gives the same bits (the integer sums are exact).
Status ggml_matmul(const GgmlMatrix& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy,
                   GgmlActs acts = GgmlActs::kF32);
// ys[i] (m, ws[i]->rows) = x · ws[i]ᵀ for matrices of equal cols over one x (q, k, v; gate, up).
// With kQ8K and Q4_K/Q6_K matrices, x is quantized once and one parallel region covers every
// matrix's rows (the bits of separate ggml_matmul calls); otherwise one ggml_matmul each.
Status ggml_matmul_many(std::span<const GgmlMatrix* const> ws, const float* x, int64_t m, int64_t ldx,
                        std::span<float* const> ys, GgmlActs acts = GgmlActs::kF32);
// Row r of w decoded to fp32 (cols values): an embedding lookup without a copy of the table.
Status ggml_decode_row(const GgmlMatrix& w, int64_t r, float* out);
// Rows [r0, r1) decoded to fp32 into out (r1 - r0, cols): a whole matrix for a writer or a re-quantizer.
Status ggml_decode_rows(const GgmlMatrix& w, int64_t r0, int64_t r1, float* out);
// The whole matrix decoded to a new (rows, cols) fp32 tensor: one matrix at a time for a re-quantizer.
Result<Tensor> ggml_decode(const GgmlMatrix& w);

// "gemm_a16_q4K_f32__avx2": fp32 activations, the weight type, fp32 out, the ISA;
// "gemm_a8_q4K_f32__avx2" for Q8_K activations where the type has that path.
std::string ggml_kernel_name(GgmlType type, Isa isa, GgmlActs acts = GgmlActs::kF32);
// The ISA ggml_matmul dispatches to under the active ISA (avx512 levels reuse avx2).
Isa ggml_kernel_isa();

}  // namespace lowbit
