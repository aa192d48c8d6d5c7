// Tokenizers: SentencePiece .model (wrapping libsentencepiece, whose C++ API returns
// util::Status), llama2.c tokenizer.bin (a reimplementation of run.c's encode/decode, which also
// serves GGUF "llama" vocabularies) and GGUF "gpt2" byte-level BPE (pre-tokenizer regexes
// through PCRE2, as llama.cpp's llama-vocab.cpp and Hugging Face tokenizers apply them).
#include "lowbit/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <queue>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

#include "lowbit/file.h"
#include "lowbit/gguf.h"

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

  // A GGUF "llama" vocabulary (tokenizer.ggml.tokens / scores / token_type).
  static Result<std::unique_ptr<Tokenizer>> load_gguf(const GgufFile& f);

  Result<std::vector<int>> encode(std::string_view text, bool bos, bool eos) const override;
  std::string_view kind() const override { return kind_; }
  bool add_bos() const override { return add_bos_; }
  int find_token(std::string_view piece) const override { return lookup(piece); }

 private:
  int lookup(std::string_view s) const {
    auto it = index_.find(s);
    return it == index_.end() ? -1 : it->second;
  }
  void build_decode_table();

  std::string_view kind_ = "llama2c";
  std::vector<std::string> pieces_;  // (vocab) as stored, SentencePiece's U+2581 read as ' '
  std::vector<float> scores_;        // (vocab)
  std::unordered_map<std::string_view, int> index_;  // mergeable piece -> id, views into pieces_
  std::array<int, 256> byte_id_{};   // byte fallback: the id of "<0xAB>" for byte 0xAB
  int space_id_ = -1;                // the dummy prefix " "; -1: none (add_space_prefix false)
  bool add_bos_ = true;
};

