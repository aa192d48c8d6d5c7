// ggml block types: the type table and hand-built blocks with known values. Bit-exactness against
// the gguf package's dequantizers is checked by GgufCrossCheck.* (tests/model/gguf_crosscheck.py).

#include "lowbit/ggml_blocks.h"

#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "lowbit/formats.h"

namespace lowbit {
namespace {

ggml_half h(float v) { return static_cast<ggml_half>(encode(Format::kFp16, v)); }

TEST(GgmlBlocks, TypeTableFacts) {
  struct Want { GgmlType type; const char* name; int64_t block, bytes; double bpw; };
  const Want want[] = {
      {GgmlType::kQ4_0, "q4_0", 32, 18, 4.5},     {GgmlType::kQ4_1, "q4_1", 32, 20, 5.0},
      {GgmlType::kQ5_0, "q5_0", 32, 22, 5.5},     {GgmlType::kQ5_1, "q5_1", 32, 24, 6.0},
      {GgmlType::kQ8_0, "q8_0", 32, 34, 8.5},     {GgmlType::kQ2_K, "q2_K", 256, 84, 2.625},
      {GgmlType::kQ3_K, "q3_K", 256, 110, 3.4375}, {GgmlType::kQ4_K, "q4_K", 256, 144, 4.5},
      {GgmlType::kQ5_K, "q5_K", 256, 176, 5.5},   {GgmlType::kQ6_K, "q6_K", 256, 210, 6.5625},
      {GgmlType::kIQ4_NL, "iq4_nl", 32, 18, 4.5}, {GgmlType::kIQ4_XS, "iq4_xs", 256, 136, 4.25},
  };
  ASSERT_EQ(ggml_block_types().size(), std::size(want));
  for (const Want& w : want) {
    const GgmlBlockInfo* info = ggml_block_info(w.type);
    ASSERT_NE(info, nullptr) << w.name;
    EXPECT_EQ(info->name, w.name);
    EXPECT_EQ(info->block_size, w.block) << w.name;
    EXPECT_EQ(info->type_size, w.bytes) << w.name;
    EXPECT_DOUBLE_EQ(info->bpw, w.bpw) << w.name;
    EXPECT_EQ(ggml_block_info(std::string_view(w.name)), info);
  }
  EXPECT_EQ(ggml_block_info("Q4_K"), ggml_block_info(GgmlType::kQ4_K));
  EXPECT_EQ(ggml_block_info("q4_k_m"), nullptr);
  EXPECT_EQ(ggml_block_info(GgmlType::kIQ2_XXS), nullptr);
}

TEST(GgmlBlocks, DequantizeRowRejectsUnknownTypesAndPartialBlocks) {
  std::vector<uint8_t> bytes(256, 0);
  std::vector<float> y(256, 7.0f);
  EXPECT_FALSE(dequantize_row(GgmlType::kIQ2_XXS, bytes.data(), y.data(), 256));
  EXPECT_FALSE(dequantize_row(GgmlType::kQ4_K, bytes.data(), y.data(), 128));
  EXPECT_FALSE(dequantize_row(GgmlType::kQ4_0, bytes.data(), y.data(), 33));
  EXPECT_EQ(y[0], 7.0f);  // untouched
  EXPECT_TRUE(dequantize_row(GgmlType::kQ4_0, bytes.data(), y.data(), 32));
}

// Q3_K: scale i's low nibble is nibble i/8 of byte i%8, high bits are bits 2*(i/4) of byte 8+i%4.
TEST(GgmlBlocks, Q3KScalesUnpackEveryValue) {
  for (int target = 0; target < 16; ++target) {
    for (int v = 0; v < 64; ++v) {
      uint8_t packed[12] = {};
      packed[target % 8] = static_cast<uint8_t>((v & 15) << (4 * (target / 8)));
      packed[8 + target % 4] = static_cast<uint8_t>((v >> 4) << (2 * (target / 4)));
      int8_t out[16];
      ggml_q3_K_scales(packed, out);
      for (int i = 0; i < 16; ++i) ASSERT_EQ(out[i], i == target ? v - 32 : -32) << target << " " << v;
    }
  }
}

TEST(GgmlBlocks, KnownValues) {
  // Q2_K: every scale 3, min 1; d = 0.5, dmin = 0.25; code of element e = (e / 32) % 4 -> x = 1.5*q - 0.25.
  BlockQ2_K q2{};
  std::memset(q2.scales, 0x13, sizeof q2.scales);
  for (int n = 0; n < 2; ++n)
    for (int l = 0; l < 32; ++l) q2.qs[32 * n + l] = 0b11100100;  // j-th 2-bit field = j
  q2.d = h(0.5f);
  q2.dmin = h(0.25f);
  std::vector<float> y(256);
  dequantize_row_q2_K(&q2, y.data(), 256);
  for (int e = 0; e < 256; ++e) ASSERT_EQ(y[e], 1.5f * static_cast<float>((e / 32) % 4) - 0.25f) << e;

  // Q3_K: all scales stored 34 (= +2), d = 1; hmask bit set for n = 0 only: q = 0..3 then -4..-1.
  BlockQ3_K q3{};
  for (int i = 0; i < 8; ++i) q3.scales[i] = 0x22;     // low nibbles 2
  for (int i = 8; i < 12; ++i) q3.scales[i] = 0xAA;    // high bits 2 -> 32 + 2
  for (int l = 0; l < 32; ++l) q3.hmask[l] = 0x0F;     // bits 0..3 = n 0
  for (int i = 0; i < 64; ++i) q3.qs[i] = 0b11100100;
  q3.d = h(1.0f);
  dequantize_row_q3_K(&q3, y.data(), 256);
  for (int e = 0; e < 256; ++e) {
    const int q = (e / 32) % 4 - (e < 128 ? 0 : 4);
    ASSERT_EQ(y[e], 2.0f * static_cast<float>(q)) << e;
  }

  // IQ4_XS: sub-block s has ls = 32 + s (scales_l nibble s, scales_h 2); codes = position.
  BlockIQ4_XS xs{};
  xs.d = h(0.5f);
  xs.scales_h = 0xAAAA;  // high 2 bits of every ls = 2 -> 32
  for (int s = 0; s < 8; ++s) xs.scales_l[s / 2] = static_cast<uint8_t>(xs.scales_l[s / 2] | (s << (4 * (s % 2))));
  for (int i = 0; i < 128; ++i) xs.qs[i] = static_cast<uint8_t>((i % 16) | ((15 - i % 16) << 4));
  dequantize_row_iq4_xs(&xs, y.data(), 256);
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32, j = e % 32;
    const int code = j < 16 ? j : 15 - (j - 16);
    ASSERT_EQ(y[e], 0.5f * static_cast<float>(s) * static_cast<float>(kIq4nlValues[code])) << e;
  }

  // Q5_K: sub-block s scale s+1, min 0; fifth bit set for sub-block 7 only.
  BlockQ5_K q5{};
  q5.d = h(1.0f);
  q5.dmin = h(1.0f);
  for (int s = 0; s < 4; ++s) q5.scales[s] = static_cast<uint8_t>(s + 1);
  for (int s = 4; s < 8; ++s) q5.scales[s + 4] = static_cast<uint8_t>(s + 1);
  for (int l = 0; l < 32; ++l) q5.qh[l] = 0x80;
  for (int i = 0; i < 128; ++i) q5.qs[i] = 0x21;  // low nibble 1, high nibble 2
  dequantize_row_q5_K(&q5, y.data(), 256);
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32;
    const int q = (s % 2 == 0 ? 1 : 2) + (s == 7 ? 16 : 0);
    ASSERT_EQ(y[e], static_cast<float>((s + 1) * q)) << e;
  }
}

}  // namespace
}  // namespace lowbit
