// Every compiled SIMD converter against the scalar twin, bit for bit (NaN payloads
// included), over odd lengths, unaligned starts and the inputs where conversions go wrong:
// exact midpoints and their neighbours, subnormals, the overflow boundary, ±0, ±inf, NaNs.
// Then the dispatching entry points under every ISA against the reference encode()/decode().
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "lowbit/convert.h"
#include "lowbit/cpu.h"
#include "lowbit/formats.h"

namespace lowbit {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::string hex(uint32_t c) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%X", c);
  return buf;
}

// A 64-byte aligned allocation of exactly `count` elements (so ASan sees any read past it).
template <class T>
struct Aligned {
  struct Free {
    void operator()(T* p) const { ::operator delete(p, std::align_val_t{64}); }
  };
  explicit Aligned(size_t count)
      : ptr(static_cast<T*>(::operator new(std::max<size_t>(count, 1) * sizeof(T), std::align_val_t{64}))),
        n(count) {}
  std::unique_ptr<T, Free> ptr;
  size_t n;
  T* data() { return ptr.get(); }
};

// Input at `offset` elements past a 64-byte boundary, ending exactly at the allocation's end.
template <class T>
Aligned<T> place_input(const T* src, size_t n, size_t offset) {
  Aligned<T> buf(offset + n);
  std::memset(buf.data(), 0x5A, (offset + n) * sizeof(T));
  if (n) std::memcpy(buf.data() + offset, src, n * sizeof(T));
  return buf;
}

constexpr size_t kGuard = 64;  // elements of sentinel after the output
constexpr uint8_t kSentinel = 0xA5;

// Output at `offset` past a 64-byte boundary with sentinels before and after it.
template <class T>
Aligned<T> make_output(size_t n, size_t offset) {
  Aligned<T> buf(offset + n + kGuard);
  std::memset(buf.data(), kSentinel, (offset + n + kGuard) * sizeof(T));
  return buf;
}

template <class T>
bool guards_intact(Aligned<T>& buf, size_t n, size_t offset) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(buf.data());
  for (size_t i = 0; i < offset * sizeof(T); ++i)
    if (bytes[i] != kSentinel) return false;
  for (size_t i = (offset + n) * sizeof(T); i < (offset + n + kGuard) * sizeof(T); ++i)
    if (bytes[i] != kSentinel) return false;
  return true;
}

uint32_t bits_of_value(float x) { return std::bit_cast<uint32_t>(x); }
template <class T>
uint32_t bits_of_value(T x) { return static_cast<uint32_t>(x); }

// --- Input pools ---

struct Target {
  Format f;
  const char* name;
};
constexpr Target kEncoders[] = {{Format::kFp16, "f32_to_f16"}, {Format::kBf16, "f32_to_bf16"},
                                {Format::kE4m3, "f32_to_e4m3"}, {Format::kE5m2, "f32_to_e5m2"}};

void push_around(std::vector<float>& out, double v) {
  const float f = static_cast<float>(v);
  for (float s : {1.0f, -1.0f}) {
    out.push_back(s * f);
    out.push_back(s * std::nextafter(f, -kInf));
    out.push_back(s * std::nextafter(f, kInf));
  }
}

