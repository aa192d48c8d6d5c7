// The kernel registry and drivers: weight packing, per-token activation quantization, the
// tile loops (threaded with parallel_for over output columns; workspaces live here, never in
// a microkernel), contract-bearing names, and dispatch from the active ISA.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>

#include <fmt/format.h>

#include "kernels_internal.h"
#include "lowbit/convert.h"
#include "lowbit/formats.h"
#include "lowbit/ggml_matmul.h"
#include "lowbit/kernels.h"
#include "lowbit/kv_attention.h"
#include "lowbit/parallel.h"

namespace lowbit {
namespace ki = kernels_internal;
namespace {

constexpr float kInt8Max = 127.0f;   // symmetric int8: -128 never used
constexpr float kE4m3Max = 448.0f;   // OCP OFP8 E4M3 largest finite

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

const ki::Microkernels& microkernels_for(Isa isa) {
#if defined(LOWBIT_HAVE_AVX2)
  if (isa >= Isa::kAvx2) return ki::avx2_microkernels();
#endif
  (void)isa;
  return ki::scalar_microkernels();
}

WeightKind natural_kind(KernelOp op) {
  switch (op) {
    case KernelOp::kGemmA8W8: return WeightKind::kInt8Row;
    case KernelOp::kGemmFp8Block: return WeightKind::kE4m3Block;
    default: return WeightKind::kInt4Group;
  }
}

std::string_view kind_name(WeightKind k) {
  switch (k) {
    case WeightKind::kInt8Row: return "int8 per-channel (int8:row:sym)";
    case WeightKind::kInt4Group: return "int4/uint4/int3/uint3 groups (int4:g<G>[:asym]; 3-bit widened to nibbles)";
    case WeightKind::kNf4Group: return "nf4 groups (nf4:g<G>)";
    case WeightKind::kE4m3Block: return "e4m3 128x128 blocks (e4m3:block128x128)";
  }
  return "?";
}

constexpr const char* kSupportedSpecs =
    "int8:row:sym, int4:g<G>[:asym], uint4:g<G>:asym, int3:g<G>[:asym], uint3:g<G>:asym, nf4:g<G> (G a multiple of 32), "
    "e4m3:block128x128";

// ---- activation preparation (shared scalar code: O(m·k), the same bytes for every ISA) ----

struct Int8Acts {
  std::vector<int8_t> a;     // (m, kp)
  std::vector<uint8_t> absa; // (m, kp)
  std::vector<float> scale;  // (m)
};

// Written to vectorize (omp simd; the build has no -mavx2 here): max is exact in any order, and
// (v + 1.5·2^23) − 1.5·2^23 rounds |v| <= 127 to the nearest integer, ties to even, exactly as
// nearbyint does in the default rounding mode, so the codes equal quantize()'s.
void quantize_int8_row(const float* x, int64_t k, int8_t* a, float* scale) {
  float amax = 0.0f;
#pragma omp simd reduction(max : amax)
  for (int64_t c = 0; c < k; ++c) amax = std::max(amax, std::fabs(x[c]));
  const float s = amax / kInt8Max;
  *scale = s;
  if (s == 0.0f) {
    std::fill(a, a + k, int8_t{0});
    return;
  }
  constexpr float kRound = 0x1.8p23f;
#pragma omp simd
  for (int64_t c = 0; c < k; ++c) {
    const float v = std::min(std::max(x[c] / s, -kInt8Max), kInt8Max);
    a[c] = static_cast<int8_t>(static_cast<int>((v + kRound) - kRound));
  }
}

void fill_abs(Int8Acts& acts) {
  acts.absa.resize(acts.a.size());
  for (size_t i = 0; i < acts.a.size(); ++i) acts.absa[i] = static_cast<uint8_t>(std::abs(int{acts.a[i]}));
}

// Rows per parallel_for chunk for the O(m·k) activation preparation: about four chunks per thread.
int64_t row_grain(int64_t m) { return std::max<int64_t>(1, m / (4 * std::max(1, num_threads()))); }

// ---- drivers ----

// Tiles per parallel_for chunk: about four chunks per thread, but at least ~256k multiply-adds
// per chunk so small products do not pay for a parallel region. Results never depend on it.
int64_t column_grain(int64_t tiles, int64_t macs_per_tile) {
  constexpr int64_t kMinChunkMacs = 1 << 18;
  const int64_t by_threads = tiles / (4 * std::max(1, num_threads()));
  const int64_t by_work = (kMinChunkMacs + macs_per_tile - 1) / std::max<int64_t>(1, macs_per_tile);
  return std::max<int64_t>({1, by_threads, by_work});
}

// Calls fn(begin, end) for chunks of `grain` of [0, count); the parallel_for threads take chunks
// from a shared counter, so a thread the OS starts late (an oversubscribed machine) leaves its
// share to the others instead of stalling the call. Each output is computed by exactly one chunk
// in a fixed order, so results never depend on which thread ran it.
template <class F>
void for_chunks(int64_t count, int64_t grain, F&& fn) {
  const int64_t chunks = (count + grain - 1) / grain;
  const int64_t team = std::min<int64_t>(num_threads(), chunks);
  std::atomic<int64_t> next{0};
  parallel_for(0, std::max<int64_t>(team, 1), 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) fn(c * grain, std::min(count, (c + 1) * grain));
  });
}

