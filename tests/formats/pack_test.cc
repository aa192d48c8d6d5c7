// Storage layout of encode_span/decode_span (4-bit packing, little-endian wide codes)
// and the format names parse_format accepts.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "lowbit/convert.h"
#include "lowbit/formats.h"

namespace lowbit {
namespace {

std::vector<uint8_t> encode_bytes(Format f, const std::vector<float>& x, const EncodeOptions& opt = {}) {
  std::vector<uint8_t> out(packed_bytes(f, x.size()), 0xCD);
  encode_span(f, x, out, opt);
  return out;
}

TEST(Pack, Int4LowNibbleFirstAndOddTailZero) {
  EXPECT_EQ(encode_bytes(Format::kInt4, {1.0f, -1.0f, 7.0f}), (std::vector<uint8_t>{0xF1, 0x07}));
  EXPECT_EQ(encode_bytes(Format::kInt4, {-8.0f}), (std::vector<uint8_t>{0x08}));
  EXPECT_EQ(encode_bytes(Format::kInt4, {0.0f, -8.0f, 3.0f, -2.0f}), (std::vector<uint8_t>{0x80, 0xE3}));
  EXPECT_EQ(encode_bytes(Format::kInt4, {}), (std::vector<uint8_t>{}));
}

TEST(Pack, OtherFourBitFormats) {
  EXPECT_EQ(encode_bytes(Format::kUint4, {15.0f, 0.0f, 9.0f}), (std::vector<uint8_t>{0x0F, 0x09}));
  // e2m1: 6 = 0x7, -0.5 = 0x9, 1.5 = 0x3
  EXPECT_EQ(encode_bytes(Format::kE2m1, {6.0f, -0.5f, 1.5f}), (std::vector<uint8_t>{0x97, 0x03}));
  // nf4: -1 = 0, 1 = 15, 0 = 7
  EXPECT_EQ(encode_bytes(Format::kNf4, {-1.0f, 1.0f, 0.0f}), (std::vector<uint8_t>{0xF0, 0x07}));
}

// 3-bit formats: a little-endian bit stream, element i in bits 3i..3i+2 (codes straddle bytes).
TEST(Pack, ThreeBitStreamWorkedExamples) {
  // int3 {1, -1, 3, -4}: codes 001 111 011 100 -> stream 0b100'011'111'001 = 0x8F9
  EXPECT_EQ(encode_bytes(Format::kInt3, {1.0f, -1.0f, 3.0f, -4.0f}), (std::vector<uint8_t>{0xF9, 0x08}));
  // uint3 {7, 0, 5}: 111 000 101 -> 0b101'000'111 = 0x147; the unused top bits of the last byte are 0
  EXPECT_EQ(encode_bytes(Format::kUint3, {7.0f, 0.0f, 5.0f}), (std::vector<uint8_t>{0x47, 0x01}));
  // eight elements fill exactly three bytes: uint3 0..7 -> 0b111'110'101'100'011'010'001'000
  EXPECT_EQ(encode_bytes(Format::kUint3, {0, 1, 2, 3, 4, 5, 6, 7}), (std::vector<uint8_t>{0x88, 0xC6, 0xFA}));
  EXPECT_EQ(encode_bytes(Format::kInt3, {}), (std::vector<uint8_t>{}));
  std::vector<float> out(3);
  decode_span(Format::kUint3, std::vector<uint8_t>{0x47, 0x01}, out);
  EXPECT_EQ(out, (std::vector<float>{7.0f, 0.0f, 5.0f}));
  out.resize(4);
  decode_span(Format::kInt3, std::vector<uint8_t>{0xF9, 0x08}, out);
  EXPECT_EQ(out, (std::vector<float>{1.0f, -1.0f, 3.0f, -4.0f}));
}

// Every code in every slot of every length 1..17: encode_span / decode_span / load_code /
// store_code agree with a bit-by-bit stream written here.
TEST(Pack, BitStreamRoundTripEveryLength) {  // 3-, 5- and 6-bit codes
  uint32_t state = 12345;
  for (Format f : {Format::kInt3, Format::kUint3, Format::kInt5, Format::kUint5, Format::kInt6, Format::kUint6}) {
    const uint32_t b = static_cast<uint32_t>(traits(f).bits), mask = (1u << b) - 1u;
    for (size_t n = 1; n <= 17; ++n) {
      for (int trial = 0; trial < 8; ++trial) {
        std::vector<uint32_t> codes(n);
        for (size_t i = 0; i < n; ++i) codes[i] = ((state = state * 1103515245u + 12345u) >> 26) & mask;
        if (trial == 0) std::fill(codes.begin(), codes.end(), mask);  // all ones: catches spills into neighbours
        std::vector<uint8_t> stream(packed_bytes(f, n), 0);
        ASSERT_EQ(stream.size(), (b * n + 7) / 8);
        for (size_t i = 0; i < n; ++i)
          for (size_t t = 0; t < b; ++t)
            if ((codes[i] >> t) & 1u) stream[(b * i + t) / 8] |= static_cast<uint8_t>(1u << ((b * i + t) % 8));
        std::vector<float> x(n);
        for (size_t i = 0; i < n; ++i) x[i] = decode(f, codes[i]);
        ASSERT_EQ(encode_bytes(f, x), stream) << format_name(f) << " n=" << n;
        std::vector<float> back(n);
        decode_span(f, stream, back);
        ASSERT_EQ(back, x) << format_name(f) << " n=" << n;
        std::vector<uint8_t> built(stream.size(), 0);
        for (size_t i = 0; i < n; ++i) {
          ASSERT_EQ(load_code(f, stream.data(), i), codes[i]) << format_name(f) << " n=" << n << " i=" << i;
          store_code(f, built.data(), i, codes[i]);
        }
        ASSERT_EQ(built, stream) << format_name(f) << " n=" << n;
        // overwriting one code keeps its neighbours
        for (size_t i = 0; i < n; ++i) {
          std::vector<uint8_t> edit = stream;
          store_code(f, edit.data(), i, codes[i] ^ 5u);
          for (size_t j = 0; j < n; ++j) ASSERT_EQ(load_code(f, edit.data(), j), j == i ? (codes[j] ^ 5u) : codes[j]);
        }
      }
    }
  }
}

TEST(Pack, WideCodesAreLittleEndian) {
  EXPECT_EQ(encode_bytes(Format::kFp16, {1.0f, -2.0f}), (std::vector<uint8_t>{0x00, 0x3C, 0x00, 0xC0}));
  EXPECT_EQ(encode_bytes(Format::kBf16, {1.0f}), (std::vector<uint8_t>{0x80, 0x3F}));
  EXPECT_EQ(encode_bytes(Format::kFp32, {1.0f}), (std::vector<uint8_t>{0x00, 0x00, 0x80, 0x3F}));
  EXPECT_EQ(encode_bytes(Format::kE4m3, {448.0f, -1.0f}), (std::vector<uint8_t>{0x7E, 0xB8}));
  EXPECT_EQ(encode_bytes(Format::kInt8, {-1.0f, 5.0f}), (std::vector<uint8_t>{0xFF, 0x05}));
}

TEST(Pack, PackedBytes) {
  EXPECT_EQ(packed_bytes(Format::kInt4, 0), 0u);
  EXPECT_EQ(packed_bytes(Format::kInt4, 1), 1u);
  EXPECT_EQ(packed_bytes(Format::kInt4, 2), 1u);
  EXPECT_EQ(packed_bytes(Format::kNf4, 3), 2u);
  EXPECT_EQ(packed_bytes(Format::kE2m1, 4097), 2049u);
  EXPECT_EQ(packed_bytes(Format::kE4m3, 5), 5u);
  EXPECT_EQ(packed_bytes(Format::kFp16, 5), 10u);
  EXPECT_EQ(packed_bytes(Format::kBf16, 3), 6u);
  EXPECT_EQ(packed_bytes(Format::kFp32, 3), 12u);
  EXPECT_EQ(packed_bytes(Format::kInt3, 1), 1u);
  EXPECT_EQ(packed_bytes(Format::kInt3, 3), 2u);
  EXPECT_EQ(packed_bytes(Format::kUint3, 8), 3u);
  EXPECT_EQ(packed_bytes(Format::kUint3, 64), 24u);
  EXPECT_EQ(packed_bytes(Format::kInt3, 65), 25u);
  EXPECT_EQ(packed_bytes(Format::kInt5, 1), 1u);
  EXPECT_EQ(packed_bytes(Format::kInt5, 2), 2u);
  EXPECT_EQ(packed_bytes(Format::kUint5, 8), 5u);
  EXPECT_EQ(packed_bytes(Format::kInt6, 4), 3u);
  EXPECT_EQ(packed_bytes(Format::kUint6, 65), 49u);
}

// Every byte decodes to (low nibble, high nibble).
TEST(Pack, DecodeEveryByteAsTwoNibbles) {
  for (Format f : {Format::kUint4, Format::kInt4, Format::kE2m1, Format::kNf4}) {
    for (uint32_t b = 0; b < 256; ++b) {
      const std::vector<uint8_t> in = {static_cast<uint8_t>(b)};
      std::vector<float> out(2);
      decode_span(f, in, out);
      const float lo = decode(f, b & 0xF), hi = decode(f, b >> 4);
      ASSERT_EQ(std::bit_cast<uint32_t>(out[0]), std::bit_cast<uint32_t>(lo)) << format_name(f) << " byte " << b;
      ASSERT_EQ(std::bit_cast<uint32_t>(out[1]), std::bit_cast<uint32_t>(hi)) << format_name(f) << " byte " << b;
    }
  }
  // uint4 values are the nibbles themselves.
  std::vector<float> out(2);
  decode_span(Format::kUint4, std::vector<uint8_t>{0x4B}, out);
  EXPECT_EQ(out, (std::vector<float>{11.0f, 4.0f}));
  decode_span(Format::kInt4, std::vector<uint8_t>{0x8F}, out);
  EXPECT_EQ(out, (std::vector<float>{-1.0f, -8.0f}));
}

// Every representable value of a 4-bit format, in every slot, odd and even lengths.
TEST(Pack, FourBitRoundTripOddAndEven) {
  for (Format f : {Format::kInt4, Format::kUint4, Format::kE2m1, Format::kNf4}) {
    std::vector<float> values;
    for (uint32_t c = 0; c < 16; ++c) values.push_back(decode(f, c));
    for (size_t n : {size_t{1}, size_t{2}, size_t{15}, size_t{16}, size_t{17}, size_t{33}, size_t{1000}, size_t{1001}}) {
      std::vector<float> x(n);
      for (size_t i = 0; i < n; ++i) x[i] = values[(i * 7 + n) % 16];
      const std::vector<uint8_t> bytes = encode_bytes(f, x);
      ASSERT_EQ(bytes.size(), (n + 1) / 2);
      if (n % 2 == 1) {
        EXPECT_EQ(bytes.back() >> 4, 0) << format_name(f) << " n=" << n << ": odd tail high nibble";
      }
      for (size_t i = 0; i < n; ++i) {
        const uint32_t nib = (bytes[i / 2] >> (4 * (i % 2))) & 0xF;
        ASSERT_EQ(nib, encode(f, x[i])) << format_name(f) << " element " << i;
      }
      std::vector<float> back(n, 99.0f);
      decode_span(f, bytes, back);
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(back[i]), std::bit_cast<uint32_t>(x[i]))
            << format_name(f) << " n=" << n << " i=" << i << ": " << back[i] << " vs " << x[i];
      }
    }
  }
}

