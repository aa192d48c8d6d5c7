// Named schemes: every one parses, round-trips, and costs what its layout says.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "lowbit/quant.h"
#include "lowbit/tensor.h"

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

namespace lowbit {
namespace {

TEST(UnitScale, IsAPlainCastToTheElementFormat) {
  const QuantSpec spec = parse_spec("fp16:tensor:sym:fp32:unit").value();
  EXPECT_EQ(spec.scale_rule, ScaleRule::kUnit);
  EXPECT_EQ(parse_spec(to_string(spec)).value(), spec);
  std::vector<float> x = {0.1f, -3.14159f, 1e-6f, 70000.0f, 0.0f, -0.0f, 1234.5678f};
  Tensor t = Tensor::empty(DType::kF32, {1, static_cast<int64_t>(x.size())}).value();
  std::copy(x.begin(), x.end(), t.data_as<float>());
  const QuantizedTensor q = quantize(t.view(), spec).value();
  ASSERT_EQ(q.scales.size(), 1u);
  EXPECT_EQ(q.scales[0], 1.0f);
  for (size_t i = 0; i < x.size(); ++i) {
    // Saturating (the spec default): 70000 clamps to 65504 instead of overflowing to inf.
    EXPECT_EQ(static_cast<uint32_t>(q.code_at(0, static_cast<int64_t>(i))),
              encode(Format::kFp16, x[i], {.saturate = true})) << x[i];
  }
  EXPECT_FALSE(parse_spec("fp16:tensor:sym:fp32:unit:mse").ok());
}

}  // namespace
}  // namespace lowbit
