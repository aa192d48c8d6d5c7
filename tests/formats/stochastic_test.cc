// Stochastic rounding: unbiased (the mean of many draws is x), only ever the two
// neighbours, deterministic in (seed, index), and identical however a span is chunked.
//
// Draw budget (the ASan build runs this too): every adjacent pair of the 8-bit and 4-bit
// formats gets 10^5 draws (e8m0/int8/uint8, whose pairs are all alike in structure, 2*10^4),
// fp16/bf16 get a sample of pairs at 2*10^4 draws, and a representative set of pairs across
// all formats gets the full 10^6 draws.
//
// Bounds: a fixed seed makes each check deterministic, but with ~2000 pair checks a 3-SE bound
// would be exceeded by an unbiased implementation about five times (P(|Z| > 3) = 0.27%). So
// each sweep checks, over its K z-scores z = (mean - x) / SE: every |z| < 5; at most
// 3 + K/100 of them beyond 3 (an unbiased RNG gives ~K/370); and |sum z| / sqrt(K) < 4, which
// catches a systematic bias far smaller than one SE per pair. The 10^6-draw set uses |z| < 4.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "lowbit/convert.h"
#include "lowbit/formats.h"

namespace lowbit {
namespace {

std::string hex(uint32_t c) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%X", c);
  return buf;
}

// Spec-formula values (independent of decode()).
double spec_value(Format f, uint32_t code) {
  struct L { int bits, e, m, bias; bool sign; int special; };  // special: 0 ieee, 1 e4m3, 2 none
  L l{};
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
    case Format::kE8m0: return code == 0xFF ? NAN : std::ldexp(1.0, static_cast<int>(code) - 127);
    case Format::kFp16: l = {16, 5, 10, 15, true, 0}; break;
    case Format::kBf16: l = {16, 8, 7, 127, true, 0}; break;
    case Format::kE4m3: l = {8, 4, 3, 7, true, 1}; break;
    case Format::kE5m2: l = {8, 5, 2, 15, true, 0}; break;
    case Format::kE2m1: l = {4, 2, 1, 1, true, 2}; break;
    case Format::kFp32: return std::bit_cast<float>(code);
  }
  const double sign = (code >> (l.bits - 1)) & 1 ? -1.0 : 1.0;
  const uint32_t e = (code >> l.m) & ((1u << l.e) - 1), m = code & ((1u << l.m) - 1);
  const uint32_t emax = (1u << l.e) - 1, mmax = (1u << l.m) - 1;
  if (l.special == 0 && e == emax) return m == 0 ? sign * INFINITY : NAN;
  if (l.special == 1 && e == emax && m == mmax) return NAN;
  if (e == 0) return sign * std::ldexp(static_cast<double>(m), 1 - l.bias - l.m);
  return sign * std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -l.m), static_cast<int>(e) - l.bias);
}

bool sign_magnitude(Format f) {
  return f == Format::kFp16 || f == Format::kBf16 || f == Format::kE4m3 || f == Format::kE5m2 ||
         f == Format::kE2m1;
}
uint32_t sign_bit(Format f) {
  if (!sign_magnitude(f)) return 0;
  return f == Format::kE2m1 ? 0x8u : (f == Format::kFp16 || f == Format::kBf16) ? 0x8000u : 0x80u;
}

// Two adjacent representable values and their codes. Between -min and 0 the zero is -0:
// rounding a negative number toward zero keeps its sign.
struct Pair {
  double lo, hi;
  uint32_t lo_code, hi_code;
};

std::vector<Pair> all_adjacent_pairs(Format f) {
  struct E { double v; uint32_t c; };
  std::vector<E> vals;
  for (uint32_t c = 0; c < num_codes(f); ++c) {
    const double v = spec_value(f, c);
    if (!std::isfinite(v)) continue;
    if (v == 0 && std::signbit(v)) continue;  // -0 is handled below
    vals.push_back({v, c});
  }
  std::sort(vals.begin(), vals.end(), [](const E& a, const E& b) { return a.v < b.v; });
  std::vector<Pair> pairs;
  for (size_t i = 0; i + 1 < vals.size(); ++i) {
    uint32_t hi_code = vals[i + 1].c;
    if (vals[i + 1].v == 0) hi_code |= sign_bit(f);
    pairs.push_back({vals[i].v, vals[i + 1].v, vals[i].c, hi_code});
  }
  return pairs;
}