void Llama2cTokenizer::build_decode_table() {
  const size_t n = pieces_.size();
  text_.resize(n);
  strip_after_bos_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& p = pieces_[i];
    const int byte = byte_piece_value(p);
    text_[i] = byte >= 0 ? std::string(1, static_cast<char>(byte)) : p;
    strip_after_bos_[i] = !p.empty() && p[0] == ' ';
  }
}

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
    if (!std::isfinite(score)) {
      return DataLoss(fmt::format("{}: token {} has score {}; scores must be finite", path, id, score));
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
  for (int b = 0; b < 256; ++b) tok->byte_id_[static_cast<size_t>(b)] = b + kByteFallbackOffset;
  tok->bos_ = kLlama2cBos;
  tok->eos_ = kLlama2cEos;
  tok->build_decode_table();
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

// run.c's encode. run.c rescans every adjacent pair after each merge (quadratic); this keeps the
// candidate pairs in a heap ordered by (score desc, position asc) and drops stale entries when
// popped, which picks the same pair at every step: the best-scoring one, leftmost on ties.
Result<std::vector<int>> Llama2cTokenizer::encode(std::string_view text, bool bos, bool eos) const {
  LOWBIT_RETURN_IF_ERROR(check_utf8(path_, text));
  if (bos && bos_ < 0) return InvalidArgument(fmt::format("{}: BOS asked for, but the model has none", path_));
  if (eos && eos_ < 0) return InvalidArgument(fmt::format("{}: EOS asked for, but the model has none", path_));
  std::vector<int> out;
  if (bos) out.push_back(bos_);
  if (text.empty()) {  // run.c adds the dummy prefix only to non-empty text
    if (eos) out.push_back(eos_);
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
  if (space_id_ >= 0) append(space_id_);
  for (size_t i = 0; i < text.size();) {
    const size_t len = utf8_length(static_cast<unsigned char>(text[i]));
    const int id = lookup(text.substr(i, len));
    if (id >= 0) {
      append(id);
    } else {
      for (size_t k = 0; k < len; ++k) append(byte_id_[static_cast<unsigned char>(text[i + k])]);
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
  if (eos) out.push_back(eos_);
  return out;
}

// ---- SentencePiece .model -------------------------------------------------------------

class SentencePieceTokenizer final : public TableDecodingTokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> load(const std::string& path, std::string_view data,
                                                 int32_t first_word);

  Result<std::vector<int>> encode(std::string_view text, bool bos, bool eos) const override;
  std::string_view kind() const override { return "sentencepiece"; }
  int find_token(std::string_view piece) const override {
    const int id = sp_.PieceToId(piece);
    return id >= 0 && sp_.IdToPiece(id) == piece ? id : -1;  // unknown pieces map to <unk>
  }

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

// The longest line (run of bytes without '\n') SentencePiece is given. Its encoder holds about
// 120 (text with spaces) to 230 (no spaces) bytes of memory per byte of the text it is given, and a
// line cannot be cut without changing its tokens (docs/results.md, issue 21: a 10 MB line took
// 1.2 GB and 13.5 s CPU with spaces, 2.3 GB without), so a longer line is refused, not encoded.
constexpr size_t kMaxSentencePieceLine = size_t{1} << 20;

Result<std::vector<int>> SentencePieceTokenizer::encode(std::string_view text, bool bos, bool eos) const {
  LOWBIT_RETURN_IF_ERROR(check_utf8(path_, text));
  for (size_t start = 0; start < text.size();) {
    const size_t nl = std::min(text.find('\n', start), text.size());
    if (nl - start > kMaxSentencePieceLine) {
      return InvalidArgument(fmt::format("{}: the text has a line of {} bytes without a newline (at byte {}); SentencePiece "
                                         "encodes lines of at most {} bytes (its memory grows ~200x the line)",
                                         path_, nl - start, start, kMaxSentencePieceLine));
    }
    start = nl + 1;
  }
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

// ---- GGUF embedded tokenizers -----------------------------------------------------------

// llama.cpp's llama_token_type (tokenizer.ggml.token_type).
constexpr int32_t kTokenNormal = 1;
constexpr int32_t kTokenControl = 3;
constexpr int32_t kTokenUserDefined = 4;
constexpr int32_t kTokenByte = 6;

Result<std::vector<std::string>> gguf_strings(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.find(key);
  if (v == nullptr) return NotFound(fmt::format("{}: tokenizer key {} is missing", f.path, key));
  if (v->type != GgufValueType::kArray || v->array_type != GgufValueType::kString) {
    return DataLoss(fmt::format("{}: {} is not an array of strings", f.path, key));
  }
  std::vector<std::string> out;
  out.reserve(v->array.size());
  for (const auto& e : v->array) out.push_back(std::get<std::string>(e));
  return out;
}

// An optional numeric array of `n` entries (token_type, scores); empty when the key is absent.
template <typename T>
Result<std::vector<T>> gguf_numbers(const GgufFile& f, std::string_view key, size_t n) {
  std::vector<T> out;
  const GgufValue* v = f.find(key);
  if (v == nullptr) return out;
  if (v->type != GgufValueType::kArray) return DataLoss(fmt::format("{}: {} is not an array", f.path, key));
  if (v->array.size() != n) {
    return DataLoss(fmt::format("{}: {} has {} entries, tokenizer.ggml.tokens {}", f.path, key, v->array.size(), n));
  }
  out.reserve(n);
  for (const auto& e : v->array) {
    const bool ok = std::visit(
        [&](const auto& x) {
          using X = std::decay_t<decltype(x)>;
          if constexpr (std::is_arithmetic_v<X> && !std::is_same_v<X, bool>) {
            out.push_back(static_cast<T>(x));
            return true;
          } else {
            return false;
          }
        },
        e);
    if (!ok) return DataLoss(fmt::format("{}: {} holds a non-numeric entry", f.path, key));
  }
  return out;
}

// An optional token id key; `fallback` when absent; range-checked against the vocab.
Result<int> gguf_token_id(const GgufFile& f, std::string_view key, int fallback, size_t vocab) {
  if (f.find(key) == nullptr) return fallback;
  LOWBIT_ASSIGN_OR_RETURN(int64_t id, f.get_i64(key));
  if (id < 0 || static_cast<uint64_t>(id) >= vocab) {
    return DataLoss(fmt::format("{}: {}={} is outside the vocab of {}", f.path, key, id, vocab));
  }
  return static_cast<int>(id);
}

Result<bool> gguf_bool_or(const GgufFile& f, std::string_view key, bool fallback) {
  if (f.find(key) == nullptr) return fallback;
  return f.get_bool(key);
}

Result<std::unique_ptr<Tokenizer>> Llama2cTokenizer::load_gguf(const GgufFile& f) {
  auto tok = std::make_unique<Llama2cTokenizer>();
  tok->path_ = f.path;
  tok->kind_ = "gguf-llama";
  LOWBIT_ASSIGN_OR_RETURN(std::vector<std::string> pieces, gguf_strings(f, "tokenizer.ggml.tokens"));
  const size_t n = pieces.size();
  if (n == 0 || n > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return DataLoss(fmt::format("{}: tokenizer.ggml.tokens has {} entries", f.path, n));
  }
  LOWBIT_ASSIGN_OR_RETURN(std::vector<float> scores, gguf_numbers<float>(f, "tokenizer.ggml.scores", n));
  if (scores.empty()) return NotFound(fmt::format("{}: tokenizer key tokenizer.ggml.scores is missing", f.path));
  for (size_t i = 0; i < scores.size(); ++i) {  // a NaN score makes every merge comparison false
    if (!std::isfinite(scores[i])) {
      return DataLoss(fmt::format("{}: tokenizer.ggml.scores[{}] is {}; scores must be finite", f.path, i, scores[i]));
    }
  }
  LOWBIT_ASSIGN_OR_RETURN(std::vector<int32_t> types, gguf_numbers<int32_t>(f, "tokenizer.ggml.token_type", n));
  for (std::string& p : pieces) {  // SentencePiece's U+2581 is a space, as in llama2.c's export
    std::string t;
    for (size_t k = 0; k < p.size();) {
      if (std::string_view(p).substr(k, kSpaceMark.size()) == kSpaceMark) {
        t += ' ';
        k += kSpaceMark.size();
      } else {
        t += p[k++];
      }
    }
    p = std::move(t);
  }
  tok->pieces_ = std::move(pieces);
  tok->scores_ = std::move(scores);
  tok->byte_id_.fill(-1);
  tok->index_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const int32_t type = types.empty() ? kTokenNormal : types[i];
    const int byte = byte_piece_value(tok->pieces_[i]);
    if (byte >= 0 && (types.empty() || type == kTokenByte) && tok->byte_id_[static_cast<size_t>(byte)] < 0) {
      tok->byte_id_[static_cast<size_t>(byte)] = static_cast<int>(i);
    } else if (type != kTokenControl && byte < 0) {
      tok->index_.emplace(tok->pieces_[i], static_cast<int>(i));  // a duplicate keeps its first id
    }
  }
  for (int b = 0; b < 256; ++b) {
    if (tok->byte_id_[static_cast<size_t>(b)] < 0) {
      return DataLoss(fmt::format("{}: no byte piece <0x{:02X}> in tokenizer.ggml.tokens (the byte fallback needs "
                                  "all 256)", f.path, b));
    }
  }
  LOWBIT_ASSIGN_OR_RETURN(bool space_prefix, gguf_bool_or(f, "tokenizer.ggml.add_space_prefix", true));
  if (space_prefix) {
    tok->space_id_ = tok->lookup(" ");
    if (tok->space_id_ < 0) {
      return DataLoss(fmt::format("{}: no \"\u2581\" token for the dummy prefix (tokenizer.ggml.add_space_prefix)",
                                  f.path));
    }
  }
  LOWBIT_ASSIGN_OR_RETURN(tok->bos_, gguf_token_id(f, "tokenizer.ggml.bos_token_id", kLlama2cBos, n));
  LOWBIT_ASSIGN_OR_RETURN(tok->eos_, gguf_token_id(f, "tokenizer.ggml.eos_token_id", kLlama2cEos, n));
  LOWBIT_ASSIGN_OR_RETURN(tok->add_bos_, gguf_bool_or(f, "tokenizer.ggml.add_bos_token", true));
  tok->build_decode_table();
  if (tok->bos_ >= 0) tok->text_[static_cast<size_t>(tok->bos_)] = kBosText;
  if (tok->eos_ >= 0) tok->text_[static_cast<size_t>(tok->eos_)] = kEosText;
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
// (controls, space, DEL, NBSP, soft hyphen) for U+0100.. in byte order, so every byte is a
// visible character and a token is a string of them.
std::array<uint32_t, 256> gpt2_byte_to_codepoint() {
  std::array<uint32_t, 256> cp{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    cp[b] = printable ? b : next++;
  }
  return cp;
}

void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Pre-tokenizer regexes by tokenizer.ggml.pre, as llama.cpp's llama-vocab.cpp applies them: each
// stage splits every piece of the previous one; text between matches stays a piece of its own.
// GPT-2's pattern ends in "\s+" here, which is what llama.cpp's unmatched-gap rule amounts to.
constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Qwen2 (llama.cpp LLAMA_VOCAB_PRE_TYPE_QWEN2): Llama 3's pattern with single digits (\p{N}, not \p{N}{1,3}).
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct PreTokenizer {
  std::string_view name;
  std::vector<std::string_view> stages;
};

const PreTokenizer* find_pre_tokenizer(std::string_view name) {
  static const PreTokenizer kTable[] = {
      {"default", {kGpt2Regex}},
      {"gpt2", {kGpt2Regex}},
      // Hugging Face's Digits(individual_digits) then ByteLevel: every digit a piece of its own.
      {"smollm", {R"(\p{N})", kGpt2Regex}},
      {"starcoder", {R"(\p{N})", kGpt2Regex}},
      {"refact", {R"(\p{N})", kGpt2Regex}},
      {"llama3", {kLlama3Regex}},
      {"llama-bpe", {kLlama3Regex}},
      {"qwen2", {kQwen2Regex}},
  };
  for (const PreTokenizer& p : kTable) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

struct Pcre2CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct Pcre2MatchDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};
using Pcre2Code = std::unique_ptr<pcre2_code, Pcre2CodeDeleter>;
using Pcre2Match = std::unique_ptr<pcre2_match_data, Pcre2MatchDeleter>;

class Gpt2Tokenizer final : public TableDecodingTokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> load(const GgufFile& f);

  Result<std::vector<int>> encode(std::string_view text, bool bos, bool eos) const override;
  std::string_view kind() const override { return "gguf-gpt2"; }
  bool add_bos() const override { return add_bos_; }
  int find_token(std::string_view piece) const override {
    auto it = index_.find(piece);
    return it == index_.end() ? -1 : it->second;
  }

 private:
  Status encode_plain(std::string_view text, std::vector<int>* out) const;
  Status encode_chunk(std::string_view chunk, std::vector<int>* out) const;

  std::vector<std::string> tokens_;                   // (vocab) GPT-2 byte-to-unicode spelling
  std::unordered_map<std::string_view, int> index_;   // token -> id, views into tokens_
  std::unordered_map<std::string, int> merge_rank_;   // "left right" -> rank (lower merges first)
  std::vector<std::pair<std::string, int>> specials_;  // control / user-defined: text, id; longest first
  std::vector<Pcre2Code> stages_;                     // pre-tokenizer regexes, applied in turn
  std::array<std::string, 256> byte_spelling_;        // byte -> its character, UTF-8
  int unk_ = -1;                                      // for a byte without a token; -1: drop it
  bool add_bos_ = false;
};

Result<std::unique_ptr<Tokenizer>> Gpt2Tokenizer::load(const GgufFile& f) {
  auto tok = std::make_unique<Gpt2Tokenizer>();
  tok->path_ = f.path;
  LOWBIT_ASSIGN_OR_RETURN(std::string pre, f.find("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre")
                                                                          : Result<std::string>(std::string("default")));
  const PreTokenizer* pt = find_pre_tokenizer(pre);
  if (pt == nullptr) {
    std::string known;
    for (std::string_view n : {"default", "gpt2", "smollm", "starcoder", "refact", "llama3", "llama-bpe", "qwen2"}) {
      known += known.empty() ? "" : ", ";
      known += n;
    }
    return Unsupported(fmt::format("{}: tokenizer.ggml.pre '{}' is not supported (supported: {})", f.path, pre, known));
  }
  for (std::string_view pattern : pt->stages) {
    int err = 0;
    PCRE2_SIZE at = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &err, &at, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      return Internal(fmt::format("pre-tokenizer '{}': PCRE2 cannot compile its regex at {}: {}", pre, at,
                                  reinterpret_cast<const char*>(msg)));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up; the interpreter is the fallback
    tok->stages_.emplace_back(code);
  }

  LOWBIT_ASSIGN_OR_RETURN(tok->tokens_, gguf_strings(f, "tokenizer.ggml.tokens"));
  const size_t n = tok->tokens_.size();
  if (n == 0 || n > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return DataLoss(fmt::format("{}: tokenizer.ggml.tokens has {} entries", f.path, n));
  }
  LOWBIT_ASSIGN_OR_RETURN(std::vector<int32_t> types, gguf_numbers<int32_t>(f, "tokenizer.ggml.token_type", n));
  LOWBIT_ASSIGN_OR_RETURN(std::vector<std::string> merges, gguf_strings(f, "tokenizer.ggml.merges"));
  tok->index_.reserve(n);
  for (size_t i = 0; i < n; ++i) tok->index_.emplace(tok->tokens_[i], static_cast<int>(i));
  tok->merge_rank_.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const size_t sp = merges[r].find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 == merges[r].size() ||
        merges[r].find(' ', sp + 1) != std::string::npos) {
      return DataLoss(fmt::format("{}: tokenizer.ggml.merges[{}] is '{}', expected two tokens joined by one space",
                                  f.path, r, one_line(merges[r])));
    }
    tok->merge_rank_.emplace(std::move(merges[r]), static_cast<int>(r));  // a duplicate keeps its first rank
  }

  const std::array<uint32_t, 256> cp = gpt2_byte_to_codepoint();
  std::unordered_map<uint32_t, int> byte_of;  // codepoint -> byte
  for (int b = 0; b < 256; ++b) {
    append_utf8(tok->byte_spelling_[static_cast<size_t>(b)], cp[static_cast<size_t>(b)]);
    byte_of.emplace(cp[static_cast<size_t>(b)], b);
  }
  // Not every byte need have a token: SmolLM2's vocab lacks bytes no UTF-8 text holds (0xC0,
  // 0xF5..) and a few control characters. Such a byte becomes the unknown token, or is dropped
  // when the vocab has none (Hugging Face's BPE without unk_token does the same).
  LOWBIT_ASSIGN_OR_RETURN(tok->unk_, gguf_token_id(f, "tokenizer.ggml.unknown_token_id", -1, n));

  // Decode table: normal tokens map back through the byte spelling; special ones read as written.
  tok->text_.resize(n);
  tok->strip_after_bos_.assign(n, false);
  for (size_t i = 0; i < n; ++i) {
    const std::string& t = tok->tokens_[i];
    const int32_t type = types.empty() ? kTokenNormal : types[i];
    if (type == kTokenControl || type == kTokenUserDefined) {
      tok->text_[i] = t;
      if (!t.empty()) tok->specials_.emplace_back(t, static_cast<int>(i));
      continue;
    }
    std::string bytes;
    bool ok = first_invalid_utf8(t) == std::string_view::npos;
    for (size_t k = 0; ok && k < t.size();) {
      const size_t len = utf8_length(static_cast<unsigned char>(t[k]));
      uint32_t c = static_cast<unsigned char>(t[k]) & (len == 1 ? 0x7F : len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
      for (size_t j = 1; j < len; ++j) c = (c << 6) | (static_cast<unsigned char>(t[k + j]) & 0x3F);
      auto it = byte_of.find(c);
      if (it == byte_of.end()) {
        ok = false;
      } else {
        bytes += static_cast<char>(it->second);
      }
      k += len;
    }
    tok->text_[i] = ok ? bytes : t;  // a token outside the byte alphabet (none in practice) reads as written
  }
  std::stable_sort(tok->specials_.begin(), tok->specials_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });

  LOWBIT_ASSIGN_OR_RETURN(tok->bos_, gguf_token_id(f, "tokenizer.ggml.bos_token_id", -1, n));
  LOWBIT_ASSIGN_OR_RETURN(tok->eos_, gguf_token_id(f, "tokenizer.ggml.eos_token_id", -1, n));
  LOWBIT_ASSIGN_OR_RETURN(tok->add_bos_, gguf_bool_or(f, "tokenizer.ggml.add_bos_token", false));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

// Byte-level BPE of one pre-tokenized piece: spell its bytes as characters, then merge the
// adjacent pair of lowest rank (leftmost on ties) until no pair has a rank.
//
// O(n log n), not O(n^2) (a 80k-letter run without a space took 196 s): the symbols form a
// linked list and every adjacent pair with a rank waits in a min-heap keyed (rank, position of
// its left symbol). A popped pair is stale when either side has merged since (a symbol only
// grows, so its length tells); merging pushes the two new neighbour pairs. Popping the least
// (rank, position) is exactly "lowest rank, leftmost on ties", so the ids are the same.
Status Gpt2Tokenizer::encode_chunk(std::string_view chunk, std::vector<int>* out) const {
  const size_t n = chunk.size();
  std::vector<std::string> sym(n);         // (n) symbol starting at byte i; empty once merged away
  std::vector<size_t> next(n), prev(n);    // (n) linked list over live symbols; n = none
  for (size_t i = 0; i < n; ++i) {
    sym[i] = byte_spelling_[static_cast<unsigned char>(chunk[i])];
    next[i] = i + 1;
    prev[i] = i == 0 ? n : i - 1;
  }
  struct Pair {
    int rank;
    size_t left, right, left_len, right_len;
    bool operator>(const Pair& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Pair, std::vector<Pair>, std::greater<Pair>> heap;
  std::string key;
  const auto push = [&](size_t l, size_t r) {
    if (l >= n || r >= n) return;
    key.assign(sym[l]).append(" ").append(sym[r]);
    if (auto it = merge_rank_.find(key); it != merge_rank_.end()) heap.push({it->second, l, r, sym[l].size(), sym[r].size()});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(i, i + 1);
  while (!heap.empty()) {
    const Pair p = heap.top();
    heap.pop();
    if (next[p.left] != p.right || sym[p.left].size() != p.left_len || sym[p.right].size() != p.right_len ||
        sym[p.right].empty()) {
      continue;  // stale: a side merged since this pair was pushed
    }
    sym[p.left] += sym[p.right];
    sym[p.right].clear();
    next[p.left] = next[p.right];
    if (next[p.left] < n) prev[next[p.left]] = p.left;
    push(prev[p.left], p.left);
    push(p.left, next[p.left]);
  }
  for (size_t i = 0; i < n; i = next[i]) {
    const std::string& s = sym[i];
    auto it = index_.find(s);
    if (it != index_.end()) {
      out->push_back(it->second);
      continue;
    }
    // A byte without a token, or a merge whose result is not in the vocab (an inconsistent
    // file): its characters one by one, the unknown token (or nothing) for those without one.
    for (size_t k = 0; k < s.size();) {
      const size_t len = utf8_length(static_cast<unsigned char>(s[k]));
      auto b = index_.find(std::string_view(s).substr(k, len));
      if (b != index_.end()) {
        out->push_back(b->second);
      } else if (unk_ >= 0) {
        out->push_back(unk_);
      }
      k += len;
    }
  }
  return OkStatus();
}

// Text without special tokens: the pre-tokenizer stages, then BPE on every piece.
Status Gpt2Tokenizer::encode_plain(std::string_view text, std::vector<int>* out) const {
  if (text.empty()) return OkStatus();
  std::vector<std::string_view> pieces{text}, next;
  Pcre2Match md(pcre2_match_data_create(1, nullptr));
  if (!md) return Internal("PCRE2: cannot allocate match data");
  for (const Pcre2Code& re : stages_) {
    next.clear();
    for (std::string_view p : pieces) {
      size_t start = 0;  // end of the last match: text before the next one is a piece too
      size_t at = 0;
      while (at < p.size()) {
        const int rc = pcre2_match(re.get(), reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), at,
                                   PCRE2_NO_UTF_CHECK, md.get(), nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return Internal(fmt::format("{}: PCRE2 match failed ({})", path_, rc));
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
        const size_t b = ov[0], e = ov[1];
        if (e == b) {  // empty match (no pattern here has one): step over a character
          at = b + utf8_length(static_cast<unsigned char>(p[b]));
          continue;
        }
        if (b > start) next.push_back(p.substr(start, b - start));
        next.push_back(p.substr(b, e - b));
        start = at = e;
      }
      if (start < p.size()) next.push_back(p.substr(start));
    }
    pieces.swap(next);
  }
  for (std::string_view p : pieces) LOWBIT_RETURN_IF_ERROR(encode_chunk(p, out));
  return OkStatus();
}

Result<std::vector<int>> Gpt2Tokenizer::encode(std::string_view text, bool bos, bool eos) const {
  LOWBIT_RETURN_IF_ERROR(check_utf8(path_, text));
  if (bos && bos_ < 0) return InvalidArgument(fmt::format("{}: BOS asked for, but the model has none", path_));
  if (eos && eos_ < 0) return InvalidArgument(fmt::format("{}: EOS asked for, but the model has none", path_));
  std::vector<int> out;
  if (bos) out.push_back(bos_);
  size_t plain = 0;  // start of text not yet encoded
  for (size_t i = 0; i < text.size();) {
    const std::pair<std::string, int>* hit = nullptr;
    for (const auto& s : specials_) {
      if (text.substr(i, s.first.size()) == s.first) {
        hit = &s;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    LOWBIT_RETURN_IF_ERROR(encode_plain(text.substr(plain, i - plain), &out));
    out.push_back(hit->second);
    i += hit->first.size();
    plain = i;
  }
  LOWBIT_RETURN_IF_ERROR(encode_plain(text.substr(plain), &out));
  if (eos) out.push_back(eos_);
  return out;
}

Result<std::unique_ptr<Tokenizer>> load_gguf_tokenizer(const std::string& path) {
  LOWBIT_ASSIGN_OR_RETURN(GgufFile f, open_gguf(path));
  if (f.find("tokenizer.ggml.model") == nullptr) {
    return NotFound(fmt::format("{}: no embedded tokenizer (tokenizer.ggml.model is missing; pass --tokenizer)", path));
  }
  LOWBIT_ASSIGN_OR_RETURN(std::string model, f.get_string("tokenizer.ggml.model"));
  if (model == "gpt2") return Gpt2Tokenizer::load(f);
  if (model == "llama") return Llama2cTokenizer::load_gguf(f);
  return Unsupported(fmt::format("{}: tokenizer.ggml.model '{}' is not supported (supported: gpt2, llama)", path,
                                 one_line(model)));
}

bool is_gguf(const std::string& path) {
  Result<MappedFile> f = MappedFile::open(path);
  return f.ok() && f->size() >= 4 && std::memcmp(f->bytes().data(), "GGUF", 4) == 0;
}

Result<std::unique_ptr<Tokenizer>> load_tokenizer_unchecked(const std::string& path) {
  if (is_gguf(path)) return load_gguf_tokenizer(path);
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
