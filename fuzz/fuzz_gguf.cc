// libFuzzer: the GGUF reader (header, metadata, tensor table, every block type it dequantizes),
// the llama loader on top of it and its embedded tokenizer.
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!lowbit::fuzz::run_gguf(data, size)) __builtin_trap();
  return 0;
}
