// Scalar microkernels: the reference twins of x86/microkernels_avx2.cc (same contracts,
// kernels_internal.h). Integer kernels are exact; the float ones accumulate in K order.
#include <cmath>
#include <cstring>

#include "../kernels_internal.h"
#include "lowbit/formats.h"

namespace lowbit::kernels_internal {

float e4m3_value(uint8_t code) {
  // The e4m3 magnitude bits placed at the top of an fp32 mantissa/exponent, times 2^120,
  // is the value exactly (subnormals included: the fp32 denormal scales up to a normal).
  const uint32_t bits = static_cast<uint32_t>(code & 0x7F) << 20;
  float f;
  std::memcpy(&f, &bits, 4);
  f *= 0x1p120f;
  return (code & 0x80) ? -f : f;
}

namespace {

inline int nibble(const uint8_t* row, int64_t k) {
  const int64_t c = k / kChunk, e = k % kChunk;
  const uint8_t b = row[c * (kChunk / 2) + (e % (kChunk / 2))];
  return e < kChunk / 2 ? (b & 0xF) : (b >> 4);
}

void a8w8_tile(const int8_t* a0, const int8_t* a1, const uint8_t*, const uint8_t*, const int8_t* w, int64_t kp,
               int32_t* out) {
  const int8_t* a[2] = {a0, a1};
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 4; ++j) {
      const int8_t* wj = w + j * kp;
      int32_t acc = 0;
      for (int64_t k = 0; k < kp; ++k) acc += int32_t{a[i][k]} * int32_t{wj[k]};
      out[i * 4 + j] = acc;
    }
  }
}

void a8w4_tile(const int8_t* a0, const int8_t* a1, const int32_t* asum0, const int32_t* asum1, const uint8_t* w,
               const float* s, const int32_t* off, int64_t kp, int64_t group, int64_t ng, float* out) {
  const int8_t* a[2] = {a0, a1};
  const int32_t* asum[2] = {asum0, asum1};
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 4; ++j) {
      const uint8_t* wj = w + j * (kp / 2);
      float lanes[8] = {};
      float corr = 0.0f;
      for (int64_t g = 0; g < ng; ++g) {
        int32_t d[8] = {};
        for (int64_t k = g * group; k < (g + 1) * group; ++k) d[(k % 32) / 4] += int32_t{a[i][k]} * nibble(wj, k);
        const float sg = s[g * 4 + j];
        for (int q = 0; q < 8; ++q) lanes[q] = std::fma(static_cast<float>(d[q]), sg, lanes[q]);
      }
      for (int64_t g = 0; g < ng; ++g) {
        corr = std::fma(static_cast<float>(off[g * 4 + j] * asum[i][g]), s[g * 4 + j], corr);
      }
      out[i * 4 + j] = lane_sum(lanes) - corr;
    }
  }
}

// The a16w4 element order within group g: lane q = k % 8; within each 64-element chunk, for each 8
// of a half (k % 32 / 8), the low half's 8 (k % 64 < 32) then the high half's, skipping halves
// outside the group. step(k) takes the 8 elements k .. k + 7.
template <class Step>
void a16w4_group_order(int64_t g, int64_t group, Step&& step) {
  const int64_t k0 = g * group, k1 = (g + 1) * group;
  for (int64_t c = k0 / kChunk * kChunk; c < k1; c += kChunk) {
    for (int64_t e = 0; e < 32; e += 8) {
      for (int64_t hh = 0; hh < 64; hh += 32) {
        if (c + hh >= k0 && c + hh < k1) step(c + hh + e);
      }
    }
  }
}

void a16w4_tile(const float* x0, const float* x1, const uint8_t* w, const float* s, const int32_t* off, int64_t kp,
                int64_t group, int64_t ng, float* out) {
  const float* x[2] = {x0, x1};
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 4; ++j) {
      const uint8_t* wj = w + j * (kp / 2);
      float lanes[8] = {};
      for (int64_t g = 0; g < ng; ++g) {
        float p[8] = {};
        a16w4_group_order(g, group, [&](int64_t k8) {
          for (int q = 0; q < 8; ++q) {
            const int u = nibble(wj, k8 + q);
            const float v = off ? static_cast<float>(u - off[g * 4 + j]) : kNf4Levels[static_cast<size_t>(u)];
            p[q] = std::fma(x[i][k8 + q], v, p[q]);
          }
        });
        const float sg = s[g * 4 + j];
        for (int q = 0; q < 8; ++q) lanes[q] = std::fma(p[q], sg, lanes[q]);
      }
      out[i * 4 + j] = lane_sum(lanes);
    }
  }
}

