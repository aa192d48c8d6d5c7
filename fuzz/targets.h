// The body of every libFuzzer target (issue 21), shared by the fuzz_<target>.cc wrappers
// (clang, preset `fuzz`) and by tests/model/fuzz_regressions_test.cc, which replays the
// checked-in inputs under fuzz/regressions/<target>/ through the same code in every build
// (release and asan, gcc, no clang needed). Each returns false only when an invariant the
// target checks is broken (the spec round trip); a reader's error Status is a correct answer.
//
//   if (!lowbit::fuzz::run_target("gguf", data, size)) __builtin_trap();
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "fuzz_util.h"
#include "lowbit/gguf.h"
#include "lowbit/model.h"
#include "lowbit/pipeline.h"
#include "lowbit/quant.h"
#include "lowbit/safetensors.h"
#include "lowbit/tokenizer.h"

namespace lowbit::fuzz {

// The llama2.c checkpoint reader (v0, ak42 v1/v2) and the weight value check.
inline bool run_llama2c(const uint8_t* data, size_t size) {
  const std::string path = write_input("model.bin", data, size);
  (void)load_llama2c(path);
  (void)load_model(path);
  return true;
}

// The GGUF reader (header, metadata, tensor table, every block type it dequantizes), the llama
// loader on top of it and its embedded tokenizer.
inline bool run_gguf(const uint8_t* data, size_t size) {
  const std::string path = write_input("model.gguf", data, size);
  if (Result<GgufFile> f = open_gguf(path); !f.ok()) return true;
  (void)load_gguf(path);
  if (auto tok = load_tokenizer(path); tok.ok()) {
    (void)(*tok)->encode("Hello world, 12345  naïve\n<|im_start|>", true, false);
  }
  return true;
}

// safetensors (header JSON, dtypes, offsets, quantized tensors) and the model loader with its
// config.json. The input is split at the first 0xFF 0x00 0xFF: before it config.json, after it
// model.safetensors (no separator: the whole input is the weights file).
inline bool run_safetensors(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t cut = in.find(std::string_view("\xff\x00\xff", 3));
  const std::string_view config = cut == std::string_view::npos ? std::string_view() : in.substr(0, cut);
  const std::string_view weights = cut == std::string_view::npos ? in : in.substr(cut + 3);
  const std::string dir = scratch_dir() + "/st";
  std::filesystem::create_directories(dir);
  write_input("st/model.safetensors", reinterpret_cast<const uint8_t*>(weights.data()), weights.size());
  if (cut != std::string_view::npos) {
    write_input("st/config.json", reinterpret_cast<const uint8_t*>(config.data()), config.size());
  } else {
    std::filesystem::remove(dir + "/config.json");
  }
  (void)open_safetensors(dir + "/model.safetensors");
  (void)load_safetensors(dir);
  return true;
}

// Tokenizer files (SentencePiece .model, llama2.c tokenizer.bin, GGUF vocabularies) and, when one
// loads, encode/decode of a fixed text.
inline bool run_tokenizer(const uint8_t* data, size_t size) {
  const std::string path = write_input("tokenizer.bin", data, size);
  auto tok = load_tokenizer(path);
  if (!tok.ok()) return true;
  auto ids = (*tok)->encode("Once upon a time, 42 naïve cats\n\nThe end.", true, false);
  if (ids.ok()) {
    int prev = -1;
    for (int id : *ids) {
      (void)(*tok)->decode(prev, id);
      prev = id;
    }
  }
  return true;
}

// Text through a tokenizer (the input is the text).
inline bool run_text(const Tokenizer& tok, const uint8_t* data, size_t size) {
  (void)tok.encode(std::string(reinterpret_cast<const char*>(data), size), true, false);
  return true;
}

// The QuantSpec text parser: what parses must print back to a spec that parses to the same text.
inline bool run_spec(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  Result<QuantSpec> s = parse_spec(text);
  if (!s.ok()) return true;
  const std::string back = to_string(*s);
  Result<QuantSpec> again = parse_spec(back);
  if (!again.ok() || to_string(*again) != back) return false;
  (void)bits_per_weight(*s, 7, 129);
  return true;
}

// --plan override JSON (tensor globs to specs) on a small llama config.
inline bool run_plan(const uint8_t* data, size_t size) {
  const std::string path = write_input("plan.json", data, size);
  LlamaConfig c;
  c.dim = 64;
  c.hidden_dim = 172;
  c.n_layers = 2;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.vocab_size = 512;
  c.seq_len = 64;
  static const QuantSpec w = parse_spec("int4:g32:sym:fp16").value();
  (void)make_plan(c, w, std::nullopt, path);
  return true;
}

}  // namespace lowbit::fuzz