// Every input that is interesting for converting fp32 to `f`, plus random ones.
std::vector<float> encoder_pool(Format f, uint64_t seed) {
  std::vector<float> pool;
  const FormatTraits& t = traits(f);
  const uint32_t max_code = t.max_code;
  // Every positive finite code's value, each midpoint to the next code, and their neighbours.
  for (uint32_t c = 0; c <= max_code; ++c) {
    const double v = decode(f, c);
    push_around(pool, v);
    if (c < max_code) push_around(pool, (v + static_cast<double>(decode(f, c + 1))) / 2);
  }
  // The overflow boundary: the midpoint between max and the next binade step, and beyond.
  const double max = t.max_finite, prev = decode(f, max_code - 1);
  push_around(pool, (max + (max + (max - prev))) / 2);
  push_around(pool, max + (max - prev));
  push_around(pool, 2 * max);
  const float specials[] = {0.0f, 1e-45f, 1e-40f, 1.1754942e-38f, std::numeric_limits<float>::min(),
                            std::numeric_limits<float>::max(), kInf, 1.0f, 3.0f, 1e10f};
  for (float s : specials) push_around(pool, s);
  const uint32_t nans[] = {0x7FC00000u, 0x7F800001u, 0x7FFFFFFFu, 0x7FA5A5A5u, 0x7F802000u,
                           0x7F801000u, 0x7F800100u, 0x7FBFE000u, 0x7FC00001u, 0x7F810000u};
  for (uint32_t b : nans) {
    pool.push_back(std::bit_cast<float>(b));
    pool.push_back(std::bit_cast<float>(b | 0x80000000u));
  }
  std::mt19937_64 rng(seed);
  // fp32 subnormals and random bit patterns.
  for (int i = 0; i < 2000; ++i) pool.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng()) & 0x807FFFFFu));
  for (int i = 0; i < 20000; ++i) pool.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng())));
  // Normal values around the target's range, log-uniform.
  std::uniform_real_distribution<double> mant(1.0, 2.0);
  std::uniform_int_distribution<int> ex(std::ilogb(t.min_subnormal) - 4, std::ilogb(t.max_finite) + 4);
  for (int i = 0; i < 20000; ++i) {
    const float x = static_cast<float>(std::ldexp(mant(rng), ex(rng)));
    pool.push_back(rng() & 1 ? -x : x);
  }
  std::shuffle(pool.begin(), pool.end(), rng);
  return pool;
}


// Calls the kernel for `f` of set `k` with a type-erased output pointer.
void run_encoder(const ConvertKernels& k, Format f, const float* in, void* out, size_t n, bool sat) {
  switch (f) {
    case Format::kFp16: k.f32_to_f16(in, static_cast<uint16_t*>(out), n, sat); break;
    case Format::kBf16: k.f32_to_bf16(in, static_cast<uint16_t*>(out), n, sat); break;
    case Format::kE4m3: k.f32_to_e4m3(in, static_cast<uint8_t*>(out), n, sat); break;
    case Format::kE5m2: k.f32_to_e5m2(in, static_cast<uint8_t*>(out), n, sat); break;
    default: FAIL() << "no kernel for " << format_name(f);
  }
}

void run_decoder(const ConvertKernels& k, Format f, const void* in, float* out, size_t n) {
  switch (f) {
    case Format::kFp16: k.f16_to_f32(static_cast<const uint16_t*>(in), out, n); break;
    case Format::kBf16: k.bf16_to_f32(static_cast<const uint16_t*>(in), out, n); break;
    case Format::kE4m3: k.e4m3_to_f32(static_cast<const uint8_t*>(in), out, n); break;
    case Format::kE5m2: k.e5m2_to_f32(static_cast<const uint8_t*>(in), out, n); break;
    default: FAIL() << "no kernel for " << format_name(f);
  }
}

bool all_kernel_pointers_set(const ConvertKernels& k) {
  return k.f32_to_f16 && k.f32_to_bf16 && k.f32_to_e4m3 && k.f32_to_e5m2 && k.f16_to_f32 && k.bf16_to_f32 &&
         k.e4m3_to_f32 && k.e5m2_to_f32;
}

const ConvertKernels& scalar_kernels() {
  const ConvertKernels* k = convert_kernels(Isa::kScalar);
  if (k == nullptr) {
    ADD_FAILURE() << "convert_kernels(kScalar) is null";
    std::abort();
  }
  return *k;
}