// The tile loop of the integer drivers: tiles of kIntNr weight rows are split across threads and
// each runs kIntMr activation rows at a time. tile(i, i1, j0, out) fills out[r*4 + j] for rows i and
// i1 (i1 == i on an odd last row) and weight rows j0..j0+3; store(row, col, v) writes one output.
template <class Out, class Tile, class Store>
void for_int_tiles(const PackedWeights& w, int64_t m, Tile&& tile, Store&& store) {
  const int64_t tiles = w.np / ki::kIntNr;
  for_chunks(tiles, column_grain(tiles, m * w.kp * ki::kIntNr), [&](int64_t t0, int64_t t1) {
    Out out[8];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j0 = t * ki::kIntNr;
      for (int64_t i = 0; i < m; i += ki::kIntMr) {
        tile(i, i + 1 < m ? i + 1 : i, j0, out);
        for (int r = 0; r < 2 && i + r < m; ++r) {
          for (int j = 0; j < 4 && j0 + j < w.n; ++j) store(i + r, j0 + j, out[r * 4 + j]);
        }
      }
    }
  });
}

void run_a8w8(const ki::Microkernels& mk, const PackedWeights& w, const Int8Acts& acts, int64_t m, float* y,
              int64_t ldy) {
  const int64_t kp = w.kp;
  const int8_t* wd = reinterpret_cast<const int8_t*>(w.data.data());
  for_int_tiles<int32_t>(
      w, m,
      [&](int64_t i, int64_t i1, int64_t j0, int32_t* out) {
        mk.a8w8_tile(&acts.a[i * kp], &acts.a[i1 * kp], &acts.absa[i * kp], &acts.absa[i1 * kp], wd + j0 * kp, kp, out);
      },
      [&](int64_t r, int64_t c, int32_t v) { y[r * ldy + c] = static_cast<float>(v) * acts.scale[r] * w.scales[c]; });
}

void run_a8w4(const ki::Microkernels& mk, const PackedWeights& w, const Int8Acts& acts, const std::vector<int32_t>& asum,
              int64_t m, float* y, int64_t ldy) {
  const int64_t kp = w.kp, ng = w.groups_per_row();
  for_int_tiles<float>(
      w, m,
      [&](int64_t i, int64_t i1, int64_t j0, float* out) {
        mk.a8w4_tile(&acts.a[i * kp], &acts.a[i1 * kp], &asum[i * ng], &asum[i1 * ng], w.data.data() + j0 * (kp / 2),
                     &w.scales[j0 * ng], &w.offsets[j0 * ng], kp, w.group, ng, out);
      },
      [&](int64_t r, int64_t c, float v) { y[r * ldy + c] = v * acts.scale[r]; });
}

void run_a16w4(const ki::Microkernels& mk, const PackedWeights& w, const float* xp, int64_t m, float* y, int64_t ldy) {
  const int64_t kp = w.kp, ng = w.groups_per_row();
  const int32_t* off = w.kind == WeightKind::kNf4Group ? nullptr : w.offsets.data();
  for_int_tiles<float>(
      w, m,
      [&](int64_t i, int64_t i1, int64_t j0, float* out) {
        mk.a16w4_tile(xp + i * kp, xp + i1 * kp, w.data.data() + j0 * (kp / 2), &w.scales[j0 * ng],
                      off ? off + j0 * ng : nullptr, kp, w.group, ng, out);
      },
      [&](int64_t r, int64_t c, float v) { y[r * ldy + c] = v; });
}

// a16w4 with many activation rows: each unit of kA16W4Tiles tiles (4 weight rows each) is decoded
// to fp32 once, K block by K block ((blocks, 16 rows, kc): one block's rows are consecutive, not kp
// apart in the same L1 sets), then every row triple runs all of the unit's tiles over one K block
// before the next (the triple's block stays in L1 across the tiles, the tiles' block across the
// triples). Per output the same FMAs in the same order as run_a16w4: the same bits (kernels_internal.h).
constexpr int64_t kA16W4Tiles = 4;
constexpr int64_t kA16W4Kc = 256;  // elements per K block (whole groups; at least one)

