// libFuzzer: --plan override JSON (tensor globs to specs) on a small llama config.
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!lowbit::fuzz::run_plan(data, size)) __builtin_trap();
  return 0;
}