// Runs kernel set `k` and the scalar set on in[0..n) for target f with the given offsets and
// compares; returns the number of mismatching elements (reports the first few).
template <class Code>
int compare_encoder(const ConvertKernels& k, Format f, const float* src, size_t n, size_t in_off, size_t out_off,
                    bool sat, int* reported) {
  Aligned<float> in = place_input(src, n, in_off);
  Aligned<Code> out = make_output<Code>(n, out_off);
  run_encoder(k, f, in.data() + in_off, out.data() + out_off, n, sat);
  std::vector<Code> ref(std::max<size_t>(n, 1));
  run_encoder(scalar_kernels(), f, src, ref.data(), n, sat);
  int bad = 0;
  if (!guards_intact(out, n, out_off)) {
    ++bad;
    ADD_FAILURE() << isa_name(k.isa) << " " << format_name(f) << " wrote outside [0, " << n << ") at offset "
                  << out_off;
  }
  for (size_t i = 0; i < n; ++i) {
    const Code got = out.data()[out_off + i];
    if (got != ref[i]) {
      ++bad;
      if ((*reported)++ < 10) {
        ADD_FAILURE() << isa_name(k.isa) << " encode " << format_name(f) << " saturate=" << sat << " n=" << n
                      << " i=" << i << " x=" << src[i] << " (bits " << hex(bits_of_value(src[i])) << "): got "
                      << hex(got) << ", scalar " << hex(ref[i]);
      }
    }
  }
  return bad;
}

template <class Code>
int compare_decoder(const ConvertKernels& k, Format f, const Code* src, size_t n, size_t in_off, size_t out_off,
                    int* reported) {
  Aligned<Code> in = place_input(src, n, in_off);
  Aligned<float> out = make_output<float>(n, out_off);
  run_decoder(k, f, in.data() + in_off, out.data() + out_off, n);
  std::vector<float> ref(std::max<size_t>(n, 1));
  run_decoder(scalar_kernels(), f, src, ref.data(), n);
  int bad = 0;
  if (!guards_intact(out, n, out_off)) {
    ++bad;
    ADD_FAILURE() << isa_name(k.isa) << " decode " << format_name(f) << " wrote outside [0, " << n << ")";
  }
  for (size_t i = 0; i < n; ++i) {
    const uint32_t got = std::bit_cast<uint32_t>(out.data()[out_off + i]);
    const uint32_t want = std::bit_cast<uint32_t>(ref[i]);
    if (got != want) {
      ++bad;
      if ((*reported)++ < 10) {
        ADD_FAILURE() << isa_name(k.isa) << " decode " << format_name(f) << " n=" << n << " i=" << i << " code "
                      << hex(src[i]) << ": got bits " << hex(got) << ", scalar " << hex(want);
      }
    }
  }
  return bad;
}

template <class Code>
void sweep_encoder(const ConvertKernels& k, Format f) {
  const std::vector<float> pool = encoder_pool(f, 1234 + static_cast<int>(f));
  int reported = 0, bad = 0;
  size_t start = 0;
  for (bool sat : {false, true}) {
    for (size_t n = 0; n <= 130; ++n) {
      for (size_t off = 0; off <= 3; ++off) {
        if (start + n > pool.size()) start = 0;
        bad += compare_encoder<Code>(k, f, pool.data() + start, n, off, (off * 3) % 4, sat, &reported);
        start += n + 1;
      }
    }
    for (size_t off = 0; off <= 3; ++off) {
      bad += compare_encoder<Code>(k, f, pool.data() + 17 * off, 4097, off, 3 - off, sat, &reported);
    }
    bad += compare_encoder<Code>(k, f, pool.data(), pool.size(), 1, 2, sat, &reported);  // the whole pool
  }
  EXPECT_EQ(bad, 0) << isa_name(k.isa) << " " << format_name(f);
}

template <class Code>
void sweep_decoder(const ConvertKernels& k, Format f) {
  const uint32_t ncodes = sizeof(Code) == 2 ? 65536 : 256;
  std::vector<Code> all(ncodes);
  for (uint32_t c = 0; c < ncodes; ++c) all[c] = static_cast<Code>(c);
  std::mt19937_64 rng(99 + static_cast<int>(f));
  std::vector<Code> stream(8192);
  for (Code& c : stream) c = static_cast<Code>(rng());
  int reported = 0, bad = 0;
  for (size_t off = 0; off <= 3; ++off) bad += compare_decoder<Code>(k, f, all.data(), ncodes, off, 3 - off, &reported);
  size_t start = 0;
  for (size_t n = 0; n <= 130; ++n) {
    for (size_t off = 0; off <= 3; ++off) {
      if (start + n > stream.size()) start = 0;
      bad += compare_decoder<Code>(k, f, stream.data() + start, n, off, (off + 1) % 4, &reported);
      start += n + 3;
    }
  }
  bad += compare_decoder<Code>(k, f, stream.data() + 5, 4097, 1, 3, &reported);
  EXPECT_EQ(bad, 0) << isa_name(k.isa) << " " << format_name(f);
}