// Pair of positive codes (c, c+1) of a sign-magnitude format, and its negative mirror.
void push_code_pair(std::vector<Pair>& out, Format f, uint32_t c) {
  const uint32_t s = sign_bit(f);
  out.push_back({spec_value(f, c), spec_value(f, c + 1), c, c + 1});
  out.push_back({spec_value(f, (c + 1) | s), spec_value(f, c | s), (c + 1) | s, c | s});
}

struct Draws {
  double z = 0;       // (mean - x) / SE
  int stray = 0;      // draws that were neither lo nor hi
  uint32_t stray_code = 0;
};

Draws draw(Format f, const Pair& p, float x, uint64_t seed, int n) {
  const EncodeOptions opt{.rounding = Rounding::kStochastic, .seed = seed};
  Draws d;
  int64_t up = 0;
  for (int i = 0; i < n; ++i) {
    const uint32_t c = encode(f, x, opt, static_cast<uint64_t>(i));
    if (c == p.hi_code) {
      ++up;
    } else if (c != p.lo_code) {
      if (d.stray++ == 0) d.stray_code = c;
    }
  }
  const double mean = p.lo + (p.hi - p.lo) * static_cast<double>(up) / n;
  const double prob = (static_cast<double>(x) - p.lo) / (p.hi - p.lo);
  const double se = (p.hi - p.lo) * std::sqrt(prob * (1 - prob) / n);
  d.z = (mean - x) / se;
  return d;
}

// x = lo + u (hi - lo) rounded to float; nullopt-like false when it falls on a neighbour.
bool between(const Pair& p, double u, float* x) {
  *x = static_cast<float>(p.lo + u * (p.hi - p.lo));
  return p.lo < *x && *x < p.hi;
}

uint64_t seed_for(Format f, size_t pair, int u_index) {
  return 0x9E3779B97F4A7C15ull * (static_cast<uint64_t>(f) + 1) + 1000003ull * pair + 7919ull * u_index + 1;
}

void check_sweep(Format f, const std::vector<Pair>& pairs, int n) {
  const double us[] = {0.3, 0.71};
  std::vector<double> zs;
  int failures = 0;
  for (size_t i = 0; i < pairs.size(); ++i) {
    for (int k = 0; k < 2; ++k) {
      float x;
      if (!between(pairs[i], us[k], &x)) continue;
      const Draws d = draw(f, pairs[i], x, seed_for(f, i, k), n);
      if (d.stray != 0 && ++failures <= 10) {
        ADD_FAILURE() << format_name(f) << " x=" << x << " between " << pairs[i].lo << " (" << hex(pairs[i].lo_code)
                      << ") and " << pairs[i].hi << " (" << hex(pairs[i].hi_code) << ") gave " << d.stray
                      << " other codes, e.g. " << hex(d.stray_code);
      }
      if (!(std::fabs(d.z) < 5) && ++failures <= 10) {
        ADD_FAILURE() << format_name(f) << " x=" << x << " between " << pairs[i].lo << " and " << pairs[i].hi
                      << ": mean is " << d.z << " standard errors from x (" << n << " draws)";
      }
      zs.push_back(d.z);
    }
  }
  ASSERT_GT(zs.size(), pairs.size());  // most (pair, u) combinations are strictly between
  const double k = static_cast<double>(zs.size());
  const auto beyond3 = std::count_if(zs.begin(), zs.end(), [](double z) { return std::fabs(z) > 3; });
  double sum = 0;
  for (double z : zs) sum += z;
  EXPECT_LE(beyond3, 3 + k / 100) << format_name(f) << ": too many pairs beyond 3 SE";
  EXPECT_LT(std::fabs(sum) / std::sqrt(k), 4.0) << format_name(f) << ": systematic bias across " << k << " pairs";
  EXPECT_EQ(failures, 0);
}