void run_a16w4_panels(const ki::Microkernels& mk, const PackedWeights& w, const float* xp, int64_t m, float* y,
                      int64_t ldy) {
  const int64_t kp = w.kp, ng = w.groups_per_row(), tiles = w.np / ki::kIntNr;
  const int32_t* off = w.kind == WeightKind::kNf4Group ? nullptr : w.offsets.data();
  const int64_t units = (tiles + kA16W4Tiles - 1) / kA16W4Tiles;
  const int64_t gb = std::max<int64_t>(1, kA16W4Kc / w.group), kc = gb * w.group, nkb = (ng + gb - 1) / gb;
  const int64_t block = kA16W4Tiles * ki::kIntNr * kc;                  // one K block of the unit's panel
  constexpr int64_t kMr = ki::kA16W4Mr, kLanes = ki::kA16W4Lanes;
  const int64_t triples = (m + kMr - 1) / kMr;
  for_chunks(units, column_grain(units, m * kp * ki::kIntNr * kA16W4Tiles), [&](int64_t u0, int64_t u1) {
    // Per-thread workspaces, kept between calls: a fresh panel would cost page faults on every call.
    thread_local std::vector<float> panel, lanes;
    panel.resize(std::max(panel.size(), static_cast<size_t>(nkb * block)));
    lanes.resize(std::max(lanes.size(), static_cast<size_t>(triples * kA16W4Tiles * kLanes)));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t t0 = u * kA16W4Tiles, nt = std::min(kA16W4Tiles, tiles - t0);
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t j0 = (t0 + t) * ki::kIntNr;
        mk.a16w4_decode(w.data.data() + j0 * (kp / 2), off ? off + j0 * ng : nullptr, kp, w.group,
                        &panel[static_cast<size_t>(t * ki::kIntNr * kc)], kc, block);
      }
      std::fill_n(lanes.begin(), triples * kA16W4Tiles * kLanes, 0.0f);
      for (int64_t b = 0; b < nkb; ++b) {
        const int64_t g0 = b * gb, g1 = std::min(ng, g0 + gb), k0 = b * kc;
        for (int64_t r = 0; r < triples; ++r) {
          const int64_t i = r * kMr;
          const int mr = static_cast<int>(std::min(kMr, m - i));
          mk.a16w4_panel(mr, xp + i * kp + k0, kp, &panel[static_cast<size_t>(b * block)], kc, static_cast<int>(nt),
                         ki::kIntNr * kc, k0, &w.scales[t0 * ki::kIntNr * ng], ki::kIntNr * ng, w.group, g0, g1,
                         &lanes[static_cast<size_t>(r * kA16W4Tiles * kLanes)]);
        }
      }
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t t = 0; t < nt; ++t) {
          const float* l = &lanes[static_cast<size_t>(((i / kMr) * kA16W4Tiles + t) * kLanes + (i % kMr) * ki::kIntNr * 8)];
          for (int64_t j = 0; j < ki::kIntNr; ++j) {
            const int64_t c = (t0 + t) * ki::kIntNr + j;
            if (c < w.n) y[i * ldy + c] = ki::lane_sum(l + j * 8);
          }
        }
      }
    }
  });
}

// Tiles are stored K block by K block, (kp/128, m, 128): the 6 rows a microkernel tile reads are
// 3 KB of consecutive memory (rows kp apart would all fall in the same L1 sets).
struct Fp8Acts {
  int64_t m = 0;
  std::vector<float> xa;     // (kp/128, m, 128) decoded e4m3 values (unscaled)
  std::vector<float> scale;  // (m, kp/128) tile scales
  const float* tile(int64_t i, int64_t kb) const { return &xa[(kb * m + i) * ki::kFp8Block]; }
};

// Rows in parallel (each row's bytes do not depend on the split); each 1x128 tile is scaled into a
// buffer and encoded by the span codec (saturating RNE, bit-identical to encode() on every ISA).
Fp8Acts quantize_fp8_tiles(const float* x, int64_t m, int64_t ldx, int64_t k, int64_t kp) {
  const int64_t nkb = kp / ki::kFp8Block;
  Fp8Acts acts;
  acts.m = m;
  acts.xa.assign(static_cast<size_t>(m * kp), 0.0f);
  acts.scale.assign(static_cast<size_t>(m * nkb), 0.0f);
  const EncodeOptions enc{.saturate = true};
  parallel_for(0, m, row_grain(m), [&](int64_t i0, int64_t i1) {
    float t[ki::kFp8Block];
    uint8_t codes[ki::kFp8Block];
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t c0 = kb * ki::kFp8Block, c1 = std::min(k, c0 + ki::kFp8Block), nc = c1 - c0;
        const float* xr = x + i * ldx + c0;
        float amax = 0.0f;
        for (int64_t c = 0; c < nc; ++c) amax = std::max(amax, std::fabs(xr[c]));
        const float s = amax / kE4m3Max;
        acts.scale[i * nkb + kb] = s;
        if (s == 0.0f) continue;
        for (int64_t c = 0; c < nc; ++c) t[c] = xr[c] / s;
        f32_to_e4m3({t, static_cast<size_t>(nc)}, {codes, static_cast<size_t>(nc)}, enc);
        float* xa = &acts.xa[(kb * m + i) * ki::kFp8Block];
        for (int64_t c = 0; c < nc; ++c) xa[c] = ki::e4m3_value(codes[c]);
      }
    }
  });
  return acts;
}

