// Bulk converters: the scalar twins (loops over the reference codec) and run-time
// dispatch to the SIMD levels in x86/.
#include "lowbit/convert.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "convert_internal.h"

namespace lowbit {
namespace formats_internal {
namespace {

template <Format F, class Code>
void encode_ref(const float* in, Code* out, size_t n, bool saturate) {
  const EncodeOptions opt{.saturate = saturate};
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<Code>(encode(F, in[i], opt));
}

template <Format F, class Code>
void decode_ref(const Code* in, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = decode(F, in[i]);
}

}  // namespace

const float* e4m3_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (uint32_t c = 0; c < 256; ++c) t[c] = decode(Format::kE4m3, c);
    return t;
  }();
  return table.data();
}

const ConvertKernels& scalar_kernels() {
  static const ConvertKernels k{
      Isa::kScalar,
      encode_ref<Format::kFp16, uint16_t>,
      encode_ref<Format::kBf16, uint16_t>,
      encode_ref<Format::kE4m3, uint8_t>,
      encode_ref<Format::kE5m2, uint8_t>,
      decode_ref<Format::kFp16, uint16_t>,
      decode_ref<Format::kBf16, uint16_t>,
      decode_ref<Format::kE4m3, uint8_t>,
      decode_ref<Format::kE5m2, uint8_t>,
  };
  return k;
}

}  // namespace formats_internal

using namespace formats_internal;

const ConvertKernels* convert_kernels(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return &scalar_kernels();
    case Isa::kAvx2:
#if defined(LOWBIT_HAVE_AVX2)
      return &avx2_kernels();
#else
      return nullptr;
#endif
    case Isa::kAvx512:
    case Isa::kAvx512Vnni:
#if defined(LOWBIT_HAVE_AVX512)
      return &avx512_kernels();
#else
      return nullptr;
#endif
  }
  return nullptr;
}

const ConvertKernels& active_convert_kernels() {
  for (int level = static_cast<int>(active_isa()); level > 0; --level) {
    if (const ConvertKernels* k = convert_kernels(static_cast<Isa>(level))) return *k;
  }
  return scalar_kernels();
}

namespace {

bool simd_eligible(const EncodeOptions& opt) { return opt.rounding == Rounding::kNearestEven; }

template <class Code>
void encode_typed(Format f, std::span<const float> in, Code* out, const EncodeOptions& opt, uint64_t first) {
  for (size_t i = 0; i < in.size(); ++i) out[i] = static_cast<Code>(encode(f, in[i], opt, first + i));
}

}  // namespace

void f32_to_f16(std::span<const float> in, std::span<uint16_t> out, const EncodeOptions& opt) {
  LOWBIT_CHECK(in.size() == out.size(), "f32_to_f16: size mismatch");
  if (!simd_eligible(opt)) return encode_typed(Format::kFp16, in, out.data(), opt, 0);
  active_convert_kernels().f32_to_f16(in.data(), out.data(), in.size(), opt.saturate);
}
void f32_to_bf16(std::span<const float> in, std::span<uint16_t> out, const EncodeOptions& opt) {
  LOWBIT_CHECK(in.size() == out.size(), "f32_to_bf16: size mismatch");
  if (!simd_eligible(opt)) return encode_typed(Format::kBf16, in, out.data(), opt, 0);
  active_convert_kernels().f32_to_bf16(in.data(), out.data(), in.size(), opt.saturate);
}
void f32_to_e4m3(std::span<const float> in, std::span<uint8_t> out, const EncodeOptions& opt) {
  LOWBIT_CHECK(in.size() == out.size(), "f32_to_e4m3: size mismatch");
  if (!simd_eligible(opt)) return encode_typed(Format::kE4m3, in, out.data(), opt, 0);
  active_convert_kernels().f32_to_e4m3(in.data(), out.data(), in.size(), opt.saturate);
}
void f32_to_e5m2(std::span<const float> in, std::span<uint8_t> out, const EncodeOptions& opt) {
  LOWBIT_CHECK(in.size() == out.size(), "f32_to_e5m2: size mismatch");
  if (!simd_eligible(opt)) return encode_typed(Format::kE5m2, in, out.data(), opt, 0);
  active_convert_kernels().f32_to_e5m2(in.data(), out.data(), in.size(), opt.saturate);
}
void f16_to_f32(std::span<const uint16_t> in, std::span<float> out) {
  LOWBIT_CHECK(in.size() == out.size(), "f16_to_f32: size mismatch");
  active_convert_kernels().f16_to_f32(in.data(), out.data(), in.size());
}
void bf16_to_f32(std::span<const uint16_t> in, std::span<float> out) {
  LOWBIT_CHECK(in.size() == out.size(), "bf16_to_f32: size mismatch");
  active_convert_kernels().bf16_to_f32(in.data(), out.data(), in.size());
}
void e4m3_to_f32(std::span<const uint8_t> in, std::span<float> out) {
  LOWBIT_CHECK(in.size() == out.size(), "e4m3_to_f32: size mismatch");
  active_convert_kernels().e4m3_to_f32(in.data(), out.data(), in.size());
}
void e5m2_to_f32(std::span<const uint8_t> in, std::span<float> out) {
  LOWBIT_CHECK(in.size() == out.size(), "e5m2_to_f32: size mismatch");
  active_convert_kernels().e5m2_to_f32(in.data(), out.data(), in.size());
}