class StochasticAllPairs : public ::testing::TestWithParam<Format> {};

TEST_P(StochasticAllPairs, UnbiasedBetweenEveryAdjacentPair) {
  const Format f = GetParam();
  const bool alike = f == Format::kE8m0 || f == Format::kInt8 || f == Format::kUint8;
  check_sweep(f, all_adjacent_pairs(f), alike ? 20000 : 100000);
}

INSTANTIATE_TEST_SUITE_P(EightAndFourBit, StochasticAllPairs,
                         ::testing::Values(Format::kE4m3, Format::kE5m2, Format::kE8m0, Format::kInt8,
                                           Format::kUint8, Format::kE2m1, Format::kInt4, Format::kUint4,
                                           Format::kNf4, Format::kInt3, Format::kUint3, Format::kInt5, Format::kUint5, Format::kInt6, Format::kUint6),
                         [](const auto& info) { return std::string(format_name(info.param)); });

std::vector<Pair> sampled_16bit_pairs(Format f) {
  const uint32_t max_code = f == Format::kFp16 ? 0x7BFF : 0x7F7F;
  const uint32_t first_normal = f == Format::kFp16 ? 0x0400 : 0x0080;
  const uint32_t one = f == Format::kFp16 ? 0x3C00 : 0x3F80;
  std::vector<uint32_t> lows;
  for (uint32_t c = 0; c < 12; ++c) lows.push_back(c);                        // subnormals, incl. 0
  for (uint32_t c = first_normal - 3; c < first_normal + 3; ++c) lows.push_back(c);  // subnormal/normal edge
  for (uint32_t c = max_code - 16; c < max_code; ++c) lows.push_back(c);       // top binade
  lows.push_back(one - 1);                                                     // binade crossing at 1
  std::mt19937_64 rng(0xF16B16u + static_cast<uint32_t>(f));
  for (int i = 0; i < 80; ++i) lows.push_back(static_cast<uint32_t>(rng() % max_code));
  std::vector<Pair> pairs;
  for (uint32_t c : lows) push_code_pair(pairs, f, c);
  return pairs;
}

class StochasticSampled16 : public ::testing::TestWithParam<Format> {};

TEST_P(StochasticSampled16, UnbiasedOnSampledPairs) {
  const Format f = GetParam();
  const std::vector<Pair> pairs = sampled_16bit_pairs(f);
  ASSERT_GE(pairs.size(), 200u);
  check_sweep(f, pairs, 20000);
}

INSTANTIATE_TEST_SUITE_P(Fp16Bf16, StochasticSampled16, ::testing::Values(Format::kFp16, Format::kBf16),
                         [](const auto& info) { return std::string(format_name(info.param)); });

