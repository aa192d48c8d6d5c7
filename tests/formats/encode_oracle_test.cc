// encode() against an independent oracle: enumerate every finite code, sort the values,
// and pick the nearest with the spec's tie and overflow rules. The oracle never looks at
// exponent or mantissa arithmetic, so it checks the implementation's bit tricks from outside.
//
// Tie rule (formats.h): at an exact midpoint between lo < hi the result is lo when
// lo / (hi - lo) is an even integer, else hi; nf4 ties go to the even code. Overflow:
// RNE with unbounded exponent, where the value after max is max + (max - previous)
// (e8m0: 2 * max); a result beyond max gives inf (fp16 bf16 e5m2), NaN (e4m3), 0xFF (e8m0)
// or, saturating, ±max. e2m1, integers and nf4 always clamp.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "lowbit/formats.h"

namespace lowbit {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::string hex(uint32_t c) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%X", c);
  return buf;
}

// --- Spec-formula decode (same formula as decode_exhaustive_test, kept local on purpose). ---
struct Layout {
  int bits, exp_bits, man_bits, bias;
  bool sign;
  enum Special { kIeee, kE4m3Ocp, kE8m0Ocp, kNoSpecial } special;
};

Layout layout_of(Format f) {
  switch (f) {
    case Format::kFp16: return {16, 5, 10, 15, true, Layout::kIeee};
    case Format::kBf16: return {16, 8, 7, 127, true, Layout::kIeee};
    case Format::kE4m3: return {8, 4, 3, 7, true, Layout::kE4m3Ocp};
    case Format::kE5m2: return {8, 5, 2, 15, true, Layout::kIeee};
    case Format::kE8m0: return {8, 8, 0, 127, false, Layout::kE8m0Ocp};
    case Format::kE2m1: return {4, 2, 1, 1, true, Layout::kNoSpecial};
    default: return {0, 0, 0, 0, false, Layout::kNoSpecial};
  }
}

int bits_of(Format f) {
  switch (f) {
    case Format::kFp16: case Format::kBf16: return 16;
    case Format::kE2m1: case Format::kInt4: case Format::kUint4: case Format::kNf4: return 4;
    case Format::kInt3: case Format::kUint3: return 3;
    case Format::kInt5: case Format::kUint5: return 5;
    case Format::kInt6: case Format::kUint6: return 6;
    default: return 8;
  }
}

double spec_value(Format f, uint32_t code) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  switch (f) {
    case Format::kInt8: return static_cast<int8_t>(static_cast<uint8_t>(code));
    case Format::kUint8: return code & 0xFF;
    case Format::kInt4: return (code & 0xF) >= 8 ? static_cast<int>(code & 0xF) - 16 : static_cast<int>(code & 0xF);
    case Format::kUint4: return code & 0xF;
    case Format::kInt3: return (code & 0x7) >= 4 ? static_cast<int>(code & 0x7) - 8 : static_cast<int>(code & 0x7);
    case Format::kUint3: return code & 0x7;
    case Format::kInt5: return (code & 0x1F) >= 16 ? static_cast<int>(code & 0x1F) - 32 : static_cast<int>(code & 0x1F);
    case Format::kUint5: return code & 0x1F;
    case Format::kInt6: return (code & 0x3F) >= 32 ? static_cast<int>(code & 0x3F) - 64 : static_cast<int>(code & 0x3F);
    case Format::kUint6: return code & 0x3F;
    case Format::kNf4: return kNf4Levels[code & 0xF];
    default: break;
  }
  const Layout L = layout_of(f);
  if (L.special == Layout::kE8m0Ocp) return code == 0xFF ? nan : std::ldexp(1.0, static_cast<int>(code) - 127);
  const int s = L.sign ? (code >> (L.bits - 1)) & 1 : 0;
  const uint32_t e = (code >> L.man_bits) & ((1u << L.exp_bits) - 1);
  const uint32_t m = code & ((1u << L.man_bits) - 1);
  const uint32_t e_max = (1u << L.exp_bits) - 1;
  const double sign = s ? -1.0 : 1.0;
  if (L.special == Layout::kIeee && e == e_max) return m == 0 ? sign * INFINITY : nan;
  if (L.special == Layout::kE4m3Ocp && e == e_max && m == (1u << L.man_bits) - 1) return nan;
  if (e == 0) return sign * std::ldexp(static_cast<double>(m), 1 - L.bias - L.man_bits);
  return sign * std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -L.man_bits), static_cast<int>(e) - L.bias);
}

