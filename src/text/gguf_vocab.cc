// A tokenizer file's vocabulary in the form GGUF's tokenizer.ggml.* keys hold it (llama.cpp's
// "llama" SentencePiece vocabulary): pieces, scores and token types (llama_token_type).
#include <sentencepiece_processor.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "lowbit/file.h"
#include "lowbit/save.h"
#include "lowbit/tokenizer.h"

namespace lowbit {
namespace {

constexpr std::string_view kSpaceMark = "\xe2\x96\x81";  // U+2581, SentencePiece's whitespace
constexpr int kFirstByteId = 3, kNumBytes = 256;          // llama2.c's byte fallback: byte b is id b + 3

Result<TokenizerVocab> from_sentencepiece(const std::string& path) {
  sentencepiece::SentencePieceProcessor sp;
  const sentencepiece::util::Status st = sp.Load(path);
  if (!st.ok()) return DataLoss(fmt::format("{}: not a SentencePiece model: {}", path, st.ToString()));
  TokenizerVocab v;
  const int n = sp.GetPieceSize();
  for (int id = 0; id < n; ++id) {
    v.tokens.push_back(sp.IdToPiece(id));
    v.scores.push_back(sp.GetScore(id));
    int32_t type = TokenizerVocab::kNormal;
    if (sp.IsUnknown(id)) type = TokenizerVocab::kUnknown;
    else if (sp.IsControl(id)) type = TokenizerVocab::kControl;
    else if (sp.IsByte(id)) type = TokenizerVocab::kByte;
    else if (sp.IsUnused(id)) type = TokenizerVocab::kUnused;
    v.types.push_back(type);
  }
  v.bos = sp.bos_id();
  v.eos = sp.eos_id();
  v.unk = sp.unk_id();
  return v;
}

// load_tokenizer() has validated the file whole; this reads it again for the raw pieces.
Result<TokenizerVocab> from_llama2c(const std::string& path) {
  LOWBIT_ASSIGN_OR_RETURN(std::string bytes, read_file(path));
  TokenizerVocab v;
  size_t pos = sizeof(int32_t);  // max_token_length
  while (pos < bytes.size()) {
    float score;
    int32_t len;
    if (bytes.size() - pos < sizeof score + sizeof len) return DataLoss(path + ": truncated token record");
    std::memcpy(&score, bytes.data() + pos, sizeof score);
    std::memcpy(&len, bytes.data() + pos + sizeof score, sizeof len);
    pos += sizeof score + sizeof len;
    if (len < 0 || static_cast<size_t>(len) > bytes.size() - pos) return DataLoss(path + ": truncated token record");
    std::string piece = bytes.substr(pos, static_cast<size_t>(len));
    pos += static_cast<size_t>(len);
    const int id = static_cast<int>(v.tokens.size());
    int32_t type = TokenizerVocab::kNormal;
    if (id == 0) {
      type = TokenizerVocab::kUnknown;
    } else if (id == 1 || id == 2) {  // exported as "\n<s>\n" / "\n</s>\n"
      type = TokenizerVocab::kControl;
      piece = id == 1 ? "<s>" : "</s>";
    } else if (id < kFirstByteId + kNumBytes) {
      type = TokenizerVocab::kByte;
    } else {
      for (size_t i = piece.find(' '); i != std::string::npos; i = piece.find(' ', i + kSpaceMark.size())) {
        piece.replace(i, 1, kSpaceMark);
      }
    }
    v.tokens.push_back(std::move(piece));
    v.scores.push_back(score);
    v.types.push_back(type);
  }
  v.unk = 0;
  v.bos = 1;
  v.eos = 2;
  return v;
}

}  // namespace

Result<TokenizerVocab> read_tokenizer_vocab(const std::string& path) {
  LOWBIT_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, load_tokenizer(path));
  try {  // libsentencepiece and protobuf may throw (std::bad_alloc); nothing crosses our API
    return tok->kind() == "sentencepiece" ? from_sentencepiece(path) : from_llama2c(path);
  } catch (const std::exception& e) {
    return Internal(fmt::format("{}: reading the vocabulary failed: {}", path, e.what()));
  }
}

}  // namespace lowbit