// 10^6 draws on a representative set: zero-adjacent, subnormal, binade-crossing and top pairs.
TEST(StochasticMillion, UnbiasedWithMillionDraws) {
  struct Case { Format f; uint32_t a, b; };  // two adjacent codes, either order
  const Case cases[] = {
      {Format::kE4m3, 0x00, 0x01}, {Format::kE4m3, 0x38, 0x39}, {Format::kE4m3, 0x7D, 0x7E},
      {Format::kE4m3, 0xFD, 0xFE}, {Format::kE4m3, 0x07, 0x08},
      {Format::kE5m2, 0x80, 0x81}, {Format::kE5m2, 0x7A, 0x7B}, {Format::kE5m2, 0x3B, 0x3C},
      {Format::kE8m0, 0x00, 0x01}, {Format::kE8m0, 0x7F, 0x80}, {Format::kE8m0, 0xFD, 0xFE},
      {Format::kE2m1, 0x0, 0x1},   {Format::kE2m1, 0x6, 0x7},   {Format::kE2m1, 0xA, 0xB},
      {Format::kInt8, 0x80, 0x81}, {Format::kInt8, 0xFF, 0x00}, {Format::kUint8, 0xFE, 0xFF},
      {Format::kInt4, 0x8, 0x9},   {Format::kUint4, 0xE, 0xF},
      {Format::kNf4, 0x0, 0x1},    {Format::kNf4, 0x7, 0x8},    {Format::kNf4, 0xE, 0xF},
      {Format::kFp16, 0x0000, 0x0001}, {Format::kFp16, 0x7BFE, 0x7BFF}, {Format::kFp16, 0x3BFF, 0x3C00},
      {Format::kBf16, 0x8000, 0x8001}, {Format::kBf16, 0x7F7E, 0x7F7F}, {Format::kBf16, 0x3F7F, 0x3F80},
  };
  constexpr int kDraws = 1000000;
  int i = 0;
  for (const Case& c : cases) {
    const double va = spec_value(c.f, c.a), vb = spec_value(c.f, c.b);
    Pair p = va < vb ? Pair{va, vb, c.a, c.b} : Pair{vb, va, c.b, c.a};
    const double u = (i++ % 2 == 0) ? 0.3 : 0.71;
    float x;
    ASSERT_TRUE(between(p, u, &x)) << format_name(c.f) << " " << hex(c.a);
    const Draws d = draw(c.f, p, x, 0xC0FFEEull + i, kDraws);
    EXPECT_EQ(d.stray, 0) << format_name(c.f) << " x=" << x << " gave code " << hex(d.stray_code);
    EXPECT_LT(std::fabs(d.z), 4.0) << format_name(c.f) << " x=" << x << " between " << p.lo << " and " << p.hi;
  }
}

TEST(StochasticRng, DeterministicInSeedAndIndex) {
  const Format formats[] = {Format::kFp16, Format::kBf16, Format::kE4m3, Format::kE5m2, Format::kE8m0,
                            Format::kE2m1, Format::kInt8, Format::kUint8, Format::kInt4, Format::kUint4,
                            Format::kNf4};
  std::mt19937_64 rng(99);
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  for (Format f : formats) {
    const EncodeOptions a{.rounding = Rounding::kStochastic, .seed = 42};
    const EncodeOptions b{.rounding = Rounding::kStochastic, .seed = 43};
    std::vector<float> xs(512);
    for (float& x : xs) x = f == Format::kE8m0 ? std::fabs(dist(rng)) + 0.01f : dist(rng) * (f == Format::kInt8 || f == Format::kUint8 ? 20 : 1);
    std::vector<uint32_t> first(xs.size());
    for (size_t i = 0; i < xs.size(); ++i) first[i] = encode(f, xs[i], a, 1000 + i);
    // Same (seed, index) again, in reverse order: same codes.
    for (size_t i = xs.size(); i-- > 0;) {
      ASSERT_EQ(encode(f, xs[i], a, 1000 + i), first[i]) << format_name(f) << " index " << 1000 + i;
    }
    // Another seed differs somewhere (each element is a coin flip unless x is exact).
    int differ = 0;
    for (size_t i = 0; i < xs.size(); ++i) differ += encode(f, xs[i], b, 1000 + i) != first[i];
    EXPECT_GT(differ, 0) << format_name(f) << ": seeds 42 and 43 gave identical codes for 512 values";
  }
  // The RNG itself.
  int differ = 0;
  for (uint64_t i = 0; i < 256; ++i) {
    ASSERT_EQ(stochastic_bits(7, i), stochastic_bits(7, i));
    differ += stochastic_bits(7, i) != stochastic_bits(8, i);
  }
  EXPECT_GT(differ, 200);
}

