#include "lowbit/cpu.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define LOWBIT_HAVE_CPUID 1
#endif

namespace lowbit {
namespace {

#ifdef LOWBIT_HAVE_CPUID
unsigned long long read_xcr0() {
  unsigned eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef LOWBIT_HAVE_CPUID
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  __get_cpuid(1, &a, &b, &c, &d);
  f.sse42 = (c >> 20) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  const bool osxsave = (c >> 27) & 1;
  const bool avx = (c >> 28) & 1;
  if (osxsave && avx) {
    const unsigned long long xcr0 = read_xcr0();
    f.os_avx = (xcr0 & 0x6) == 0x6;            // XMM | YMM
    f.os_avx512 = (xcr0 & 0xE6) == 0xE6;       // + opmask, ZMM_Hi256, Hi16_ZMM
  }
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = f.os_avx && ((b >> 5) & 1);
    f.avx512f = f.os_avx512 && ((b >> 16) & 1);
    f.avx512dq = f.os_avx512 && ((b >> 17) & 1);
    f.avx512bw = f.os_avx512 && ((b >> 30) & 1);
    f.avx512vl = f.os_avx512 && ((b >> 31) & 1);
    f.avx512vnni = f.os_avx512 && ((c >> 11) & 1);
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512bf16 = f.os_avx512 && ((a >> 5) & 1);
  }
  f.fma = f.fma && f.os_avx;
  f.f16c = f.f16c && f.os_avx;
  unsigned ext = __get_cpuid_max(0x80000000u, nullptr);
  if (ext >= 0x80000004u) {
    char brand[49] = {};
    for (unsigned i = 0; i < 3; ++i) {
      __get_cpuid(0x80000002u + i, &a, &b, &c, &d);
      std::memcpy(brand + 16 * i + 0, &a, 4);
      std::memcpy(brand + 16 * i + 4, &b, 4);
      std::memcpy(brand + 16 * i + 8, &c, 4);
      std::memcpy(brand + 16 * i + 12, &d, 4);
    }
    f.brand = brand;
    while (!f.brand.empty() && f.brand.front() == ' ') f.brand.erase(f.brand.begin());
  }
#endif
  return f;
}

constexpr int kUnset = -1;
std::atomic<int> g_isa{kUnset};
std::mutex g_init_mu;

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx512Vnni: return "avx512vnni";
  }
  return "unknown";
}

Result<Isa> parse_isa(std::string_view name) {
  for (int i = 0; i < kNumIsas; ++i) {
    if (isa_name(static_cast<Isa>(i)) == name) return static_cast<Isa>(i);
  }
  return InvalidArgument("unknown ISA '" + std::string(name) +
                         "' (expected one of: scalar, avx2, avx512, avx512vnni)");
}

bool isa_supported(Isa isa) {
  const CpuFeatures& f = cpu_features();
  const bool avx2 = f.avx2 && f.fma && f.f16c;
  const bool avx512 = avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
  switch (isa) {
    case Isa::kScalar: return true;
    case Isa::kAvx2: return avx2;
    case Isa::kAvx512: return avx512;
    case Isa::kAvx512Vnni: return avx512 && f.avx512vnni;
  }
  return false;
}

Isa best_isa() {
  Isa best = Isa::kScalar;
  for (int i = 0; i < kNumIsas; ++i) {
    if (isa_supported(static_cast<Isa>(i))) best = static_cast<Isa>(i);
  }
  return best;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (int i = 0; i < kNumIsas; ++i) {
    if (isa_supported(static_cast<Isa>(i))) out.push_back(static_cast<Isa>(i));
  }
  return out;
}

Status set_isa(Isa isa) {
  if (!isa_supported(isa)) {
    return Unsupported("ISA '" + std::string(isa_name(isa)) + "' is not supported by this CPU (best: " +
                       std::string(isa_name(best_isa())) + ")");
  }
  g_isa.store(static_cast<int>(isa), std::memory_order_release);
  return OkStatus();
}

Status init_isa_from_env() {
  std::lock_guard<std::mutex> lock(g_init_mu);
  const char* env = std::getenv("LOWBIT_ISA");
  if (env == nullptr || *env == '\0') {
    if (g_isa.load() == kUnset) g_isa.store(static_cast<int>(best_isa()));
    return OkStatus();
  }
  Result<Isa> isa = parse_isa(env);
  if (!isa.ok()) return InvalidArgument("LOWBIT_ISA: " + isa.status().message());
  Status s = set_isa(*isa);
  if (!s.ok()) return Unsupported("LOWBIT_ISA: " + s.message());
  return OkStatus();
}

Isa active_isa() {
  int v = g_isa.load(std::memory_order_acquire);
  if (v != kUnset) return static_cast<Isa>(v);
  Status s = init_isa_from_env();
  if (!s.ok()) {
    std::fprintf(stderr, "lowbit: %s\n", s.to_string().c_str());
    std::exit(2);
  }
  return static_cast<Isa>(g_isa.load(std::memory_order_acquire));
}

ScopedIsa::ScopedIsa(Isa isa) : previous_(active_isa()) {
  Status s = set_isa(isa);
  LOWBIT_CHECK(s.ok(), s.to_string());
}

ScopedIsa::~ScopedIsa() { (void)set_isa(previous_); }

}  // namespace lowbit