// Work is cut by 128-wide N blocks (8 panels, one weight scale per K block). Per block and K block
// the 8 panels are decoded once (128 x 128 fp32, 64 KB), then every 6-row M tile runs all 8 panels
// while its 6 x 128 activations stay in L1; the (m, 128) fp32 accumulators live in the chunk's
// workspace. Each output still accumulates K block after K block in order, as the twin does.
void run_fp8(const ki::Microkernels& mk, const PackedWeights& w, const Fp8Acts& acts, int64_t m, float* y, int64_t ldy) {
  constexpr int64_t kPanels = ki::kFp8Block / ki::kFp8Nr;  // panels per N block
  constexpr int64_t kPanelFloats = ki::kFp8Block * ki::kFp8Nr;
  const int64_t kp = w.kp, nkb = kp / ki::kFp8Block, panels = w.np / ki::kFp8Nr;
  const int64_t nblocks = (panels + kPanels - 1) / kPanels;
  for_chunks(nblocks, column_grain(nblocks, m * kp * ki::kFp8Block), [&](int64_t b0, int64_t b1) {
    std::vector<float> ws(static_cast<size_t>(kPanels * kPanelFloats));     // 8 decoded (128, 16) blocks
    std::vector<float> yt(static_cast<size_t>(m * ki::kFp8Block));          // (m, 128) fp32 accumulators
    float scale[ki::kFp8Mr];
    for (int64_t nb = b0; nb < b1; ++nb) {
      const int64_t p0 = nb * kPanels, np = std::min(panels, p0 + kPanels) - p0;
      std::fill(yt.begin(), yt.end(), 0.0f);
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const float sw = w.scales[nb * nkb + kb];
        auto decode = [&](int64_t p) {
          mk.fp8_decode(w.data.data() + ((p0 + p) * kp + kb * ki::kFp8Block) * ki::kFp8Nr, ki::kFp8Block,
                        &ws[p * kPanelFloats]);
        };
        if (m == 1) {  // decode: codes straight into the FMA chains, no fp32 block in memory
          mk.fp8_gemv(w.data.data() + (p0 * kp + kb * ki::kFp8Block) * ki::kFp8Nr, kp * ki::kFp8Nr, static_cast<int>(np),
                      acts.tile(0, kb), ki::kFp8Block, acts.scale[kb] * sw, yt.data());
          continue;
        }
        if (m <= ki::kFp8Mr) {  // one M tile: use each decoded block while it is in L1
          const int mr = static_cast<int>(m);
          for (int r = 0; r < mr; ++r) scale[r] = acts.scale[r * nkb + kb] * sw;
          for (int64_t p = 0; p < np; ++p) {
            decode(p);
            mk.fp8_tile(mr, acts.tile(0, kb), ki::kFp8Block, &ws[p * kPanelFloats], ki::kFp8Block, scale,
                        &yt[p * ki::kFp8Nr], ki::kFp8Block);
          }
          continue;
        }
        for (int64_t p = 0; p < np; ++p) decode(p);
        for (int64_t i = 0; i < m; i += ki::kFp8Mr) {
          const int mr = static_cast<int>(std::min<int64_t>(ki::kFp8Mr, m - i));
          for (int r = 0; r < mr; ++r) scale[r] = acts.scale[(i + r) * nkb + kb] * sw;
          for (int64_t p = 0; p < np; ++p) {
            mk.fp8_tile(mr, acts.tile(i, kb), ki::kFp8Block, &ws[p * kPanelFloats], ki::kFp8Block, scale,
                        &yt[i * ki::kFp8Block + p * ki::kFp8Nr], ki::kFp8Block);
          }
        }
      }
      const int64_t j0 = p0 * ki::kFp8Nr, nj = std::min<int64_t>(np * ki::kFp8Nr, w.n - j0);
      for (int64_t i = 0; i < m; ++i) std::memcpy(&y[i * ldy + j0], &yt[i * ki::kFp8Block], sizeof(float) * nj);
    }
  });
}

// The limited-accumulator emulation (MatmulOptions::fp8_accum): run_fp8's blocking, with every
// (i, j)'s K-order chain in ki::Microkernels::fp8_tile_limited (the whole of K when unpromoted: the
// accumulator in yt carries from one K block to the next).
void run_fp8_emulated(const ki::Microkernels& mk, const PackedWeights& w, const Fp8Acts& acts, int64_t m, float* y,
                      int64_t ldy, Fp8Accumulation mode, int bits) {
  constexpr int64_t kPanels = ki::kFp8Block / ki::kFp8Nr;
  constexpr int64_t kPanelFloats = ki::kFp8Block * ki::kFp8Nr;
  const int64_t kp = w.kp, nkb = kp / ki::kFp8Block, panels = w.np / ki::kFp8Nr;
  const int64_t nblocks = (panels + kPanels - 1) / kPanels;
  const bool promoted = mode == Fp8Accumulation::kLimitedPromoted;
  for_chunks(nblocks, column_grain(nblocks, m * kp * ki::kFp8Block), [&](int64_t b0, int64_t b1) {
    std::vector<float> ws(static_cast<size_t>(kPanels * kPanelFloats));
    std::vector<float> yt(static_cast<size_t>(m * ki::kFp8Block));
    float row_scale[ki::kFp8Mr], col_scale[ki::kFp8Nr];
    for (int64_t nb = b0; nb < b1; ++nb) {
      const int64_t p0 = nb * kPanels, np = std::min(panels, p0 + kPanels) - p0;
      std::fill(yt.begin(), yt.end(), 0.0f);
      for (int64_t kb = 0; kb < nkb; ++kb) {
        std::fill(col_scale, col_scale + ki::kFp8Nr, w.scales[nb * nkb + kb]);
        for (int64_t p = 0; p < np; ++p) {
          mk.fp8_decode(w.data.data() + ((p0 + p) * kp + kb * ki::kFp8Block) * ki::kFp8Nr, ki::kFp8Block, &ws[p * kPanelFloats]);
        }
        for (int64_t i = 0; i < m; i += ki::kFp8Mr) {
          const int mr = static_cast<int>(std::min<int64_t>(ki::kFp8Mr, m - i));
          for (int r = 0; r < mr; ++r) row_scale[r] = acts.scale[(i + r) * nkb + kb];
          for (int64_t p = 0; p < np; ++p) {
            mk.fp8_tile_limited(mr, acts.tile(i, kb), ki::kFp8Block, &ws[p * kPanelFloats], ki::kFp8Block, row_scale,
                                col_scale, bits, promoted, &yt[i * ki::kFp8Block + p * ki::kFp8Nr], ki::kFp8Block);
          }
        }
      }
      const int64_t j0 = p0 * ki::kFp8Nr, nj = std::min<int64_t>(np * ki::kFp8Nr, w.n - j0);
      for (int64_t i = 0; i < m; ++i) std::memcpy(&y[i * ldy + j0], &yt[i * ki::kFp8Block], sizeof(float) * nj);
    }
  });
}

