// libFuzzer: safetensors (header JSON, dtypes, offsets, quantized tensors) and the model loader
// with its config.json. The input is split at the first 0xFF 0x00 0xFF: before it config.json,
// after it model.safetensors (no separator: the whole input is the weights file).
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!lowbit::fuzz::run_safetensors(data, size)) __builtin_trap();
  return 0;
}