// --- The oracle. ---
class Oracle {
 public:
  explicit Oracle(Format f) : f_(f) {
    sign_magnitude_ = f == Format::kFp16 || f == Format::kBf16 || f == Format::kE4m3 ||
                      f == Format::kE5m2 || f == Format::kE2m1;
    sign_bit_ = sign_magnitude_ ? 1u << (bits_of(f) - 1) : 0;
    always_clamp_ = !(f == Format::kFp16 || f == Format::kBf16 || f == Format::kE4m3 ||
                      f == Format::kE5m2 || f == Format::kE8m0);
    const uint32_t n = 1u << bits_of(f);
    for (uint32_t c = 0; c < n; ++c) {
      if (sign_magnitude_ && (c & sign_bit_)) continue;  // the oracle works on |x|
      const double v = spec_value(f, c);
      if (!std::isfinite(v)) continue;
      table_.push_back({v, c});
    }
    std::sort(table_.begin(), table_.end(), [](const Entry& a, const Entry& b) { return a.v < b.v; });
    for (size_t i = 1; i < table_.size(); ++i) {
      if (table_[i].v == table_[i - 1].v) ADD_FAILURE() << "duplicate value in oracle table";
    }
    // What an overflowing non-saturating encode gives (sign is ORed in later).
    switch (f) {
      case Format::kFp16: overflow_code_ = 0x7C00; break;
      case Format::kBf16: overflow_code_ = 0x7F80; break;
      case Format::kE5m2: overflow_code_ = 0x7C; break;
      case Format::kE4m3: overflow_code_ = 0x7F; break;
      case Format::kE8m0: overflow_code_ = 0xFF; break;
      default: overflow_code_ = 0; break;
    }
    const double max = table_.back().v, prev = table_[table_.size() - 2].v;
    beyond_max_ = f == Format::kE8m0 ? 2 * max : max + (max - prev);
  }

  struct Entry {
    double v;
    uint32_t code;
  };
  const std::vector<Entry>& table() const { return table_; }
  bool sign_magnitude() const { return sign_magnitude_; }
  uint32_t sign_bit() const { return sign_bit_; }
  double beyond_max() const { return beyond_max_; }

  // Expected code for a non-NaN input.
  uint32_t encode(float xf, bool saturate) const {
    double x = xf;
    if (f_ == Format::kE8m0 && x <= 0) return 0xFF;  // no zero, no sign: NaN
    uint32_t sign = 0;
    if (sign_magnitude_) {
      sign = std::signbit(x) ? sign_bit_ : 0;
      x = std::fabs(x);
    }
    const Entry& lo_end = table_.front();
    const Entry& hi_end = table_.back();
    if (x <= lo_end.v) return lo_end.code | sign;  // clamp (ints, nf4, e8m0 below 2^-127) or exact 0
    if (x >= hi_end.v) {
      if (x == hi_end.v || always_clamp_) return hi_end.code | sign;
      const bool up = std::isinf(x) || pick_hi(hi_end.v, beyond_max_, x);
      if (!up) return hi_end.code | sign;
      return (saturate ? hi_end.code : overflow_code_) | sign;
    }
    // table_[i].v <= x < table_[i+1].v
    auto it = std::upper_bound(table_.begin(), table_.end(), x,
                               [](double a, const Entry& e) { return a < e.v; });
    const Entry& hi = *it;
    const Entry& lo = *(it - 1);
    if (x == lo.v) return lo.code | sign;
    const double mid = (lo.v + hi.v) / 2;  // exact in double for every table here
    if (x < mid) return lo.code | sign;
    if (x > mid) return hi.code | sign;
    if (f_ == Format::kNf4) return ((lo.code % 2 == 0) ? lo.code : hi.code) | sign;
    return (pick_hi(lo.v, hi.v, x) ? hi.code : lo.code) | sign;
  }

 private:
  // Round x in [lo, hi] to one of them; at the midpoint, lo iff lo/(hi-lo) is an even integer.
  static bool pick_hi(double lo, double hi, double x) {
    const double mid = (lo + hi) / 2;
    if (x != mid) return x > mid;
    const double r = lo / (hi - lo);
    const bool lo_even = r == std::floor(r) && std::fmod(r, 2.0) == 0;
    return !lo_even;
  }