Status check_args(const PackedWeights& w, const void* x, int64_t m, int64_t ldx, const float* y, int64_t ldy) {
  if (m < 0) return InvalidArgument(fmt::format("matmul: rows m = {}, expected m >= 0", m));
  if (w.n <= 0 || w.k <= 0 || w.data.empty()) return InvalidArgument("matmul: weights are empty, expected pack_weights() output");
  if (ldx < w.k) return InvalidArgument(fmt::format("matmul: activation row stride {} < in features {} of the weights", ldx, w.k));
  if (ldy < w.n) return InvalidArgument(fmt::format("matmul: output row stride {} < out features {} of the weights", ldy, w.n));
  if (m > 0 && (x == nullptr || y == nullptr)) return InvalidArgument("matmul: null activation or output pointer");
  return OkStatus();
}

}  // namespace

int64_t PackedWeights::bytes() const {
  return static_cast<int64_t>(data.size() + scales.size() * sizeof(float) + offsets.size() * sizeof(int32_t));
}

bool kernel_supports(const QuantSpec& s) {
  switch (s.element) {
    case Format::kInt8: return s.granularity == Granularity::kRow && s.symmetric;
    case Format::kInt4:
    case Format::kUint4:
    case Format::kInt3:
    case Format::kUint3:
    case Format::kNf4:
      return s.granularity == Granularity::kGroup && s.group % 32 == 0 && !s.tensor_scale &&
             (s.element != Format::kNf4 || s.symmetric) && (traits(s.element).is_signed || !s.symmetric);
    case Format::kE4m3:
      return s.granularity == Granularity::kBlock && s.block_rows == 128 && s.block_cols == 128 && s.symmetric &&
             !s.tensor_scale;
    default: return false;
  }
}

Result<PackedWeights> pack_weights(const QuantizedTensor& q) {
  if (!kernel_supports(q.spec)) {
    return Unsupported(fmt::format("no kernel for weights quantized as '{}'; kernels take {}", to_string(q.spec), kSupportedSpecs));
  }
  if (q.shape.ndim != 2 || q.rows <= 0 || q.cols <= 0) {
    return InvalidArgument(fmt::format("pack_weights: expected 2-D (out, in) weights, got {}-D {}x{}", q.shape.ndim, q.rows, q.cols));
  }
  PackedWeights p;
  p.spec = q.spec;
  p.n = q.rows;
  p.k = q.cols;
  const BlockGrid grid = q.grid();
  switch (q.spec.element) {
    case Format::kInt8: {
      p.kind = WeightKind::kInt8Row;
      p.np = round_up(p.n, ki::kIntNr);
      p.kp = round_up(p.k, 32);
      p.group = p.kp;
      p.data.assign(static_cast<size_t>(p.np * p.kp), 0);
      p.scales.assign(static_cast<size_t>(p.np), 0.0f);
      for (int64_t r = 0; r < p.n; ++r) {
        for (int64_t c = 0; c < p.k; ++c) {
          const int32_t v = q.code_at(r, c);
          if (v < -127) return InvalidArgument(fmt::format("pack_weights: int8 code -128 at ({}, {}); symmetric int8 codes are in [-127, 127]", r, c));
          p.data[r * p.kp + c] = static_cast<uint8_t>(static_cast<int8_t>(v));
        }
        p.scales[r] = q.scales[r];
      }
      break;
    }
    case Format::kInt4:
    case Format::kUint4:
    case Format::kInt3:  // 3-bit codes widen to nibbles: the int4 kernels run them (4 bits per weight in memory)
    case Format::kUint3:
    case Format::kNf4: {
      const bool nf4 = q.spec.element == Format::kNf4;
      p.kind = nf4 ? WeightKind::kNf4Group : WeightKind::kInt4Group;
      p.group = q.spec.group;
      p.np = round_up(p.n, ki::kIntNr);
      p.kp = round_up(p.k, std::lcm<int64_t>(ki::kChunk, p.group));
      const int64_t ng = p.kp / p.group, rb = p.kp / 2;
      p.data.assign(static_cast<size_t>(p.np * rb), 0);
      p.scales.assign(static_cast<size_t>(p.np * ng), 0.0f);
      if (!nf4) p.offsets.assign(static_cast<size_t>(p.np * ng), 0);
      const int32_t bias = !nf4 && traits(q.spec.element).is_signed ? 8 : 0;  // u = code + bias in 0..15
      for (int64_t r = 0; r < p.n; ++r) {
        for (int64_t g = 0; g < grid.grid_cols; ++g) {
          p.scales[ki::group_param_index(r, g, ng)] = q.scales[r * grid.grid_cols + g];
          if (!nf4) p.offsets[ki::group_param_index(r, g, ng)] = bias + (q.spec.symmetric ? 0 : q.zero_points[r * grid.grid_cols + g]);
        }
        uint8_t* row = &p.data[r * rb];
        for (int64_t c = 0; c < p.kp; ++c) {
          // Padding holds the group's offset (weight 0) where there is one.
          int32_t u = 0;
          if (c < p.k) {
            u = q.code_at(r, c) + (nf4 ? 0 : bias);
          } else if (!nf4) {
            u = p.offsets[ki::group_param_index(r, c / p.group, ng)];
          }
          const int64_t ch = c / ki::kChunk, e = c % ki::kChunk;
          uint8_t& b = row[ch * (ki::kChunk / 2) + e % (ki::kChunk / 2)];
          b = static_cast<uint8_t>(e < ki::kChunk / 2 ? (b & 0xF0) | u : (b & 0x0F) | (u << 4));
        }
      }
      break;
    }
    case Format::kE4m3: {
      p.kind = WeightKind::kE4m3Block;
      p.group = ki::kFp8Block;
      p.np = round_up(p.n, ki::kFp8Nr);
      p.kp = round_up(p.k, ki::kFp8Block);
      const int64_t nkb = p.kp / ki::kFp8Block, nnb = (p.np + ki::kFp8Block - 1) / ki::kFp8Block;
      p.data.assign(static_cast<size_t>(p.np * p.kp), 0);
      p.scales.assign(static_cast<size_t>(nnb * nkb), 0.0f);
      for (int64_t rb = 0; rb < grid.grid_rows; ++rb) {
        for (int64_t cb = 0; cb < grid.grid_cols; ++cb) p.scales[rb * nkb + cb] = q.scales[rb * grid.grid_cols + cb];
      }
      for (int64_t r = 0; r < p.n; ++r) {
        for (int64_t c = 0; c < p.k; ++c) {
          p.data[((r / ki::kFp8Nr) * p.kp + c) * ki::kFp8Nr + r % ki::kFp8Nr] = static_cast<uint8_t>(q.code_at(r, c));
        }
      }
      break;
    }
    default: break;
  }
  return p;
}