TEST(ConvertKernels, ScalarKernelsExistAndMatchReferenceCodec) {
  const ConvertKernels* s = convert_kernels(Isa::kScalar);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->isa, Isa::kScalar);
  ASSERT_TRUE(all_kernel_pointers_set(*s));
  for (const Target& t : kEncoders) {
    const std::vector<float> pool = encoder_pool(t.f, 55);
    for (bool sat : {false, true}) {
      std::vector<uint16_t> out16(pool.size());
      std::vector<uint8_t> out8(pool.size());
      void* out = traits(t.f).bits == 16 ? static_cast<void*>(out16.data()) : static_cast<void*>(out8.data());
      run_encoder(*s, t.f, pool.data(), out, pool.size(), sat);
      int bad = 0;
      for (size_t i = 0; i < pool.size(); ++i) {
        const uint32_t got = traits(t.f).bits == 16 ? out16[i] : out8[i];
        const uint32_t want = encode(t.f, pool[i], {.saturate = sat});
        if (got != want && bad++ < 10) {
          ADD_FAILURE() << "scalar " << t.name << " x=" << pool[i] << " (" << hex(bits_of_value(pool[i]))
                        << ") saturate=" << sat << ": " << hex(got) << " vs encode() " << hex(want);
        }
      }
      EXPECT_EQ(bad, 0) << t.name;
    }
    const uint32_t ncodes = traits(t.f).bits == 16 ? 65536 : 256;
    std::vector<uint16_t> codes16(ncodes);
    std::vector<uint8_t> codes8(ncodes);
    for (uint32_t c = 0; c < ncodes; ++c) {
      codes16[c] = static_cast<uint16_t>(c);
      codes8[c] = static_cast<uint8_t>(c);
    }
    std::vector<float> out(ncodes);
    const void* in = ncodes == 65536 ? static_cast<const void*>(codes16.data()) : static_cast<const void*>(codes8.data());
    run_decoder(*s, t.f, in, out.data(), ncodes);
    for (uint32_t c = 0; c < ncodes; ++c) {
      const float want = decode(t.f, c);
      const bool same = std::isnan(want) ? std::isnan(out[c])
                                         : std::bit_cast<uint32_t>(out[c]) == std::bit_cast<uint32_t>(want);
      ASSERT_TRUE(same) << "scalar decode " << format_name(t.f) << " " << hex(c) << ": " << out[c] << " vs " << want;
    }
  }
}

class ConvertSimd : public ::testing::TestWithParam<Isa> {};

TEST_P(ConvertSimd, KernelsMatchScalarBitForBit) {
  const Isa isa = GetParam();
  if (!isa_supported(isa)) GTEST_SKIP() << "this CPU lacks " << isa_name(isa);
  const ConvertKernels* k = convert_kernels(isa);
  if (k == nullptr) GTEST_SKIP() << "no kernels compiled for " << isa_name(isa);
  ASSERT_TRUE(all_kernel_pointers_set(*k));
  EXPECT_LE(static_cast<int>(k->isa), static_cast<int>(isa));
  sweep_encoder<uint16_t>(*k, Format::kFp16);
  sweep_encoder<uint16_t>(*k, Format::kBf16);
  sweep_encoder<uint8_t>(*k, Format::kE4m3);
  sweep_encoder<uint8_t>(*k, Format::kE5m2);
  sweep_decoder<uint16_t>(*k, Format::kFp16);
  sweep_decoder<uint16_t>(*k, Format::kBf16);
  sweep_decoder<uint8_t>(*k, Format::kE4m3);
  sweep_decoder<uint8_t>(*k, Format::kE5m2);
}

INSTANTIATE_TEST_SUITE_P(AllIsas, ConvertSimd,
                         ::testing::Values(Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Vnni),
                         [](const auto& info) { return std::string(isa_name(info.param)); });

