// libFuzzer: tokenizer files (SentencePiece .model, llama2.c tokenizer.bin, GGUF vocabularies)
// and, when one loads, encode/decode of a fixed text.
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!lowbit::fuzz::run_tokenizer(data, size)) __builtin_trap();
  return 0;
}