// Byte-wide and 16-bit formats round trip their own values through the spans too.
TEST(Pack, WideRoundTrip) {
  for (Format f : {Format::kFp16, Format::kBf16, Format::kE4m3, Format::kE5m2, Format::kE8m0, Format::kInt8,
                   Format::kUint8}) {
    std::vector<float> x;
    std::vector<uint32_t> codes;
    for (uint32_t c = 0; c < num_codes(f); c += (num_codes(f) > 256 ? 97 : 1)) {
      if (code_is_nan(f, c)) continue;
      codes.push_back(c);
      x.push_back(decode(f, c));
    }
    std::vector<uint8_t> bytes(packed_bytes(f, x.size()));
    encode_span(f, x, bytes);
    const int w = traits(f).bits / 8;
    for (size_t i = 0; i < x.size(); ++i) {
      uint32_t c = 0;
      for (int b = 0; b < w; ++b) c |= static_cast<uint32_t>(bytes[i * w + b]) << (8 * b);
      ASSERT_EQ(c, codes[i]) << format_name(f) << " element " << i;
    }
    std::vector<float> back(x.size());
    decode_span(f, bytes, back);
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(back[i]), std::bit_cast<uint32_t>(x[i])) << format_name(f) << " " << i;
    }
  }
}

// Zero-length spans (an empty std::vector has data() == nullptr) are valid input everywhere;
// the sanitizer build catches a memcpy/kernel call on the null pointer.
TEST(Pack, EmptySpans) {
  const std::vector<float> no_floats;
  const std::vector<uint8_t> no_bytes;
  const std::vector<uint16_t> no_u16;
  std::vector<float> out_floats;
  std::vector<uint8_t> out_bytes;
  std::vector<uint16_t> out_u16;
  for (int i = 0; i < kNumFormats; ++i) {
    const Format f = static_cast<Format>(i);
    encode_span(f, no_floats, out_bytes);
    encode_span(f, no_floats, out_bytes, {.rounding = Rounding::kStochastic, .seed = 1}, 10);
    decode_span(f, no_bytes, out_floats);
  }
  f32_to_f16(no_floats, out_u16);
  f32_to_bf16(no_floats, out_u16);
  f32_to_e4m3(no_floats, out_bytes);
  f32_to_e5m2(no_floats, out_bytes);
  f16_to_f32(no_u16, out_floats);
  bf16_to_f32(no_u16, out_floats);
  e4m3_to_f32(no_bytes, out_floats);
  e5m2_to_f32(no_bytes, out_floats);
  EXPECT_TRUE(out_floats.empty() && out_bytes.empty() && out_u16.empty());
}