TEST(ConvertKernels, SupportedIsasAreAscendingFromScalar) {
  const std::vector<Isa> isas = supported_isas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.front(), Isa::kScalar);
  EXPECT_EQ(isas.back(), best_isa());
  for (size_t i = 1; i < isas.size(); ++i) EXPECT_EQ(static_cast<int>(isas[i]), static_cast<int>(isas[i - 1]) + 1);
}

// --- Dispatching entry points ---

int bits_of(Format f) {
  switch (f) {
    case Format::kFp32: return 32;
    case Format::kFp16: case Format::kBf16: return 16;
    case Format::kE2m1: case Format::kInt4: case Format::kUint4: case Format::kNf4: return 4;
    default: return 8;
  }
}

// Storage layout from the spec: little-endian codes; 4-bit two per byte, low nibble first.
std::vector<uint8_t> pack(Format f, const std::vector<uint32_t>& codes) {
  const int bits = bits_of(f);
  std::vector<uint8_t> out((codes.size() * bits + 7) / 8, 0);
  for (size_t i = 0; i < codes.size(); ++i) {
    if (bits == 4) {
      out[i / 2] |= static_cast<uint8_t>((codes[i] & 0xF) << (4 * (i % 2)));
    } else {
      for (int b = 0; b < bits / 8; ++b) out[i * (bits / 8) + b] = static_cast<uint8_t>(codes[i] >> (8 * b));
    }
  }
  return out;
}

bool same_bits_or_both_nan(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

constexpr Format kAllFormats[] = {Format::kFp32, Format::kFp16, Format::kBf16,  Format::kE4m3,
                                  Format::kE5m2, Format::kE8m0, Format::kE2m1,  Format::kInt8,
                                  Format::kUint8, Format::kInt4, Format::kUint4, Format::kNf4};

// The typed converters and encode_span/decode_span, as dispatched right now, against the
// scalar reference encode()/decode() element by element. Returns the number of mismatches.
int check_dispatch_against_reference(const std::string& where) {
  int bad = 0;
  auto report = [&](const std::string& what) {
    if (bad++ < 15) ADD_FAILURE() << where << ": " << what;
  };
  for (const Target& t : kEncoders) {
    const std::vector<float> pool = encoder_pool(t.f, 4242);
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{33}, size_t{129}, pool.size()}) {
      const std::span<const float> in(pool.data(), n);
      for (bool sat : {false, true}) {
        const EncodeOptions opt{.saturate = sat};
        std::vector<uint16_t> o16(n);
        std::vector<uint8_t> o8(n);
        switch (t.f) {
          case Format::kFp16: f32_to_f16(in, o16, opt); break;
          case Format::kBf16: f32_to_bf16(in, o16, opt); break;
          case Format::kE4m3: f32_to_e4m3(in, o8, opt); break;
          default: f32_to_e5m2(in, o8, opt); break;
        }
        for (size_t i = 0; i < n; ++i) {
          const uint32_t got = traits(t.f).bits == 16 ? o16[i] : o8[i];
          const uint32_t want = encode(t.f, pool[i], opt);
          if (got != want) {
            report(std::string(t.name) + " x bits " + hex(bits_of_value(pool[i])) + " sat=" + std::to_string(sat) +
                   ": " + hex(got) + " vs encode() " + hex(want));
          }
        }
      }
    }
    // Stochastic rounding through the typed entry point uses index i for element i.
    {
      const EncodeOptions opt{.rounding = Rounding::kStochastic, .seed = 11};
      const size_t n = 1000;
      const std::span<const float> in(pool.data(), n);
      std::vector<uint16_t> o16(n);
      std::vector<uint8_t> o8(n);
      switch (t.f) {
        case Format::kFp16: f32_to_f16(in, o16, opt); break;
        case Format::kBf16: f32_to_bf16(in, o16, opt); break;
        case Format::kE4m3: f32_to_e4m3(in, o8, opt); break;
        default: f32_to_e5m2(in, o8, opt); break;
      }
      for (size_t i = 0; i < n; ++i) {
        const uint32_t got = traits(t.f).bits == 16 ? o16[i] : o8[i];
        const uint32_t want = encode(t.f, pool[i], opt, i);
        if (got != want) report(std::string(t.name) + " stochastic i=" + std::to_string(i) + ": " + hex(got) +
                                " vs encode() " + hex(want));
      }
    }
    // Decoders over every code.
    const uint32_t ncodes = traits(t.f).bits == 16 ? 65536 : 256;
    std::vector<uint16_t> c16(ncodes);
    std::vector<uint8_t> c8(ncodes);
    for (uint32_t c = 0; c < ncodes; ++c) {
      c16[c] = static_cast<uint16_t>(c);
      c8[c] = static_cast<uint8_t>(c);
    }
    std::vector<float> out(ncodes);
    switch (t.f) {
      case Format::kFp16: f16_to_f32(c16, out); break;
      case Format::kBf16: bf16_to_f32(c16, out); break;
      case Format::kE4m3: e4m3_to_f32(c8, out); break;
      default: e5m2_to_f32(c8, out); break;
    }
    for (uint32_t c = 0; c < ncodes; ++c) {
      if (!same_bits_or_both_nan(out[c], decode(t.f, c))) {
        report(std::string(format_name(t.f)) + "_to_f32 code " + hex(c));
      }
    }
  }
  // encode_span / decode_span for every format, odd and even lengths.
  for (Format f : kAllFormats) {
    std::vector<float> pool = encoder_pool(Format::kE4m3, 777);
    const double scale = traits(f).max_finite / 448.0;
    for (float& x : pool) x = static_cast<float>(x * (f == Format::kFp32 ? 1.0 : scale));
    for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{31}, size_t{4097}}) {
      const std::span<const float> in(pool.data(), n);
      for (bool sat : {false, true}) {
        const EncodeOptions opt{.saturate = sat};
        std::vector<uint32_t> codes(n);
        for (size_t i = 0; i < n; ++i) codes[i] = encode(f, pool[i], opt);
        const std::vector<uint8_t> want = pack(f, codes);
        std::vector<uint8_t> got(packed_bytes(f, n), 0xEE);
        encode_span(f, in, got, opt);
        if (got != want) report(std::string("encode_span ") + std::string(format_name(f)) + " n=" + std::to_string(n));
        std::vector<float> back(n, -7.0f);
        decode_span(f, want, back);
        for (size_t i = 0; i < n; ++i) {
          if (!same_bits_or_both_nan(back[i], decode(f, codes[i]))) {
            report(std::string("decode_span ") + std::string(format_name(f)) + " i=" + std::to_string(i) +
                   " code " + hex(codes[i]));
          }
        }
      }
    }
  }
  return bad;
}

