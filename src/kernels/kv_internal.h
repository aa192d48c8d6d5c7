// Internal to the kernels layer: the per-ISA microkernels behind kv_scores / kv_accumulate
// (include/lowbit/kv_attention.h). The scalar level (ref/kv_ref.cc) is the twin the AVX2 one
// (x86/kv_avx2.cc) is tested against, bit for bit.
#pragma once

#include "lowbit/kv_attention.h"

namespace lowbit::kernels_internal {

struct KvMicrokernels {
  Isa isa;
  void (*scores)(const KvRows& k, const float* x, const float* xsum, int64_t ntok, float* out);
  void (*accumulate)(const KvRows& v, const float* a, int64_t ntok, float* out);
  void (*scores_f32)(const float* k, int64_t stride, int64_t width, const float* x, int64_t ntok, float* out);
  void (*accumulate_f32)(const float* v, int64_t stride, int64_t width, const float* a, int64_t ntok, float* out);
  // nq query heads sharing one key / value head (grouped-query attention): head h's x, a and out
  // at h·ldx, h·lda, h·ldo; the same bits as the one-head kernels per head.
  void (*scores_f32_heads)(const float* k, int64_t stride, int64_t width, const float* x, int64_t ldx, int64_t nq, int64_t ntok,
                           float* out, int64_t ldo);
  void (*accumulate_f32_heads)(const float* v, int64_t stride, int64_t width, const float* a, int64_t lda, int64_t nq, int64_t ntok,
                               float* out, int64_t ldo);
};

const KvMicrokernels& kv_scalar_microkernels();
#if defined(LOWBIT_HAVE_AVX2)
const KvMicrokernels& kv_avx2_microkernels();
#endif

}  // namespace lowbit::kernels_internal