void unpack_weights(const PackedWeights& p, float* w) {
  const int64_t ng = p.groups_per_row();
  for (int64_t r = 0; r < p.n; ++r) {
    for (int64_t c = 0; c < p.k; ++c) {
      float v = 0.0f;
      switch (p.kind) {
        case WeightKind::kInt8Row:
          v = static_cast<float>(static_cast<int8_t>(p.data[r * p.kp + c])) * p.scales[r];
          break;
        case WeightKind::kInt4Group:
        case WeightKind::kNf4Group: {
          const int64_t ch = c / ki::kChunk, e = c % ki::kChunk;
          const uint8_t b = p.data[r * (p.kp / 2) + ch * (ki::kChunk / 2) + e % (ki::kChunk / 2)];
          const int u = e < ki::kChunk / 2 ? (b & 0xF) : (b >> 4);
          const int64_t g = ki::group_param_index(r, c / p.group, ng);
          v = p.kind == WeightKind::kNf4Group ? kNf4Levels[static_cast<size_t>(u)] * p.scales[g]
                                             : static_cast<float>(u - p.offsets[g]) * p.scales[g];
          break;
        }
        case WeightKind::kE4m3Block:
          v = ki::e4m3_value(p.data[((r / ki::kFp8Nr) * p.kp + c) * ki::kFp8Nr + r % ki::kFp8Nr]) *
              p.scales[(r / ki::kFp8Block) * (p.kp / ki::kFp8Block) + c / ki::kFp8Block];
          break;
      }
      w[r * p.k + c] = v;
    }
  }
}

std::string_view op_name(KernelOp op) {
  switch (op) {
    case KernelOp::kAuto: return "auto";
    case KernelOp::kGemmA8W8: return "gemm_a8_w8";
    case KernelOp::kGemmA16W4: return "gemm_a16_w4";
    case KernelOp::kGemmA8W4: return "gemm_a8_w4";
    case KernelOp::kGemmFp8Block: return "gemm_fp8_block";
  }
  return "?";
}

Result<KernelOp> resolve_op(const PackedWeights& w, const MatmulOptions& opt) {
  KernelOp op = opt.op;
  if (op == KernelOp::kAuto) {
    switch (w.kind) {
      case WeightKind::kInt8Row: op = KernelOp::kGemmA8W8; break;
      case WeightKind::kInt4Group:
      case WeightKind::kNf4Group: op = KernelOp::kGemmA16W4; break;
      case WeightKind::kE4m3Block: op = KernelOp::kGemmFp8Block; break;
    }
  }
  const bool ok = (op == KernelOp::kGemmA8W8 && w.kind == WeightKind::kInt8Row) ||
                  (op == KernelOp::kGemmA16W4 && (w.kind == WeightKind::kInt4Group || w.kind == WeightKind::kNf4Group)) ||
                  (op == KernelOp::kGemmA8W4 && w.kind == WeightKind::kInt4Group) ||
                  (op == KernelOp::kGemmFp8Block && w.kind == WeightKind::kE4m3Block);
  if (!ok) {
    return InvalidArgument(fmt::format("{} expects {} weights; these are {}", op_name(op),
                                       kind_name(natural_kind(op)), kind_name(w.kind)));
  }
  if (opt.fp8_accum != Fp8Accumulation::kPromoted && (op != KernelOp::kGemmFp8Block || opt.accum_bits < 2 || opt.accum_bits > 24)) {
    return InvalidArgument(fmt::format("emulated accumulation needs gemm_fp8_block and 2 <= accum_bits <= 24 (got {})", opt.accum_bits));
  }
  return op;
}