void a16w4_decode(const uint8_t* w, const int32_t* off, int64_t kp, int64_t group, float* panel, int64_t kc,
                  int64_t block) {
  for (int j = 0; j < 4; ++j) {
    for (int64_t k = 0; k < kp; ++k) {
      const int u = nibble(w + j * (kp / 2), k);
      const float v = off ? static_cast<float>(u - off[k / group * 4 + j]) : kNf4Levels[static_cast<size_t>(u)];
      panel[(k / kc) * block + j * kc + k % kc] = v;
    }
  }
}

void a16w4_panel(int mr, const float* x, int64_t ldx, const float* panel, int64_t ldp, int nt, int64_t tstride,
                 int64_t k0, const float* s, int64_t sstride, int64_t group, int64_t g0, int64_t g1, float* lanes) {
  for (int t = 0; t < nt; ++t) {
    for (int i = 0; i < mr; ++i) {
      for (int j = 0; j < 4; ++j) {
        const float* v = panel + t * tstride + j * ldp;
        float* l = lanes + t * kA16W4Lanes + (i * 4 + j) * 8;
        for (int64_t g = g0; g < g1; ++g) {
          float p[8] = {};
          a16w4_group_order(g, group, [&](int64_t k8) {
            for (int q = 0; q < 8; ++q) p[q] = std::fma(x[i * ldx + k8 + q - k0], v[k8 + q - k0], p[q]);
          });
          for (int q = 0; q < 8; ++q) l[q] = std::fma(p[q], s[t * sstride + g * 4 + j], l[q]);
        }
      }
    }
  }
}

void fp8_decode(const uint8_t* codes, int64_t kc, float* ws) {
  for (int64_t i = 0; i < kc * kFp8Nr; ++i) ws[i] = e4m3_value(codes[i]);
}

void fp8_tile(int mr, const float* xa, int64_t ldxa, const float* ws, int64_t kc, const float* scale, float* y,
              int64_t ldy) {
  for (int i = 0; i < mr; ++i) {
    for (int j = 0; j < kFp8Nr; ++j) {
      float p = 0.0f;
      for (int64_t k = 0; k < kc; ++k) p = std::fma(xa[i * ldxa + k], ws[k * kFp8Nr + j], p);
      y[i * ldy + j] = std::fma(p, scale[i], y[i * ldy + j]);
    }
  }
}

void fp8_tile_cs(int mr, const float* xa, int64_t ldxa, const float* ws, int64_t kc, const float* row_scale,
                 const float* col_scale, float* y, int64_t ldy) {
  for (int i = 0; i < mr; ++i) {
    for (int j = 0; j < kFp8Nr; ++j) {
      float p = 0.0f;
      for (int64_t k = 0; k < kc; ++k) p = std::fma(xa[i * ldxa + k], ws[k * kFp8Nr + j], p);
      y[i * ldy + j] = std::fma(p, row_scale[i] * col_scale[j], y[i * ldy + j]);
    }
  }
}

void fp8_gemv(const uint8_t* codes, int64_t pstride, int np, const float* xa, int64_t kc, float scale, float* y) {
  for (int p = 0; p < np; ++p) {
    for (int j = 0; j < kFp8Nr; ++j) {
      float acc = 0.0f;
      for (int64_t k = 0; k < kc; ++k) acc = std::fma(xa[k], e4m3_value(codes[p * pstride + k * kFp8Nr + j]), acc);
      y[p * kFp8Nr + j] = std::fma(acc, scale, y[p * kFp8Nr + j]);
    }
  }
}

float truncate(float v, uint32_t mask) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u &= mask;
  std::memcpy(&v, &u, 4);
  return v;
}

void fp8_tile_limited(int mr, const float* xa, int64_t ldxa, const float* ws, int64_t kc, const float* row_scale,
                      const float* col_scale, int bits, bool promoted, float* y, int64_t ldy) {
  const uint32_t mask = significand_mask(bits);
  for (int i = 0; i < mr; ++i) {
    for (int j = 0; j < kFp8Nr; ++j) {
      const float s = row_scale[i] * col_scale[j];
      float acc = y[i * ldy + j];
      if (promoted) {
        float p = 0.0f;
        for (int64_t k = 0; k < kc; ++k) {
          const float prod = xa[i * ldxa + k] * ws[k * kFp8Nr + j];
          p = truncate(p + prod, mask);
        }
        acc = std::fma(p, s, acc);
      } else {
        for (int64_t k = 0; k < kc; ++k) {
          const float prod = xa[i * ldxa + k] * ws[k * kFp8Nr + j];
          const float scaled = prod * s;
          acc = truncate(acc + scaled, mask);
        }
      }
      y[i * ldy + j] = acc;
    }
  }
}

}  // namespace

const Microkernels& scalar_microkernels() {
  static const Microkernels k{Isa::kScalar, a8w8_tile, a8w4_tile,   a16w4_tile,      a16w4_decode, a16w4_panel,
                              fp8_decode,   fp8_tile,  fp8_gemv,    fp8_tile_cs,     fp8_tile_limited};
  return k;
}

}  // namespace lowbit::kernels_internal
