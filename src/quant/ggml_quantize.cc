// Quantizers for ggml's block types. Every type is described by one row of kDescs: its block and
// sub-block sizes, its code range and levels (linear q - offset, or the IQ4 grid), whether it has
// a min, and the integer range of its sub-block scales and mins. One generic search then serves
// all twelve types:
//   1. per sub-block, a continuous scale a (and min m) for the levels: plain = from the extreme
//      values; search = candidate scales around it, codes rounded, (a, m) refitted by weighted
//      least squares, the best by weighted squared error;
//   2. the block's stored scales: fp16 d (and dmin / m) for the 32-element types; for the
//      super-block types the sub-block scales as integers times an fp16 d (plain: d from the
//      largest; search: candidate d's, codes re-rounded, d and dmin refitted by least squares
//      and rounded to fp16, the best by the block's weighted error).
// Codes are always the nearest level under the scales finally stored.

#include "lowbit/ggml_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "lowbit/formats.h"

namespace lowbit {

// The nearest IQ4 level to t, ties to the lower: the searches below call this ~100 times per
// weight. kIq4Floor[i + 127] is the nearest code at the integer i (v[0] = -127 <= i < v[15] = 113);
// for t in [i, i + 1) the answer is that code or the next (consecutive midpoints are >= 11 apart),
// decided by the same float comparison a search of t's bracket makes.
namespace {

struct Iq4FloorTable {
  uint8_t code[240];
  constexpr Iq4FloorTable() : code{} {
    const int8_t* v = kIq4nlValues;
    int c = 0;
    for (int i = 0; i < 240; ++i) {
      const int t = i - 127;
      while (c < 15 && t - v[c] > v[c + 1] - t) ++c;
      code[i] = static_cast<uint8_t>(c);
    }
  }
};
constexpr Iq4FloorTable kIq4Floor;

}  // namespace

int iq4_nearest_code(float t) {
  const int8_t* v = kIq4nlValues;
  if (t <= v[0]) return 0;
  if (t >= v[15]) return 15;
  if (t != t) return 1;  // NaN: what a bracket search falls to (inputs are finite; kept for equality)
  int c = kIq4Floor.code[static_cast<int>(std::floor(t)) + 127];
  if (c < 15 && !(t - static_cast<float>(v[c]) <= static_cast<float>(v[c + 1]) - t)) ++c;
  return c;
}

namespace {

struct Desc {
  GgmlType type;
  int block;      // elements per block
  int sub;        // elements per sub-block (== block for the 32-element types)
  int nq;         // number of codes 0..nq-1
  int off;        // linear level = q - off
  bool table;     // levels are kIq4nlValues[q]
  bool affine;    // value = a*level + m with a fitted min (q4_1, q5_1, q2_K, q4_K, q5_K)
  bool two_level; // sub-block scales are integers sc in [smin, smax] times fp16 d
  int smin, smax;
  int mmax;       // integer mins 0..mmax (two-level affine types)
};

// clang-format off
constexpr Desc kDescs[] = {
  // type              block sub  nq   off  table  affine two    smin  smax  mmax
  {GgmlType::kQ4_0,    32,   32,  16,  8,   false, false, false, 0,    0,    0},
  {GgmlType::kQ4_1,    32,   32,  16,  0,   false, true,  false, 0,    0,    0},
  {GgmlType::kQ5_0,    32,   32,  32,  16,  false, false, false, 0,    0,    0},
  {GgmlType::kQ5_1,    32,   32,  32,  0,   false, true,  false, 0,    0,    0},
  {GgmlType::kQ8_0,    32,   32,  255, 127, false, false, false, 0,    0,    0},
  {GgmlType::kIQ4_NL,  32,   32,  16,  0,   true,  false, false, 0,    0,    0},
  {GgmlType::kQ2_K,    256,  16,  4,   0,   false, true,  true,  0,    15,   15},
  {GgmlType::kQ3_K,    256,  16,  8,   4,   false, false, true,  -32,  31,   0},
  {GgmlType::kQ4_K,    256,  32,  16,  0,   false, true,  true,  0,    63,   63},
  {GgmlType::kQ5_K,    256,  32,  32,  0,   false, true,  true,  0,    63,   63},
  {GgmlType::kQ6_K,    256,  16,  64,  32,  false, false, true,  -128, 127,  0},
  {GgmlType::kIQ4_XS,  256,  32,  16,  0,   true,  false, true,  -32,  31,   0},
};
// clang-format on

const Desc* desc_of(GgmlType t) {
  for (const Desc& d : kDescs) {
    if (d.type == t) return &d;
  }
  return nullptr;
}

using State = GgmlBlockCoder::State;

float half_value(uint16_t bits) { return decode(Format::kFp16, bits); }
uint16_t half_bits(float v) {
  // Saturate to fp16's range: a scale beyond 65504 cannot be stored; the weights are then clipped.
  const float lim = 65504.0f;
  return static_cast<uint16_t>(encode(Format::kFp16, std::clamp(v, -lim, lim)));
}

float level(const Desc& d, int q) { return d.table ? static_cast<float>(kIq4nlValues[q]) : static_cast<float>(q - d.off); }

// The nearest code to t (in level units).
int nearest_code(const Desc& d, float t) {
  if (!d.table) {
    const float r = std::nearbyint(t) + static_cast<float>(d.off);
    return static_cast<int>(std::clamp(r, 0.0f, static_cast<float>(d.nq - 1)));
  }
  return iq4_nearest_code(t);
}

// The element's scale and additive term under a state (the same fp32 products ggml's dequantizer forms).
struct Affine {
  float a, m;
};
Affine sub_affine(const Desc& d, const State& s, int sb) {
  const float dd = half_value(s.d_bits);
  if (!d.two_level) {
    return {dd, d.affine ? half_value(s.dmin_bits) : 0.0f};
  }
  const float a = dd * static_cast<float>(s.sc[sb]);
  const float m = d.affine ? -(half_value(s.dmin_bits) * static_cast<float>(s.mn[sb])) : 0.0f;
  return {a, m};
}

int round_element(const Desc& d, const Affine& af, float x) {
  if (af.a == 0.0f) return nearest_code(d, 0.0f);
  return nearest_code(d, (x - af.m) / af.a);
}

// Re-rounds every code under the state's scales; returns the weighted squared error.
double assign_codes(const Desc& d, State& s, const float* x, const float* w) {
  double err = 0;
  for (int sb = 0; sb < d.block / d.sub; ++sb) {
    const Affine af = sub_affine(d, s, sb);
    for (int j = sb * d.sub; j < (sb + 1) * d.sub; ++j) {
      const int q = round_element(d, af, x[j]);
      s.q[j] = static_cast<uint8_t>(q);
      const double e = static_cast<double>(x[j]) - (static_cast<double>(af.a) * level(d, q) + af.m);
      err += (w ? w[j] : 1.0) * e * e;
    }
  }
  return err;
}

// Step 1: a continuous (a, m) for one sub-block of n values.
Affine fit_sub(const Desc& d, const float* x, const float* w, int n, bool search) {
  float mn = x[0], mx = x[0], amax = x[0];
  for (int j = 0; j < n; ++j) {
    mn = std::min(mn, x[j]);
    mx = std::max(mx, x[j]);
    if (std::fabs(x[j]) > std::fabs(amax)) amax = x[j];
  }
  const auto wt = [&](int j) { return w ? static_cast<double>(w[j]) : 1.0; };
  const auto error_of = [&](float a, float m) {
    double err = 0;
    for (int j = 0; j < n; ++j) {
      const int q = a == 0.0f ? nearest_code(d, 0.0f) : nearest_code(d, (x[j] - m) / a);
      const double e = static_cast<double>(x[j]) - (static_cast<double>(a) * level(d, q) + m);
      err += wt(j) * e * e;
    }
    return err;
  };
  if (!d.affine) {
    if (amax == 0.0f) return {0.0f, 0.0f};
    const float lo = level(d, 0), hi = level(d, d.nq - 1);
    Affine best{amax / lo, 0.0f};
    if (!search) return best;
    double best_err = error_of(best.a, 0.0f);
    for (const float end : {lo, hi}) {
      for (int k = -8; k <= 8; ++k) {
        float a = amax / (end * (1.0f + 0.03f * static_cast<float>(k)));
        for (int it = 0; it < 2; ++it) {
          double sxl = 0, sll = 0;
          for (int j = 0; j < n; ++j) {
            const double l = level(d, nearest_code(d, x[j] / a));
            sxl += wt(j) * x[j] * l;
            sll += wt(j) * l * l;
          }
          if (!(sll > 0) || sxl == 0) break;
          a = static_cast<float>(sxl / sll);
          const double e = error_of(a, 0.0f);
          if (e < best_err) {
            best_err = e;
            best = {a, 0.0f};
          }
        }
      }
    }
    return best;
  }
  // Affine. The k-quants subtract a non-negative min: m <= 0.
  if (d.two_level) mn = std::min(mn, 0.0f);
  if (mx == mn) return {0.0f, mn};
  const float nmax = static_cast<float>(d.nq - 1);
  Affine best{(mx - mn) / nmax, mn};
  if (!search) return best;
  double best_err = error_of(best.a, best.m);
  for (int k = -10; k <= 10; ++k) {
    const float is = (nmax + 0.1f * static_cast<float>(k)) / (mx - mn);
    double s1 = 0, sx = 0, sl = 0, sll = 0, sxl = 0;
    for (int j = 0; j < n; ++j) {
      const float l = std::clamp(std::nearbyint(is * (x[j] - mn)), 0.0f, nmax);
      const double ww = wt(j);
      s1 += ww;
      sx += ww * x[j];
      sl += ww * l;
      sll += ww * l * l;
      sxl += ww * x[j] * l;
    }
    const double det = s1 * sll - sl * sl;
    if (!(det > 0)) continue;
    double a = (s1 * sxl - sl * sx) / det, m = (sll * sx - sl * sxl) / det;
    if (d.two_level && m > 0) {
      m = 0;
      a = sll > 0 ? sxl / sll : 0;
    }
    if (!(a > 0)) continue;
    const double e = error_of(static_cast<float>(a), static_cast<float>(m));
    if (e < best_err) {
      best_err = e;
      best = {static_cast<float>(a), static_cast<float>(m)};
    }
  }
  return best;
}

// Weighted least squares for (d, dmin) given the integer sub-scales and codes: value =
// d·F1 + dm·F2 with F1 = sc·level, F2 = 1 (32-element affine types) or −mn (k-quants).
bool refit_super(const Desc& d, State& s, const float* x, const float* w) {
  double a11 = 0, a12 = 0, a22 = 0, b1 = 0, b2 = 0;
  for (int j = 0; j < d.block; ++j) {
    const int sb = j / d.sub;
    const double f1 = (d.two_level ? s.sc[sb] : 1) * static_cast<double>(level(d, s.q[j]));
    const double f2 = d.affine ? (d.two_level ? -s.mn[sb] : 1.0) : 0.0;
    const double ww = w ? w[j] : 1.0;
    a11 += ww * f1 * f1;
    a12 += ww * f1 * f2;
    a22 += ww * f2 * f2;
    b1 += ww * f1 * x[j];
    b2 += ww * f2 * x[j];
  }
  double dd, dm = 0;
  if (d.affine && a22 > 0) {
    const double det = a11 * a22 - a12 * a12;
    if (!(det > 0)) return false;
    dd = (a22 * b1 - a12 * b2) / det;
    dm = (a11 * b2 - a12 * b1) / det;
    if (d.two_level && dm < 0) {  // dmin must stay >= 0
      dm = 0;
      dd = b1 / a11;
    }
  } else {
    if (!(a11 > 0)) return false;
    dd = b1 / a11;
  }
  if (!std::isfinite(dd) || !std::isfinite(dm)) return false;
  s.d_bits = half_bits(static_cast<float>(dd));
  if (d.affine) s.dmin_bits = half_bits(static_cast<float>(dm));
  return true;
}

// Step 2 for one candidate: integer sub-scales from d (two-level types), codes, then `refits`
// rounds of least-squares refit; returns the best state's error (state left at the best).
double settle(const Desc& d, State& s, const float* x, const float* w, int refits) {
  double err = assign_codes(d, s, x, w);
  for (int it = 0; it < refits; ++it) {
    State t = s;
    if (!refit_super(d, t, x, w)) break;
    const double e = assign_codes(d, t, x, w);
    if (!(e < err)) break;
    err = e;
    s = t;
  }
  return err;
}

double fit_block(const Desc& d, const float* x, const float* w, bool search, State& out) {
  const int nsub = d.block / d.sub;
  Affine sub[16];
  for (int sb = 0; sb < nsub; ++sb) sub[sb] = fit_sub(d, x + sb * d.sub, w ? w + sb * d.sub : nullptr, d.sub, search);
  State s{};
  if (!d.two_level) {
    s.d_bits = half_bits(sub[0].a);
    if (d.affine) s.dmin_bits = half_bits(sub[0].m);
    const double err = settle(d, s, x, w, search ? 2 : 0);
    out = s;
    return err;
  }
  // Largest sub-block scale (signed for the symmetric types) and largest −min.
  float amax = 0, mmax = 0;
  for (int sb = 0; sb < nsub; ++sb) {
    if (std::fabs(sub[sb].a) > std::fabs(amax)) amax = sub[sb].a;
    mmax = std::max(mmax, -sub[sb].m);
  }
  const float dmin = d.mmax > 0 ? mmax / static_cast<float>(d.mmax) : 0.0f;
  const auto with_d = [&](float dd) {
    State t{};
    t.d_bits = half_bits(dd);
    t.dmin_bits = half_bits(dmin);
    const float dq = half_value(t.d_bits), mq = half_value(t.dmin_bits);
    for (int sb = 0; sb < nsub; ++sb) {
      t.sc[sb] = dq == 0.0f ? 0 : static_cast<int>(std::clamp(std::nearbyint(sub[sb].a / dq), static_cast<float>(d.smin), static_cast<float>(d.smax)));
      t.mn[sb] = !d.affine || mq == 0.0f ? 0 : static_cast<int>(std::clamp(std::nearbyint(-sub[sb].m / mq), 0.0f, static_cast<float>(d.mmax)));
    }
    return t;
  };
  // Plain: the largest |scale| maps to the end of the integer range on its side.
  const float end = d.smin < 0 ? static_cast<float>(d.smin) : static_cast<float>(d.smax);
  const float d0 = amax == 0.0f ? 0.0f : (d.smin < 0 ? amax / end : amax / end);
  State best = with_d(d0);
  double best_err = settle(d, best, x, w, search ? 2 : 0);
  if (search && amax != 0.0f) {
    for (int k = -6; k <= 6; ++k) {
      if (k == 0) continue;
      const float dd = amax / (end * (1.0f + 0.025f * static_cast<float>(k)));
      State t = with_d(dd);
      const double e = settle(d, t, x, w, 2);
      if (e < best_err) {
        best_err = e;
        best = t;
      }
    }
  }
  out = best;
  return best_err;
}

// Writes a state into ggml's block layout.
void pack_state(const Desc& d, const State& s, void* out) {
  const auto nib32 = [](uint8_t* qs, const uint8_t* q, int mask) {
    for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>((q[j] & mask) | ((q[j + 16] & mask) << 4));
  };
  const auto high32 = [](uint8_t* qh, const uint8_t* q) {
    uint32_t h = 0;
    for (int j = 0; j < 32; ++j) h |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
    std::memcpy(qh, &h, 4);
  };
  switch (d.type) {
    case GgmlType::kQ4_0: {
      auto* b = static_cast<BlockQ4_0*>(out);
      b->d = s.d_bits;
      nib32(b->qs, s.q, 15);
      break;
    }
    case GgmlType::kIQ4_NL: {
      auto* b = static_cast<BlockIQ4_NL*>(out);
      b->d = s.d_bits;
      nib32(b->qs, s.q, 15);
      break;
    }
    case GgmlType::kQ4_1: {
      auto* b = static_cast<BlockQ4_1*>(out);
      b->d = s.d_bits;
      b->m = s.dmin_bits;
      nib32(b->qs, s.q, 15);
      break;
    }
    case GgmlType::kQ5_0: {
      auto* b = static_cast<BlockQ5_0*>(out);
      b->d = s.d_bits;
      nib32(b->qs, s.q, 15);
      high32(b->qh, s.q);
      break;
    }
    case GgmlType::kQ5_1: {
      auto* b = static_cast<BlockQ5_1*>(out);
      b->d = s.d_bits;
      b->m = s.dmin_bits;
      nib32(b->qs, s.q, 15);
      high32(b->qh, s.q);
      break;
    }
    case GgmlType::kQ8_0: {
      auto* b = static_cast<BlockQ8_0*>(out);
      b->d = s.d_bits;
      for (int j = 0; j < 32; ++j) b->qs[j] = static_cast<int8_t>(s.q[j] - 127);
      break;
    }
    case GgmlType::kQ2_K: {
      auto* b = static_cast<BlockQ2_K*>(out);
      std::memset(b, 0, sizeof *b);
      b->d = s.d_bits;
      b->dmin = s.dmin_bits;
      for (int sb = 0; sb < 16; ++sb) b->scales[sb] = static_cast<uint8_t>(s.sc[sb] | (s.mn[sb] << 4));
      for (int e = 0; e < 256; ++e) {
        const int n = e / 128, j = (e / 32) % 4, l = e % 32;
        b->qs[32 * n + l] = static_cast<uint8_t>(b->qs[32 * n + l] | ((s.q[e] & 3) << (2 * j)));
      }
      break;
    }
    case GgmlType::kQ3_K: {
      auto* b = static_cast<BlockQ3_K*>(out);
      std::memset(b, 0, sizeof *b);
      b->d = s.d_bits;
      for (int i = 0; i < 16; ++i) {
        const int v = s.sc[i] + 32;  // 0..63
        b->scales[i % 8] = static_cast<uint8_t>(b->scales[i % 8] | ((v & 15) << (4 * (i / 8))));
        b->scales[8 + i % 4] = static_cast<uint8_t>(b->scales[8 + i % 4] | ((v >> 4) << (2 * (i / 4))));
      }
      for (int e = 0; e < 256; ++e) {
        const int n = e / 128, j = (e / 32) % 4, l = e % 32;
        b->qs[32 * n + l] = static_cast<uint8_t>(b->qs[32 * n + l] | ((s.q[e] & 3) << (2 * j)));
        if (s.q[e] >> 2) b->hmask[l] = static_cast<uint8_t>(b->hmask[l] | (1 << (4 * n + j)));
      }
      break;
    }
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K: {
      // Scales and mins: j < 4 in the low 6 bits of bytes j and j+4; j >= 4 split into a nibble of
      // byte j+4 and the top two bits of bytes j-4 (scale) and j (min).
      uint8_t sc[12] = {};
      for (int j = 0; j < 8; ++j) {
        const int a = s.sc[j], m = s.mn[j];
        if (j < 4) {
          sc[j] = static_cast<uint8_t>(sc[j] | a);
          sc[j + 4] = static_cast<uint8_t>(sc[j + 4] | m);
        } else {
          sc[j + 4] = static_cast<uint8_t>((a & 15) | ((m & 15) << 4));
          sc[j - 4] = static_cast<uint8_t>(sc[j - 4] | ((a >> 4) << 6));
          sc[j] = static_cast<uint8_t>(sc[j] | ((m >> 4) << 6));
        }
      }
      uint8_t* qs;
      if (d.type == GgmlType::kQ4_K) {
        auto* b = static_cast<BlockQ4_K*>(out);
        b->d = s.d_bits;
        b->dmin = s.dmin_bits;
        std::memcpy(b->scales, sc, 12);
        qs = b->qs;
      } else {
        auto* b = static_cast<BlockQ5_K*>(out);
        b->d = s.d_bits;
        b->dmin = s.dmin_bits;
        std::memcpy(b->scales, sc, 12);
        std::memset(b->qh, 0, sizeof b->qh);
        for (int e = 0; e < 256; ++e) {
          if (s.q[e] >> 4) b->qh[e % 32] = static_cast<uint8_t>(b->qh[e % 32] | (1 << (e / 32)));
        }
        qs = b->qs;
      }
      std::memset(qs, 0, 128);
      for (int e = 0; e < 256; ++e) {
        const int sb = e / 32, l = e % 32;
        qs[32 * (sb / 2) + l] = static_cast<uint8_t>(qs[32 * (sb / 2) + l] | ((s.q[e] & 15) << (4 * (sb % 2))));
      }
      break;
    }
    case GgmlType::kQ6_K: {
      auto* b = static_cast<BlockQ6_K*>(out);
      std::memset(b, 0, sizeof *b);
      b->d = s.d_bits;
      for (int i = 0; i < 16; ++i) b->scales[i] = static_cast<int8_t>(s.sc[i]);
      for (int e = 0; e < 256; ++e) {
        const int n = e / 128, j = (e / 32) % 4, l = e % 32;
        uint8_t& lo = b->ql[64 * n + 32 * (j % 2) + l];
        lo = static_cast<uint8_t>(lo | ((s.q[e] & 15) << (4 * (j / 2))));
        b->qh[32 * n + l] = static_cast<uint8_t>(b->qh[32 * n + l] | ((s.q[e] >> 4) << (2 * j)));
      }
      break;
    }
    case GgmlType::kIQ4_XS: {
      auto* b = static_cast<BlockIQ4_XS*>(out);
      std::memset(b, 0, sizeof *b);
      b->d = s.d_bits;
      for (int sb = 0; sb < 8; ++sb) {
        const int v = s.sc[sb] + 32;
        b->scales_l[sb / 2] = static_cast<uint8_t>(b->scales_l[sb / 2] | ((v & 15) << (4 * (sb % 2))));
        b->scales_h = static_cast<uint16_t>(b->scales_h | ((v >> 4) << (2 * sb)));
        nib32(b->qs + 16 * sb, s.q + 32 * sb, 15);
      }
      break;
    }
    default: break;
  }
}

}  // namespace

int64_t ggml_row_bytes(GgmlType type, int64_t k) {
  const GgmlBlockInfo* info = ggml_block_info(type);
  if (info == nullptr || k < 0 || k % info->block_size != 0) return 0;
  return k / info->block_size * info->type_size;
}

bool quantize_row_ggml(GgmlType type, const float* x, const float* importance, void* out, int64_t k,
                       const GgmlQuantOptions& opt) {
  const Desc* d = desc_of(type);
  const GgmlBlockInfo* info = ggml_block_info(type);
  if (d == nullptr || info == nullptr || k <= 0 || k % d->block != 0) return false;
  auto* dst = static_cast<uint8_t*>(out);
  for (int64_t i = 0; i < k / d->block; ++i) {
    const float* xb = x + i * d->block;
    const float* wb = importance ? importance + i * d->block : nullptr;
    State s;
    const double err = fit_block(*d, xb, wb, false, s);
    if (opt.search) {
      State t;
      if (fit_block(*d, xb, wb, true, t) < err) s = t;
    }
    pack_state(*d, s, dst + i * info->type_size);
  }
  return true;
}

double ggml_weighted_error(GgmlType type, const float* x, const float* importance, const void* blocks, int64_t k) {
  std::vector<float> y(static_cast<size_t>(std::max<int64_t>(k, 0)));
  if (!dequantize_row(type, blocks, y.data(), k)) return std::numeric_limits<double>::quiet_NaN();
  double err = 0;
  for (int64_t j = 0; j < k; ++j) {
    const double e = static_cast<double>(x[j]) - y[static_cast<size_t>(j)];
    err += (importance ? importance[j] : 1.0) * e * e;
  }
  return err;
}

GgmlBlockCoder::GgmlBlockCoder(GgmlType type) : type_(type), block_(0) {
  if (const Desc* d = desc_of(type)) block_ = d->block;
}

void GgmlBlockCoder::fit(const float* x, const float* importance, const GgmlQuantOptions& opt) {
  const Desc* d = desc_of(type_);
  if (d == nullptr) return;
  State s;
  const double err = fit_block(*d, x, importance, false, s);
  if (opt.search) {
    State t;
    if (fit_block(*d, x, importance, true, t) < err) s = t;
  }
  s_ = s;
}

float GgmlBlockCoder::round(int e, float x) {
  const Desc* d = desc_of(type_);
  if (d == nullptr || e < 0 || e >= d->block) return 0.0f;
  const Affine af = sub_affine(*d, s_, e / d->sub);
  const int q = round_element(*d, af, x);
  s_.q[e] = static_cast<uint8_t>(q);
  return af.a * level(*d, q) + af.m;
}

void GgmlBlockCoder::pack(void* out) const {
  if (const Desc* d = desc_of(type_)) pack_state(*d, s_, out);
}

}  // namespace lowbit
