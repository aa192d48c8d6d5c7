// Bulk converters between fp32 and every format, over whole spans. fp16, bf16, e4m3
// and e5m2 (round-to-nearest-even, either saturation mode) have SIMD fast paths chosen
// at run time from active_isa(); each has a scalar twin that calls the reference codec
// in formats.h, and tests hold them bit-identical.
//
//   std::vector<float> x(n);  std::vector<uint8_t> q(n);
//   encode_span(Format::kE4m3, x, q, {.saturate = true});   // one byte per element
//   decode_span(Format::kE4m3, q, x);
//   std::vector<uint8_t> p(packed_bytes(Format::kInt4, n));  // 4-bit: two per byte, low nibble first
//   encode_span(Format::kInt4, x, p);
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "lowbit/cpu.h"
#include "lowbit/formats.h"

namespace lowbit {

// Bytes that n elements of f occupy in storage (4-bit formats: ceil(n / 2); 3/5/6-bit: ceil(bits·n / 8)).
constexpr size_t packed_bytes(Format f, size_t n) { return (n * static_cast<size_t>(traits(f).bits) + 7) / 8; }

// Code of element i of a packed row of f, and the inverse (a read-modify-write that keeps
// the neighbouring codes of sub-byte formats). Layouts: 32/16/8-bit codes little-endian;
// 4-bit two per byte, element 2i in the low nibble; 3/5/6-bit a little-endian bit stream,
// element i in bits b·i..b·i+b-1 (a code may straddle two bytes).
inline uint32_t load_code(Format f, const uint8_t* row, size_t i) {
  switch (const int b = traits(f).bits) {
    case 8: return row[i];
    case 16: return static_cast<uint32_t>(row[2 * i]) | (static_cast<uint32_t>(row[2 * i + 1]) << 8);
    case 32:
      return static_cast<uint32_t>(row[4 * i]) | (static_cast<uint32_t>(row[4 * i + 1]) << 8) |
             (static_cast<uint32_t>(row[4 * i + 2]) << 16) | (static_cast<uint32_t>(row[4 * i + 3]) << 24);
    default: {
      const size_t bit = i * static_cast<size_t>(b), byte = bit / 8, sh = bit % 8;
      uint32_t v = static_cast<uint32_t>(row[byte]) >> sh;
      if (sh + static_cast<size_t>(b) > 8) v |= static_cast<uint32_t>(row[byte + 1]) << (8 - sh);
      return v & ((1u << b) - 1u);
    }
  }
}
inline void store_code(Format f, uint8_t* row, size_t i, uint32_t code) {
  switch (const int b = traits(f).bits) {
    case 8: row[i] = static_cast<uint8_t>(code); return;
    case 16:
    case 32:
      for (int k = 0; k < b / 8; ++k) row[static_cast<size_t>(b / 8) * i + static_cast<size_t>(k)] = static_cast<uint8_t>(code >> (8 * k));
      return;
    default: {
      const uint32_t mask = (1u << b) - 1u;
      const size_t bit = i * static_cast<size_t>(b), byte = bit / 8, sh = bit % 8;
      code &= mask;
      row[byte] = static_cast<uint8_t>((row[byte] & ~(mask << sh)) | (code << sh));
      if (sh + static_cast<size_t>(b) > 8) {
        const size_t hi = 8 - sh;  // bits already written
        row[byte + 1] = static_cast<uint8_t>((row[byte + 1] & ~(mask >> hi)) | (code >> hi));
      }
    }
  }
}

// fp32 -> codes of f in storage layout (see load_code; unused tail bits of the last byte
// are 0).
// `out.size()` must equal packed_bytes(f, in.size()). Stochastic rounding uses index
// `first_index + i` for element i, so a span split across threads rounds identically.
void encode_span(Format f, std::span<const float> in, std::span<uint8_t> out,
                 const EncodeOptions& opt = {}, uint64_t first_index = 0);
// codes of f in storage layout -> fp32. `in.size()` must equal packed_bytes(f, out.size()).
void decode_span(Format f, std::span<const uint8_t> in, std::span<float> out);

// Typed entry points for the hot conversions.
void f32_to_f16(std::span<const float> in, std::span<uint16_t> out, const EncodeOptions& opt = {});
void f32_to_bf16(std::span<const float> in, std::span<uint16_t> out, const EncodeOptions& opt = {});
void f32_to_e4m3(std::span<const float> in, std::span<uint8_t> out, const EncodeOptions& opt = {});
void f32_to_e5m2(std::span<const float> in, std::span<uint8_t> out, const EncodeOptions& opt = {});
void f16_to_f32(std::span<const uint16_t> in, std::span<float> out);
void bf16_to_f32(std::span<const uint16_t> in, std::span<float> out);
void e4m3_to_f32(std::span<const uint8_t> in, std::span<float> out);
void e5m2_to_f32(std::span<const uint8_t> in, std::span<float> out);

// One ISA's set of round-to-nearest-even converters. Exposed so tests and benchmarks can
// run every compiled level side by side; everyone else calls the functions above.
struct ConvertKernels {
  Isa isa;
  void (*f32_to_f16)(const float* in, uint16_t* out, size_t n, bool saturate);
  void (*f32_to_bf16)(const float* in, uint16_t* out, size_t n, bool saturate);
  void (*f32_to_e4m3)(const float* in, uint8_t* out, size_t n, bool saturate);
  void (*f32_to_e5m2)(const float* in, uint8_t* out, size_t n, bool saturate);
  void (*f16_to_f32)(const uint16_t* in, float* out, size_t n);
  void (*bf16_to_f32)(const uint16_t* in, float* out, size_t n);
  void (*e4m3_to_f32)(const uint8_t* in, float* out, size_t n);
  void (*e5m2_to_f32)(const uint8_t* in, float* out, size_t n);
};

// The kernels for `isa` (nullptr if this build has none for it; avx512vnni shares avx512's).
// Calling them on a CPU without the ISA is undefined: check isa_supported() first.
const ConvertKernels* convert_kernels(Isa isa);
// The kernels dispatch uses now (best compiled level <= active_isa()).
const ConvertKernels& active_convert_kernels();

}  // namespace lowbit
