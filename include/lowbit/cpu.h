// CPU feature detection (read once) and the ISA level every dispatched fast path
// keys on. LOWBIT_ISA=scalar|avx2|avx512|avx512vnni forces a *lower* level so each
// path can be tested on one machine; asking for a level the CPU lacks is an error.
//
//   const CpuFeatures& f = cpu_features();      // cpuid + xgetbv, once
//   Isa isa = active_isa();                     // what dispatch uses now
//   ScopedIsa force(Isa::kScalar);              // tests: run a block on another level
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/status.h"

namespace lowbit {

struct CpuFeatures {
  bool sse42 = false;
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512vnni = false;
  bool avx512bf16 = false;
  bool os_avx = false;     // OS saves YMM state (XCR0)
  bool os_avx512 = false;  // OS saves ZMM/opmask state (XCR0)
  std::string brand;       // "Intel(R) Xeon(R) ..." when cpuid reports it
};

// Ordered: each level implies everything below it.
enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Vnni = 3 };
inline constexpr int kNumIsas = 4;

const CpuFeatures& cpu_features();

std::string_view isa_name(Isa isa);
Result<Isa> parse_isa(std::string_view name);  // "scalar", "avx2", "avx512", "avx512vnni"
bool isa_supported(Isa isa);                   // by this CPU and OS
Isa best_isa();                                // highest supported level
std::vector<Isa> supported_isas();             // scalar .. best, ascending

// The level dispatch uses. On first use it reads LOWBIT_ISA; an invalid or unsupported
// value there prints one line to stderr and exits with status 2 (call init_isa_from_env
// first to handle the error yourself, as the CLI does).
Isa active_isa();
Status init_isa_from_env();  // validates LOWBIT_ISA and sets the level; idempotent
Status set_isa(Isa isa);     // error if unsupported

// Forces an ISA level for the lifetime of the object (tests).
class ScopedIsa {
 public:
  explicit ScopedIsa(Isa isa);
  ~ScopedIsa();
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;

 private:
  Isa previous_;
};

}  // namespace lowbit
