// The scalar reference codec. Written for clarity, not speed: values are handled in
// double (exact for every fp32 input), rounding is done on the integer multiple of the
// target's quantum. The SIMD converters in x86/ use bit tricks instead and are tested
// against this file.
#include "lowbit/formats.h"

#include <bit>
#include <cmath>
#include <string>

namespace lowbit {
namespace {

constexpr uint32_t low_mask(int bits) { return bits >= 32 ? 0xFFFFFFFFu : ((1u << bits) - 1u); }

// Chooses between floor(m) and floor(m) + 1 for m >= 0. `floor_is_odd` says whether the
// lower neighbour counts as odd for ties-to-even.
bool round_up(double m, bool floor_is_odd, const EncodeOptions& opt, uint64_t index) {
  const double frac = m - std::floor(m);
  if (frac == 0.0) return false;
  if (opt.rounding == Rounding::kStochastic) {
    const double u = static_cast<double>(stochastic_bits(opt.seed, index)) * 0x1p-32;
    return u < frac;  // P(up) = frac exactly, to 2^-32
  }
  if (frac != 0.5) return frac > 0.5;
  return floor_is_odd;
}

// Sign / exponent / mantissa formats (fp16 bf16 e4m3 e5m2 e2m1; e8m0 handled apart).
uint32_t encode_float(const FormatTraits& t, float x, const EncodeOptions& opt, uint64_t index) {
  const int M = t.man_bits;
  const uint32_t sign = std::signbit(x) ? t.sign_mask : 0u;
  if (std::isnan(x)) {
    switch (t.nan) {
      case NanStyle::kNone: return 0;
      case NanStyle::kMantissaOnes: return sign | (t.sign_mask - 1);  // S.1111.111
      case NanStyle::kIeee: {
        // Quiet NaN: exponent all ones, quiet bit set, top payload bits kept.
        const uint32_t payload = (std::bit_cast<uint32_t>(x) & 0x7FFFFFu) >> (23 - M);
        const uint32_t exp_ones = low_mask(t.exp_bits) << M;
        return sign | exp_ones | (1u << (M - 1)) | payload;
      }
      case NanStyle::kAllOnes: return 0xFFu;
    }
  }
  const uint32_t inf_code = t.has_inf ? (low_mask(t.exp_bits) << M) : 0u;
  auto overflow = [&]() -> uint32_t {
    if (opt.saturate || (!t.has_inf && t.nan == NanStyle::kNone)) return sign | t.max_code;
    if (t.has_inf) return sign | inf_code;
    return sign | (t.sign_mask - 1);  // e4m3: NaN
  };
  const double ax = std::fabs(static_cast<double>(x));
  if (std::isinf(ax)) return overflow();
  if (ax == 0.0) return sign;

  const int emin = 1 - t.bias;
  int e = std::ilogb(ax);
  if (e < emin) e = emin;
  const double q = std::ldexp(1.0, e - M);  // quantum in this binade
  const double m = ax / q;                  // exact: a power-of-two rescale
  const double f = std::floor(m);
  const auto compose = [&](double r, int exp) -> uint64_t {
    const double lead = std::ldexp(1.0, M);
    if (r >= 2 * lead) { r /= 2; ++exp; }      // carry into the next binade
    if (r < lead) return static_cast<uint64_t>(r);  // subnormal (exp == emin)
    return (static_cast<uint64_t>(exp + t.bias) << M) | static_cast<uint64_t>(r - lead);
  };
  const uint64_t code_floor = compose(f, e);
  const bool up = round_up(m, (code_floor & 1u) != 0, opt, index);
  const uint64_t code = up ? compose(f + 1, e) : code_floor;
  if (code > t.max_code) return overflow();
  return sign | static_cast<uint32_t>(code);
}

uint32_t encode_e8m0(float x, const EncodeOptions& opt, uint64_t index) {
  constexpr uint32_t kNan = 0xFF, kMax = 0xFE;
  if (std::isnan(x) || x <= 0.0f) return kNan;  // no zero, no sign
  if (std::isinf(x)) return opt.saturate ? kMax : kNan;
  const double ax = x;
  const int e = std::ilogb(ax);
  if (e < -127) return 0;  // below 2^-127: the smallest code is the nearest
  const double m = ax / std::ldexp(1.0, e);  // in [1, 2)
  // No mantissa bits: the lower neighbour 2^e is 1 quantum above zero, an odd multiple,
  // so a tie (m == 1.5) rounds up, as ml_dtypes does.
  const int code = e + 127 + (round_up(m, /*floor_is_odd=*/true, opt, index) ? 1 : 0);
  if (code > static_cast<int>(kMax)) return opt.saturate ? kMax : kNan;
  return static_cast<uint32_t>(code);
}

uint32_t encode_integer(const FormatTraits& t, float x, const EncodeOptions& opt, uint64_t index) {
  if (std::isnan(x)) return 0;
  const double v = std::fmin(std::fmax(static_cast<double>(x), t.lowest), t.max_finite);
  const double f = std::floor(v);
  const bool odd = std::fmod(std::fabs(f), 2.0) == 1.0;
  const double r = round_up(v, odd, opt, index) ? f + 1 : f;
  return static_cast<uint32_t>(static_cast<int64_t>(r)) & low_mask(t.bits);
}

uint32_t encode_nf4(float x, const EncodeOptions& opt, uint64_t index) {
  if (std::isnan(x)) return 0;
  const double v = std::fmin(std::fmax(static_cast<double>(x), -1.0), 1.0);
  uint32_t lo = 0;
  while (lo + 1 < kNf4Levels.size() && kNf4Levels[lo + 1] <= v) ++lo;
  if (kNf4Levels[lo] == v) return lo;
  const double a = kNf4Levels[lo], b = kNf4Levels[lo + 1];
  // Distances, not a ratio: (v - a) / (b - a) rounds to 1.0 for v a hair below b.
  const double below = v - a, above = b - v;
  bool up;
  if (opt.rounding == Rounding::kStochastic) {
    up = static_cast<double>(stochastic_bits(opt.seed, index)) * 0x1p-32 * (b - a) < below;
  } else {
    up = below > above || (below == above && (lo & 1u) != 0);
  }
  return lo + (up ? 1u : 0u);
}

// fp32 quiet NaN with the given sign and payload (the quiet bit is always set).
float quiet_nan(bool neg, uint32_t payload) {
  return std::bit_cast<float>((neg ? 0x80000000u : 0u) | 0x7FC00000u | payload);
}

float decode_float(const FormatTraits& t, uint32_t code) {
  const int M = t.man_bits;
  const bool neg = (code & t.sign_mask) != 0;
  const uint32_t mag = code & ~t.sign_mask & low_mask(t.bits);
  const uint32_t exp = mag >> M;
  const uint32_t man = mag & low_mask(M);
  const uint32_t exp_ones = low_mask(t.exp_bits);
  double v;
  if (t.nan == NanStyle::kMantissaOnes && exp == exp_ones && man == low_mask(M)) {
    return quiet_nan(neg, 0);
  } else if ((t.has_inf || t.nan == NanStyle::kIeee) && exp == exp_ones) {
    if (man != 0) return quiet_nan(neg, man << (23 - M));  // payload kept, as F16C does
    v = INFINITY;
  } else if (exp == 0) {
    v = std::ldexp(static_cast<double>(man), 1 - t.bias - M);
  } else {
    v = std::ldexp(static_cast<double>(man) + std::ldexp(1.0, M), static_cast<int>(exp) - t.bias - M);
  }
  return static_cast<float>(neg ? -v : v);
}

}  // namespace

uint32_t stochastic_bits(uint64_t seed, uint64_t index) {
  // SplitMix64 (Steele, Lea, Flood 2014): output i of the stream is mix(state0 + (i+1)*gamma).
  constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
  auto mix = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  const uint64_t state0 = mix(seed);  // decorrelate nearby seeds
  return static_cast<uint32_t>(mix(state0 + (index + 1) * kGamma) >> 32);
}

Result<Format> parse_format(std::string_view name) {
  for (const FormatTraits& t : kFormatTraits) {
    if (t.name == name) return t.format;
  }
  std::string valid;
  for (const FormatTraits& t : kFormatTraits) {
    if (!valid.empty()) valid += ", ";
    valid += t.name;
  }
  return InvalidArgument("unknown format '" + std::string(name) + "' (expected one of: " + valid + ")");
}

uint32_t encode(Format f, float x, const EncodeOptions& opt, uint64_t index) {
  const FormatTraits& t = traits(f);
  switch (f) {
    case Format::kFp32:  // identity, except that saturating maps ±inf to ±max finite
      if (opt.saturate && std::isinf(x)) return (std::signbit(x) ? t.sign_mask : 0u) | t.max_code;
      return std::bit_cast<uint32_t>(x);
    case Format::kE8m0: return encode_e8m0(x, opt, index);
    case Format::kNf4: return encode_nf4(x, opt, index);
    default: break;
  }
  if (t.kind == FormatKind::kInteger) return encode_integer(t, x, opt, index);
  return encode_float(t, x, opt, index);
}

float decode(Format f, uint32_t code) {
  const FormatTraits& t = traits(f);
  code &= low_mask(t.bits);
  switch (f) {
    case Format::kFp32: return std::bit_cast<float>(code);
    case Format::kE8m0: return code == 0xFF ? quiet_nan(false, 0) : static_cast<float>(std::ldexp(1.0, static_cast<int>(code) - 127));
    case Format::kNf4: return kNf4Levels[code];
    default: break;
  }
  if (t.kind == FormatKind::kInteger) {
    if (!t.is_signed) return static_cast<float>(code);
    const int32_t shift = 32 - t.bits;  // sign-extend the low `bits` bits
    return static_cast<float>(static_cast<int32_t>(code << shift) >> shift);
  }
  return decode_float(t, code);
}

bool code_is_nan(Format f, uint32_t code) { return std::isnan(decode(f, code)); }
bool code_is_inf(Format f, uint32_t code) { return std::isinf(decode(f, code)); }

}  // namespace lowbit
