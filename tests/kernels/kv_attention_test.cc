// Quantized-cache attention kernels: every ISA this CPU has is bit-identical to the scalar twin
// (the twins follow the SIMD order of operations), and both equal the contract's value
// Σ x·(code·scale + min) computed in fp64 within a stated tolerance; widths 8..72 with
// groups of 8..width, runs of 1..129 tokens, every code.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "lowbit/cpu.h"
#include "lowbit/formats.h"
#include "lowbit/kv_attention.h"

namespace lowbit {
namespace {

struct Rows {
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scale, min;
  KvRows r;
};

// Random codes (fp8: finite only), fp16 scales in [0.01, 0.1], minimums in [-0.5, 0.5].
Rows make_rows(KvCode code, int64_t width, int64_t group, int64_t ntok, bool with_min, bool unit, uint32_t seed) {
  std::mt19937 rng(seed);
  Rows o;
  const int64_t row_bytes = kv_code_bits(code) == 8 ? width : width / 2;
  const int64_t stride = row_bytes + 3;  // rows not packed back to back
  o.codes.resize(static_cast<size_t>(stride * ntok + 8));
  for (auto& b : o.codes) {
    b = static_cast<uint8_t>(rng());
    if (code == KvCode::kE4m3 && (b & 0x7F) == 0x7F) b &= 0xFE;   // NaN codes never stored
    if (code == KvCode::kE5m2 && (b & 0x7C) == 0x7C) b &= 0xBB;   // nor inf/NaN
  }
  const int64_t ng = width / group, pstride = ng + 1;
  std::uniform_real_distribution<float> us(0.01f, 0.1f), um(-0.5f, 0.5f);
  o.scale.resize(static_cast<size_t>(pstride * ntok));
  o.min.resize(o.scale.size());
  for (auto& s : o.scale) s = static_cast<uint16_t>(encode(Format::kFp16, us(rng)));
  for (auto& m : o.min) m = static_cast<uint16_t>(encode(Format::kFp16, um(rng)));
  o.r = KvRows{.code = code, .codes = o.codes.data(), .stride = stride, .width = width, .group = group,
               .scale = unit ? nullptr : o.scale.data(), .min = with_min ? o.min.data() : nullptr, .pstride = pstride};
  return o;
}

double value(const KvRows& r, int64_t t, int64_t j) {
  const uint8_t* row = r.codes + t * r.stride;
  double c = 0;
  switch (r.code) {
    case KvCode::kInt8: c = static_cast<int8_t>(row[j]); break;
    case KvCode::kInt4: c = static_cast<int>((row[j / 2] >> (4 * (j % 2))) & 0xF) - 8; break;
    case KvCode::kUint4: c = (row[j / 2] >> (4 * (j % 2))) & 0xF; break;
    case KvCode::kE4m3: c = decode(Format::kE4m3, row[j]); break;
    case KvCode::kE5m2: c = decode(Format::kE5m2, row[j]); break;
  }
  const int64_t g = j / r.group;
  const double s = r.scale ? decode(Format::kFp16, r.scale[t * r.pstride + g]) : 1.0;
  const double m = r.min ? decode(Format::kFp16, r.min[t * r.pstride + g]) : 0.0;
  return c * s + m;
}

struct Case {
  KvCode code;
  int64_t width, group;
  bool with_min, unit;
};

class KvKernels : public ::testing::TestWithParam<Case> {};

TEST_P(KvKernels, EveryIsaMatchesTwinAndFp64Reference) {
  const Case c = GetParam();
  for (int64_t ntok : {1, 2, 3, 5, 8, 31, 64, 129}) {
    Rows rows = make_rows(c.code, c.width, c.group, ntok, c.with_min, c.unit, static_cast<uint32_t>(ntok * 7 + c.width));
    std::mt19937 rng(static_cast<uint32_t>(ntok));
    std::normal_distribution<float> nd;
    std::vector<float> x(static_cast<size_t>(c.width)), a(static_cast<size_t>(ntok)), xsum(static_cast<size_t>(c.width / c.group));
    for (float& v : x) v = nd(rng);
    for (float& v : a) v = std::fabs(nd(rng)) / static_cast<float>(ntok);
    for (int64_t g = 0; g < c.width / c.group; ++g) {
      float s = 0.0f;
      for (int64_t j = g * c.group; j < (g + 1) * c.group; ++j) s += x[static_cast<size_t>(j)];
      xsum[static_cast<size_t>(g)] = s;
    }
    std::vector<float> sc_ref, acc_ref;
    for (Isa isa : supported_isas()) {
      ScopedIsa force(isa);
      std::vector<float> sc(static_cast<size_t>(ntok), -1.0f), acc(static_cast<size_t>(c.width), 0.25f);
      kv_scores(rows.r, x.data(), xsum.data(), ntok, sc.data());
      kv_accumulate(rows.r, a.data(), ntok, acc.data());
      if (isa == Isa::kScalar) {
        sc_ref = sc;
        acc_ref = acc;
        // Against the contract in fp64: |err| <= 1e-5 · Σ|x||value| (fp32 FMA chains of <= 72 terms).
        for (int64_t t = 0; t < ntok; ++t) {
          double want = 0, mag = 0;
          for (int64_t j = 0; j < c.width; ++j) {
            const double v = value(rows.r, t, j);
            want += x[static_cast<size_t>(j)] * v;
            mag += std::fabs(x[static_cast<size_t>(j)] * v);
          }
          ASSERT_NEAR(sc[static_cast<size_t>(t)], want, 1e-5 * mag + 1e-30) << "t=" << t << " ntok=" << ntok;
        }
        for (int64_t j = 0; j < c.width; ++j) {
          double want = 0.25, mag = 0.25;
          for (int64_t t = 0; t < ntok; ++t) {
            want += a[static_cast<size_t>(t)] * value(rows.r, t, j);
            mag += std::fabs(a[static_cast<size_t>(t)] * value(rows.r, t, j));
          }
          ASSERT_NEAR(acc[static_cast<size_t>(j)], want, 1e-5 * mag) << "j=" << j << " ntok=" << ntok;
        }
      } else {
        for (int64_t t = 0; t < ntok; ++t) ASSERT_EQ(sc[static_cast<size_t>(t)], sc_ref[static_cast<size_t>(t)]) << isa_name(isa) << " t=" << t;
        for (int64_t j = 0; j < c.width; ++j) ASSERT_EQ(acc[static_cast<size_t>(j)], acc_ref[static_cast<size_t>(j)]) << isa_name(isa) << " j=" << j;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Codes, KvKernels,
    ::testing::Values(Case{KvCode::kInt8, 64, 64, false, false}, Case{KvCode::kInt8, 8, 8, false, false},
                      Case{KvCode::kInt8, 72, 8, false, false}, Case{KvCode::kInt8, 96, 32, false, false},
                      Case{KvCode::kInt4, 64, 32, false, false}, Case{KvCode::kInt4, 16, 16, false, false},
                      Case{KvCode::kInt4, 40, 40, false, false}, Case{KvCode::kUint4, 64, 32, true, false},
                      Case{KvCode::kUint4, 64, 64, true, false}, Case{KvCode::kUint4, 24, 8, true, false},
                      Case{KvCode::kUint4, 64, 64, false, true}, Case{KvCode::kE4m3, 64, 64, false, false},
                      Case{KvCode::kE4m3, 56, 56, false, true}, Case{KvCode::kE5m2, 64, 64, false, false},
                      Case{KvCode::kE5m2, 128, 16, false, true}),
    [](const testing::TestParamInfo<Case>& i) {
      return std::string(kv_code_name(i.param.code)) + "_w" + std::to_string(i.param.width) + "_g" + std::to_string(i.param.group) +
             (i.param.with_min ? "_min" : "") + (i.param.unit ? "_unit" : "");
    });

// The fp32 cache's kernels: odd widths (tails past the eight lanes), strided rows, runs of 1..129
// tokens; every ISA bit-identical to the scalar twin, the twin within 1e-5 of fp64.
// The grouped-query forms: nq heads over one key/value head, each head bit-identical to the one-head
// kernels at the scalar level (the definition), on every ISA; odd head counts (the 4-head tiles'
// remainders), odd widths and token runs, padded leading dimensions.
TEST(KvKernelsF32, GroupedHeadsEqualOneHeadKernelsOnEveryIsa) {
  for (int64_t nq : {1, 2, 3, 4, 5, 6, 7, 9}) {
    for (int64_t width : {1, 7, 8, 13, 24, 64, 72, 128, 130}) {
      for (int64_t ntok : {1, 2, 3, 5, 8, 33}) {
        const int64_t stride = width + 3, ldx = width + 2, lda = ntok + 1, ldo_s = ntok + 2, ldo_a = width + 1;
        std::mt19937 rng(static_cast<uint32_t>(nq * 7919 + width * 131 + ntok));
        std::normal_distribution<float> nd;
        std::vector<float> rows(static_cast<size_t>(stride * ntok)), x(static_cast<size_t>(ldx * nq)), a(static_cast<size_t>(lda * nq));
        for (float& v : rows) v = nd(rng);
        for (float& v : x) v = nd(rng);
        for (float& v : a) v = std::fabs(nd(rng)) / static_cast<float>(ntok);
        std::vector<float> sc_want(static_cast<size_t>(ldo_s * nq), -1.0f), acc_want(static_cast<size_t>(ldo_a * nq), 0.5f);
        {
          ScopedIsa force(Isa::kScalar);
          for (int64_t h = 0; h < nq; ++h) {
            attn_scores_f32(rows.data(), stride, width, x.data() + h * ldx, ntok, sc_want.data() + h * ldo_s);
            attn_accumulate_f32(rows.data(), stride, width, a.data() + h * lda, ntok, acc_want.data() + h * ldo_a);
          }
        }
        for (Isa isa : supported_isas()) {
          ScopedIsa force(isa);
          std::vector<float> sc(static_cast<size_t>(ldo_s * nq), -1.0f), acc(static_cast<size_t>(ldo_a * nq), 0.5f);
          attn_scores_f32_heads(rows.data(), stride, width, x.data(), ldx, nq, ntok, sc.data(), ldo_s);
          attn_accumulate_f32_heads(rows.data(), stride, width, a.data(), lda, nq, ntok, acc.data(), ldo_a);
          for (size_t i = 0; i < sc.size(); ++i) {
            ASSERT_EQ(sc[i], sc_want[i]) << isa_name(isa) << " nq " << nq << " width " << width << " ntok " << ntok << " at " << i;
          }
          for (size_t i = 0; i < acc.size(); ++i) {
            ASSERT_EQ(acc[i], acc_want[i]) << isa_name(isa) << " nq " << nq << " width " << width << " ntok " << ntok << " at " << i;
          }
        }
      }
    }
  }
}

TEST(KvKernelsF32, EveryIsaMatchesTwinAndFp64Reference) {
  for (int64_t width : {1, 3, 7, 8, 13, 64, 72, 127, 128, 130}) {
    for (int64_t ntok : {1, 2, 3, 4, 5, 8, 31, 129}) {
      const int64_t stride = width + 5;
      std::mt19937 rng(static_cast<uint32_t>(width * 131 + ntok));
      std::normal_distribution<float> nd;
      std::vector<float> rows(static_cast<size_t>(stride * ntok)), x(static_cast<size_t>(width)), a(static_cast<size_t>(ntok));
      for (float& v : rows) v = nd(rng);
      for (float& v : x) v = nd(rng);
      for (float& v : a) v = std::fabs(nd(rng)) / static_cast<float>(ntok);
      std::vector<float> sc_ref, acc_ref;
      for (Isa isa : supported_isas()) {
        ScopedIsa force(isa);
        std::vector<float> sc(static_cast<size_t>(ntok), -1.0f), acc(static_cast<size_t>(width), 0.25f);
        attn_scores_f32(rows.data(), stride, width, x.data(), ntok, sc.data());
        attn_accumulate_f32(rows.data(), stride, width, a.data(), ntok, acc.data());
        if (isa == Isa::kScalar) {
          sc_ref = sc;
          acc_ref = acc;
          for (int64_t t = 0; t < ntok; ++t) {
            double want = 0, mag = 0;
            for (int64_t j = 0; j < width; ++j) {
              const double p = static_cast<double>(x[static_cast<size_t>(j)]) * rows[static_cast<size_t>(t * stride + j)];
              want += p;
              mag += std::fabs(p);
            }
            ASSERT_NEAR(sc[static_cast<size_t>(t)], want, 1e-5 * mag + 1e-30) << "width " << width << " t " << t;
          }
          for (int64_t j = 0; j < width; ++j) {
            double want = 0.25, mag = 0.25;
            for (int64_t t = 0; t < ntok; ++t) {
              const double p = static_cast<double>(a[static_cast<size_t>(t)]) * rows[static_cast<size_t>(t * stride + j)];
              want += p;
              mag += std::fabs(p);
            }
            ASSERT_NEAR(acc[static_cast<size_t>(j)], want, 1e-5 * mag) << "width " << width << " j " << j;
          }
        } else {
          for (int64_t t = 0; t < ntok; ++t) {
            ASSERT_EQ(sc[static_cast<size_t>(t)], sc_ref[static_cast<size_t>(t)]) << isa_name(isa) << " width " << width << " t " << t;
          }
          for (int64_t j = 0; j < width; ++j) {
            ASSERT_EQ(acc[static_cast<size_t>(j)], acc_ref[static_cast<size_t>(j)]) << isa_name(isa) << " width " << width << " j " << j;
          }
        }
      }
    }
  }
}

TEST(KvKernelsNames, HalfToFloatIsExactForEveryCode) {
  for (uint32_t c = 0; c < 65536; ++c) {
    const float want = decode(Format::kFp16, c), got = kv_half_to_float(static_cast<uint16_t>(c));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << c;
    } else {
      ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << c;
    }
  }
}

TEST(KvKernelsNames, RegistryListsEveryCodeAtEveryIsa) {
  EXPECT_EQ(kv_kernel_name(true, KvCode::kInt8, Isa::kAvx2), "attn_qk_int8_f32__avx2");
  EXPECT_EQ(kv_kernel_name(false, KvCode::kE5m2, Isa::kScalar), "attn_pv_e5m2_f32__scalar");
  EXPECT_EQ(kv_f32_kernel_name(true, Isa::kAvx2), "attn_qk_f32_f32__avx2");
}

}  // namespace
}  // namespace lowbit
