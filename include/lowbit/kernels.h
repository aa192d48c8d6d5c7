// Quantized matmul kernels: weights are repacked once (pack_weights) into the layout the
// microkernels read, then y = x · Wᵀ runs on them with activations in fp32 (quantized to
// int8 / e4m3 on the fly where the op says so). One registry picks the implementation per
// op from the active ISA once per call (LOWBIT_ISA / ScopedIsa force a lower level).
//
//   LOWBIT_ASSIGN_OR_RETURN(QuantizedTensor q, quantize(w, *parse_spec("int4:g128:sym:fp16")));  // (out, in)
//   LOWBIT_ASSIGN_OR_RETURN(PackedWeights p, pack_weights(q));            // once, at load
//   LOWBIT_RETURN_IF_ERROR(matmul(p, x, m, in, y, out));                  // x (m, in) -> y (m, out)
//   MatmulOptions o{.op = KernelOp::kGemmA8W4};                           // int8 activations instead
//   std::string name = kernel_name(p, o);                                 // "gemm_a8_w4g128_f32__avx2"
//
// Layouts, arithmetic contracts and tolerances: docs/kernels.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lowbit/cpu.h"
#include "lowbit/quant.h"
#include "lowbit/status.h"

namespace lowbit {

enum class KernelOp : uint8_t {
  kAuto,          // the natural op for the packed weights (below)
  kGemmA8W8,      // int8 per-token activations × int8 per-channel weights, int32 accumulation
  kGemmA16W4,     // fp32 activations × int4 / uint4 / nf4 weights in groups
  kGemmA8W4,      // int8 per-token activations × int4 / uint4 weights in groups, int32 per group
  kGemmFp8Block,  // e4m3 1×128 activation tiles × e4m3 128×128 weight blocks, fp32 promotion per 128 of K
};

enum class WeightKind : uint8_t {
  kInt8Row,     // int8:row:sym — natural op kGemmA8W8
  kInt4Group,   // int4 / uint4 :g<G> sym or asym, G a multiple of 32 — natural op kGemmA16W4
  kNf4Group,    // nf4:g<G>, G a multiple of 32 — kGemmA16W4 only
  kE4m3Block,   // e4m3:block128x128 — kGemmFp8Block
};

// Weights (n = out features, k = in features) in the microkernels' layout (docs/kernels.md).
struct PackedWeights {
  WeightKind kind = WeightKind::kInt8Row;
  int64_t n = 0, k = 0;      // logical shape (out, in)
  int64_t np = 0, kp = 0;    // padded shape the kernels walk (zero padding)
  int64_t group = 0;         // elements of K per scale: G, 128 for e4m3 blocks, kp for int8 rows
  std::vector<uint8_t> data;     // codes, kind-specific layout
  std::vector<float> scales;     // int8 (np); int4/nf4 (np/4, kp/G, 4) per tile of 4 rows; e4m3 (ceil(np/128), kp/128)
  std::vector<int32_t> offsets;  // int4: like scales, u-offsets with w = (u - offset) · scale; else empty
  QuantSpec spec;                // the weights' spec

  int64_t groups_per_row() const { return group ? kp / group : 0; }
  // Bytes the kernel reads per call: codes + scales + offsets.
  int64_t bytes() const;
};

// True when some kernel serves weights quantized with `spec` (2-D weights (out, in)).
bool kernel_supports(const QuantSpec& spec);
// Repacks q; Unsupported naming the spec and the accepted ones otherwise.
Result<PackedWeights> pack_weights(const QuantizedTensor& q);
// Reference unpacking: the dequantized fp32 weights (n, k) from the packed form.
void unpack_weights(const PackedWeights& p, float* w /* (n, k) */);

enum class Fp8Accumulation : uint8_t {
  kPromoted,            // fp32 partial sums over 128 of K, promoted (scaled, added) into an fp32 accumulator
  kLimitedPromoted,     // emulation: partial sums keep `accum_bits` significand bits, promoted every 128
  kLimitedUnpromoted,   // emulation: one limited-precision accumulator over all of K (scaled products)
};

struct MatmulOptions {
  KernelOp op = KernelOp::kAuto;
  Fp8Accumulation fp8_accum = Fp8Accumulation::kPromoted;
  int accum_bits = 14;  // significand bits kept by the emulated accumulator (implicit one included)
};

// y (m, n), row stride ldy  =  x (m, k), row stride ldx  ·  Wᵀ.
// kGemmA8W8 / kGemmA8W4 quantize x per token to int8 (absmax / 127, round to nearest even);
// kGemmFp8Block quantizes x to e4m3 in 1×128 tiles (absmax / 448). The emulated accumulators
// run the scalar reference whatever the ISA. Errors: op not valid for the weights, bad shapes.
Status matmul(const PackedWeights& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy,
              const MatmulOptions& opt = {});

// int8 activations already quantized: a (m, k) row stride lda, a_scale (m) per token.
// y[i, j] = float(Σ a·w) · a_scale[i] · w_scale[j] (int32 accumulation, exact).
Status gemm_a8_w8(const PackedWeights& w, const int8_t* a, int64_t m, int64_t lda, const float* a_scale, float* y,
                  int64_t ldy);

// The op matmul runs for `opt` on these weights (resolves kAuto), or an error.
Result<KernelOp> resolve_op(const PackedWeights& w, const MatmulOptions& opt);

// The wgrad GEMM of FP8 training (DeepSeek-V3): dw (n, k) += dyᵀ · x over K = m tokens, with dy
// (m, n) row stride lddy and x (m, k) row stride ldx quantized here to e4m3 in 1×128 tiles along
// the token axis (128 tokens × 1 feature in their (tokens, features) layout; absmax / 448 per
// tile, saturating RNE), each 128-token partial sum promoted into the fp32 result with both
// tiles' scales. opt.fp8_accum selects the emulated accumulators instead (the same ISA levels).
// Deterministic for any thread count. Errors name the bad shape or stride.
Status gemm_fp8_wgrad(const float* dy, int64_t lddy, const float* x, int64_t ldx, int64_t m, int64_t n, int64_t k, float* dw,
                      int64_t lddw, const MatmulOptions& opt = {});
// The kernel gemm_fp8_wgrad runs under the active ISA: "gemm_fp8_wgrad128_f32__avx2".
std::string wgrad_kernel_name(const MatmulOptions& opt = {});

// Registry. Names carry the contract: gemm_a8_w4g128_f32__avx2.
struct KernelInfo {
  std::string name;
  KernelOp op;
  Isa isa;
  std::string contract;  // one line: what goes in and out
};
// Every kernel compiled into this build that runs on this CPU (all group sizes listed as g32/g64/g128).
std::vector<KernelInfo> available_kernels();
// The kernel matmul would run for these weights and options under the active ISA.
std::string kernel_name(const PackedWeights& w, const MatmulOptions& opt = {});
// Name for an op / group at an ISA ("gemm_a16_w4g128_f32", isa) — what `lowbit kernels` prints.
std::string kernel_name(KernelOp op, WeightKind kind, int64_t group, Isa isa);
// The ISA level each op dispatches to under the active ISA (avx512 levels reuse avx2 here).
Isa kernel_isa(KernelOp op);
std::string_view op_name(KernelOp op);

}  // namespace lowbit
