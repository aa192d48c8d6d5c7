// libFuzzer: --plan override JSON (tensor globs to specs) on a small llama config.
#include "fuzz_util.h"
#include "lowbit/pipeline.h"
#include "lowbit/quant.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lowbit::fuzz::write_input("plan.json", data, size);
  lowbit::LlamaConfig c;
  c.dim = 64;
  c.hidden_dim = 172;
  c.n_layers = 2;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.vocab_size = 512;
  c.seq_len = 64;
  static const lowbit::QuantSpec w = lowbit::parse_spec("int4:g32:sym:fp16").value();
  (void)lowbit::make_plan(c, w, std::nullopt, path);
  return 0;
}
