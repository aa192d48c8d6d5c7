// Every code of every format of at most 16 bits, decoded by the implementation, against
// the spec formula written out again here (sign, exponent field, mantissa field), plus the
// traits table against the enumerated values and the encode(decode(c)) == c round trip.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>

#include "lowbit/formats.h"

namespace lowbit {
namespace {

constexpr Format kAllFormats[] = {Format::kFp32, Format::kFp16, Format::kBf16,  Format::kE4m3,
                                  Format::kE5m2, Format::kE8m0, Format::kE2m1,  Format::kInt8,
                                  Format::kUint8, Format::kInt4, Format::kUint4, Format::kNf4,
                                  Format::kInt3,  Format::kUint3, Format::kInt5, Format::kUint5, Format::kInt6, Format::kUint6};

// Formats whose code space is small enough to enumerate (<= 16 bits).
constexpr Format kSmallFormats[] = {Format::kFp16, Format::kBf16, Format::kE4m3, Format::kE5m2,
                                    Format::kE8m0, Format::kE2m1, Format::kInt8, Format::kUint8,
                                    Format::kInt4, Format::kUint4, Format::kNf4, Format::kInt3, Format::kUint3,
                                    Format::kInt5, Format::kUint5, Format::kInt6, Format::kUint6};

// Per-format layout, written from the spec, not read from traits().
struct Layout {
  int bits, exp_bits, man_bits, bias;
  bool sign;  // sign-magnitude sign bit at bits-1
  enum Special { kIeee, kE4m3Ocp, kE8m0Ocp, kNoSpecial } special;
};

Layout layout_of(Format f) {
  switch (f) {
    case Format::kFp32: return {32, 8, 23, 127, true, Layout::kIeee};
    case Format::kFp16: return {16, 5, 10, 15, true, Layout::kIeee};
    case Format::kBf16: return {16, 8, 7, 127, true, Layout::kIeee};
    case Format::kE4m3: return {8, 4, 3, 7, true, Layout::kE4m3Ocp};
    case Format::kE5m2: return {8, 5, 2, 15, true, Layout::kIeee};
    case Format::kE8m0: return {8, 8, 0, 127, false, Layout::kE8m0Ocp};
    case Format::kE2m1: return {4, 2, 1, 1, true, Layout::kNoSpecial};
    default: return {0, 0, 0, 0, false, Layout::kNoSpecial};
  }
}

bool is_float_format(Format f) {
  return f == Format::kFp32 || f == Format::kFp16 || f == Format::kBf16 || f == Format::kE4m3 ||
         f == Format::kE5m2 || f == Format::kE8m0 || f == Format::kE2m1;
}

// The value of `code` by the spec formula, in double (exact for every format here).
double spec_value(Format f, uint32_t code) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  switch (f) {
    case Format::kInt8: return static_cast<int8_t>(static_cast<uint8_t>(code));
    case Format::kUint8: return code & 0xFF;
    case Format::kInt4: {
      const int v = code & 0xF;
      return v >= 8 ? v - 16 : v;
    }
    case Format::kUint4: return code & 0xF;
    case Format::kNf4: return kNf4Levels[code & 0xF];
    case Format::kInt3: {
      const int v = code & 0x7;
      return v >= 4 ? v - 8 : v;
    }
    case Format::kUint3: return code & 0x7;
    case Format::kInt5: {
      const int v = code & 0x1F;
      return v >= 16 ? v - 32 : v;
    }
    case Format::kUint5: return code & 0x1F;
    case Format::kInt6: {
      const int v = code & 0x3F;
      return v >= 32 ? v - 64 : v;
    }
    case Format::kUint6: return code & 0x3F;
    default: break;
  }
  const Layout L = layout_of(f);
  if (L.special == Layout::kE8m0Ocp) return code == 0xFF ? nan : std::ldexp(1.0, static_cast<int>(code) - 127);
  const int s = L.sign ? (code >> (L.bits - 1)) & 1 : 0;
  const uint32_t e = (code >> L.man_bits) & ((1u << L.exp_bits) - 1);
  const uint32_t m = code & ((1u << L.man_bits) - 1);
  const uint32_t e_max = (1u << L.exp_bits) - 1;
  const double sign = s ? -1.0 : 1.0;
  if (L.special == Layout::kIeee && e == e_max) return m == 0 ? sign * inf : nan;
  if (L.special == Layout::kE4m3Ocp && e == e_max && m == (1u << L.man_bits) - 1) return nan;
  if (e == 0) return sign * std::ldexp(static_cast<double>(m), 1 - L.bias - L.man_bits);
  return sign * std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -L.man_bits),
                           static_cast<int>(e) - L.bias);
}

