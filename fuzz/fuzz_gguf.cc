// libFuzzer: the GGUF reader (header, metadata, tensor table, every block type it dequantizes),
// the llama loader on top of it and its embedded tokenizer.
#include "fuzz_util.h"
#include "lowbit/gguf.h"
#include "lowbit/model.h"
#include "lowbit/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lowbit::fuzz::write_input("model.gguf", data, size);
  if (lowbit::Result<lowbit::GgufFile> f = lowbit::open_gguf(path); !f.ok()) return 0;
  (void)lowbit::load_gguf(path);
  if (auto tok = lowbit::load_tokenizer(path); tok.ok()) {
    (void)(*tok)->encode("Hello world, 12345  naïve\n<|im_start|>", true, false);
  }
  return 0;
}
