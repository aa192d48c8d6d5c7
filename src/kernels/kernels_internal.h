// Internal to the kernels layer: the per-ISA microkernels behind matmul. Each ISA level
// fills the same table; the scalar level (ref/) is the twin the SIMD ones are tested
// against (tests/kernels). Microkernels never allocate or spawn threads; the drivers in
// registry.cc cut the work with parallel_for and own the workspaces.
#pragma once

#include <cstdint>

#include "lowbit/cpu.h"

namespace lowbit::kernels_internal {

// Tile shapes the drivers use.
inline constexpr int kIntMr = 2;     // int tiles: 2 rows of activations ...
inline constexpr int kIntNr = 4;     // ... × 4 weight rows; packed n is padded to a multiple of 4
inline constexpr int kFp8Nr = 16;    // fp8 panels: 16 weight rows, k-major
inline constexpr int kFp8Mr = 6;     // fp8 tile rows
inline constexpr int kFp8Block = 128;  // DeepSeek-V3 block edge (K and N)
inline constexpr int kA16W4Mr = 3;  // a16w4 panel tiles: 3 rows of activations × 4 decoded weight rows
inline constexpr int kA16W4Lanes = kA16W4Mr * kIntNr * 8;  // fp32 lanes of one (row triple, tile)
inline constexpr int kChunk = 64;    // int4 packing: 64 elements in 32 bytes (low nibbles 0..31, high 32..63)

// The lane tree the AVX2 kernels reduce 8 fp32 lanes with (hadd, hadd, then the two 128-bit halves).
inline float lane_sum(const float* f) { return ((f[0] + f[1]) + (f[2] + f[3])) + ((f[4] + f[5]) + (f[6] + f[7])); }

// int4 / nf4 scales and offsets are interleaved per tile of 4 weight rows: (np/4, groups, 4), so a
// microkernel loads one group's 4 values with a single 128-bit load.
inline int64_t group_param_index(int64_t row, int64_t g, int64_t ng) { return (row / 4) * ng * 4 + g * 4 + row % 4; }

struct Microkernels {
  Isa isa;
  // out[i*4 + j] = Σ_k a_i[k] · w_j[k] for i < 2, j < 4, exact int32. a_i int8 rows, absa_i = |a_i|
  // (as u8), w_j = w + j*kp; kp a multiple of 32, codes in [-127, 127].
  void (*a8w8_tile)(const int8_t* a0, const int8_t* a1, const uint8_t* absa0, const uint8_t* absa1,
                    const int8_t* w, int64_t kp, int32_t* out);
  // u_j = nibble codes of weight row j (w + j*kp/2); s_j[g] = s[g*4 + j], same for off. Per (i, j), exactly:
  //   d_q[g]  = Σ_{k in g, (k%32)/4 == q} a_i[k]·u_j[k]            int32, lanes q < 8
  //   L_q     = fma(float(d_q[g]), s_j[g], L_q)  over g in order, from 0
  //   corr    = fma(float(off_j[g]·asum_i[g]), s_j[g], corr)  over g in order, from 0
  //   out[i*4 + j] = (((L_0+L_1)+(L_2+L_3)) + ((L_4+L_5)+(L_6+L_7))) − corr
  // (lane q of a vpmaddubsw + vpmaddwd over a 32-element half holds elements 4q..4q+3 of it).
  void (*a8w4_tile)(const int8_t* a0, const int8_t* a1, const int32_t* asum0, const int32_t* asum1,
                    const uint8_t* w, const float* s, const int32_t* off, int64_t kp, int64_t group, int64_t ng,
                    float* out);
  // Σ_g s_j[g] · Σ_{k in g} x_i[k]·v_j[k] with v = float(u − off) (int4, exact) or nf4 level[u] (off ==
  // nullptr). Per (i, j), exactly:
  //   P_q = fma(x_i[k], v_j[k], P_q)  over k in g with k%8 == q, from 0 (per group), ordered by
  //         (k/64, (k%32)/8, (k%64)/32): in each chunk, 8 low-half elements then the 8 high-half ones
  //   L_q = fma(P_q, s_j[g], L_q)     over g in order, from 0
  //   out[i*4 + j] = ((L_0+L_1)+(L_2+L_3)) + ((L_4+L_5)+(L_6+L_7))
  void (*a16w4_tile)(const float* x0, const float* x1, const uint8_t* w, const float* s, const int32_t* off,
                     int64_t kp, int64_t group, int64_t ng, float* out);
  // The prefill form of a16w4_tile (many activation rows): the tile's 4 weight rows decoded once to
  // fp32, then read by every row. a16w4_decode: v_j[k] (float(u − off) or level[u]) to
  // panel[(k / kc)·block + j·kc + k % kc] (K blocks of kc elements, `block` apart; group and kc multiples of 32).
  // a16w4_panel: for rows i < mr (1..kA16W4Mr) and the nt tiles t of a unit, j < 4, groups g0 <= g < g1,
  // with x_i[k] at x[i·ldx + k − k0] and tile t's v_j[k] at panel[t·tstride + j·ldp + k − k0]
  // (k0 <= g0·group), the per-group sums P_q of a16w4_tile in its element order, then
  // lanes[t·kA16W4Lanes + (i*4 + j)*8 + q] = fma(P_q, s[t·sstride + g*4 + j], lanes[..]) (the caller
  // zeroes lanes before g = 0 and reduces them with lane_sum: the tile's exact result).
  void (*a16w4_decode)(const uint8_t* w, const int32_t* off, int64_t kp, int64_t group, float* panel, int64_t kc,
                       int64_t block);
  void (*a16w4_panel)(int mr, const float* x, int64_t ldx, const float* panel, int64_t ldp, int nt, int64_t tstride,
                      int64_t k0, const float* s, int64_t sstride, int64_t group, int64_t g0, int64_t g1, float* lanes);
  // ws (kc, 16) fp32 = e4m3 decode of panel codes (kc, 16) (unscaled).
  void (*fp8_decode)(const uint8_t* codes, int64_t kc, float* ws);
  // For rows i < mr (<= 6): p = Σ_{k<kc} xa_i[k] · ws[k, 0..15] (fp32), then y_i[0..15] = fma(p, scale[i], y_i).
  void (*fp8_tile)(int mr, const float* xa, int64_t ldxa, const float* ws, int64_t kc, const float* scale, float* y,
                   int64_t ldy);
  // One activation row (decode), fused: for panels p < np (codes + p*pstride, each (kc, 16) e4m3, k-major),
  // y[p*16 + j] = fma(Σ_{k<kc} xa[k] · e4m3(code_p[k, j]), scale, y[p*16 + j]), the sum an FMA chain in K
  // order from 0: exactly fp8_decode then fp8_tile with mr = 1, without the fp32 block in memory.
  void (*fp8_gemv)(const uint8_t* codes, int64_t pstride, int np, const float* xa, int64_t kc, float scale, float* y);
  // fp8_tile with a scale per row AND per column (the wgrad GEMM: both operands in tiles along
  // K = tokens): for rows i < mr (<= 6), p_j = Σ_{k<kc} xa_i[k] · ws[k, j] (an FMA chain in K order
  // from 0), then y_i[j] = fma(p_j, row_scale[i] · col_scale[j], y_i[j]), j < 16.
  void (*fp8_tile_cs)(int mr, const float* xa, int64_t ldxa, const float* ws, int64_t kc, const float* row_scale,
                      const float* col_scale, float* y, int64_t ldy);
  // The limited-precision accumulator of the FP8 tensor cores DeepSeek-V3 describes (accuracy
  // experiments, `accum_bits`): T(v) = v with all but `bits` significand bits (implicit one included)
  // cleared, i.e. truncated toward zero; for rows i < mr (<= 6) and j < 16, with
  // prod = xa_i[k] · ws[k, j] and s = row_scale[i] · col_scale[j], every product and sum rounded on its
  // own (never fused), k < kc in order:
  //   promoted:   p = 0; p = T(p + prod); then y_i[j] = fma(p, s, y_i[j])  (fp32 promotion of the block)
  //   unpromoted: y_i[j] = T(y_i[j] + prod · s)                        (y is the one limited accumulator)
  void (*fp8_tile_limited)(int mr, const float* xa, int64_t ldxa, const float* ws, int64_t kc, const float* row_scale,
                           const float* col_scale, int bits, bool promoted, float* y, int64_t ldy);
};

// T(v)'s mask for `bits` significand bits (2..24).
inline uint32_t significand_mask(int bits) { return bits >= 24 ? ~uint32_t{0} : ~((uint32_t{1} << (24 - bits)) - 1); }

const Microkernels& scalar_microkernels();
#if defined(LOWBIT_HAVE_AVX2)
const Microkernels& avx2_microkernels();
#endif

// e4m3 code -> float (NaN codes 0x7F / 0xFF decode as ±480: quantized weights never hold NaN).
float e4m3_value(uint8_t code);

}  // namespace lowbit::kernels_internal