TEST(ParseFormat, AcceptsAllNames) {
  const std::pair<const char*, Format> names[] = {
      {"fp32", Format::kFp32}, {"fp16", Format::kFp16}, {"bf16", Format::kBf16},   {"e4m3", Format::kE4m3},
      {"e5m2", Format::kE5m2}, {"e8m0", Format::kE8m0}, {"e2m1", Format::kE2m1},   {"int8", Format::kInt8},
      {"uint8", Format::kUint8}, {"int4", Format::kInt4}, {"uint4", Format::kUint4}, {"nf4", Format::kNf4},
      {"int3", Format::kInt3}, {"uint3", Format::kUint3}, {"int5", Format::kInt5}, {"uint5", Format::kUint5},
      {"int6", Format::kInt6}, {"uint6", Format::kUint6}};
  for (const auto& [name, f] : names) {
    Result<Format> r = parse_format(name);
    ASSERT_TRUE(r.ok()) << name << ": " << r.status().to_string();
    EXPECT_EQ(*r, f) << name;
    EXPECT_EQ(format_name(f), name);
  }
}

TEST(ParseFormat, RejectsUnknownAndListsValidNames) {
  for (const char* bad : {"e4m4", "", "FP16x", "int2"}) {
    Result<Format> r = parse_format(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
    const std::string& msg = r.status().message();
    if (std::string(bad) == "e4m4") {
      EXPECT_NE(msg.find("e4m4"), std::string::npos) << msg;
    }
    for (const char* name : {"fp32", "fp16", "bf16", "e4m3", "e5m2", "e8m0", "e2m1", "int8", "uint8", "int4",
                             "uint4", "nf4"}) {
      EXPECT_NE(msg.find(name), std::string::npos) << "message for '" << bad << "' lacks " << name << ": " << msg;
    }
  }
}

}  // namespace
}  // namespace lowbit
