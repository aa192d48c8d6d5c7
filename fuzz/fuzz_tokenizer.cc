// libFuzzer: tokenizer files (SentencePiece .model, llama2.c tokenizer.bin, GGUF vocabularies)
// and, when one loads, encode/decode of a fixed text.
#include "fuzz_util.h"
#include "lowbit/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lowbit::fuzz::write_input("tokenizer.bin", data, size);
  auto tok = lowbit::load_tokenizer(path);
  if (!tok.ok()) return 0;
  auto ids = (*tok)->encode("Once upon a time, 42 naïve cats\n\nThe end.", true, false);
  if (ids.ok()) {
    int prev = -1;
    for (int id : *ids) {
      (void)(*tok)->decode(prev, id);
      prev = id;
    }
  }
  return 0;
}