  Format f_;
  bool sign_magnitude_ = false;
  bool always_clamp_ = false;
  uint32_t sign_bit_ = 0;
  uint32_t overflow_code_ = 0;
  double beyond_max_ = 0;
  std::vector<Entry> table_;
};

// Floats at or nearest to a double: itself if exact, else the two floats around it.
void push_float_or_neighbours(std::vector<float>& out, double v) {
  const float f = static_cast<float>(v);
  if (static_cast<double>(f) == v) {
    out.push_back(f);
    return;
  }
  const float below = static_cast<double>(f) < v ? f : std::nextafter(f, -kInf);
  const float above = static_cast<double>(f) > v ? f : std::nextafter(f, kInf);
  out.push_back(below);
  out.push_back(above);
}

void push_with_ulps(std::vector<float>& out, float x) {
  out.push_back(x);
  out.push_back(std::nextafter(x, -kInf));
  out.push_back(std::nextafter(x, kInf));
}

std::vector<float> sweep_inputs(Format f, const Oracle& o) {
  std::vector<float> base;
  const auto& t = o.table();
  for (const auto& e : t) push_float_or_neighbours(base, e.v);
  for (size_t i = 0; i + 1 < t.size(); ++i) push_float_or_neighbours(base, (t[i].v + t[i + 1].v) / 2);
  const double max = t.back().v;
  push_float_or_neighbours(base, (max + o.beyond_max()) / 2);  // the overflow midpoint
  push_float_or_neighbours(base, o.beyond_max());
  push_float_or_neighbours(base, 2 * o.beyond_max());
  const float fp32_specials[] = {0.0f,
                                 1e-45f,
                                 1e-40f,
                                 1.1754942e-38f,
                                 std::numeric_limits<float>::min(),
                                 std::numeric_limits<float>::denorm_min(),
                                 std::numeric_limits<float>::max(),
                                 kInf,
                                 static_cast<float>(traits(f).min_subnormal / 2),
                                 static_cast<float>(traits(f).min_subnormal / 4),
                                 static_cast<float>(traits(f).min_subnormal * 0.75),
                                 static_cast<float>(traits(f).min_normal),
                                 0.5f, 1.0f, 1.5f, 3.0f, 100.0f, 1e10f, 1e30f};
  for (float s : fp32_specials) base.push_back(s);

  std::vector<float> out;
  for (float b : base) {
    push_with_ulps(out, b);
    push_with_ulps(out, -b);
  }

  // Random floats, log-uniform over the whole float range and over the format's own range.
  std::mt19937_64 rng(0x5EED0000u + static_cast<uint32_t>(f));
  std::uniform_real_distribution<double> mant(1.0, 2.0);
  std::uniform_int_distribution<int> exp_all(-150, 128);
  const int lo_e = std::ilogb(traits(f).min_subnormal) - 3, hi_e = std::ilogb(traits(f).max_finite) + 3;
  std::uniform_int_distribution<int> exp_fmt(lo_e, hi_e);
  for (int i = 0; i < 100000; ++i) {
    const int e = (i % 2 == 0) ? exp_all(rng) : exp_fmt(rng);
    float x = static_cast<float>(std::ldexp(mant(rng), e));
    if (rng() & 1) x = -x;
    out.push_back(x);
  }
  return out;
}

class EncodeOracle : public ::testing::TestWithParam<Format> {};

TEST_P(EncodeOracle, MatchesOracleBitExact) {
  const Format f = GetParam();
  const Oracle oracle(f);
  const std::vector<float> inputs = sweep_inputs(f, oracle);
  int failures = 0;
  for (bool sat : {false, true}) {
    for (float x : inputs) {
      if (std::isnan(x)) continue;
      const uint32_t want = oracle.encode(x, sat);
      const uint32_t got = encode(f, x, {.saturate = sat});
      if (got != want && ++failures <= 30) {
        ADD_FAILURE() << format_name(f) << " encode(" << std::hexfloat << x << std::defaultfloat << " = "
                      << x << ", saturate=" << sat << ") = " << hex(got) << ", oracle " << hex(want);
      }
    }
  }
  EXPECT_EQ(failures, 0) << inputs.size() << " inputs x 2 modes";
}