TEST(StochasticRng, ManyIndicesOfOneValueSpreadOverBothNeighbours) {
  // 1 + 2^-11 sits halfway between two fp16 codes: about half the draws go each way.
  const float x = 1.0f + std::ldexp(1.0f, -11);
  int up = 0;
  for (uint64_t i = 0; i < 4096; ++i) {
    const uint32_t c = encode(Format::kFp16, x, {.rounding = Rounding::kStochastic, .seed = 5}, i);
    ASSERT_TRUE(c == 0x3C00u || c == 0x3C01u) << hex(c);
    up += c == 0x3C01u;
  }
  EXPECT_GT(up, 4096 / 2 - 4 * 32);  // 4 SE of a fair coin over 4096 flips
  EXPECT_LT(up, 4096 / 2 + 4 * 32);
}

// --- Spans ---

int bits_of(Format f) {
  switch (f) {
    case Format::kFp32: return 32;
    case Format::kFp16: case Format::kBf16: return 16;
    case Format::kE2m1: case Format::kInt4: case Format::kUint4: case Format::kNf4: return 4;
    case Format::kInt3: case Format::kUint3: return 3;
    case Format::kInt5: case Format::kUint5: return 5;
    case Format::kInt6: case Format::kUint6: return 6;
    default: return 8;
  }
}

// Storage layout written from the spec: little-endian codes; 4-bit two per byte, low nibble first.
std::vector<uint8_t> pack(Format f, const std::vector<uint32_t>& codes) {
  const int bits = bits_of(f);
  std::vector<uint8_t> out((codes.size() * bits + 7) / 8, 0);
  for (size_t i = 0; i < codes.size(); ++i) {
    if (bits == 4) {
      out[i / 2] |= static_cast<uint8_t>((codes[i] & 0xF) << (4 * (i % 2)));
    } else if (bits % 8 != 0) {  // 3/5/6 bits: a little-endian bit stream
      const size_t b = static_cast<size_t>(bits);
      for (size_t t = 0; t < b; ++t)
        if ((codes[i] >> t) & 1u) out[(b * i + t) / 8] |= static_cast<uint8_t>(1u << ((b * i + t) % 8));
    } else {
      for (int b = 0; b < bits / 8; ++b) out[i * (bits / 8) + b] = static_cast<uint8_t>(codes[i] >> (8 * b));
    }
  }
  return out;
}

std::vector<uint32_t> unpack(Format f, const std::vector<uint8_t>& bytes, size_t n) {
  const int bits = bits_of(f);
  std::vector<uint32_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (bits == 4) {
      out[i] = (bytes[i / 2] >> (4 * (i % 2))) & 0xF;
    } else if (bits % 8 != 0) {
      const size_t b = static_cast<size_t>(bits);
      uint32_t c = 0;
      for (size_t t = 0; t < b; ++t) c |= ((bytes[(b * i + t) / 8] >> ((b * i + t) % 8)) & 1u) << t;
      out[i] = c;
    } else {
      uint32_t c = 0;
      for (int b = 0; b < bits / 8; ++b) c |= static_cast<uint32_t>(bytes[i * (bits / 8) + b]) << (8 * b);
      out[i] = c;
    }
  }
  return out;
}

constexpr Format kAllFormats[] = {Format::kFp32, Format::kFp16, Format::kBf16,  Format::kE4m3,
                                  Format::kE5m2, Format::kE8m0, Format::kE2m1,  Format::kInt8,
                                  Format::kUint8, Format::kInt4, Format::kUint4, Format::kNf4,
                                  Format::kInt3,  Format::kUint3, Format::kInt5, Format::kUint5, Format::kInt6, Format::kUint6};

std::vector<float> span_inputs(Format f, size_t n) {
  std::mt19937_64 rng(31337 + static_cast<int>(f));
  const double max = traits(f).max_finite;
  std::uniform_real_distribution<double> lin(-1.0, 1.0);
  std::uniform_real_distribution<double> logu(-20.0, 0.0);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) {
    double v = (i % 3 == 0) ? lin(rng) * max : std::exp2(logu(rng)) * max * (rng() & 1 ? 1 : -1);
    if (f == Format::kFp32) v = lin(rng) * 1000;
    x[i] = static_cast<float>(v);
  }
  x[0] = 0.0f;
  x[1] = -0.0f;
  x[2] = std::numeric_limits<float>::infinity();
  x[3] = std::numeric_limits<float>::quiet_NaN();
  return x;
}

