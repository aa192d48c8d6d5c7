// The wgrad GEMM of FP8 training through the kernel registry (include/lowbit/kernels.h,
// gemm_fp8_wgrad): dW (n, k) += dYᵀ · X over K = tokens, both operands quantized here to e4m3 in
// 128-token tiles per feature (DeepSeek-V3's 1×128 tiles along the wgrad GEMM's K), per-tile
// scales absmax / 448, and each 128-token partial sum promoted into fp32 with the two tiles'
// scales by fp8_tile_cs (scalar twin in ref/, AVX2 in x86/), or the emulated limited accumulators
// by fp8_tile_limited (the same twins).
#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "kernels_internal.h"
#include "lowbit/convert.h"
#include "lowbit/kernels.h"
#include "lowbit/parallel.h"

namespace lowbit {
namespace ki = kernels_internal;
namespace {

constexpr float kE4m3Max = 448.0f;  // OCP OFP8 E4M3 largest finite
constexpr int64_t kTile = ki::kFp8Block;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

const ki::Microkernels& microkernels_for(Isa isa) {
#if defined(LOWBIT_HAVE_AVX2)
  if (isa >= Isa::kAvx2) return ki::avx2_microkernels();
#endif
  (void)isa;
  return ki::scalar_microkernels();
}

// Column c of src (m, ldsrc) in 128-token tiles: decoded e4m3 values (unscaled) written to
// dst[t · dstride] for t < mp (zeros past m), scales to scale[kb · sstride].
void quantize_column(const float* src, int64_t ldsrc, int64_t m, int64_t mp, float* dst, int64_t dstride, float* scale,
                     int64_t sstride) {
  float t[kTile];
  uint8_t codes[kTile];
  const EncodeOptions enc{.saturate = true};
  for (int64_t kb = 0; kb < mp / kTile; ++kb) {
    const int64_t t0 = kb * kTile, nt = std::max<int64_t>(0, std::min(m, t0 + kTile) - t0);
    float amax = 0.0f;
    for (int64_t i = 0; i < nt; ++i) amax = std::max(amax, std::fabs(src[(t0 + i) * ldsrc]));
    const float s = amax / kE4m3Max;
    scale[kb * sstride] = s;
    for (int64_t i = 0; i < kTile; ++i) dst[(t0 + i) * dstride] = 0.0f;
    if (s == 0.0f) continue;
    for (int64_t i = 0; i < nt; ++i) t[i] = src[(t0 + i) * ldsrc] / s;
    f32_to_e4m3({t, static_cast<size_t>(nt)}, {codes, static_cast<size_t>(nt)}, enc);
    for (int64_t i = 0; i < nt; ++i) dst[(t0 + i) * dstride] = ki::e4m3_value(codes[i]);
  }
}



}  // namespace

std::string wgrad_kernel_name(const MatmulOptions& opt) {
  if (opt.fp8_accum != Fp8Accumulation::kPromoted) {
    return fmt::format("gemm_fp8_wgrad128_acc{}{}_f32__{}", opt.accum_bits,
                       opt.fp8_accum == Fp8Accumulation::kLimitedPromoted ? "_promoted" : "_unpromoted",
                       isa_name(kernel_isa(KernelOp::kGemmFp8Block)));
  }
  return fmt::format("gemm_fp8_wgrad128_f32__{}", isa_name(kernel_isa(KernelOp::kGemmFp8Block)));
}

Status gemm_fp8_wgrad(const float* dy, int64_t lddy, const float* x, int64_t ldx, int64_t m, int64_t n, int64_t k, float* dw,
                      int64_t lddw, const MatmulOptions& opt) {
  if (m < 0 || n <= 0 || k <= 0) {
    return InvalidArgument(fmt::format("gemm_fp8_wgrad: tokens {}, out {}, in {}: expected tokens >= 0, out and in > 0", m, n, k));
  }
  if (lddy < n || ldx < k || lddw < k) {
    return InvalidArgument(fmt::format("gemm_fp8_wgrad: row strides dy {} x {} dW {} below out {} / in {}", lddy, ldx, lddw, n, k));
  }
  if (opt.fp8_accum != Fp8Accumulation::kPromoted && (opt.accum_bits < 2 || opt.accum_bits > 24)) {
    return InvalidArgument(fmt::format("gemm_fp8_wgrad: emulated accumulation needs 2 <= accum_bits <= 24 (got {})", opt.accum_bits));
  }
  if (m == 0) return OkStatus();
  if (dy == nullptr || x == nullptr || dw == nullptr) return InvalidArgument("gemm_fp8_wgrad: null operand");
  const int64_t mp = round_up(m, kTile), nkb = mp / kTile;
  const int64_t kq = round_up(k, ki::kFp8Nr), panels = kq / ki::kFp8Nr;
  // a (nkb, n, 128): dY's column j, tile kb, as one contiguous row (the microkernel's xa rows).
  std::vector<float> a(static_cast<size_t>(nkb * n * kTile)), sa(static_cast<size_t>(nkb * n));  // sa (nkb, n)
  // b (panels, mp, 16): X's columns in 16-wide k-major panels (the microkernel's ws).
  std::vector<float> b(static_cast<size_t>(panels * mp * ki::kFp8Nr), 0.0f), sb(static_cast<size_t>(nkb * kq), 0.0f);  // sb (nkb, kq)
  const int64_t col_grain = std::max<int64_t>(1, std::max(n, k) / (4 * std::max(1, num_threads())));
  parallel_for(0, n, col_grain, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      // tile kb of column j lands at a[(kb · n + j) · 128 + i]: stride 1 inside a tile, n · 128 between tiles.
      float col[kTile];
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t t0 = kb * kTile;
        quantize_column(dy + t0 * lddy + j, lddy, std::min<int64_t>(kTile, m - t0), kTile, col, 1, &sa[kb * n + j], 0);
        std::memcpy(&a[(kb * n + j) * kTile], col, sizeof(col));
      }
    }
  });
  parallel_for(0, k, col_grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      quantize_column(x + c, ldx, m, mp, &b[((c / ki::kFp8Nr) * mp) * ki::kFp8Nr + c % ki::kFp8Nr], ki::kFp8Nr, &sb[c], kq);
    }
  });

  // Every output accumulates K block after K block in order (any thread split gives the same bits);
  // a chunk owns whole 6-row tiles of dW and walks every panel for each K block.
  // The emulated accumulators (fp8_tile_limited) walk the same tiles in the same order, their
  // accumulators in yt (unpromoted: one over all of K, carried from block to block).
  const bool emulated = opt.fp8_accum != Fp8Accumulation::kPromoted;
  const bool promoted = opt.fp8_accum == Fp8Accumulation::kLimitedPromoted;
  const ki::Microkernels& mk = microkernels_for(kernel_isa(KernelOp::kGemmFp8Block));
  const int64_t tiles = (n + ki::kFp8Mr - 1) / ki::kFp8Mr;
  const int64_t macs = ki::kFp8Mr * kq * mp;
  const int64_t grain = std::max<int64_t>({1, tiles / (4 * std::max(1, num_threads())), (int64_t{1} << 18) / std::max<int64_t>(1, macs)});
  parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> yt(static_cast<size_t>(ki::kFp8Mr * kq));  // (6, kq) fp32 accumulators
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t * ki::kFp8Mr;
      const int mr = static_cast<int>(std::min<int64_t>(ki::kFp8Mr, n - i));
      std::fill(yt.begin(), yt.end(), 0.0f);
      for (int64_t kb = 0; kb < nkb; ++kb) {
        for (int64_t p = 0; p < panels; ++p) {
          const float* xa = &a[(kb * n + i) * kTile];
          const float* ws = &b[(p * mp + kb * kTile) * ki::kFp8Nr];
          if (emulated) {
            mk.fp8_tile_limited(mr, xa, kTile, ws, kTile, &sa[kb * n + i], &sb[kb * kq + p * ki::kFp8Nr], opt.accum_bits,
                                promoted, &yt[p * ki::kFp8Nr], kq);
          } else {
            mk.fp8_tile_cs(mr, xa, kTile, ws, kTile, &sa[kb * n + i], &sb[kb * kq + p * ki::kFp8Nr], &yt[p * ki::kFp8Nr], kq);
          }
        }
      }
      for (int r = 0; r < mr; ++r) {
        float* out = dw + (i + r) * lddw;
        for (int64_t c = 0; c < k; ++c) out[c] += yt[r * kq + c];
      }
    }
  });
  return OkStatus();
}

}  // namespace lowbit
