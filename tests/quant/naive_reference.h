// A naive, per-block reference of quantize / dequantize, written from docs/schemes.md
// (not from src/quant). It walks the block grid block by block, element by element, with
// every step of the doc spelled out in fp32, and uses only the scalar codec of formats.h
// (encode / decode, tested on its own in tests/formats) for element and scale formats.
//
// Covered: every element format, every granularity, sym and asym (integers), scale formats
// fp32 fp16 bf16 e8m0 e4m3 and e4m3*fp32 (NVFP4), scale rules divide / MX / pow2, clip
// absmax and p<P> (symmetric). Not covered: the `mse` clip (tested by its properties in
// quantize_test.cc) and asymmetric percentiles.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "lowbit/formats.h"
#include "lowbit/quant.h"

namespace lowbit::naive {

struct Grid {
  int64_t rows = 0, cols = 0;
  int64_t block_rows = 0, block_cols = 0;
  int64_t grid_rows = 0, grid_cols = 0;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// docs/schemes.md, "The 2-D view and the block grid".
inline Grid grid(const QuantSpec& s, int64_t rows, int64_t cols) {
  Grid g;
  g.rows = rows;
  g.cols = cols;
  switch (s.granularity) {
    case Granularity::kTensor: g.block_rows = rows; g.block_cols = cols; break;
    case Granularity::kRow: g.block_rows = 1; g.block_cols = cols; break;
    case Granularity::kCol: g.block_rows = rows; g.block_cols = 1; break;
    case Granularity::kGroup: g.block_rows = 1; g.block_cols = s.group; break;
    case Granularity::kBlock: g.block_rows = s.block_rows; g.block_cols = s.block_cols; break;
  }
  g.grid_rows = g.block_rows > 0 ? ceil_div(rows, g.block_rows) : 0;
  g.grid_cols = g.block_cols > 0 ? ceil_div(cols, g.block_cols) : 0;
  if (s.granularity == Granularity::kTensor) g.grid_rows = g.grid_cols = 1;
  return g;
}

// "qmax: the element format's largest value".
inline float qmax_of(Format f) {
  switch (f) {
    case Format::kInt8: return 127.0f;
    case Format::kInt4: return 7.0f;
    case Format::kUint8: return 255.0f;
    case Format::kUint4: return 15.0f;
    case Format::kInt3: return 3.0f;
    case Format::kUint3: return 7.0f;
    case Format::kInt5: return 15.0f;
    case Format::kUint5: return 31.0f;
    case Format::kInt6: return 31.0f;
    case Format::kUint6: return 63.0f;
    case Format::kE4m3: return 448.0f;
    case Format::kE5m2: return 57344.0f;
    case Format::kE2m1: return 6.0f;
    case Format::kNf4: return 1.0f;
    case Format::kFp16: return 65504.0f;
    case Format::kBf16: return static_cast<float>(traits(Format::kBf16).max_finite);
    default: return static_cast<float>(traits(f).max_finite);
  }
}
// For affine: the format's full integer range.
inline float qmin_of(Format f) {
  switch (f) {
    case Format::kInt8: return -128.0f;
    case Format::kInt4: return -8.0f;
    case Format::kInt3: return -4.0f;
    case Format::kInt5: return -16.0f;
    case Format::kInt6: return -32.0f;
    default: return 0.0f;
  }
}
// Exponent of the element's largest normal (MX rule).
inline int emax_elem(Format f) {
  switch (f) {
    case Format::kE4m3: return 8;
    case Format::kE5m2: return 15;
    case Format::kE2m1: return 2;
    case Format::kFp16: return 15;
    case Format::kBf16: return 127;
    default: return 0;
  }
}
inline bool is_int(Format f) { return traits(f).kind == FormatKind::kInteger; }
inline bool is_float_elem(Format f) { return traits(f).kind == FormatKind::kFloat; }

inline bool uses_mx_rule(const QuantSpec& s) {
  return s.scale_rule == ScaleRule::kMxFloor ||
         (s.scale_rule == ScaleRule::kDivide && s.scale_format == Format::kE8m0 && is_float_elem(s.element) &&
          !s.tensor_scale);
}

// The value code_at reports: sign-extended integer for int8/int4/int3, the raw code otherwise.
inline int32_t code_value(Format f, uint32_t raw) {
  if (f == Format::kInt8) return static_cast<int8_t>(static_cast<uint8_t>(raw));
  if (f == Format::kInt4) return (raw & 0x8) ? static_cast<int32_t>(raw & 0xF) - 16 : static_cast<int32_t>(raw & 0xF);
  if (f == Format::kInt3) return (raw & 0x4) ? static_cast<int32_t>(raw & 0x7) - 8 : static_cast<int32_t>(raw & 0x7);
  if (f == Format::kInt5) return (raw & 0x10) ? static_cast<int32_t>(raw & 0x1F) - 32 : static_cast<int32_t>(raw & 0x1F);
  if (f == Format::kInt6) return (raw & 0x20) ? static_cast<int32_t>(raw & 0x3F) - 64 : static_cast<int32_t>(raw & 0x3F);
  return static_cast<int32_t>(raw);
}

struct Result {
  bool ok = true;
  std::string error;
  int64_t rows = 0, cols = 0, row_bytes = 0;
  std::vector<uint32_t> raw;         // per element, row-major
  std::vector<int32_t> code;         // code_at() value per element
  std::vector<uint8_t> packed;       // the codes in storage layout
  std::vector<float> scales;         // per block, grid order
  std::vector<uint8_t> scale_codes;  // scale format storage layout
  std::vector<int32_t> zero_points;  // empty when symmetric
  float tensor_scale = 1.0f;
  std::vector<float> deq;            // dequantized, row-major
};

inline void append_code(std::vector<uint8_t>& out, Format f, uint32_t code) {
  const int bytes = traits(f).bits / 8;
  for (int b = 0; b < bytes; ++b) out.push_back(static_cast<uint8_t>(code >> (8 * b)));
}

// round_sf: encode to the scale format (RNE, non-saturating) and decode back.
inline float round_sf(Format sf, float y, uint32_t* code) {
  if (sf == Format::kFp32) {
    *code = std::bit_cast<uint32_t>(y);
    return y;
  }
  *code = encode(sf, y);
  return decode(sf, *code);
}

inline float pow2_ceil(float y) {
  int e = 0;
  const float m = std::frexp(y, &e);  // y = m * 2^e, m in [0.5, 1)
  return std::ldexp(1.0f, m == 0.5f ? e - 1 : e);
}

// x: rows x cols, row-major.
inline Result quantize(const std::vector<float>& x, int64_t rows, int64_t cols, const QuantSpec& spec) {
  Result r;
  r.rows = rows;
  r.cols = cols;
  const Format ef = spec.element, sf = spec.scale_format;
  r.row_bytes = static_cast<int64_t>((static_cast<size_t>(cols) * static_cast<size_t>(traits(ef).bits) + 7) / 8);
  for (int64_t i = 0; i < rows * cols; ++i) {
    if (!std::isfinite(x[static_cast<size_t>(i)])) {
      r.ok = false;
      r.error = "non-finite input at flat index " + std::to_string(i);
      return r;
    }
  }
  const Grid g = grid(spec, rows, cols);
  const float qmax = qmax_of(ef), qmin = qmin_of(ef);
  const size_t n = static_cast<size_t>(rows * cols);
  r.raw.assign(n, 0);
  r.code.assign(n, 0);
  r.deq.assign(n, 0.0f);
  std::vector<float> s_block(static_cast<size_t>(g.grid_rows * g.grid_cols));
  std::vector<int32_t> z_block(s_block.size(), 0);

  // Two-level (NVFP4): tensor scale g = max|x| / (448 * qmax), 1 for an all-zero tensor.
  float gts = 1.0f;
  if (spec.tensor_scale) {
    float amax = 0.0f;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    gts = amax == 0.0f ? 1.0f : amax / (448.0f * qmax);
    r.tensor_scale = gts;
  }

  for (int64_t br = 0; br < g.grid_rows; ++br) {
    for (int64_t bc = 0; bc < g.grid_cols; ++bc) {
      const int64_t r0 = br * g.block_rows, r1 = std::min(rows, r0 + g.block_rows);
      const int64_t c0 = bc * g.block_cols, c1 = std::min(cols, c0 + g.block_cols);
      std::vector<float> v;
      for (int64_t i = r0; i < r1; ++i)
        for (int64_t j = c0; j < c1; ++j) v.push_back(x[static_cast<size_t>(i * cols + j)]);
      const size_t bi = static_cast<size_t>(br * g.grid_cols + bc);

      float s = 0.0f;
      int32_t z = 0;
      uint32_t scode = 0;
      if (spec.symmetric) {
        // 1. clip value
        float c = 0.0f;
        if (spec.clip == ClipRule::kPercentile) {
          std::vector<float> a;
          for (float t : v) a.push_back(std::fabs(t));
          std::sort(a.begin(), a.end());
          int64_t k = static_cast<int64_t>(std::ceil(spec.percentile / 100.0 * static_cast<double>(a.size()))) - 1;
          k = std::clamp<int64_t>(k, 0, static_cast<int64_t>(a.size()) - 1);
          c = a[static_cast<size_t>(k)];
        } else {
          for (float t : v) c = std::max(c, std::fabs(t));
        }
        // 2. scale
        if (c == 0.0f) {
          // "c = 0 gives s = 0 (e8m0, which has no zero: 2^-127)": s = 0 is the scale used
          // (and reported in `scales`); e8m0 stores code 0 (2^-127) for it.
          s = 0.0f;
          if (sf == Format::kE8m0) {
            scode = 0;
          } else if (sf == Format::kFp32) {
            scode = 0;
          } else {
            scode = encode(sf, 0.0f);
          }
        } else if (spec.tensor_scale) {
          const float y = (c / qmax) / gts;
          scode = encode(Format::kE4m3, y, {.saturate = true});
          const float sb = decode(Format::kE4m3, scode);
          if (sb == 0.0f) {
            r.ok = false;
            r.error = "block scale underflows";
            return r;
          }
          s = sb * gts;
        } else if (uses_mx_rule(spec)) {
          const int e = std::ilogb(c) - emax_elem(ef);
          s = std::ldexp(1.0f, e);
          scode = encode(Format::kE8m0, s);
        } else {
          float y = c / qmax;
          if (spec.scale_rule == ScaleRule::kPow2Ceil) y = pow2_ceil(y);
          s = round_sf(sf, y, &scode);
          if (!std::isfinite(s) || s == 0.0f) {
            r.ok = false;
            r.error = "scale not representable";
            return r;
          }
        }
      } else {
        // 3. affine
        float lo = 0.0f, hi = 0.0f;
        for (float t : v) {
          lo = std::min(lo, t);
          hi = std::max(hi, t);
        }
        const float y = (hi - lo) / (qmax - qmin);
        if (y == 0.0f) {
          s = 0.0f;
          if (sf == Format::kE8m0) {
            scode = 0;
          } else if (sf != Format::kFp32) {
            scode = encode(sf, 0.0f);
          }
          z = 0;
        } else {
          s = round_sf(sf, y, &scode);
          if (!std::isfinite(s) || s == 0.0f) {
            r.ok = false;
            r.error = "scale not representable";
            return r;
          }
          const double zz = static_cast<double>(qmin) - static_cast<double>(std::nearbyint(lo / s));
          z = static_cast<int32_t>(std::clamp(zz, static_cast<double>(qmin), static_cast<double>(qmax)));
        }
      }
      s_block[bi] = s;
      z_block[bi] = z;
      append_code(r.scale_codes, spec.tensor_scale ? Format::kE4m3 : sf, scode);

      // 4. elements, 5. dequantize
      for (int64_t i = r0; i < r1; ++i) {
        for (int64_t j = c0; j < c1; ++j) {
          const size_t idx = static_cast<size_t>(i * cols + j);
          float val = (s == 0.0f) ? 0.0f : x[idx] / s;
          if (spec.symmetric && is_int(ef) && traits(ef).is_signed) val = std::clamp(val, -qmax, qmax);
          if (!spec.symmetric) val = val + static_cast<float>(z);
          const uint32_t code =
              encode(ef, val, {.saturate = spec.saturate, .rounding = spec.rounding, .seed = spec.seed}, idx);
          r.raw[idx] = code;
          r.code[idx] = code_value(ef, code);
          r.deq[idx] = (decode(ef, code) - static_cast<float>(z)) * s;
        }
      }
    }
  }
  r.scales = s_block;
  if (!spec.symmetric) r.zero_points = z_block;

  // Storage layout of the codes: rows of row_bytes; 4-bit low nibble first; 3-bit a bit stream.
  r.packed.assign(static_cast<size_t>(rows * r.row_bytes), 0);
  const int bits = traits(ef).bits;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const uint32_t code = r.raw[static_cast<size_t>(i * cols + j)];
      uint8_t* row = r.packed.data() + i * r.row_bytes;
      if (bits == 4) {
        row[j / 2] |= static_cast<uint8_t>((code & 0xF) << (4 * (j & 1)));
      } else if (bits % 8 != 0) {  // 3/5/6 bits, a little-endian bit stream: bit t of element j is stream bit bits·j + t
        for (int t = 0; t < bits; ++t) {
          const int64_t bit = bits * j + t;
          if ((code >> t) & 1u) row[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
        }
      } else {
        for (int b = 0; b < bits / 8; ++b) row[j * (bits / 8) + b] = static_cast<uint8_t>(code >> (8 * b));
      }
    }
  }
  return r;
}

// Generic symmetric b-bit per-tensor quantizer (b = 2..8): qmax = 2^(b-1) - 1,
// s = max|x| / qmax (fp32), code = clamp(rne(x / s), -qmax, qmax), x_hat = code * s.
struct BitsResult {
  float scale = 0;
  std::vector<int32_t> code;
  std::vector<float> deq;
};
inline BitsResult quantize_sym_bits(const std::vector<float>& x, int b) {
  BitsResult r;
  const float qmax = static_cast<float>((1 << (b - 1)) - 1);
  float c = 0.0f;
  for (float v : x) c = std::max(c, std::fabs(v));
  r.scale = c / qmax;
  r.code.resize(x.size());
  r.deq.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const float v = r.scale == 0.0f ? 0.0f : std::clamp(x[i] / r.scale, -qmax, qmax);
    const int32_t q = static_cast<int32_t>(std::nearbyint(v));  // an integer code: no -0
    r.code[i] = q;
    r.deq[i] = static_cast<float>(q) * r.scale;
  }
  return r;
}

}  // namespace lowbit::naive
