// Tokenizers: text to token ids and back for Llama-family models. Read from a SentencePiece
// ".model" (through Debian's libsentencepiece), the llama2.c "tokenizer.bin" export (whose encoder
// reproduces llama2.c run.c's `encode`), or the vocabulary embedded in a GGUF file:
// tokenizer.ggml.model "gpt2" (byte-level BPE with the model's pre-tokenizer regex, through
// Debian's PCRE2) or "llama" (SentencePiece-style score-merge BPE, the run.c encoder).
//
//   LOWBIT_ASSIGN_OR_RETURN(auto tok, load_tokenizer("../shared/models/tok512.bin", m.config.vocab_size));
//   LOWBIT_ASSIGN_OR_RETURN(std::vector<int> ids, tok->encode("Once upon a time", /*bos=*/true, /*eos=*/false));
//   std::string text;
//   for (size_t i = 1; i < ids.size(); ++i) text += tok->decode(ids[i - 1], ids[i]);  // "Once upon a time"
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/status.h"

namespace lowbit {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids for text; bos/eos prepend/append the model's BOS/EOS ids. InvalidArgument (naming
  // the tokenizer file and the byte offset) if `text` is not valid UTF-8, or if bos/eos is asked
  // of a SentencePiece model that has none. Empty text gives no tokens (besides BOS/EOS).
  //
  // Note: a SentencePiece model applies its normalizer first (tok512.model has
  // remove_extra_whitespaces on: leading/trailing spaces are dropped and runs of spaces become
  // one); the llama2.c encoder, like run.c, does not normalize. The two agree on text that
  // normalization leaves unchanged.
  virtual Result<std::vector<int>> encode(std::string_view text, bool bos, bool eos) const = 0;

  // The text of `token` when it follows `prev` — llama2.c's decode: a piece after BOS loses its
  // leading space; "<0xAB>" byte pieces give that raw byte. Concatenating over a sequence gives the
  // text. Both kinds decode alike: the SentencePiece whitespace mark U+2581 becomes ' ', BOS and EOS
  // read "\n<s>\n" and "\n</s>\n" (as llama2.c's exporter writes them). Out-of-range ids give "".
  virtual std::string decode(int prev, int token) const = 0;

  virtual int vocab_size() const = 0;
  virtual int bos_id() const = 0;  // -1 if the model has none
  virtual int eos_id() const = 0;  // -1 if the model has none
  virtual std::string_view kind() const = 0;  // "sentencepiece" | "llama2c" | "gguf-llama" | "gguf-gpt2"

  // Whether the model expects BOS at the start of a sequence: GGUF tokenizer.ggml.add_bos_token
  // (llama.cpp's default when absent: true for "llama", false for "gpt2"); true for the others.
  virtual bool add_bos() const { return true; }
  // The id whose text is exactly `piece` (a special token such as "<|im_end|>", or any vocab
  // entry in the tokenizer's own spelling), or -1.
  virtual int find_token(std::string_view piece) const = 0;
};

// ".model" (SentencePiece proto, through Debian's libsentencepiece), llama2.c "tokenizer.bin"
// (int32 max_token_length, then per token: float score, int32 length, bytes) or a GGUF file's
// embedded tokenizer (tokenizer.ggml.*), chosen by content (a GGUF starts with "GGUF"; a .bin
// with a small positive int32; a SentencePiece proto with neither). `expected_vocab` > 0 checks
// the vocab matches the model's ("tok512.bin: vocab 512, model expects 32000").
//
// GGUF "gpt2": tokens are GPT-2's byte-to-unicode spelling; merges "a b" in rank order;
// tokenizer.ggml.pre names the pre-tokenizer ("smollm", "gpt2", "llama-bpe", ...: an unknown one
// is Unsupported, naming it); tokens of token_type control (3) or user-defined (4) are matched
// as whole tokens wherever they appear in the text, longest first; decode gives raw bytes, so a
// multi-byte character split over tokens comes out whole once the pieces are concatenated.
// GGUF "llama": tokens + scores (+ token_type: byte pieces "<0xAB>" are the byte fallback, control
// tokens never merge), "▁" read as a space, a " " dummy prefix unless add_space_prefix is false.
// Any other tokenizer.ggml.model is Unsupported, naming it. bos/eos ids come from metadata.
//
// A tokenizer.bin has no vocab count: tokens run to the end of the file. It is checked whole:
// no truncated token, every length in [0, max_token_length], at least 259 tokens with ids 3..258
// the byte pieces "<0x00>".."<0xFF>" (run.c's byte fallback maps byte b to id b + 3) and a " "
// piece (the dummy prefix). BOS is id 1 and EOS id 2, as in run.c. Errors name the file.
Result<std::unique_ptr<Tokenizer>> load_tokenizer(const std::string& path, int expected_vocab = 0);

}  // namespace lowbit