Isa kernel_isa(KernelOp) {
#if defined(LOWBIT_HAVE_AVX2)
  if (active_isa() >= Isa::kAvx2) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

std::string kernel_name(KernelOp op, WeightKind kind, int64_t group, Isa isa) {
  std::string base;
  switch (op) {
    case KernelOp::kGemmA8W8: base = "gemm_a8_w8_f32"; break;
    case KernelOp::kGemmA16W4:
      base = fmt::format("gemm_a16_{}g{}_f32", kind == WeightKind::kNf4Group ? "nf4" : "w4", group);
      break;
    case KernelOp::kGemmA8W4: base = fmt::format("gemm_a8_w4g{}_f32", group); break;
    case KernelOp::kGemmFp8Block: base = "gemm_fp8_block128_f32"; break;
    case KernelOp::kAuto: base = "auto"; break;
  }
  return fmt::format("{}__{}", base, isa_name(isa));
}

std::string kernel_name(const PackedWeights& w, const MatmulOptions& opt) {
  Result<KernelOp> op = resolve_op(w, opt);
  if (!op.ok()) return "none";
  if (opt.fp8_accum != Fp8Accumulation::kPromoted) {
    return fmt::format("gemm_fp8_block128_acc{}{}_f32__{}", opt.accum_bits,
                       opt.fp8_accum == Fp8Accumulation::kLimitedPromoted ? "_promoted" : "_unpromoted",
                       isa_name(kernel_isa(KernelOp::kGemmFp8Block)));
  }
  return kernel_name(*op, w.kind, w.group, kernel_isa(*op));
}

std::vector<KernelInfo> available_kernels() {
  std::vector<KernelInfo> out;
  std::vector<Isa> isas = {Isa::kScalar};
#if defined(LOWBIT_HAVE_AVX2)
  if (isa_supported(Isa::kAvx2)) isas.push_back(Isa::kAvx2);
#endif
  for (Isa isa : isas) {
    out.push_back({kernel_name(KernelOp::kGemmA8W8, WeightKind::kInt8Row, 0, isa), KernelOp::kGemmA8W8, isa,
                   "int8 per-token activations x int8 per-channel weights, int32 accumulation, fp32 out"});
    for (int g : {32, 64, 128}) {
      out.push_back({kernel_name(KernelOp::kGemmA16W4, WeightKind::kInt4Group, g, isa), KernelOp::kGemmA16W4, isa,
                     fmt::format("fp32 activations x int4/uint4 weights in groups of {} (sym or zero point), fp32 out", g)});
    }
    for (int g : {32, 64, 128}) {
      out.push_back({kernel_name(KernelOp::kGemmA16W4, WeightKind::kNf4Group, g, isa), KernelOp::kGemmA16W4, isa,
                     fmt::format("fp32 activations x nf4 weights (lookup) in groups of {}, fp32 out", g)});
    }
    for (int g : {32, 64, 128}) {
      out.push_back({kernel_name(KernelOp::kGemmA8W4, WeightKind::kInt4Group, g, isa), KernelOp::kGemmA8W4, isa,
                     fmt::format("int8 per-token activations x int4/uint4 weights in groups of {}, int32 per group, fp32 out", g)});
    }
    out.push_back({kernel_name(KernelOp::kGemmFp8Block, WeightKind::kE4m3Block, 128, isa), KernelOp::kGemmFp8Block, isa,
                   "e4m3 1x128 activation tiles x e4m3 128x128 weight blocks, fp32 promotion every 128 of K"});
    out.push_back({fmt::format("gemm_fp8_wgrad128_f32__{}", isa_name(isa)), KernelOp::kGemmFp8Block, isa,
                   "wgrad dYT x X: e4m3 1x128 tiles of both along K = tokens, fp32 promotion every 128 tokens"});
    for (const char* mode : {"promoted", "unpromoted"}) {
      out.push_back({fmt::format("gemm_fp8_block128_acc14_{}_f32__{}", mode, isa_name(isa)), KernelOp::kGemmFp8Block, isa,
                     fmt::format("emulated 14-bit accumulator, {} (accuracy experiments)", mode)});
      out.push_back({fmt::format("gemm_fp8_wgrad128_acc14_{}_f32__{}", mode, isa_name(isa)), KernelOp::kGemmFp8Block, isa,
                     fmt::format("wgrad, emulated 14-bit accumulator, {} (accuracy experiments)", mode)});
    }
    // Attention over a quantized KV cache (kv_attention.h); listed with the op they replace nothing of.
    for (KvCode c : {KvCode::kInt8, KvCode::kInt4, KvCode::kUint4, KvCode::kE4m3, KvCode::kE5m2}) {
      out.push_back({kv_kernel_name(true, c, isa), KernelOp::kAuto, isa,
                     fmt::format("fp32 query x {} cached keys (fp16 scales per token group or channel), fp32 scores", kv_code_name(c))});
      out.push_back({kv_kernel_name(false, c, isa), KernelOp::kAuto, isa,
                     fmt::format("fp32 probabilities x {} cached values (fp16 scales per token group), fp32 out", kv_code_name(c))});
    }
    out.push_back({kv_f32_kernel_name(true, isa), KernelOp::kAuto, isa, "fp32 query x fp32 cached keys (the default cache), fp32 scores"});
    out.push_back({kv_f32_kernel_name(false, isa), KernelOp::kAuto, isa, "fp32 probabilities x fp32 cached values (the default cache), fp32 out"});
    // GGUF blocks as stored (ggml_matmul.h): Q4_K / Q6_K with per-ISA decoders, the others with the
    // reference row decoders; the tile product is the ISA's.
    for (const GgmlBlockInfo& b : ggml_block_types()) {
      const bool simd_decode = b.type == GgmlType::kQ4_K || b.type == GgmlType::kQ6_K;
      out.push_back({ggml_kernel_name(b.type, isa), KernelOp::kAuto, isa,
                     fmt::format("fp32 activations x ggml {} blocks decoded per tile (bit-exact{}), fp32 out", b.name,
                                 simd_decode ? "" : ", reference decoder")});
    }
  }
  return out;
}

Status gemm_a8_w8(const PackedWeights& w, const int8_t* a, int64_t m, int64_t lda, const float* a_scale, float* y,
                  int64_t ldy) {
  LOWBIT_RETURN_IF_ERROR(check_args(w, a, m, lda, y, ldy));
  if (w.kind != WeightKind::kInt8Row) {
    return InvalidArgument(fmt::format("gemm_a8_w8 expects {} weights; these are {}", kind_name(WeightKind::kInt8Row), kind_name(w.kind)));
  }
  if (m == 0) return OkStatus();
  if (a_scale == nullptr) return InvalidArgument("gemm_a8_w8: null activation scales, expected one per row");
  Int8Acts acts;
  acts.a.assign(static_cast<size_t>(m * w.kp), 0);
  acts.scale.assign(a_scale, a_scale + m);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t c = 0; c < w.k; ++c) {
      const int8_t v = a[i * lda + c];
      if (v == -128) return InvalidArgument(fmt::format("gemm_a8_w8: activation code -128 at ({}, {}); expected [-127, 127]", i, c));
      acts.a[i * w.kp + c] = v;
    }
  }
  fill_abs(acts);
  run_a8w8(microkernels_for(kernel_isa(KernelOp::kGemmA8W8)), w, acts, m, y, ldy);
  return OkStatus();
}

