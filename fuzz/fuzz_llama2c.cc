// libFuzzer: the llama2.c checkpoint reader (v0, ak42 v1/v2) and the weight value check.
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!lowbit::fuzz::run_llama2c(data, size)) __builtin_trap();
  return 0;
}
