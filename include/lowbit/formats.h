// Number formats, bit-exact: one constexpr traits table and the scalar encode/decode
// for every format lowbit stores (fp32 fp16 bf16 e4m3 e5m2 e8m0 e2m1 int8 uint8 int4
// uint4 nf4). Layouts and rounding rules are documented in docs/formats.md.
//
//   const FormatTraits& t = traits(Format::kE4m3);   // t.max_finite == 448
//   uint32_t c = encode(Format::kE4m3, 0.3f);         // round-to-nearest-even, non-saturating
//   float v = decode(Format::kE4m3, c);               // 0.3125
//   uint32_t s = encode(Format::kE4m3, 1e6f, {.saturate = true});   // 0x7E (448)
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>

#include "lowbit/status.h"

namespace lowbit {

enum class Format : uint8_t {
  kFp32, kFp16, kBf16, kE4m3, kE5m2, kE8m0, kE2m1, kInt8, kUint8, kInt4, kUint4, kNf4, kInt3, kUint3,
  kInt5, kUint5, kInt6, kUint6,
};
inline constexpr int kNumFormats = 18;

enum class FormatKind : uint8_t {
  kFloat,    // sign / exponent / mantissa fields (IEEE-like or OCP)
  kInteger,  // two's complement (signed) or plain binary (unsigned)
  kLookup,   // a table of levels indexed by the code (nf4)
};

enum class NanStyle : uint8_t {
  kNone,         // no NaN encoding (e2m1, integers, nf4)
  kIeee,         // exponent all ones, mantissa != 0 (fp32 fp16 bf16 e5m2)
  kMantissaOnes, // only S.1111.111 (OCP E4M3)
  kAllOnes,      // only 0xFF (OCP E8M0)
};

struct FormatTraits {
  Format format;
  std::string_view name;
  int bits;             // storage bits per element (4-bit: two per byte; 3/5/6-bit: a little-endian bit stream)
  FormatKind kind;
  bool is_signed;
  int exp_bits;         // 0 for integers and lookups
  int man_bits;         // stored mantissa bits; for integers the value bits
  int bias;             // exponent bias; 0 for integers and lookups
  bool has_subnormals;
  bool has_inf;
  NanStyle nan;
  bool has_neg_zero;
  double max_finite;    // largest finite value
  double lowest;        // most negative finite value (smallest for unsigned formats)
  double min_normal;    // smallest positive normal (integers: 1)
  double min_subnormal; // smallest positive value
  uint32_t max_code;    // code of max_finite
  uint32_t sign_mask;   // code bit that holds the sign (0 if none or two's complement)
  std::string_view nan_encodings;  // human-readable, for tables and docs
  std::string_view source;         // where the definition comes from
};

// The 16 NF4 levels of QLoRA (Dettmers et al. 2023, bitsandbytes), as float32, code order.
inline constexpr std::array<float, 16> kNf4Levels = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

// clang-format off
inline constexpr std::array<FormatTraits, kNumFormats> kFormatTraits = {{
  // format        name    bits kind                 sgn  e  m   bias  sub   inf    nan                      -0     max                      lowest                    min_normal               min_subnormal            max_code    sign_mask
  {Format::kFp32, "fp32",  32, FormatKind::kFloat,   true, 8, 23, 127, true,  true,  NanStyle::kIeee,         true,  3.4028234663852886e38,   -3.4028234663852886e38,   1.1754943508222875e-38,  1.401298464324817e-45,   0x7F7FFFFFu, 0x80000000u,
   "S.11111111.m (m != 0)", "IEEE 754 binary32"},
  {Format::kFp16, "fp16",  16, FormatKind::kFloat,   true, 5, 10, 15,  true,  true,  NanStyle::kIeee,         true,  65504.0,                 -65504.0,                 6.103515625e-05,         5.9604644775390625e-08,  0x7BFFu,     0x8000u,
   "S.11111.m (m != 0)", "IEEE 754 binary16"},
  {Format::kBf16, "bf16",  16, FormatKind::kFloat,   true, 8, 7,  127, true,  true,  NanStyle::kIeee,         true,  3.3895313892515355e38,   -3.3895313892515355e38,   1.1754943508222875e-38,  9.183549615799121e-41,   0x7F7Fu,     0x8000u,
   "S.11111111.m (m != 0)", "bfloat16: top half of binary32"},
  {Format::kE4m3, "e4m3",  8,  FormatKind::kFloat,   true, 4, 3,  7,   true,  false, NanStyle::kMantissaOnes, true,  448.0,                   -448.0,                   0.015625,                0.001953125,             0x7Eu,       0x80u,
   "S.1111.111", "OCP 8-bit Floating Point Specification (OFP8) v1.0, E4M3"},
  {Format::kE5m2, "e5m2",  8,  FormatKind::kFloat,   true, 5, 2,  15,  true,  true,  NanStyle::kIeee,         true,  57344.0,                 -57344.0,                 6.103515625e-05,         1.52587890625e-05,       0x7Bu,       0x80u,
   "S.11111.{01,10,11}", "OCP 8-bit Floating Point Specification (OFP8) v1.0, E5M2"},
  {Format::kE8m0, "e8m0",  8,  FormatKind::kFloat,   false, 8, 0, 127, false, false, NanStyle::kAllOnes,      false, 1.7014118346046923e38,   5.877471754111438e-39,    5.877471754111438e-39,   5.877471754111438e-39,   0xFEu,       0x0u,
   "11111111", "OCP Microscaling Formats (MX) v1.0, E8M0 scale"},
  {Format::kE2m1, "e2m1",  4,  FormatKind::kFloat,   true, 2, 1,  1,   true,  false, NanStyle::kNone,         true,  6.0,                     -6.0,                     1.0,                     0.5,                     0x7u,        0x8u,
   "none", "OCP Microscaling Formats (MX) v1.0, FP4 E2M1"},
  {Format::kInt8, "int8",  8,  FormatKind::kInteger, true, 0, 7,  0,   false, false, NanStyle::kNone,         false, 127.0,                   -128.0,                   1.0,                     1.0,                     0x7Fu,       0x0u,
   "none", "two's complement"},
  {Format::kUint8, "uint8", 8, FormatKind::kInteger, false, 0, 8, 0,   false, false, NanStyle::kNone,         false, 255.0,                   0.0,                      1.0,                     1.0,                     0xFFu,       0x0u,
   "none", "unsigned binary"},
  {Format::kInt4, "int4",  4,  FormatKind::kInteger, true, 0, 3,  0,   false, false, NanStyle::kNone,         false, 7.0,                     -8.0,                     1.0,                     1.0,                     0x7u,        0x0u,
   "none", "two's complement nibble, packed two per byte, low nibble first"},
  {Format::kUint4, "uint4", 4, FormatKind::kInteger, false, 0, 4, 0,   false, false, NanStyle::kNone,         false, 15.0,                    0.0,                      1.0,                     1.0,                     0xFu,        0x0u,
   "none", "unsigned nibble, packed two per byte, low nibble first"},
  {Format::kNf4,  "nf4",   4,  FormatKind::kLookup,  true, 0, 0,  0,   false, false, NanStyle::kNone,         false, 1.0,                     -1.0,                     0.07958029955625534,     0.07958029955625534,     0xFu,        0x0u,
   "none", "QLoRA NormalFloat4 (Dettmers et al. 2023), 16 levels in [-1, 1]"},
  {Format::kInt3, "int3",  3,  FormatKind::kInteger, true, 0, 2,  0,   false, false, NanStyle::kNone,         false, 3.0,                     -4.0,                     1.0,                     1.0,                     0x3u,        0x0u,
   "none", "two's complement, 3 bits, packed as a little-endian bit stream (element i in bits 3i..3i+2)"},
  {Format::kUint3, "uint3", 3, FormatKind::kInteger, false, 0, 3, 0,   false, false, NanStyle::kNone,         false, 7.0,                     0.0,                      1.0,                     1.0,                     0x7u,        0x0u,
   "none", "unsigned binary, 3 bits, packed as a little-endian bit stream (element i in bits 3i..3i+2)"},
  {Format::kInt5, "int5",  5,  FormatKind::kInteger, true, 0, 4,  0,   false, false, NanStyle::kNone,         false, 15.0,                    -16.0,                    1.0,                     1.0,                     0xFu,        0x0u,
   "none", "two's complement, 5 bits, packed as a little-endian bit stream (element i in bits 5i..5i+4)"},
  {Format::kUint5, "uint5", 5, FormatKind::kInteger, false, 0, 5, 0,   false, false, NanStyle::kNone,         false, 31.0,                    0.0,                      1.0,                     1.0,                     0x1Fu,       0x0u,
   "none", "unsigned binary, 5 bits, packed as a little-endian bit stream (element i in bits 5i..5i+4)"},
  {Format::kInt6, "int6",  6,  FormatKind::kInteger, true, 0, 5,  0,   false, false, NanStyle::kNone,         false, 31.0,                    -32.0,                    1.0,                     1.0,                     0x1Fu,       0x0u,
   "none", "two's complement, 6 bits, packed as a little-endian bit stream (element i in bits 6i..6i+5)"},
  {Format::kUint6, "uint6", 6, FormatKind::kInteger, false, 0, 6, 0,   false, false, NanStyle::kNone,         false, 63.0,                    0.0,                      1.0,                     1.0,                     0x3Fu,       0x0u,
   "none", "unsigned binary, 6 bits, packed as a little-endian bit stream (element i in bits 6i..6i+5)"},
}};
// clang-format on

constexpr const FormatTraits& traits(Format f) { return kFormatTraits[static_cast<int>(f)]; }
static_assert(traits(Format::kE4m3).max_finite == 448.0, "OCP OFP8: E4M3 max");
static_assert(traits(Format::kE5m2).max_finite == 57344.0, "OCP OFP8: E5M2 max");
static_assert(traits(Format::kE2m1).max_finite == 6.0, "OCP MX: E2M1 max");
static_assert([] {
  for (int i = 0; i < kNumFormats; ++i)
    if (static_cast<int>(kFormatTraits[i].format) != i) return false;
  return true;
}(), "kFormatTraits must be indexed by Format");

Result<Format> parse_format(std::string_view name);  // "e4m3", ...; error lists the valid names
inline std::string_view format_name(Format f) { return traits(f).name; }

enum class Rounding : uint8_t {
  kNearestEven,  // IEEE round-to-nearest, ties to even
  kStochastic,   // round up with probability equal to the distance from the lower neighbour
};

// How a value is mapped to a code. Non-saturating (the default) follows each spec's
// cast: overflow gives inf (fp16 bf16 e5m2) or NaN (e4m3, e8m0). Saturating clamps
// overflow and ±inf to ±max finite. Integers, e2m1 and nf4 have neither, so they
// always saturate.
struct EncodeOptions {
  bool saturate = false;
  Rounding rounding = Rounding::kNearestEven;
  uint64_t seed = 0;  // stochastic rounding: bits depend only on (seed, element index)
};

// The scalar reference codec. `code` lives in the low traits(f).bits bits.
// encode: NaN gives a NaN code where the format has one (sign kept; fp16/bf16/e5m2 keep
// the top payload bits and set the quiet bit, as hardware does), and 0 where it has none:
// callers that must reject NaN check first (the quant layer does). e8m0 has no zero and no
// sign: x <= 0 and NaN give NaN (0xFF); positive values below 2^-127 give 2^-127.
// `index` is the element's position, the counter of the stochastic-rounding RNG.
uint32_t encode(Format f, float x, const EncodeOptions& opt = {}, uint64_t index = 0);
float decode(Format f, uint32_t code);

bool code_is_nan(Format f, uint32_t code);
bool code_is_inf(Format f, uint32_t code);
inline uint64_t num_codes(Format f) { return uint64_t{1} << traits(f).bits; }

// The counter-based RNG behind stochastic rounding: 32 uniform bits for (seed, index),
// SplitMix64 evaluated at position `index` of the stream seeded by `seed`. Same seed and
// index give the same bits on any thread count or chunking.
uint32_t stochastic_bits(uint64_t seed, uint64_t index);

}  // namespace lowbit
