// libFuzzer: the QuantSpec text parser; what parses must print back to a spec that parses to
// the same text (round trip).
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!lowbit::fuzz::run_spec(data, size)) __builtin_trap();
  return 0;
}