void encode_span(Format f, std::span<const float> in, std::span<uint8_t> out, const EncodeOptions& opt,
                 uint64_t first_index) {
  const size_t n = in.size();
  LOWBIT_CHECK(out.size() == packed_bytes(f, n), "encode_span: output size does not match packed_bytes");
  const bool simd = simd_eligible(opt);
  switch (traits(f).bits) {
    case 32:
      for (size_t i = 0; i < n; ++i) {
        const uint32_t c = encode(f, in[i], opt, first_index + i);
        std::memcpy(out.data() + 4 * i, &c, 4);
      }
      return;
    case 16: {
      // Codes are stored little-endian; on x86 a uint16 store is exactly that.
      if (simd && (f == Format::kFp16 || f == Format::kBf16)) {
        const ConvertKernels& k = active_convert_kernels();
        uint16_t tmp[256];
        for (size_t i = 0; i < n; i += 256) {
          const size_t len = std::min<size_t>(256, n - i);
          (f == Format::kFp16 ? k.f32_to_f16 : k.f32_to_bf16)(in.data() + i, tmp, len, opt.saturate);
          std::memcpy(out.data() + 2 * i, tmp, 2 * len);
        }
        return;
      }
      for (size_t i = 0; i < n; ++i) {
        const uint16_t c = static_cast<uint16_t>(encode(f, in[i], opt, first_index + i));
        std::memcpy(out.data() + 2 * i, &c, 2);
      }
      return;
    }
    case 8:
      if (simd && f == Format::kE4m3) return active_convert_kernels().f32_to_e4m3(in.data(), out.data(), n, opt.saturate);
      if (simd && f == Format::kE5m2) return active_convert_kernels().f32_to_e5m2(in.data(), out.data(), n, opt.saturate);
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(encode(f, in[i], opt, first_index + i));
      return;
    case 4:
      for (size_t i = 0; i < n; i += 2) {
        const uint32_t lo = encode(f, in[i], opt, first_index + i);
        const uint32_t hi = i + 1 < n ? encode(f, in[i + 1], opt, first_index + i + 1) : 0u;
        out[i / 2] = static_cast<uint8_t>(lo | (hi << 4));
      }
      return;
    case 3:
    case 5:
    case 6:
      std::fill(out.begin(), out.end(), uint8_t{0});
      for (size_t i = 0; i < n; ++i) store_code(f, out.data(), i, encode(f, in[i], opt, first_index + i));
      return;
  }
  LOWBIT_CHECK(false, "encode_span: unsupported bit width");
}

void decode_span(Format f, std::span<const uint8_t> in, std::span<float> out) {
  const size_t n = out.size();
  LOWBIT_CHECK(in.size() == packed_bytes(f, n), "decode_span: input size does not match packed_bytes");
  switch (traits(f).bits) {
    case 32:
      if (n > 0) std::memcpy(out.data(), in.data(), 4 * n);  // fp32 codes are the values
      return;
    case 16: {
      const ConvertKernels& k = active_convert_kernels();
      uint16_t tmp[256];
      for (size_t i = 0; i < n; i += 256) {
        const size_t len = std::min<size_t>(256, n - i);
        std::memcpy(tmp, in.data() + 2 * i, 2 * len);
        (f == Format::kFp16 ? k.f16_to_f32 : k.bf16_to_f32)(tmp, out.data() + i, len);
      }
      return;
    }
    case 8:
      if (f == Format::kE4m3) return active_convert_kernels().e4m3_to_f32(in.data(), out.data(), n);
      if (f == Format::kE5m2) return active_convert_kernels().e5m2_to_f32(in.data(), out.data(), n);
      for (size_t i = 0; i < n; ++i) out[i] = decode(f, in[i]);
      return;
    case 4:
      for (size_t i = 0; i < n; ++i) out[i] = decode(f, (in[i / 2] >> (4 * (i & 1))) & 0xFu);
      return;
    case 3:
    case 5:
    case 6:
      for (size_t i = 0; i < n; ++i) out[i] = decode(f, load_code(f, in.data(), i));
      return;
  }
  LOWBIT_CHECK(false, "decode_span: unsupported bit width");
}

}  // namespace lowbit