// The highest level <= `isa` that has compiled kernels: what dispatch should pick.
Isa expected_kernel_level(Isa isa) {
  for (int l = static_cast<int>(isa); l >= 0; --l) {
    if (convert_kernels(static_cast<Isa>(l)) != nullptr) return convert_kernels(static_cast<Isa>(l))->isa;
  }
  return Isa::kScalar;
}

TEST(ConvertDispatch, EveryIsaMatchesScalarReference) {
  for (Isa isa : supported_isas()) {
    ScopedIsa force(isa);
    ASSERT_EQ(active_isa(), isa);
    EXPECT_EQ(active_convert_kernels().isa, expected_kernel_level(isa)) << isa_name(isa);
    EXPECT_EQ(check_dispatch_against_reference(std::string("ScopedIsa ") + std::string(isa_name(isa))), 0);
  }
}

// Run by ctest once per ISA with LOWBIT_ISA set (tests/run_with_isa.sh); no ScopedIsa here,
// so the environment path itself picks the level.
TEST(ConvertEnvIsa, DispatchMatchesScalar) {
  const char* env = std::getenv("LOWBIT_ISA");
  if (env != nullptr && *env != '\0') {
    Result<Isa> want = parse_isa(env);
    ASSERT_TRUE(want.ok()) << want.status().to_string();
    EXPECT_EQ(active_isa(), *want) << "LOWBIT_ISA=" << env;
  }
  EXPECT_EQ(active_convert_kernels().isa, expected_kernel_level(active_isa()));
  EXPECT_EQ(check_dispatch_against_reference(std::string("LOWBIT_ISA=") + (env ? env : "(unset)") + " active " +
                                             std::string(isa_name(active_isa()))),
            0);
}

}  // namespace
}  // namespace lowbit