TEST_P(EncodeOracle, NanInput) {
  const Format f = GetParam();
  const Oracle oracle(f);
  const uint32_t nan_bits[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFF800001u,
                               0x7FFFFFFFu, 0xFFFFFFFFu, 0x7FA00000u, 0xFFB12345u};
  const bool has_nan = f == Format::kFp16 || f == Format::kBf16 || f == Format::kE4m3 ||
                       f == Format::kE5m2 || f == Format::kE8m0;
  for (uint32_t b : nan_bits) {
    const float x = std::bit_cast<float>(b);
    for (bool sat : {false, true}) {
      const uint32_t got = encode(f, x, {.saturate = sat});
      if (!has_nan) {
        EXPECT_EQ(got, 0u) << format_name(f) << " NaN " << hex(b) << " -> " << hex(got);
      } else if (f == Format::kE8m0) {
        EXPECT_EQ(got, 0xFFu) << "e8m0 NaN " << hex(b);
      } else {
        EXPECT_TRUE(std::isnan(spec_value(f, got))) << format_name(f) << " NaN " << hex(b) << " -> " << hex(got);
        EXPECT_EQ(got & oracle.sign_bit(), (b >> 31) ? oracle.sign_bit() : 0u)
            << format_name(f) << " NaN sign lost: " << hex(b) << " -> " << hex(got);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllButFp32, EncodeOracle,
                         ::testing::Values(Format::kFp16, Format::kBf16, Format::kE4m3, Format::kE5m2,
                                           Format::kE8m0, Format::kE2m1, Format::kInt8, Format::kUint8,
                                           Format::kInt4, Format::kUint4, Format::kNf4, Format::kInt3,
                                           Format::kUint3, Format::kInt5, Format::kUint5, Format::kInt6, Format::kUint6),
                         [](const auto& info) { return std::string(format_name(info.param)); });

// The oracle itself, on the literal values the spec spells out.
TEST(EncodeOracleSelfCheck, SpecLiterals) {
  EXPECT_EQ(Oracle(Format::kE4m3).encode(464.0f, false), 0x7Eu);
  EXPECT_EQ(Oracle(Format::kE4m3).encode(std::nextafter(464.0f, kInf), false), 0x7Fu);
  EXPECT_EQ(Oracle(Format::kE5m2).encode(61440.0f, false), 0x7Cu);
  EXPECT_EQ(Oracle(Format::kE8m0).encode(1.5f, false), 0x80u);
  EXPECT_EQ(Oracle(Format::kInt8).encode(-2.5f, false), 0xFEu);
  EXPECT_EQ(Oracle(Format::kFp16).encode(65520.0f, false), 0x7C00u);
  EXPECT_EQ(Oracle(Format::kFp16).encode(65519.996f, false), 0x7BFFu);
}

// Literal spot checks from the spec, independent of the oracle.
TEST(EncodeLiterals, E4m3) {
  const Format f = Format::kE4m3;
  EXPECT_EQ(encode(f, 448.0f), 0x7Eu);
  EXPECT_EQ(encode(f, 464.0f), 0x7Eu);  // tie between 448 and 480; 448 has the even mantissa
  EXPECT_EQ(encode(f, 464.0001f), 0x7Fu);
  EXPECT_EQ(encode(f, 470.0f), 0x7Fu);
  EXPECT_EQ(encode(f, 470.0f, {.saturate = true}), 0x7Eu);
  EXPECT_EQ(encode(f, -470.0f), 0xFFu);
  EXPECT_EQ(encode(f, -470.0f, {.saturate = true}), 0xFEu);
  EXPECT_EQ(encode(f, kInf), 0x7Fu);
  EXPECT_EQ(encode(f, -kInf), 0xFFu);
  EXPECT_EQ(encode(f, kInf, {.saturate = true}), 0x7Eu);
  EXPECT_EQ(encode(f, -kInf, {.saturate = true}), 0xFEu);
  EXPECT_EQ(encode(f, 0.3f), 0x2Au);  // 0.3125 (header example)
  EXPECT_EQ(encode(f, -0.0f), 0x80u);
  EXPECT_EQ(encode(f, 0.0f), 0x00u);
  EXPECT_EQ(encode(f, 1e6f, {.saturate = true}), 0x7Eu);
  EXPECT_EQ(encode(f, 0.0009765625f), 0x00u);   // 2^-10: tie between 0 and 2^-9 -> 0
  EXPECT_EQ(encode(f, 0.0029296875f), 0x02u);   // 1.5 * 2^-9: tie between 1 and 2 (x 2^-9) -> 2
}

TEST(EncodeLiterals, E5m2) {
  const Format f = Format::kE5m2;
  EXPECT_EQ(encode(f, 57344.0f), 0x7Bu);
  EXPECT_EQ(encode(f, 61440.0f), 0x7Cu);  // tie between 57344 and 65536 goes to even (up) -> inf
  EXPECT_EQ(encode(f, 61439.0f), 0x7Bu);
  EXPECT_EQ(encode(f, 61439.996f), 0x7Bu);
  EXPECT_EQ(encode(f, 61440.0f, {.saturate = true}), 0x7Bu);
  EXPECT_EQ(encode(f, -61440.0f), 0xFCu);
  EXPECT_EQ(encode(f, kInf), 0x7Cu);
  EXPECT_EQ(encode(f, -kInf), 0xFCu);
  EXPECT_EQ(encode(f, kInf, {.saturate = true}), 0x7Bu);
  EXPECT_EQ(encode(f, -kInf, {.saturate = true}), 0xFBu);
}

TEST(EncodeLiterals, Fp16AndBf16) {
  EXPECT_EQ(encode(Format::kFp16, 65504.0f), 0x7BFFu);
  EXPECT_EQ(encode(Format::kFp16, 65520.0f), 0x7C00u);
  EXPECT_EQ(encode(Format::kFp16, 65520.0f, {.saturate = true}), 0x7BFFu);
  EXPECT_EQ(encode(Format::kFp16, 1.0f), 0x3C00u);
  EXPECT_EQ(encode(Format::kFp16, -2.0f), 0xC000u);
  EXPECT_EQ(encode(Format::kFp16, 1e-8f), 0x0000u);
  EXPECT_EQ(encode(Format::kBf16, 1.0f), 0x3F80u);
  EXPECT_EQ(encode(Format::kBf16, std::numeric_limits<float>::max()), 0x7F80u);
  EXPECT_EQ(encode(Format::kBf16, std::numeric_limits<float>::max(), {.saturate = true}), 0x7F7Fu);
  EXPECT_EQ(encode(Format::kBf16, std::bit_cast<float>(0x3F808000u)), 0x3F80u);  // tie -> even
  EXPECT_EQ(encode(Format::kBf16, std::bit_cast<float>(0x3F818000u)), 0x3F82u);  // tie -> even
}

TEST(EncodeLiterals, E8m0) {
  const Format f = Format::kE8m0;
  EXPECT_EQ(encode(f, 1.0f), 0x7Fu);
  EXPECT_EQ(encode(f, 1.5f), 0x80u);
  EXPECT_EQ(encode(f, 3.0f), 0x81u);
  EXPECT_EQ(encode(f, 1.4999999f), 0x7Fu);
  EXPECT_EQ(encode(f, 0.0f), 0xFFu);
  EXPECT_EQ(encode(f, -0.0f), 0xFFu);
  EXPECT_EQ(encode(f, -1.0f), 0xFFu);
  EXPECT_EQ(encode(f, 1e-40f), 0x00u);
  EXPECT_EQ(encode(f, kInf), 0xFFu);
  EXPECT_EQ(encode(f, kInf, {.saturate = true}), 0xFEu);
  EXPECT_EQ(encode(f, std::ldexp(1.0f, 127)), 0xFEu);
  EXPECT_EQ(encode(f, std::numeric_limits<float>::max()), 0xFFu);
  EXPECT_EQ(encode(f, std::numeric_limits<float>::max(), {.saturate = true}), 0xFEu);
}

TEST(EncodeLiterals, E2m1) {
  const Format f = Format::kE2m1;
  EXPECT_EQ(encode(f, 0.25f), 0x0u);
  EXPECT_EQ(encode(f, 0.75f), 0x2u);
  EXPECT_EQ(encode(f, 5.0f), 0x6u);   // tie between 4 and 6 -> 4
  EXPECT_EQ(encode(f, 2.5f), 0x4u);   // tie between 2 and 3 -> 2
  EXPECT_EQ(encode(f, 100.0f), 0x7u);
  EXPECT_EQ(encode(f, -100.0f), 0xFu);
  EXPECT_EQ(encode(f, kInf), 0x7u);
  EXPECT_EQ(encode(f, -kInf), 0xFu);
  EXPECT_EQ(encode(f, -0.0f), 0x8u);
}

TEST(EncodeLiterals, Integers) {
  EXPECT_EQ(encode(Format::kInt8, 2.5f), 2u);
  EXPECT_EQ(encode(Format::kInt8, 3.5f), 4u);
  EXPECT_EQ(encode(Format::kInt8, -2.5f), 0xFEu);
  EXPECT_EQ(encode(Format::kInt8, 300.0f), 127u);
  EXPECT_EQ(encode(Format::kInt8, -300.0f), 0x80u);
  EXPECT_EQ(encode(Format::kInt8, -kInf), 0x80u);
  EXPECT_EQ(encode(Format::kInt8, -0.0f), 0u);
  EXPECT_EQ(encode(Format::kUint8, -5.0f), 0u);
  EXPECT_EQ(encode(Format::kUint8, 255.5f), 255u);
  EXPECT_EQ(encode(Format::kInt4, -1.0f), 0xFu);
  EXPECT_EQ(encode(Format::kInt4, 9.0f), 0x7u);
  EXPECT_EQ(encode(Format::kInt4, -9.0f), 0x8u);
  EXPECT_EQ(encode(Format::kUint4, 14.5f), 14u);
  EXPECT_EQ(encode(Format::kUint4, 100.0f), 15u);
  // 3-bit integers: RNE ties to even, saturation at -4 / 3 and 0 / 7.
  EXPECT_EQ(encode(Format::kInt3, 2.5f), 2u);
  EXPECT_EQ(encode(Format::kInt3, 1.5f), 2u);
  EXPECT_EQ(encode(Format::kInt3, 3.5f), 3u);
  EXPECT_EQ(encode(Format::kInt3, -3.5f), 4u);   // -4 (even) = 0b100
  EXPECT_EQ(encode(Format::kInt3, -2.5f), 6u);   // -2 = 0b110
  EXPECT_EQ(encode(Format::kInt3, -100.0f), 4u);
  EXPECT_EQ(encode(Format::kUint3, 6.5f), 6u);
  EXPECT_EQ(encode(Format::kUint3, 9.0f), 7u);
  EXPECT_EQ(encode(Format::kUint3, -1.0f), 0u);
  EXPECT_EQ(decode(Format::kInt3, 4u), -4.0f);
  EXPECT_EQ(decode(Format::kInt3, 3u), 3.0f);
  EXPECT_EQ(encode(Format::kInt5, 14.5f), 14u);  // ties to even
  EXPECT_EQ(encode(Format::kInt5, 15.5f), 15u);  // clamped to 15 first
  EXPECT_EQ(encode(Format::kInt5, -15.5f), 0x10u);  // -16 (even) = 0b10000
  EXPECT_EQ(encode(Format::kInt5, -100.0f), 0x10u);
  EXPECT_EQ(encode(Format::kUint5, 30.5f), 30u);
  EXPECT_EQ(encode(Format::kUint5, 40.0f), 31u);
  EXPECT_EQ(encode(Format::kInt6, -31.5f), 0x20u);  // -32 = 0b100000
  EXPECT_EQ(encode(Format::kInt6, 30.5f), 30u);
  EXPECT_EQ(encode(Format::kUint6, 62.5f), 62u);
  EXPECT_EQ(encode(Format::kUint6, 63.5f), 63u);
  EXPECT_EQ(decode(Format::kInt5, 0x10u), -16.0f);
  EXPECT_EQ(decode(Format::kInt6, 0x3Fu), -1.0f);
  EXPECT_EQ(decode(Format::kUint6, 0x3Fu), 63.0f);
}

TEST(EncodeLiterals, Nf4) {
  EXPECT_EQ(encode(Format::kNf4, 0.0f), 7u);
  EXPECT_EQ(encode(Format::kNf4, -0.0f), 7u);
  EXPECT_EQ(encode(Format::kNf4, -1e-30f), 7u);  // nearest level is 0, not -0.091
  EXPECT_EQ(encode(Format::kNf4, -0.04f), 7u);
  EXPECT_EQ(encode(Format::kNf4, -0.046f), 6u);  // past the midpoint -0.0455
  EXPECT_EQ(encode(Format::kNf4, 1.0f), 15u);
  EXPECT_EQ(encode(Format::kNf4, -1.0f), 0u);
  EXPECT_EQ(encode(Format::kNf4, 5.0f), 15u);
  EXPECT_EQ(encode(Format::kNf4, -5.0f), 0u);
  EXPECT_EQ(encode(Format::kNf4, 0.5f), 12u);   // 0.4407 is 0.0593 away, 0.5626 is 0.0626
  EXPECT_EQ(encode(Format::kNf4, 0.51f), 13u);
}

}  // namespace
}  // namespace lowbit
