// Attention kernels over a quantized KV cache: Q·Kᵀ scores and P·V sums that dequantize the
// cache's codes inside the dot products (no fp32 copy of the cache). One call covers one head's
// rows for a run of tokens; the KV cache (include/lowbit/kv_cache.h) lays its buffers out so
// that each head's rows are a strided run of codes plus fp16 scales (and minimums).
//
//   KvRows k{.code = KvCode::kInt8, .codes = kc, .stride = row_bytes, .width = 64, .group = 64,
//            .scale = ks, .pstride = 1};
//   kv_scores(k, q, nullptr, n_tokens, scores);      // scores[t] = q · dequant(k_t)
//   kv_accumulate(v, probs, n_tokens, out);          // out[j] += Σ_t probs[t] · dequant(v_t)[j]
//
// Arithmetic contracts (the scalar twins in src/kernels/ref/kv_ref.cc follow them exactly, so
// every ISA gives bit-identical results): docs/kernels.md, "Attention over a quantized cache".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "lowbit/cpu.h"

namespace lowbit {

// How a stored code becomes a value before scaling.
enum class KvCode : uint8_t {
  kInt8,   // int8 byte c → c
  kInt4,   // nibble u (low nibble = even element) → u − 8 (symmetric int4)
  kUint4,  // nibble u → u (affine: value = u · scale + min)
  kE4m3,   // OCP e4m3 byte → its value
  kE5m2,   // OCP e5m2 byte → its value
};
std::string_view kv_code_name(KvCode c);  // "int8" "int4" "uint4" "e4m3" "e5m2"
int kv_code_bits(KvCode c);               // 8 or 4

// Codes of one head for a run of tokens, with per-(token, group) fp16 scales and minimums.
// value(t, j) = val(code(t, j)) · scale[t, j / group] + min[t, j / group].
struct KvRows {
  KvCode code = KvCode::kInt8;
  const uint8_t* codes = nullptr;  // row t at codes + t·stride: `width` codes (4-bit: width/2 bytes)
  int64_t stride = 0;              // bytes between rows
  int64_t width = 0;               // codes per row: the head dim padded to a multiple of 8, zero codes past it
  int64_t group = 0;               // codes per scale: a multiple of 8 dividing width
  const uint16_t* scale = nullptr; // fp16 (tokens, pstride), group g at [t·pstride + g]; nullptr: every scale 1
  const uint16_t* min = nullptr;   // fp16, same layout; nullptr: every min 0
  int64_t pstride = 0;
};

inline constexpr int64_t kKvMaxWidth = 512;  // widest head the kernels take (their stack sizes)

// out[t] = Σ_g fma-chain( scale[t,g] · dot_g(x, val(code_t)), min[t,g] · xsum[g] ) for t < ntok.
// x (width) zero past the head dim; xsum (width/group) = Σ of x over each group (needed when min).
void kv_scores(const KvRows& k, const float* x, const float* xsum, int64_t ntok, float* out);
// out[j] += Σ_t a[t] · value(t, j) for j < width (out has width floats).
void kv_accumulate(const KvRows& v, const float* a, int64_t ntok, float* out);

// The fp32 cache (the model's default): rows of `width` floats, `stride` floats apart, one head's
// keys or values for a run of tokens. Any width ≥ 1.
// out[t] = x · k_t: eight fma chains over lanes j % 8 for j < width rounded down to 8, summed
// ((p0+p4)+(p2+p6)) + ((p1+p5)+(p3+p7)), then the tail j fma'd onto that in order.
void attn_scores_f32(const float* k, int64_t stride, int64_t width, const float* x, int64_t ntok, float* out);
// out[j] = fma chain over t in order: out[j] ← fma(a[t], v_t[j], out[j]), for j < width.
void attn_accumulate_f32(const float* v, int64_t stride, int64_t width, const float* a, int64_t ntok, float* out);
// Grouped-query attention over the fp32 cache: nq ≥ 1 query heads that share one key (value) head.
// Head h's query is x + h·ldx, its weights a + h·lda, its output out + h·ldo; each head gets exactly
// the bits attn_scores_f32 / attn_accumulate_f32 give it alone, while every key and value row is
// read once for all nq heads (decode's attention at long contexts: Qwen2.5-1.5B has 6 per group).
void attn_scores_f32_heads(const float* k, int64_t stride, int64_t width, const float* x, int64_t ldx, int64_t nq, int64_t ntok,
                           float* out, int64_t ldo);
void attn_accumulate_f32_heads(const float* v, int64_t stride, int64_t width, const float* a, int64_t lda, int64_t nq, int64_t ntok,
                               float* out, int64_t ldo);

// fp16 bits → fp32, exact (bit manipulation, no libm): the cache's scale decoder outside the kernels.
float kv_half_to_float(uint16_t h);

// The kernel names ("attn_qk_int8_f32__avx2", "attn_pv_e4m3_f32__scalar") for a code at an ISA.
std::string kv_kernel_name(bool scores, KvCode code, Isa isa);
// The fp32 cache's ("attn_qk_f32_f32__avx2").
std::string kv_f32_kernel_name(bool scores, Isa isa);
// The ISA the kv kernels dispatch to under the active ISA.
Isa kv_kernel_isa();

}  // namespace lowbit
