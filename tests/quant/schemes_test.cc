// Named schemes: every one parses, round-trips, and costs what its layout says.
#include <gtest/gtest.h>

#include "lowbit/quant.h"

namespace lowbit {
namespace {

TEST(Schemes, EveryNamedSchemeParsesAndRoundTrips) {
  ASSERT_GE(named_schemes().size(), 11u);
  for (const Scheme& s : named_schemes()) {
    Result<QuantSpec> w = parse_spec(s.weights);
    ASSERT_TRUE(w.ok()) << s.name << ": " << w.status().to_string();
    Result<QuantSpec> again = parse_spec(to_string(*w));
    ASSERT_TRUE(again.ok()) << to_string(*w);
    EXPECT_EQ(*again, *w) << s.name;
    if (!s.activations.empty()) {
      Result<QuantSpec> a = parse_spec(s.activations);
      EXPECT_TRUE(a.ok()) << s.name << ": " << a.status().to_string();
    }
  }
}

TEST(Schemes, BitsPerWeightIncludeScaleOverhead) {
  auto bpw = [](std::string_view name) {
    return bits_per_weight(parse_spec(find_scheme(name)->weights).value(), 4096, 4096);
  };
  EXPECT_DOUBLE_EQ(bpw("w4a16-g128"), 4.0 + 16.0 / 128.0);
  EXPECT_DOUBLE_EQ(bpw("w8a8"), 8.0 + 32.0 / 4096.0);
  EXPECT_DOUBLE_EQ(bpw("mxfp4"), 4.0 + 8.0 / 32.0);
  EXPECT_DOUBLE_EQ(bpw("mxfp8"), 8.0 + 8.0 / 32.0);
  EXPECT_DOUBLE_EQ(bpw("nf4-g64"), 4.0 + 32.0 / 64.0);
  EXPECT_DOUBLE_EQ(bpw("fp8-block"), 8.0 + 32.0 / (128.0 * 128.0));
  EXPECT_DOUBLE_EQ(bpw("nvfp4"), 4.0 + 8.0 / 16.0 + 32.0 / (4096.0 * 4096.0));
}

TEST(Schemes, MxSchemesUseTheOcpScaleRule) {
  EXPECT_EQ(parse_spec(find_scheme("mxfp4")->weights)->scale_rule, ScaleRule::kMxFloor);
  EXPECT_EQ(parse_spec(find_scheme("mxfp8")->weights)->scale_rule, ScaleRule::kMxFloor);
}

TEST(Schemes, UnknownNameListsKnownOnes) {
  Result<Scheme> s = find_scheme("w3a16");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("w3a16"), std::string::npos);
  EXPECT_NE(s.status().message().find("w4a16-g128"), std::string::npos);
}

}  // namespace
}  // namespace lowbit