std::string hex(uint32_t c) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%X", c);
  return buf;
}

// Bit-exact float comparison: both NaN, or identical bits (so zeros must agree in sign).
bool same_float(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

bool is_finite_code(Format f, uint32_t c) { return std::isfinite(spec_value(f, c)); }

class DecodeExhaustive : public ::testing::TestWithParam<Format> {};

TEST_P(DecodeExhaustive, EveryCodeMatchesSpecFormula) {
  const Format f = GetParam();
  int failures = 0;
  for (uint32_t c = 0; c < num_codes(f); ++c) {
    const double want_d = spec_value(f, c);
    const float want = static_cast<float>(want_d);
    ASSERT_TRUE(std::isnan(want_d) || static_cast<double>(want) == want_d)
        << "oracle value not exact in float for " << format_name(f) << " " << hex(c);
    const float got = decode(f, c);
    if (!same_float(got, want) && ++failures <= 20) {
      ADD_FAILURE() << format_name(f) << " decode(" << hex(c) << ") = " << got << " (bits "
                    << hex(std::bit_cast<uint32_t>(got)) << "), spec " << want << " (bits "
                    << hex(std::bit_cast<uint32_t>(want)) << ")";
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(DecodeExhaustive, TraitsAgreeWithEnumeratedValues) {
  const Format f = GetParam();
  const FormatTraits& t = traits(f);
  EXPECT_EQ(t.format, f);
  EXPECT_EQ(num_codes(f), uint64_t{1} << t.bits);

  double max_v = -INFINITY, min_v = INFINITY, min_pos = INFINITY, min_pos_normal = INFINITY;
  bool any_nan = false, any_inf = false, any_neg_zero = false;
  for (uint32_t c = 0; c < num_codes(f); ++c) {
    const double v = spec_value(f, c);
    if (std::isnan(v)) { any_nan = true; continue; }
    if (std::isinf(v)) { any_inf = true; continue; }
    if (v == 0 && std::signbit(v)) any_neg_zero = true;
    max_v = std::max(max_v, v);
    min_v = std::min(min_v, v);
    if (v > 0) {
      min_pos = std::min(min_pos, v);
      const Layout L = layout_of(f);
      // "Normal" for a float format with subnormals means a nonzero exponent field;
      // formats without subnormals (e8m0, integers, nf4) count every positive value.
      const bool normal = !is_float_format(f) || f == Format::kE8m0 ||
                          ((c >> L.man_bits) & ((1u << L.exp_bits) - 1)) != 0;
      if (normal) min_pos_normal = std::min(min_pos_normal, v);
    }
  }
  EXPECT_EQ(t.max_finite, max_v) << format_name(f);
  EXPECT_EQ(t.lowest, min_v) << format_name(f);
  EXPECT_EQ(t.min_subnormal, min_pos) << format_name(f);
  EXPECT_EQ(t.min_normal, min_pos_normal) << format_name(f);
  EXPECT_EQ(t.has_inf, any_inf) << format_name(f);
  EXPECT_EQ(t.nan != NanStyle::kNone, any_nan) << format_name(f);
  EXPECT_EQ(t.has_neg_zero, any_neg_zero) << format_name(f);
  EXPECT_LT(t.max_code, num_codes(f));
  EXPECT_EQ(decode(f, t.max_code), static_cast<float>(max_v)) << format_name(f);
  EXPECT_EQ(spec_value(f, t.max_code), max_v) << format_name(f);
  const Layout L = layout_of(f);
  if (is_float_format(f)) {
    EXPECT_EQ(t.kind, FormatKind::kFloat);
    EXPECT_EQ(t.exp_bits, L.exp_bits);
    EXPECT_EQ(t.man_bits, L.man_bits);
    EXPECT_EQ(t.bias, L.bias);
    EXPECT_EQ(t.sign_mask, L.sign ? 1u << (L.bits - 1) : 0u);
    EXPECT_EQ(t.is_signed, L.sign);
  } else {
    EXPECT_EQ(t.sign_mask, 0u);
    EXPECT_EQ(t.is_signed, min_v < 0);
  }
}

TEST_P(DecodeExhaustive, CodeIsNanAndInfAgreeWithValues) {
  const Format f = GetParam();
  for (uint32_t c = 0; c < num_codes(f); ++c) {
    const double v = spec_value(f, c);
    ASSERT_EQ(code_is_nan(f, c), std::isnan(v)) << format_name(f) << " " << hex(c);
    ASSERT_EQ(code_is_inf(f, c), std::isinf(v)) << format_name(f) << " " << hex(c);
  }
}

// encode(decode(c)) == c for every finite code: nearest-even, saturating, and stochastic
// (an exactly representable value has only itself as a neighbour).
TEST_P(DecodeExhaustive, FiniteCodesReencodeToThemselves) {
  const Format f = GetParam();
  const EncodeOptions modes[] = {
      {.saturate = false},
      {.saturate = true},
      {.saturate = false, .rounding = Rounding::kStochastic, .seed = 12345},
      {.saturate = true, .rounding = Rounding::kStochastic, .seed = 0xDEADBEEFull},
  };
  int failures = 0;
  for (uint32_t c = 0; c < num_codes(f); ++c) {
    if (!is_finite_code(f, c)) continue;
    const float x = static_cast<float>(spec_value(f, c));
    for (const EncodeOptions& opt : modes) {
      for (uint64_t index : {uint64_t{0}, uint64_t{c}, uint64_t{987654321}}) {
        const uint32_t got = encode(f, x, opt, index);
        if (got != c && ++failures <= 20) {
          ADD_FAILURE() << format_name(f) << " encode(" << x << ") = " << hex(got) << ", want "
                        << hex(c) << " (saturate=" << opt.saturate << ", stochastic="
                        << (opt.rounding == Rounding::kStochastic) << ", index=" << index << ")";
        }
      }
    }
  }
  EXPECT_EQ(failures, 0);
}

// Inf codes: kept when not saturating, clamped to ±max when saturating. NaN codes: a NaN of
// the same sign comes back (e8m0: 0xFF).
TEST_P(DecodeExhaustive, SpecialCodesReencode) {
  const Format f = GetParam();
  const FormatTraits& t = traits(f);
  for (uint32_t c = 0; c < num_codes(f); ++c) {
    const double v = spec_value(f, c);
    const uint32_t sign = c & t.sign_mask;
    if (std::isinf(v)) {
      const float x = static_cast<float>(v);
      EXPECT_EQ(encode(f, x), c) << format_name(f) << " " << hex(c);
      EXPECT_EQ(encode(f, x, {.saturate = true}), t.max_code | sign) << format_name(f) << " " << hex(c);
    } else if (std::isnan(v)) {
      const float x = decode(f, c);
      ASSERT_TRUE(std::isnan(x)) << format_name(f) << " " << hex(c);
      for (bool sat : {false, true}) {
        const uint32_t got = encode(f, x, {.saturate = sat});
        EXPECT_TRUE(std::isnan(spec_value(f, got)))
            << format_name(f) << " decode(" << hex(c) << ") re-encodes to non-NaN " << hex(got);
        EXPECT_EQ(got & t.sign_mask, sign) << format_name(f) << " " << hex(c);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllSmall, DecodeExhaustive, ::testing::ValuesIn(kSmallFormats),
                         [](const auto& info) { return std::string(format_name(info.param)); });

TEST(DecodeFp32, TraitsMatchBinary32) {
  const FormatTraits& t = traits(Format::kFp32);
  EXPECT_EQ(t.bits, 32);
  EXPECT_EQ(t.max_finite, std::numeric_limits<float>::max());
  EXPECT_EQ(t.lowest, std::numeric_limits<float>::lowest());
  EXPECT_EQ(t.min_normal, std::numeric_limits<float>::min());
  EXPECT_EQ(t.min_subnormal, std::numeric_limits<float>::denorm_min());
  EXPECT_EQ(t.max_code, 0x7F7FFFFFu);
  EXPECT_EQ(t.sign_mask, 0x80000000u);
  EXPECT_EQ(decode(Format::kFp32, t.max_code), std::numeric_limits<float>::max());
}

TEST(DecodeFp32, RandomBitPatternsRoundTrip) {
  std::mt19937_64 rng(20240601);
  std::vector<uint32_t> patterns = {0x00000000u, 0x80000000u, 0x00000001u, 0x80000001u,
                                    0x007FFFFFu, 0x00800000u, 0x7F7FFFFFu, 0xFF7FFFFFu,
                                    0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00000u,
                                    0x7F800001u, 0xFF800001u, 0x7FBFFFFFu, 0x3F800000u};
  for (int i = 0; i < 4000; ++i) patterns.push_back(static_cast<uint32_t>(rng()));
  for (uint32_t u : patterns) {
    const float x = std::bit_cast<float>(u);
    const double v = spec_value(Format::kFp32, u);
    const float d = decode(Format::kFp32, u);
    ASSERT_EQ(code_is_nan(Format::kFp32, u), std::isnan(x)) << hex(u);
    ASSERT_EQ(code_is_inf(Format::kFp32, u), std::isinf(x)) << hex(u);
    if (std::isnan(x)) {
      ASSERT_TRUE(std::isnan(v)) << hex(u);
      ASSERT_TRUE(std::isnan(d)) << hex(u);
      for (bool sat : {false, true}) {
        const uint32_t c = encode(Format::kFp32, x, {.saturate = sat});
        ASSERT_TRUE(std::isnan(std::bit_cast<float>(c))) << hex(u) << " -> " << hex(c);
        ASSERT_EQ(c & 0x80000000u, u & 0x80000000u) << "NaN sign lost: " << hex(u) << " -> " << hex(c);
      }
      continue;
    }
    ASSERT_EQ(std::bit_cast<uint32_t>(static_cast<float>(v)), u) << "oracle self-check " << hex(u);
    ASSERT_EQ(std::bit_cast<uint32_t>(d), u) << "decode " << hex(u);
    ASSERT_EQ(encode(Format::kFp32, x), u) << "encode " << hex(u);
    ASSERT_EQ(encode(Format::kFp32, x, {.rounding = Rounding::kStochastic, .seed = 7}, u), u) << hex(u);
    if (std::isinf(x)) {
      // "Saturating clamps overflow and ±inf to ±max finite" (formats.h), fp32 included.
      ASSERT_EQ(encode(Format::kFp32, x, {.saturate = true}), 0x7F7FFFFFu | (u & 0x80000000u)) << hex(u);
    } else {
      ASSERT_EQ(encode(Format::kFp32, x, {.saturate = true}), u) << "encode saturating " << hex(u);
    }
  }
}

// Names, bit widths and code counts: the table the rest of this file walks.
TEST(FormatTable, NamesAndWidths) {
  const char* names[] = {"fp32", "fp16", "bf16", "e4m3", "e5m2", "e8m0",
                         "e2m1", "int8", "uint8", "int4", "uint4", "nf4", "int3", "uint3",
                         "int5", "uint5", "int6", "uint6"};
  const int bits[] = {32, 16, 16, 8, 8, 8, 4, 8, 8, 4, 4, 4, 3, 3, 5, 5, 6, 6};
  static_assert(std::size(names) == kNumFormats && std::size(bits) == kNumFormats);
  for (int i = 0; i < kNumFormats; ++i) {
    const Format f = kAllFormats[i];
    EXPECT_EQ(format_name(f), names[i]);
    EXPECT_EQ(traits(f).bits, bits[i]) << names[i];
  }
}

}  // namespace
}  // namespace lowbit
