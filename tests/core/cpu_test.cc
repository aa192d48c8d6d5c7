#include "lowbit/cpu.h"

#include <gtest/gtest.h>

namespace lowbit {
namespace {

TEST(Cpu, ParseIsaRoundTripsEveryName) {
  for (int i = 0; i < kNumIsas; ++i) {
    const Isa isa = static_cast<Isa>(i);
    Result<Isa> parsed = parse_isa(isa_name(isa));
    ASSERT_TRUE(parsed.ok()) << isa_name(isa);
    EXPECT_EQ(*parsed, isa);
  }
  EXPECT_EQ(isa_name(Isa::kAvx512Vnni), "avx512vnni");
}

TEST(Cpu, ParseIsaRejectsUnknownNames) {
  for (const char* bad : {"", "sse", "avx3", "AVX2", "avx2 ", "avx512-vnni"}) {
    Result<Isa> r = parse_isa(bad);
    EXPECT_FALSE(r.ok()) << "'" << bad << "'";
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("'" + std::string(bad) + "'"), std::string::npos)
        << r.status().message();
  }
}

TEST(Cpu, SupportedIsasAscendFromScalarToBest) {
  std::vector<Isa> isas = supported_isas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.front(), Isa::kScalar);
  EXPECT_EQ(isas.back(), best_isa());
  for (size_t i = 0; i < isas.size(); ++i) {
    EXPECT_EQ(static_cast<int>(isas[i]), static_cast<int>(i)) << "levels must be contiguous";
    EXPECT_TRUE(isa_supported(isas[i]));
  }
  for (int i = static_cast<int>(isas.size()); i < kNumIsas; ++i) {
    EXPECT_FALSE(isa_supported(static_cast<Isa>(i)));
  }
}

TEST(Cpu, FeaturesAreConsistentWithIsa) {
  const CpuFeatures& f = cpu_features();
  EXPECT_EQ(&f, &cpu_features());  // detected once
  if (isa_supported(Isa::kAvx2)) {
    EXPECT_TRUE(f.avx2 && f.fma && f.f16c && f.os_avx);
  }
  if (isa_supported(Isa::kAvx512)) {
    EXPECT_TRUE(f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.os_avx512);
  }
}

TEST(Cpu, SetIsaOnUnsupportedLevelFails) {
  const Isa before = active_isa();
  bool tried = false;
  for (int i = 0; i < kNumIsas; ++i) {
    const Isa isa = static_cast<Isa>(i);
    if (isa_supported(isa)) continue;
    tried = true;
    Status s = set_isa(isa);
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.code(), StatusCode::kUnsupported);
    EXPECT_NE(s.message().find(std::string(isa_name(isa))), std::string::npos) << s.message();
    EXPECT_EQ(active_isa(), before) << "a failed set_isa must not change the level";
  }
  if (!tried) GTEST_SKIP() << "this CPU supports every ISA level";
}

TEST(Cpu, ScopedIsaRestores) {
  const Isa before = active_isa();
  {
    ScopedIsa force(Isa::kScalar);
    EXPECT_EQ(active_isa(), Isa::kScalar);
    {
      ScopedIsa inner(best_isa());
      EXPECT_EQ(active_isa(), best_isa());
    }
    EXPECT_EQ(active_isa(), Isa::kScalar);
  }
  EXPECT_EQ(active_isa(), before);
}

}  // namespace
}  // namespace lowbit
