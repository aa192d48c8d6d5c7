// libFuzzer: the llama2.c checkpoint reader (v0, ak42 v1/v2) and the weight value check.
#include "fuzz_util.h"
#include "lowbit/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lowbit::fuzz::write_input("model.bin", data, size);
  (void)lowbit::load_llama2c(path);
  (void)lowbit::load_model(path);
  return 0;
}
