// Dispatch and names of the quantized-cache attention kernels (include/lowbit/kv_attention.h);
// the registry lists them beside the matmul kernels (registry.cc, available_kernels).
#include <bit>

#include <fmt/format.h>

#include "kv_internal.h"
#include "lowbit/status.h"

namespace lowbit {
namespace ki = kernels_internal;
namespace {

const ki::KvMicrokernels& kv_microkernels() {
#if defined(LOWBIT_HAVE_AVX2)
  if (active_isa() >= Isa::kAvx2) return ki::kv_avx2_microkernels();
#endif
  return ki::kv_scalar_microkernels();
}

void check_rows(const KvRows& r) {
  LOWBIT_CHECK(r.width > 0 && r.width % 8 == 0 && r.width <= kKvMaxWidth && r.group > 0 && r.group % 8 == 0 &&
                   r.width % r.group == 0,
               "kv kernels: width must be a multiple of 8 (<= 512) and group a multiple of 8 dividing it");
}

}  // namespace

std::string_view kv_code_name(KvCode c) {
  switch (c) {
    case KvCode::kInt8: return "int8";
    case KvCode::kInt4: return "int4";
    case KvCode::kUint4: return "uint4";
    case KvCode::kE4m3: return "e4m3";
    case KvCode::kE5m2: return "e5m2";
  }
  return "?";
}

int kv_code_bits(KvCode c) { return c == KvCode::kInt4 || c == KvCode::kUint4 ? 4 : 8; }

void kv_scores(const KvRows& k, const float* x, const float* xsum, int64_t ntok, float* out) {
  if (ntok <= 0) return;
  check_rows(k);
  kv_microkernels().scores(k, x, xsum, ntok, out);
}

void kv_accumulate(const KvRows& v, const float* a, int64_t ntok, float* out) {
  if (ntok <= 0) return;
  check_rows(v);
  kv_microkernels().accumulate(v, a, ntok, out);
}

void attn_scores_f32(const float* k, int64_t stride, int64_t width, const float* x, int64_t ntok, float* out) {
  if (ntok <= 0) return;
  LOWBIT_CHECK(width > 0 && stride >= width, "attn_scores_f32: width must be positive and the stride at least the width");
  kv_microkernels().scores_f32(k, stride, width, x, ntok, out);
}

void attn_accumulate_f32(const float* v, int64_t stride, int64_t width, const float* a, int64_t ntok, float* out) {
  if (ntok <= 0) return;
  LOWBIT_CHECK(width > 0 && stride >= width, "attn_accumulate_f32: width must be positive and the stride at least the width");
  kv_microkernels().accumulate_f32(v, stride, width, a, ntok, out);
}

void attn_scores_f32_heads(const float* k, int64_t stride, int64_t width, const float* x, int64_t ldx, int64_t nq, int64_t ntok,
                           float* out, int64_t ldo) {
  if (ntok <= 0 || nq <= 0) return;
  LOWBIT_CHECK(width > 0 && stride >= width, "attn_scores_f32_heads: width must be positive and the stride at least the width");
  kv_microkernels().scores_f32_heads(k, stride, width, x, ldx, nq, ntok, out, ldo);
}

void attn_accumulate_f32_heads(const float* v, int64_t stride, int64_t width, const float* a, int64_t lda, int64_t nq, int64_t ntok,
                               float* out, int64_t ldo) {
  if (ntok <= 0 || nq <= 0) return;
  LOWBIT_CHECK(width > 0 && stride >= width, "attn_accumulate_f32_heads: width must be positive and the stride at least the width");
  kv_microkernels().accumulate_f32_heads(v, stride, width, a, lda, nq, ntok, out, ldo);
}

float kv_half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7FFFu;
  if (em < 0x0400u) {  // zero or subnormal: em · 2^-24, exact in fp32
    return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(static_cast<float>(em) * 0x1p-24f));
  }
  // Normal: the exponent rebiased by 127 − 15; inf / NaN keep an all-ones exponent and the payload.
  const uint32_t bits = em >= 0x7C00u ? 0x7F800000u | ((em & 0x3FFu) << 13) : (em << 13) + 0x38000000u;
  return std::bit_cast<float>(sign | bits);
}

Isa kv_kernel_isa() { return kv_microkernels().isa; }

std::string kv_kernel_name(bool scores, KvCode code, Isa isa) {
  return fmt::format("attn_{}_{}_f32__{}", scores ? "qk" : "pv", kv_code_name(code), isa_name(isa));
}

std::string kv_f32_kernel_name(bool scores, Isa isa) {
  return fmt::format("attn_{}_f32_f32__{}", scores ? "qk" : "pv", isa_name(isa));
}

}  // namespace lowbit