class StochasticSpan : public ::testing::TestWithParam<Format> {};

TEST_P(StochasticSpan, MatchesElementwiseEncode) {
  const Format f = GetParam();
  const EncodeOptions opt{.rounding = Rounding::kStochastic, .seed = 2024};
  for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{3}, size_t{17}, size_t{1001}}) {
    const std::vector<float> x = span_inputs(f, std::max<size_t>(n, 4));
    const std::span<const float> in(x.data(), n);
    for (uint64_t first : {uint64_t{0}, uint64_t{12345}}) {
      std::vector<uint32_t> codes(n);
      for (size_t i = 0; i < n; ++i) codes[i] = encode(f, x[i], opt, first + i);
      const std::vector<uint8_t> want = pack(f, codes);
      std::vector<uint8_t> got(packed_bytes(f, n), 0xCC);
      ASSERT_EQ(got.size(), want.size());
      encode_span(f, in, got, opt, first);
      EXPECT_EQ(got, want) << format_name(f) << " n=" << n << " first_index=" << first;
    }
  }
}

TEST_P(StochasticSpan, ChunkingDoesNotChangeBytes) {
  const Format f = GetParam();
  const EncodeOptions opt{.saturate = false, .rounding = Rounding::kStochastic, .seed = 77};
  constexpr size_t n = 1001;
  constexpr uint64_t first = 5000;
  const std::vector<float> x = span_inputs(f, n);
  std::vector<uint8_t> whole(packed_bytes(f, n));
  encode_span(f, x, whole, opt, first);
  const std::vector<uint32_t> whole_codes = unpack(f, whole, n);

  // Arbitrary cut points: each chunk into its own buffer, compared code by code.
  const std::vector<size_t> cuts = {0, 1, 2, 7, 64, 65, 333, 500, 999, 1000, n};
  for (size_t k = 0; k + 1 < cuts.size(); ++k) {
    const size_t a = cuts[k], len = cuts[k + 1] - cuts[k];
    std::vector<uint8_t> part(packed_bytes(f, len));
    encode_span(f, std::span<const float>(x).subspan(a, len), part, opt, first + a);
    const std::vector<uint32_t> codes = unpack(f, part, len);
    for (size_t i = 0; i < len; ++i) {
      ASSERT_EQ(codes[i], whole_codes[a + i]) << format_name(f) << " chunk at " << a << ", element " << a + i;
    }
  }
  // Cut points on byte boundaries: chunks written in place give the same bytes.
  const size_t step = bits_of(f) == 4 ? 2 : bits_of(f) % 8 != 0 ? 8 : 1;  // 8 codes of 3, 5 or 6 bits end on a byte
  std::vector<uint8_t> pieced(whole.size(), 0);
  const std::vector<size_t> even_cuts = {0, 2, 8, 130, 500, 998, n};
  for (size_t k = 0; k + 1 < even_cuts.size(); ++k) {
    const size_t a = even_cuts[k] / step * step, b = k + 2 == even_cuts.size() ? n : even_cuts[k + 1] / step * step;
    const size_t byte_a = a * bits_of(f) / 8;
    encode_span(f, std::span<const float>(x).subspan(a, b - a),
                std::span<uint8_t>(pieced).subspan(byte_a, packed_bytes(f, b - a)), opt, first + a);
  }
  EXPECT_EQ(pieced, whole) << format_name(f);
}

INSTANTIATE_TEST_SUITE_P(AllFormats, StochasticSpan, ::testing::ValuesIn(kAllFormats),
                         [](const auto& info) { return std::string(format_name(info.param)); });

}  // namespace
}  // namespace lowbit