Status matmul(const PackedWeights& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy,
              const MatmulOptions& opt) {
  LOWBIT_RETURN_IF_ERROR(check_args(w, x, m, ldx, y, ldy));
  LOWBIT_ASSIGN_OR_RETURN(KernelOp op, resolve_op(w, opt));
  if (m == 0) return OkStatus();
  const ki::Microkernels& mk = microkernels_for(kernel_isa(op));
  const int64_t kp = w.kp;
  switch (op) {
    case KernelOp::kGemmA8W8:
    case KernelOp::kGemmA8W4: {
      Int8Acts acts;
      acts.a.assign(static_cast<size_t>(m * kp), 0);
      acts.scale.assign(static_cast<size_t>(m), 0.0f);
      const int64_t ng = op == KernelOp::kGemmA8W4 ? w.groups_per_row() : 0;
      std::vector<int32_t> asum(static_cast<size_t>(m * ng), 0);  // (m, groups), a8w4 only
      if (op == KernelOp::kGemmA8W8) acts.absa.resize(acts.a.size());
      // Rows in parallel: each row's codes, |codes| and group sums depend on that row alone.
      parallel_for(0, m, row_grain(m), [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          int8_t* a = &acts.a[i * kp];
          quantize_int8_row(x + i * ldx, w.k, a, &acts.scale[i]);
          if (op == KernelOp::kGemmA8W8) {
            for (int64_t c = 0; c < kp; ++c) acts.absa[i * kp + c] = static_cast<uint8_t>(std::abs(int{a[c]}));
          } else {
            for (int64_t c = 0; c < kp; ++c) asum[i * ng + c / w.group] += a[c];
          }
        }
      });
      if (op == KernelOp::kGemmA8W8) {
        run_a8w8(mk, w, acts, m, y, ldy);
      } else {
        run_a8w4(mk, w, acts, asum, m, y, ldy);
      }
      break;
    }
    case KernelOp::kGemmA16W4: {
      std::vector<float> xp(static_cast<size_t>(m * kp), 0.0f);  // (m, kp) zero-padded copy
      for (int64_t i = 0; i < m; ++i) std::memcpy(&xp[i * kp], x + i * ldx, sizeof(float) * w.k);
      if (m >= ki::kA16W4Mr) {
        run_a16w4_panels(mk, w, xp.data(), m, y, ldy);
      } else {
        run_a16w4(mk, w, xp.data(), m, y, ldy);
      }
      break;
    }
    case KernelOp::kGemmFp8Block: {
      const Fp8Acts acts = quantize_fp8_tiles(x, m, ldx, w.k, kp);
      if (opt.fp8_accum == Fp8Accumulation::kPromoted) {
        run_fp8(mk, w, acts, m, y, ldy);
      } else {
        run_fp8_emulated(mk, w, acts, m, y, ldy, opt.fp8_accum, opt.accum_bits);
      }
      break;
    }
    case KernelOp::kAuto: break;
  }
  return OkStatus();
}

}  // namespace lowbit
