// QuantSpec text form (parse_spec / to_string), validate(), element_qmax() and block_grid(),
// against docs/schemes.md and include/lowbit/quant.h.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/formats.h"
#include "lowbit/quant.h"

namespace lowbit {
namespace {

bool contains(const std::string& s, std::string_view sub) { return s.find(sub) != std::string::npos; }

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string describe(const QuantSpec& s) {
  return std::string(format_name(s.element)) + " gran=" + std::to_string(static_cast<int>(s.granularity)) +
         " group=" + std::to_string(s.group) + " block=" + std::to_string(s.block_rows) + "x" +
         std::to_string(s.block_cols) + " sym=" + std::to_string(s.symmetric) + " sf=" +
         std::string(format_name(s.scale_format)) + " ts=" + std::to_string(s.tensor_scale) +
         " rule=" + std::to_string(static_cast<int>(s.scale_rule)) + " clip=" + std::to_string(static_cast<int>(s.clip)) +
         " p=" + std::to_string(s.percentile) + " round=" + std::to_string(static_cast<int>(s.rounding)) +
         " seed=" + std::to_string(s.seed) + " sat=" + std::to_string(s.saturate);
}

// Parses, and checks that the canonical text parses back to the same spec and is a fixed point.
void expect_round_trip(std::string_view text) {
  SCOPED_TRACE(std::string(text));
  auto r = parse_spec(text);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const std::string canon = to_string(*r);
  auto r2 = parse_spec(canon);
  ASSERT_TRUE(r2.ok()) << "canonical \"" << canon << "\" does not parse: " << r2.status().to_string();
  EXPECT_TRUE(*r2 == *r) << "canonical \"" << canon << "\"\n  " << describe(*r) << "\n  " << describe(*r2);
  EXPECT_EQ(to_string(*r2), canon);
  EXPECT_TRUE(validate(*r).ok()) << validate(*r).to_string();
}

TEST(SpecText, RoundTrip) {
  for (const char* text : {
           // named in docs/schemes.md and quant.h
           "int4:g128:sym:fp16", "e4m3:block128x128:fp32", "uint8:tensor:asym", "e2m1:g16:e4m3*fp32",
           "int8:tensor", "int8:row", "int8:channel", "int8:token", "int8:col", "int4:g128", "e4m3:tile1x128",
           "e4m3:block1x128", "e2m1:g32:e8m0", "e4m3:g32:e8m0", "e5m2:g32:e8m0",
           // every element format
           "int8:g64", "uint8:row:asym", "int4:g32:asym", "uint4:g32:asym:fp16", "nf4:g64", "e4m3:row",
           "e5m2:tensor", "e2m1:g32", "fp16:row", "bf16:g128",
           // scale formats
           "int8:row:sym:fp32", "int8:row:sym:fp16", "int8:row:sym:bf16", "int8:row:sym:e8m0",
           "int4:g32:sym:e4m3", "int4:g32:e4m3",
           // options
           "int8:row:sym:fp32:absmax", "int8:row:sym:fp32:p99.9", "int8:row:p99", "int8:row:p50",
           "int8:row:p100", "int8:row:p12.5", "int4:g32:mse", "int4:g32:sym:fp16:mse", "int8:row:pow2",
           "e2m1:g32:e8m0:mxfloor", "int4:g32:rne", "int4:g32:sr42", "int4:g32:sym:fp32:sr7", "int4:g32:sr0",
           "int4:g32:sr123456789012345", "e4m3:row:sat", "e4m3:row:nosat", "e4m3:tile1x128:fp32:nosat",
           "int4:g32:sym:fp16:p99.9:sr42", "int4:g7", "int4:g1", "int4:block3x5", "int8:tile128x128",
           "uint4:block3x5:asym:bf16",
       }) {
    expect_round_trip(text);
  }
}

QuantSpec P(std::string_view text) {
  auto r = parse_spec(text);
  if (!r.ok()) {
    ADD_FAILURE() << "parse_spec(\"" << text << "\"): " << r.status().to_string();
    return QuantSpec{};
  }
  return *r;
}

TEST(SpecText, Fields) {
  {
    const QuantSpec s = P("int4:g128:sym:fp16");
    EXPECT_EQ(s.element, Format::kInt4);
    EXPECT_EQ(s.granularity, Granularity::kGroup);
    EXPECT_EQ(s.group, 128);
    EXPECT_TRUE(s.symmetric);
    EXPECT_EQ(s.scale_format, Format::kFp16);
    EXPECT_FALSE(s.tensor_scale);
    EXPECT_EQ(s.clip, ClipRule::kAbsMax);
    EXPECT_EQ(s.rounding, Rounding::kNearestEven);
    EXPECT_TRUE(s.saturate);
  }
  {
    const QuantSpec s = P("e4m3:block128x128:fp32");
    EXPECT_EQ(s.element, Format::kE4m3);
    EXPECT_EQ(s.granularity, Granularity::kBlock);
    EXPECT_EQ(s.block_rows, 128);
    EXPECT_EQ(s.block_cols, 128);
    EXPECT_EQ(s.scale_format, Format::kFp32);
  }
  {
    const QuantSpec s = P("e4m3:tile1x128");
    EXPECT_EQ(s.granularity, Granularity::kBlock);
    EXPECT_EQ(s.block_rows, 1);
    EXPECT_EQ(s.block_cols, 128);
    EXPECT_TRUE(s == P("e4m3:block1x128"));
  }
  {
    const QuantSpec s = P("uint8:tensor:asym");
    EXPECT_EQ(s.element, Format::kUint8);
    EXPECT_EQ(s.granularity, Granularity::kTensor);
    EXPECT_FALSE(s.symmetric);
    EXPECT_EQ(s.scale_format, Format::kFp32);  // default scale format
  }
  {
    const QuantSpec s = P("e2m1:g16:e4m3*fp32");
    EXPECT_EQ(s.element, Format::kE2m1);
    EXPECT_EQ(s.group, 16);
    EXPECT_EQ(s.scale_format, Format::kE4m3);
    EXPECT_TRUE(s.tensor_scale);
    EXPECT_FALSE(P("e2m1:g16:e4m3").tensor_scale);
  }
  {
    const QuantSpec s = P("int8:row:sym:fp32:p99.9");
    EXPECT_EQ(s.clip, ClipRule::kPercentile);
    EXPECT_DOUBLE_EQ(s.percentile, 99.9);
    EXPECT_DOUBLE_EQ(P("int8:row:p12.5").percentile, 12.5);
  }
  EXPECT_EQ(P("int4:g32:mse").clip, ClipRule::kMse);
  EXPECT_EQ(P("int8:row:pow2").scale_rule, ScaleRule::kPow2Ceil);
  EXPECT_EQ(P("e2m1:g32:e8m0:mxfloor").scale_rule, ScaleRule::kMxFloor);
  EXPECT_EQ(P("e2m1:g32:e8m0").scale_format, Format::kE8m0);
  // docs/schemes.md: divide is the default scale rule; MX applies to e8m0 with a float element
  // (parse may record it as kMxFloor or leave kDivide), never to integer elements.
  EXPECT_EQ(P("int8:row:sym:e8m0").scale_rule, ScaleRule::kDivide);
  EXPECT_EQ(P("int4:g32:e8m0").scale_rule, ScaleRule::kDivide);
  EXPECT_EQ(P("nf4:g64:e8m0").scale_rule, ScaleRule::kDivide);
  {
    const QuantSpec s = P("int4:g32:sr42");
    EXPECT_EQ(s.rounding, Rounding::kStochastic);
    EXPECT_EQ(s.seed, 42u);
    EXPECT_EQ(P("int4:g32:sr123456789012345").seed, 123456789012345u);
  }
  EXPECT_FALSE(P("e4m3:row:nosat").saturate);
  EXPECT_TRUE(P("e4m3:row:sat").saturate);
  EXPECT_EQ(P("int8:col").granularity, Granularity::kCol);
  EXPECT_EQ(P("int8:tensor").granularity, Granularity::kTensor);
  for (const char* e : {"int8", "uint8", "int4", "uint4", "nf4", "e4m3", "e5m2", "e2m1", "fp16", "bf16"}) {
    const std::string t = std::string(e) + ":row" + (e[0] == 'u' ? ":asym" : "");
    auto r = parse_spec(t);
    ASSERT_TRUE(r.ok()) << t << ": " << r.status().to_string();
    EXPECT_EQ(format_name(r->element), e);
  }
}

TEST(SpecText, DefaultsAndAliases) {
  // omitted fields are the defaults: sym, fp32, absmax, rne, sat
  EXPECT_TRUE(P("int4:g128") == P("int4:g128:sym:fp32:absmax:rne:sat"));
  EXPECT_TRUE(P("int4:g128") == P("int4:g128:sym"));
  EXPECT_TRUE(P("int4:g128") == P("int4:g128:fp32"));
  QuantSpec hand;
  hand.element = Format::kInt4;
  hand.granularity = Granularity::kGroup;
  hand.group = 128;
  EXPECT_TRUE(P("int4:g128") == hand) << describe(P("int4:g128"));
  // channel and token are row, canonically spelled "row"
  const QuantSpec row = P("int8:row");
  EXPECT_TRUE(P("int8:channel") == row);
  EXPECT_TRUE(P("int8:token") == row);
  for (const char* t : {"int8:channel", "int8:token", "int8:row"}) {
    const std::string canon = to_string(P(t));
    EXPECT_EQ(canon, to_string(row)) << t;
    EXPECT_TRUE(contains(canon, "row")) << canon;
    EXPECT_FALSE(contains(canon, "channel") || contains(canon, "token")) << canon;
  }
  // tile is block
  EXPECT_EQ(to_string(P("e4m3:tile1x128")), to_string(P("e4m3:block1x128")));
  // the canonical text names what it holds
  const std::string c = to_string(P("int4:g128:sym:fp16"));
  EXPECT_TRUE(contains(c, "int4") && contains(c, "g128") && contains(c, "fp16")) << c;
  EXPECT_TRUE(contains(to_string(P("e2m1:g16:e4m3*fp32")), "e4m3*fp32")) << to_string(P("e2m1:g16:e4m3*fp32"));
  EXPECT_TRUE(contains(to_string(P("uint8:tensor:asym")), "asym"));
  EXPECT_TRUE(contains(to_string(P("int4:g32:sr42")), "sr42"));
  EXPECT_TRUE(contains(to_string(P("int8:row:p99.9")), "p99.9"));
}

// Every error names the field at fault (and, where there is a fixed set, the accepted values).
TEST(SpecText, Errors) {
  struct Case {
    const char* text;
    std::vector<std::vector<const char*>> must;  // each inner list: at least one must appear
  };
  const Case cases[] = {
      {"int4:g0", {{"group"}}},
      {"int4:g-4", {{"group", "granularity"}}},
      {"int4:gx", {{"group", "granularity"}}},
      {"int4:g", {{"group", "granularity"}}},
      {"int4:g128:sym:int8", {{"scale format"}, {"fp16"}, {"e8m0"}, {"int8"}}},
      {"int4:g128:e4m3*fp16", {{"scale"}}},
      {"e4m3:g32:asym", {{"asym", "symmetr"}}},
      {"nf4:g64:asym", {{"asym", "symmetr"}}},
      {"e2m1:g32:asym", {{"asym", "symmetr"}}},
      {"int4", {{"granularity"}}},
      {"int4:", {{"granularity"}}},
      {"foo:g128", {{"element"}, {"foo"}, {"int4"}, {"e2m1"}}},
      {"e8m0:tensor", {{"element"}}},
      {"fp32x:row", {{"element"}}},
      {"int4:g128:bogus", {{"bogus"}}},
      {"int4:rows", {{"granularity"}, {"tensor"}}},
      {"int4:block0x5", {{"block"}}},
      {"int4:block5x0", {{"block"}}},
      {"int4:block4", {{"block", "granularity"}}},
      {"int4:blockaxb", {{"block", "granularity"}}},
      {"int8:tensor:p0", {{"percent"}}},
      {"int8:tensor:p100.5", {{"percent"}}},
      {"int8:tensor:pabc", {{"percent", "option"}}},
      {"int8:tensor:srx", {{"seed", "sr", "option"}}},
      {"", {{"element", "empty", "spec"}}},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.text);
    auto r = parse_spec(k.text);
    ASSERT_FALSE(r.ok()) << "accepted as " << to_string(*r);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    const std::string m = lower(r.status().message());
    for (const auto& any : k.must) {
      bool found = false;
      for (const char* w : any) found = found || contains(m, lower(w));
      EXPECT_TRUE(found) << "message lacks " << any.front() << ": " << r.status().message();
    }
  }
}

TEST(SpecValidate, HandBuilt) {
  QuantSpec ok;
  EXPECT_TRUE(validate(ok).ok()) << validate(ok).to_string();
  ok.granularity = Granularity::kRow;
  EXPECT_TRUE(validate(ok).ok());

  auto expect_bad = [](const QuantSpec& s, std::vector<const char*> any_of, const char* what) {
    Status st = validate(s);
    EXPECT_FALSE(st.ok()) << what;
    if (st.ok()) return;
    const std::string m = lower(st.message());
    bool found = false;
    for (const char* w : any_of) found = found || contains(m, w);
    EXPECT_TRUE(found) << what << ": " << st.message();
  };
  {
    QuantSpec s;
    s.element = Format::kInt4;
    s.granularity = Granularity::kGroup;
    s.group = 0;
    expect_bad(s, {"group"}, "group 0");
    s.group = -8;
    expect_bad(s, {"group"}, "group -8");
    s.group = 8;
    EXPECT_TRUE(validate(s).ok());
  }
  {
    QuantSpec s;
    s.granularity = Granularity::kBlock;
    s.block_rows = 0;
    s.block_cols = 5;
    expect_bad(s, {"block"}, "block 0x5");
    s.block_rows = 5;
    s.block_cols = 0;
    expect_bad(s, {"block"}, "block 5x0");
    s.block_cols = 3;
    EXPECT_TRUE(validate(s).ok());
  }
  for (Format f : {Format::kE4m3, Format::kE5m2, Format::kE2m1, Format::kNf4, Format::kFp16, Format::kBf16}) {
    QuantSpec s;
    s.element = f;
    s.symmetric = false;
    expect_bad(s, {"asym", "symmetr", "affine", "integer"}, "asym float");
  }
  for (Format f : {Format::kInt8, Format::kUint8, Format::kInt4, Format::kUint4}) {
    QuantSpec s;
    s.element = f;
    s.symmetric = false;
    EXPECT_TRUE(validate(s).ok()) << format_name(f);
  }
  for (Format f : {Format::kInt8, Format::kInt4, Format::kUint8, Format::kNf4, Format::kE2m1, Format::kE5m2}) {
    QuantSpec s;
    s.element = Format::kInt4;
    s.scale_format = f;
    expect_bad(s, {"scale"}, "scale format");
    // names the offending scale format (not the element)
    EXPECT_TRUE(contains(validate(s).message(), format_name(f))) << validate(s).message();
  }
  for (Format f : {Format::kFp32, Format::kFp16, Format::kBf16, Format::kE8m0, Format::kE4m3}) {
    QuantSpec s;
    s.scale_format = f;
    EXPECT_TRUE(validate(s).ok()) << format_name(f) << ": " << validate(s).to_string();
  }
  {
    QuantSpec s;
    s.element = Format::kE8m0;
    expect_bad(s, {"element"}, "e8m0 element");
  }
  {
    QuantSpec s;
    s.clip = ClipRule::kPercentile;
    s.percentile = 0.0;
    expect_bad(s, {"percent"}, "percentile 0");
    s.percentile = 100.5;
    expect_bad(s, {"percent"}, "percentile 100.5");
    s.percentile = 100.0;
    EXPECT_TRUE(validate(s).ok());
  }
}

// Specs built in code, all valid: to_string parses back to the same spec.
TEST(SpecText, HandBuiltRoundTrip) {
  int n = 0;
  const Format elements[] = {Format::kInt8, Format::kUint8, Format::kInt4, Format::kUint4, Format::kNf4,
                             Format::kE4m3, Format::kE5m2, Format::kE2m1, Format::kFp16, Format::kBf16};
  for (Format e : elements) {
    const bool is_int = traits(e).kind == FormatKind::kInteger;
    for (int g = 0; g < 5; ++g) {
      for (Format sf : {Format::kFp32, Format::kFp16, Format::kBf16, Format::kE8m0, Format::kE4m3}) {
        for (int opt = 0; opt < 6; ++opt) {
          QuantSpec s;
          s.element = e;
          s.granularity = static_cast<Granularity>(g);
          if (s.granularity == Granularity::kGroup) s.group = 32;
          if (s.granularity == Granularity::kBlock) {
            s.block_rows = 3;
            s.block_cols = 128;
          }
          s.scale_format = sf;
          // unsigned integers are used affine; signed integers both ways
          s.symmetric = !(is_int && (!traits(e).is_signed || opt % 2 == 1));
          if (sf == Format::kE8m0 && traits(e).kind == FormatKind::kFloat) {
            s.scale_rule = ScaleRule::kMxFloor;  // MX: stated explicitly
            s.symmetric = true;
          }
          switch (opt) {
            case 1: s.clip = ClipRule::kMse; break;
            case 2: s.clip = ClipRule::kPercentile; s.percentile = 99.95; break;
            case 3: s.rounding = Rounding::kStochastic; s.seed = 9001; break;
            case 4: s.saturate = false; break;
            case 5:
              if (s.symmetric && sf != Format::kE8m0) s.scale_rule = ScaleRule::kPow2Ceil;
              break;
            default: break;
          }
          if (!s.symmetric && opt == 2) continue;  // asym percentiles: not part of this check
          if (!s.symmetric && sf != Format::kFp32 && sf != Format::kFp16 && sf != Format::kBf16) continue;
          SCOPED_TRACE(describe(s));
          Status v = validate(s);
          ASSERT_TRUE(v.ok()) << v.to_string();
          const std::string text = to_string(s);
          auto r = parse_spec(text);
          ASSERT_TRUE(r.ok()) << text << ": " << r.status().to_string();
          EXPECT_TRUE(*r == s) << text << " parsed as " << describe(*r);
          ++n;
        }
      }
    }
  }
  // NVFP4 built by hand
  QuantSpec nv;
  nv.element = Format::kE2m1;
  nv.granularity = Granularity::kGroup;
  nv.group = 16;
  nv.scale_format = Format::kE4m3;
  nv.tensor_scale = true;
  ASSERT_TRUE(validate(nv).ok()) << validate(nv).to_string();
  auto r = parse_spec(to_string(nv));
  ASSERT_TRUE(r.ok()) << to_string(nv);
  EXPECT_TRUE(*r == nv) << to_string(nv);
  EXPECT_TRUE(*r == P("e2m1:g16:e4m3*fp32"));
  EXPECT_GT(n, 500);
}

TEST(SpecQmax, ElementQmax) {
  struct Case {
    Format f;
    double qmax;
  };
  for (const Case& k : {Case{Format::kInt8, 127}, Case{Format::kInt4, 7}, Case{Format::kUint8, 255},
                        Case{Format::kUint4, 15}, Case{Format::kE4m3, 448}, Case{Format::kE5m2, 57344},
                        Case{Format::kE2m1, 6}, Case{Format::kNf4, 1}, Case{Format::kFp16, 65504},
                        Case{Format::kBf16, 3.3895313892515355e38}}) {
    QuantSpec s;
    s.element = k.f;
    EXPECT_EQ(element_qmax(s), k.qmax) << format_name(k.f);
  }
}

TEST(SpecGrid, BlockGrid) {
  struct Case {
    const char* spec;
    int64_t rows, cols, br, bc, gr, gc;
  };
  const Case cases[] = {
      {"int8:tensor", 130, 300, 130, 300, 1, 1},
      {"int8:row", 130, 300, 1, 300, 130, 1},
      {"int8:channel", 130, 300, 1, 300, 130, 1},
      {"int8:col", 130, 300, 130, 1, 1, 300},
      {"int4:g128", 130, 300, 1, 128, 130, 3},
      {"int4:g32", 5, 172, 1, 32, 5, 6},
      {"int4:g7", 3, 127, 1, 7, 3, 19},
      {"int4:g1", 2, 9, 1, 1, 2, 9},
      {"int4:g4096", 2, 9, -1, -1, 2, 1},  // block wider than the matrix: shape not pinned by the doc
      {"e4m3:block128x128", 130, 300, 128, 128, 2, 3},
      {"e4m3:block3x5", 130, 300, 3, 5, 44, 60},
      {"e4m3:tile1x128", 130, 300, 1, 128, 130, 3},
      {"e4m3:block128x128", 1, 1, -1, -1, 1, 1},
      {"int8:row", 1, 4097, 1, 4097, 1, 1},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(std::string(k.spec) + " " + std::to_string(k.rows) + "x" + std::to_string(k.cols));
    const BlockGrid g = block_grid(P(k.spec), k.rows, k.cols);
    EXPECT_EQ(g.rows, k.rows);
    EXPECT_EQ(g.cols, k.cols);
    if (k.br >= 0) {
      EXPECT_EQ(g.block_rows, k.br);
      EXPECT_EQ(g.block_cols, k.bc);
    }
    EXPECT_EQ(g.grid_rows, k.gr);
    EXPECT_EQ(g.grid_cols, k.gc);
    EXPECT_EQ(g.num_blocks(), k.gr * k.gc);
  }
}

}  // namespace
}  // namespace lowbit
