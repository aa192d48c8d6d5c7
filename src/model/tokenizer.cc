// Tokenizers: SentencePiece .model (wrapping libsentencepiece, whose C++ API returns
// util::Status) and llama2.c tokenizer.bin (a reimplementation of run.c's encode/decode).
#include "lowbit/tokenizer.h"

#include <sentencepiece_processor.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <queue>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

#include "lowbit/file.h"

namespace lowbit {
namespace {

static_assert(std::endian::native == std::endian::little,
              "tokenizer.bin is read as little-endian (llama2.c writes native x86/ARM order)");

// llama2.c run.c: BOS is 1, EOS is 2, byte b falls back to id b + 3.
constexpr int kLlama2cBos = 1;
constexpr int kLlama2cEos = 2;
constexpr int kByteFallbackOffset = 3;
constexpr int kLlama2cMinVocab = kByteFallbackOffset + 256;
// run.c starts its best-merge search at -1e10: pairs scoring at or below it never merge.
constexpr float kRunCMinScore = -1e10f;
// A tokenizer.bin opens with max_token_length; real ones are < 100. A SentencePiece proto opens
// with tag 0x0a and a length varint, so its first int32 has a non-zero third byte (>= 65536).
constexpr int32_t kMaxTokenLengthLimit = 65535;
// What llama2.c's exporter (tokenizer.py) writes for BOS and EOS; we decode SentencePiece alike.
constexpr std::string_view kBosText = "\n<s>\n";
constexpr std::string_view kEosText = "\n</s>\n";
constexpr std::string_view kSpaceMark = "\xe2\x96\x81";  // U+2581, SentencePiece's space

// Byte offset of the first byte that does not start a well-formed UTF-8 sequence (overlong
// forms, surrogates and code points above U+10FFFF are ill-formed), or npos if all is well.
size_t first_invalid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    uint32_t min;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return i;
    }
    if (n - i < len) return i;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

Status check_utf8(const std::string& path, std::string_view text) {
  const size_t bad = first_invalid_utf8(text);
  if (bad == std::string_view::npos) return OkStatus();
  return InvalidArgument(fmt::format("{}: text is not valid UTF-8 at byte {} (0x{:02X}) of {}", path, bad,
                                     static_cast<unsigned char>(text[bad]), text.size()));
}

// Length of the UTF-8 sequence a (valid) lead byte opens.
size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  return 4;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The byte a "<0xAB>" piece stands for, or -1.
int byte_piece_value(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  const int hi = hex_value(piece[3]);
  const int lo = hex_value(piece[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

// Decoding is the same table lookup for both kinds: the text of every id, and whether that
// text loses its leading space after BOS (run.c tests the piece, so "<0x20>" keeps its space).
class TableDecodingTokenizer : public Tokenizer {
 public:
  std::string decode(int prev, int token) const override {
    if (token < 0 || static_cast<size_t>(token) >= text_.size()) return {};
    const std::string& s = text_[static_cast<size_t>(token)];
    if (prev == bos_ && bos_ >= 0 && strip_after_bos_[static_cast<size_t>(token)]) return s.substr(1);
    return s;
  }
  int vocab_size() const override { return static_cast<int>(text_.size()); }
  int bos_id() const override { return bos_; }
  int eos_id() const override { return eos_; }

 protected:
  std::string path_;
  int bos_ = -1;
  int eos_ = -1;
  std::vector<std::string> text_;       // (vocab) what decode gives
  std::vector<bool> strip_after_bos_;   // (vocab) piece starts with a space
};

// ---- llama2.c tokenizer.bin -------------------------------------------------------------

class Llama2cTokenizer final : public TableDecodingTokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> load(const std::string& path, std::string_view data);

  Result<std::vector<int>> encode(std::string_view text, bool bos, bool eos) const override;
  std::string_view kind() const override { return "llama2c"; }

 private:
  int lookup(std::string_view s) const {
    auto it = index_.find(s);
    return it == index_.end() ? -1 : it->second;
  }

  std::vector<std::string> pieces_;  // (vocab) as stored
  std::vector<float> scores_;        // (vocab)
  std::unordered_map<std::string_view, int> index_;  // piece -> id, views into pieces_
  int space_id_ = -1;                // the dummy prefix " "
};

Result<std::unique_ptr<Tokenizer>> Llama2cTokenizer::load(const std::string& path, std::string_view data) {
  auto read_i32 = [&](size_t at) {
    int32_t v;
    std::memcpy(&v, data.data() + at, sizeof v);
    return v;
  };
  const int32_t max_token_length = read_i32(0);  // the caller checked 4 bytes and 1..limit
  auto tok = std::make_unique<Llama2cTokenizer>();
  tok->path_ = path;
  size_t at = sizeof(int32_t);
  while (at < data.size()) {
    const size_t id = tok->pieces_.size();
    if (id >= static_cast<size_t>(std::numeric_limits<int>::max())) {
      return DataLoss(fmt::format("{}: more than {} tokens", path, std::numeric_limits<int>::max()));
    }
    if (data.size() - at < 8) {
      return DataLoss(fmt::format("{}: truncated at byte {}: token {} needs 8 bytes (score, length), {} left",
                                  path, at, id, data.size() - at));
    }
    float score;
    std::memcpy(&score, data.data() + at, sizeof score);
    const int32_t len = read_i32(at + 4);
    if (!std::isfinite(score)) {
      return DataLoss(fmt::format("{}: token {} at byte {} has a non-finite score", path, id, at));
    }
    if (len < 0) {
      return DataLoss(fmt::format("{}: token {} at byte {} has negative length {}", path, id, at, len));
    }
    if (len > max_token_length) {
      return DataLoss(fmt::format("{}: token {} at byte {} has length {} > max_token_length {}", path, id, at,
                                  len, max_token_length));
    }
    at += 8;
    if (data.size() - at < static_cast<size_t>(len)) {
      return DataLoss(fmt::format("{}: truncated in token {}: length {} at byte {}, only {} bytes left", path,
                                  id, len, at, data.size() - at));
    }
    tok->pieces_.emplace_back(data.substr(at, static_cast<size_t>(len)));
    tok->scores_.push_back(score);
    at += static_cast<size_t>(len);
  }
  const size_t n = tok->pieces_.size();
  if (n < static_cast<size_t>(kLlama2cMinVocab)) {
    return DataLoss(fmt::format("{}: {} tokens; a llama2.c tokenizer has at least {} (<unk>, <s>, </s>, 256 "
                                "byte pieces)", path, n, kLlama2cMinVocab));
  }
  for (int b = 0; b < 256; ++b) {
    const std::string& p = tok->pieces_[static_cast<size_t>(b + kByteFallbackOffset)];
    if (byte_piece_value(p) != b) {
      return DataLoss(fmt::format("{}: token {} is '{}', expected byte piece <0x{:02X}> (run.c byte fallback "
                                  "maps byte b to id b + 3)", path, b + kByteFallbackOffset, one_line(p), b));
    }
  }
  tok->index_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    tok->index_.emplace(tok->pieces_[i], static_cast<int>(i));  // a duplicate piece keeps its first id
  }
  tok->space_id_ = tok->lookup(" ");
  if (tok->space_id_ < 0) {
    return DataLoss(fmt::format("{}: no \" \" piece, which run.c's encode needs as the dummy prefix", path));
  }
  tok->bos_ = kLlama2cBos;
  tok->eos_ = kLlama2cEos;
  tok->text_.resize(n);
  tok->strip_after_bos_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& p = tok->pieces_[i];
    const int byte = byte_piece_value(p);
    tok->text_[i] = byte >= 0 ? std::string(1, static_cast<char>(byte)) : p;
    tok->strip_after_bos_[i] = !p.empty() && p[0] == ' ';
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

// run.c's encode. run.c rescans every adjacent pair after each merge (quadratic); this keeps the
// candidate pairs in a heap ordered by (score desc, position asc) and drops stale entries when
// popped, which picks the same pair at every step: the best-scoring one, leftmost on ties.
Result<std::vector<int>> Llama2cTokenizer::encode(std::string_view text, bool bos, bool eos) const {
  LOWBIT_RETURN_IF_ERROR(check_utf8(path_, text));
  std::vector<int> out;
  if (bos) out.push_back(kLlama2cBos);
  if (text.empty()) {  // run.c adds the dummy prefix only to non-empty text
    if (eos) out.push_back(kLlama2cEos);
    return out;
  }

  struct Symbol {
    int id;    // -1 once merged into its left neighbour
    int prev;  // -1 at the start
    int next;  // -1 at the end
  };
  std::vector<Symbol> sym;  // (symbols) in text order; index order is position order
  sym.reserve(text.size() + 1);
  auto append = [&](int id) {
    const int i = static_cast<int>(sym.size());
    sym.push_back({id, i - 1, -1});
    if (i > 0) sym[static_cast<size_t>(i - 1)].next = i;
  };
  append(space_id_);
  for (size_t i = 0; i < text.size();) {
    const size_t len = utf8_length(static_cast<unsigned char>(text[i]));
    const int id = lookup(text.substr(i, len));
    if (id >= 0) {
      append(id);
    } else {
      for (size_t k = 0; k < len; ++k) append(static_cast<unsigned char>(text[i + k]) + kByteFallbackOffset);
    }
    i += len;
  }

  struct Candidate {
    float score;
    int left, right;          // symbol indices
    int left_id, right_id;    // their ids when pushed; a mismatch later means stale
    int merged;
  };
  auto worse = [](const Candidate& a, const Candidate& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> heap(worse);
  std::string joined;
  auto consider = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    const int lid = sym[static_cast<size_t>(l)].id;
    const int rid = sym[static_cast<size_t>(r)].id;
    joined.assign(pieces_[static_cast<size_t>(lid)]);
    joined.append(pieces_[static_cast<size_t>(rid)]);
    const int id = lookup(joined);
    if (id < 0) return;
    const float score = scores_[static_cast<size_t>(id)];
    if (!(score > kRunCMinScore)) return;
    heap.push({score, l, r, lid, rid, id});
  };
  for (size_t i = 0; i + 1 < sym.size(); ++i) consider(static_cast<int>(i), static_cast<int>(i + 1));
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Symbol& l = sym[static_cast<size_t>(c.left)];
    Symbol& r = sym[static_cast<size_t>(c.right)];
    // Ids only grow longer by merging, so equal ids and adjacency mean the pair is unchanged.
    if (l.id != c.left_id || r.id != c.right_id || l.next != c.right) continue;
    l.id = c.merged;
    r.id = -1;
    l.next = r.next;
    if (r.next >= 0) sym[static_cast<size_t>(r.next)].prev = c.left;
    consider(l.prev, c.left);
    consider(c.left, l.next);
  }
  for (int i = 0; i >= 0; i = sym[static_cast<size_t>(i)].next) out.push_back(sym[static_cast<size_t>(i)].id);
  if (eos) out.push_back(kLlama2cEos);
  return out;
}

// ---- SentencePiece .model -------------------------------------------------------------

class SentencePieceTokenizer final : public TableDecodingTokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> load(const std::string& path, std::string_view data,
                                                 int32_t first_word);

  Result<std::vector<int>> encode(std::string_view text, bool bos, bool eos) const override;
  std::string_view kind() const override { return "sentencepiece"; }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

Result<std::unique_ptr<Tokenizer>> SentencePieceTokenizer::load(const std::string& path, std::string_view data,
                                                                int32_t first_word) {
  auto tok = std::make_unique<SentencePieceTokenizer>();
  tok->path_ = path;
  const sentencepiece::util::Status st = tok->sp_.LoadFromSerializedProto(data);
  if (!st.ok()) {
    return DataLoss(fmt::format("{}: neither a llama2.c tokenizer.bin (first int32 is {}, expected "
                                "max_token_length in 1..{}) nor a SentencePiece model ({})",
                                path, first_word, kMaxTokenLengthLimit, one_line(st.ToString())));
  }
  const int n = tok->sp_.GetPieceSize();
  if (n <= 0) return DataLoss(fmt::format("{}: SentencePiece model with no pieces", path));
  tok->bos_ = tok->sp_.bos_id();
  tok->eos_ = tok->sp_.eos_id();
  tok->text_.resize(static_cast<size_t>(n));
  tok->strip_after_bos_.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const std::string& piece = tok->sp_.IdToPiece(i);
    std::string& t = tok->text_[static_cast<size_t>(i)];
    const int byte = tok->sp_.IsByte(i) ? byte_piece_value(piece) : -1;
    if (i == tok->bos_) {
      t = kBosText;
    } else if (i == tok->eos_) {
      t = kEosText;
    } else if (byte >= 0) {
      t.assign(1, static_cast<char>(byte));
    } else {
      for (size_t k = 0; k < piece.size();) {  // U+2581 -> ' ', as llama2.c's exporter does
        if (std::string_view(piece).substr(k, kSpaceMark.size()) == kSpaceMark) {
          t += ' ';
          k += kSpaceMark.size();
        } else {
          t += piece[k++];
        }
      }
    }
    tok->strip_after_bos_[static_cast<size_t>(i)] = byte < 0 && !t.empty() && t[0] == ' ';
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

Result<std::vector<int>> SentencePieceTokenizer::encode(std::string_view text, bool bos, bool eos) const {
  LOWBIT_RETURN_IF_ERROR(check_utf8(path_, text));
  if (bos && bos_ < 0) return InvalidArgument(fmt::format("{}: BOS asked for, but the model has none", path_));
  if (eos && eos_ < 0) return InvalidArgument(fmt::format("{}: EOS asked for, but the model has none", path_));
  std::vector<int> ids;
  sentencepiece::util::Status st;
  try {
    st = sp_.Encode(text, &ids);
  } catch (const std::exception& e) {
    return Internal(fmt::format("{}: SentencePiece encode threw: {}", path_, one_line(e.what())));
  }
  if (!st.ok()) return Internal(fmt::format("{}: SentencePiece encode failed: {}", path_, one_line(st.ToString())));
  std::vector<int> out;
  out.reserve(ids.size() + 2);
  if (bos) out.push_back(bos_);
  out.insert(out.end(), ids.begin(), ids.end());
  if (eos) out.push_back(eos_);
  return out;
}

Result<std::unique_ptr<Tokenizer>> load_tokenizer_unchecked(const std::string& path) {
  LOWBIT_ASSIGN_OR_RETURN(const std::string data, read_file(path));
  if (data.empty()) {
    return DataLoss(fmt::format("{}: empty file, expected a SentencePiece .model or a llama2.c tokenizer.bin", path));
  }
  int32_t first = 0;
  if (data.size() >= sizeof first) std::memcpy(&first, data.data(), sizeof first);
  if (data.size() >= sizeof first && first >= 1 && first <= kMaxTokenLengthLimit) {
    return Llama2cTokenizer::load(path, data);
  }
  return SentencePieceTokenizer::load(path, data, first);
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> load_tokenizer(const std::string& path, int expected_vocab) {
  try {  // libsentencepiece and protobuf may throw (std::bad_alloc); nothing crosses our API
    LOWBIT_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, load_tokenizer_unchecked(path));
    if (expected_vocab > 0 && tok->vocab_size() != expected_vocab) {
      return InvalidArgument(fmt::format("{}: vocab {}, model expects {}", path, tok->vocab_size(), expected_vocab));
    }
    return tok;
  } catch (const std::exception& e) {
    return Internal(fmt::format("{}: cannot load tokenizer: {}", path, one_line(e.what())));
  }
}

}  // namespace lowbit
