// libFuzzer: text through a tokenizer (the input is the text; the tokenizer is the bundled
// llama2.c tok512.bin when LOWBIT_FUZZ_TOKENIZER names it, else the GGUF named there).
#include <cstdlib>

#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<lowbit::Tokenizer> tok = [] {
    const char* p = std::getenv("LOWBIT_FUZZ_TOKENIZER");
    if (p == nullptr) return std::unique_ptr<lowbit::Tokenizer>();
    auto t = lowbit::load_tokenizer(p);
    return t.ok() ? std::move(*t) : std::unique_ptr<lowbit::Tokenizer>();
  }();
  if (tok && !lowbit::fuzz::run_text(*tok, data, size)) __builtin_trap();
  return 0;
}
