// Tokenizers: the SentencePiece .model and the llama2.c tokenizer.bin of the same vocabulary must
// agree id for id on real text; the llama2.c encoder must be run.c's; bad files and bad text
// give errors that name the file.
#include "lowbit/tokenizer.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/file.h"
#include "lowbit/gguf.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

std::string shared_path(const std::string& rel) { return std::string(LOWBIT_SOURCE_DIR "/../shared/") + rel; }

#define LOWBIT_REQUIRE_FILE(path)                                                                 \
  do {                                                                                            \
    if (!fs::exists(path)) GTEST_SKIP() << "missing " << (path) << " (../shared is absent)";       \
  } while (0)

std::vector<std::string> read_lines(const std::string& path) {
  std::vector<std::string> lines;
  Result<std::string> text = read_file(path);
  if (!text) return lines;
  size_t start = 0;
  const std::string& s = *text;
  while (start < s.size()) {
    size_t end = s.find('\n', start);
    if (end == std::string::npos) end = s.size();
    lines.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

std::unique_ptr<Tokenizer> must_load(const std::string& path, int expected_vocab = 0) {
  Result<std::unique_ptr<Tokenizer>> t = load_tokenizer(path, expected_vocab);
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  return t.ok() ? std::move(t).value() : nullptr;
}

std::vector<int> must_encode(const Tokenizer& t, std::string_view text, bool bos, bool eos) {
  Result<std::vector<int>> ids = t.encode(text, bos, eos);
  EXPECT_TRUE(ids.ok()) << ids.status().to_string();
  return ids.ok() ? *ids : std::vector<int>{};
}

std::string decode_all(const Tokenizer& t, const std::vector<int>& ids) {
  std::string out;
  for (size_t i = 1; i < ids.size(); ++i) out += t.decode(ids[i - 1], ids[i]);
  return out;
}

// SentencePiece's remove_extra_whitespaces (on in tok512.model's normalizer_spec, off in the
// Llama 2 tokenizer.model; both use the "identity" rule, so nothing else changes): drop leading
// and trailing ' ', squeeze runs of ' ' to one. Only ' ' counts as whitespace there.
std::string remove_extra_whitespaces(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == ' ' && (out.empty() || out.back() == ' ')) continue;
    out += c;
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

// ---- a tokenizer.bin written by the test ----------------------------------------------

struct Piece {
  std::string text;
  float score = 0;
};

// The fixed head of every llama2.c vocab: <unk>, BOS, EOS, the 256 byte pieces.
std::vector<Piece> base_pieces() {
  std::vector<Piece> p = {{"<unk>"}, {"\n<s>\n"}, {"\n</s>\n"}};
  char buf[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    p.push_back({buf});
  }
  return p;
}

std::string bin_bytes(const std::vector<Piece>& pieces, int32_t max_len = -1) {
  if (max_len < 0) {
    max_len = 0;
    for (const Piece& p : pieces) max_len = std::max<int32_t>(max_len, static_cast<int32_t>(p.text.size()));
  }
  std::string out(reinterpret_cast<const char*>(&max_len), 4);
  for (const Piece& p : pieces) {
    const int32_t len = static_cast<int32_t>(p.text.size());
    out.append(reinterpret_cast<const char*>(&p.score), 4);
    out.append(reinterpret_cast<const char*>(&len), 4);
    out += p.text;
  }
  return out;
}

class TokenizerFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / (std::string("lowbit_tokenizer_") + info->name() + "_" +
                                        std::to_string(static_cast<long>(::getpid())));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  // A status that failed with `code` and whose message names `path` and contains `what`.
  static void expect_error(const Status& s, StatusCode code, const std::string& path, const std::string& what) {
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.code(), code) << s.to_string();
    EXPECT_NE(s.message().find(path), std::string::npos) << s.to_string();
    EXPECT_NE(s.message().find(what), std::string::npos) << s.to_string();
    EXPECT_EQ(s.message().find('\n'), std::string::npos) << "one line: " << s.to_string();
  }
  fs::path dir_;
};

// ---- run.c's encode, transliterated (quadratic; the reference for the real one) ----------

struct RunCVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::map<std::string, int> index;  // run.c bsearches a sorted copy; first id on duplicates
};

RunCVocab read_runc_vocab(const std::string& bytes) {
  RunCVocab v;
  size_t at = 4;
  while (at + 8 <= bytes.size()) {
    float score;
    int32_t len;
    std::memcpy(&score, bytes.data() + at, 4);
    std::memcpy(&len, bytes.data() + at + 4, 4);
    at += 8;
    v.index.emplace(bytes.substr(at, static_cast<size_t>(len)), static_cast<int>(v.pieces.size()));
    v.pieces.push_back(bytes.substr(at, static_cast<size_t>(len)));
    v.scores.push_back(score);
    at += static_cast<size_t>(len);
  }
  return v;
}

std::vector<int> runc_encode(const RunCVocab& v, const std::string& text, bool bos, bool eos) {
  auto lookup = [&](const std::string& s) {
    auto it = v.index.find(s);
    return it == v.index.end() ? -1 : it->second;
  };
  std::vector<int> tokens;
  if (bos) tokens.push_back(1);
  if (!text.empty()) tokens.push_back(lookup(" "));
  std::string buf;
  for (size_t c = 0; c < text.size(); ++c) {
    if ((text[c] & 0xC0) != 0x80) buf.clear();
    buf += text[c];
    if (c + 1 < text.size() && (text[c + 1] & 0xC0) == 0x80 && buf.size() < 4) continue;
    const int id = lookup(buf);
    if (id != -1) {
      tokens.push_back(id);
    } else {
      for (unsigned char b : buf) tokens.push_back(b + 3);
    }
    buf.clear();
  }
  while (true) {
    float best_score = -1e10f;
    int best_id = -1;
    size_t best_idx = 0;
    for (size_t i = 0; i + 1 < tokens.size(); ++i) {
      const int id = lookup(v.pieces[static_cast<size_t>(tokens[i])] + v.pieces[static_cast<size_t>(tokens[i + 1])]);
      if (id != -1 && v.scores[static_cast<size_t>(id)] > best_score) {
        best_score = v.scores[static_cast<size_t>(id)];
        best_id = id;
        best_idx = i;
      }
    }
    if (best_id == -1) break;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(best_idx) + 1);
  }
  if (eos) tokens.push_back(2);
  return tokens;
}

// ---- the requirement: the two files of each vocab give identical ids ----------

// The whole validation file, line by line, in every build: measured on this machine, the two
// pair tests take 0.6 + 1.2 s in release and 3.3 + 5.1 s under ASan/UBSan, so no slice is needed.
struct PairReport {
  size_t lines = 0, tokens = 0, normalized_lines = 0;
};

// Encodes every non-empty line with both tokenizers (bos=true) and compares the full id lists.
// Where SentencePiece's normalizer changes the line, the .model's ids must equal the .bin's ids
// for the normalized line: that is the only difference allowed, and it is counted.
PairReport compare_pair(const std::string& model_path, const std::string& bin_path, int vocab,
                        bool normalizer_removes_spaces) {
  PairReport r;
  auto sp = must_load(model_path, vocab);
  auto bin = must_load(bin_path, vocab);
  if (!sp || !bin) return r;
  EXPECT_EQ(sp->kind(), "sentencepiece");
  EXPECT_EQ(bin->kind(), "llama2c");
  const auto lines = read_lines(shared_path("data/tinystories_val.txt"));
  EXPECT_GT(lines.size(), 8000u);
  size_t mismatches = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    if (line.empty()) continue;
    const std::vector<int> a = must_encode(*sp, line, true, false);
    const std::vector<int> b = must_encode(*bin, line, true, false);
    ++r.lines;
    r.tokens += a.size();
    if (a == b) continue;
    const std::string norm = normalizer_removes_spaces ? remove_extra_whitespaces(line) : line;
    if (norm != line && a == must_encode(*bin, norm, true, false)) {
      ++r.normalized_lines;
      continue;
    }
    if (++mismatches <= 5) {
      ADD_FAILURE() << model_path << " vs " << bin_path << " differ on line " << i + 1 << ": '" << line
                    << "' (" << a.size() << " vs " << b.size() << " ids)";
    }
  }
  EXPECT_EQ(mismatches, 0u);
  return r;
}

void report(const char* name, const PairReport& r, double seconds) {
  ::testing::Test::RecordProperty(std::string(name) + "_lines", static_cast<int>(r.lines));
  ::testing::Test::RecordProperty(std::string(name) + "_tokens", static_cast<int>(r.tokens));
  ::testing::Test::RecordProperty(std::string(name) + "_normalized_lines", static_cast<int>(r.normalized_lines));
  std::printf("[   info   ] %s: %zu lines, %zu tokens identical; %zu lines differ only by SentencePiece's "
              "remove_extra_whitespaces (%.2f s)\n", name, r.lines, r.tokens, r.normalized_lines, seconds);
}

TEST(TokenizerPairs, Tok512ModelAndBinGiveIdenticalIdsOnTinyStoriesVal) {
  LOWBIT_REQUIRE_FILE(shared_path("models/tok512.model"));
  LOWBIT_REQUIRE_FILE(shared_path("models/tok512.bin"));
  LOWBIT_REQUIRE_FILE(shared_path("data/tinystories_val.txt"));
  const auto t0 = std::chrono::steady_clock::now();
  // tok512.model normalizes whitespace (normalizer_spec.remove_extra_whitespaces: true; llama2.c's
  // train_vocab left it at its default) and run.c does not, so the 972 lines the normalizer changes
  // (968 end in a space, two of them a lone space; 4 have a run of spaces inside; 1 starts with a
  // space) get different ids. Each of them must match run.c on the normalized line.
  const PairReport r = compare_pair(shared_path("models/tok512.model"), shared_path("models/tok512.bin"), 512,
                                    /*normalizer_removes_spaces=*/true);
  SCOPED_TRACE(testing::Message() << r.lines << " lines, " << r.tokens << " tokens compared");
  EXPECT_EQ(r.lines, 4358u);
  EXPECT_EQ(r.normalized_lines, 972u);
  report("tok512", r, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

TEST(TokenizerPairs, Llama2ModelAndBinGiveIdenticalIdsOnTinyStoriesVal) {
  LOWBIT_REQUIRE_FILE(shared_path("models/tokenizer.model"));
  LOWBIT_REQUIRE_FILE(shared_path("models/tokenizer.bin"));
  LOWBIT_REQUIRE_FILE(shared_path("data/tinystories_val.txt"));
  const auto t0 = std::chrono::steady_clock::now();
  // The Llama 2 normalizer is "identity" with remove_extra_whitespaces off: no line may differ.
  const PairReport r = compare_pair(shared_path("models/tokenizer.model"), shared_path("models/tokenizer.bin"),
                                    32000, /*normalizer_removes_spaces=*/false);
  SCOPED_TRACE(testing::Message() << r.lines << " lines, " << r.tokens << " tokens compared");
  EXPECT_EQ(r.lines, 4358u);
  EXPECT_EQ(r.normalized_lines, 0u);
  report("llama2", r, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

// Every id decodes to the same text from either file (and after BOS), so the vocabularies match.
TEST(TokenizerPairs, ModelAndBinDecodeEveryIdAlike) {
  for (const auto& [model, bin] : {std::pair{"models/tok512.model", "models/tok512.bin"},
                                   std::pair{"models/tokenizer.model", "models/tokenizer.bin"}}) {
    LOWBIT_REQUIRE_FILE(shared_path(model));
    LOWBIT_REQUIRE_FILE(shared_path(bin));
    auto a = must_load(shared_path(model));
    auto b = must_load(shared_path(bin));
    ASSERT_TRUE(a && b);
    ASSERT_EQ(a->vocab_size(), b->vocab_size());
    for (int id = 0; id < a->vocab_size(); ++id) {
      ASSERT_EQ(a->decode(0, id), b->decode(0, id)) << model << " id " << id;
      ASSERT_EQ(a->decode(1, id), b->decode(1, id)) << model << " id " << id;
    }
  }
}

// ---- round trip -----------------------------------------------------------------------

TEST(TokenizerDecode, RoundTripReproducesEveryLine) {
  LOWBIT_REQUIRE_FILE(shared_path("data/tinystories_val.txt"));
  const auto lines = read_lines(shared_path("data/tinystories_val.txt"));
  for (const char* name : {"models/tok512.model", "models/tok512.bin", "models/tokenizer.model",
                           "models/tokenizer.bin"}) {
    LOWBIT_REQUIRE_FILE(shared_path(name));
    auto tok = must_load(shared_path(name));
    ASSERT_TRUE(tok);
    // tok512.model normalizes whitespace; only lines the normalizer leaves alone can come back.
    const bool normalizes = std::string(name) == "models/tok512.model";
    size_t checked = 0;
    for (size_t i = 0; i < lines.size(); ++i) {
      const std::string& line = lines[i];
      if (line.empty() || (normalizes && remove_extra_whitespaces(line) != line)) continue;
      const std::vector<int> ids = must_encode(*tok, line, true, false);
      ASSERT_EQ(decode_all(*tok, ids), line) << name << " line " << i + 1;
      ++checked;
    }
    EXPECT_GT(checked, 3000u) << name;
  }
}

// ---- spot checks ----------------------------------------------------------------------

TEST(TokenizerSpot, OnceUponATime) {
  // llama2.c's README: "Once upon a time" is 9038 2501 263 931 in the Llama 2 vocab.
  const std::vector<std::pair<const char*, int>> files = {{"models/tok512.model", 512},
                                                          {"models/tok512.bin", 512},
                                                          {"models/tokenizer.model", 32000},
                                                          {"models/tokenizer.bin", 32000}};
  for (const auto& [name, vocab] : files) {
    LOWBIT_REQUIRE_FILE(shared_path(name));
    auto tok = must_load(shared_path(name), vocab);
    ASSERT_TRUE(tok) << name;
    EXPECT_EQ(tok->vocab_size(), vocab) << name;
    EXPECT_EQ(tok->bos_id(), 1) << name;
    EXPECT_EQ(tok->eos_id(), 2) << name;
    const std::vector<int> ids = must_encode(*tok, "Once upon a time", true, true);
    ASSERT_GE(ids.size(), 3u) << name;
    EXPECT_EQ(ids.front(), 1) << name;
    EXPECT_EQ(ids.back(), 2) << name;
    if (vocab == 32000) {
      EXPECT_EQ(ids, (std::vector<int>{1, 9038, 2501, 263, 931, 2})) << name;
    }
    EXPECT_EQ(decode_all(*tok, std::vector<int>(ids.begin(), ids.end() - 1)), "Once upon a time") << name;
    EXPECT_EQ(must_encode(*tok, "", true, true), (std::vector<int>{1, 2})) << name;
    EXPECT_EQ(must_encode(*tok, "", false, false), std::vector<int>{}) << name;
    // "中" is not a tok512 piece: it falls back to its three UTF-8 bytes, byte b -> id b + 3.
    if (vocab == 512) {
      const std::vector<int> zhong = must_encode(*tok, "\xe4\xb8\xad", false, false);
      ASSERT_EQ(zhong.size(), 4u) << name;
      EXPECT_EQ(std::vector<int>(zhong.begin() + 1, zhong.end()), (std::vector<int>{0xE4 + 3, 0xB8 + 3, 0xAD + 3}))
          << name;
      EXPECT_EQ(decode_all(*tok, zhong), "\xe4\xb8\xad") << name;  // decode_all skips the first id
    }
  }
}

// ---- the llama2.c encoder is run.c's --------------------------------------------------

TEST(TokenizerRunC, MatchesTransliteratedRunCOnRealText) {
  LOWBIT_REQUIRE_FILE(shared_path("data/tinystories_val.txt"));
  const auto lines = read_lines(shared_path("data/tinystories_val.txt"));
  std::mt19937 rng(1234);
  for (const char* name : {"models/tok512.bin", "models/tokenizer.bin"}) {
    LOWBIT_REQUIRE_FILE(shared_path(name));
    auto tok = must_load(shared_path(name));
    ASSERT_TRUE(tok);
    const RunCVocab ref = read_runc_vocab(*read_file(shared_path(name)));
    // Every 40th line (the reference is quadratic), then random mixes of pieces, spaces and
    // non-vocab characters that exercise ties, byte fallback and long merges.
    for (size_t i = 0; i < lines.size(); i += 40) {
      ASSERT_EQ(must_encode(*tok, lines[i], true, true), runc_encode(ref, lines[i], true, true))
          << name << " line " << i + 1;
    }
    const std::vector<std::string> extra = {" ", "  ", "\xe2\x82\xac", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\t"};
    for (int trial = 0; trial < 300; ++trial) {
      std::string text;
      const int n = static_cast<int>(rng() % 12);
      for (int k = 0; k < n; ++k) {
        if (rng() % 3 == 0) {
          text += extra[rng() % extra.size()];
        } else {
          const std::string& p = ref.pieces[259 + rng() % (ref.pieces.size() - 259)];
          if (tok->encode(p, false, false).ok()) text += p;  // skip pieces that are not whole UTF-8
        }
      }
      ASSERT_EQ(must_encode(*tok, text, false, false), runc_encode(ref, text, false, false))
          << name << " text '" << text << "'";
    }
  }
}

TEST_F(TokenizerFiles, MergesPickBestScoreThenLeftmost) {
  std::vector<Piece> p = base_pieces();
  const int space = static_cast<int>(p.size());
  p.push_back({" ", -1});      // 259
  p.push_back({"a", -1});      // 260
  p.push_back({"b", -1});      // 261
  p.push_back({"c", -1});      // 262
  p.push_back({"ab", 1});      // 263
  p.push_back({"bc", 2});      // 264
  p.push_back({"abc", 0});     // 265
  p.push_back({"ca", 1});      // 266: ties with "ab"
  p.push_back({" x", -2e10f}); // 267: at or below run.c's -1e10 floor, never merged
  p.push_back({"x", -1});      // 268
  const std::string path = write("merge.bin", bin_bytes(p));
  auto tok = must_load(path);
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->kind(), "llama2c");
  EXPECT_EQ(must_encode(*tok, "abc", false, false), (std::vector<int>{space, 265}));   // bc, then a+bc
  EXPECT_EQ(must_encode(*tok, "abca", false, false), (std::vector<int>{space, 265, 260}));
  EXPECT_EQ(must_encode(*tok, "cab", false, false), (std::vector<int>{space, 266, 261}));  // tie: leftmost
  EXPECT_EQ(must_encode(*tok, "x", false, false), (std::vector<int>{space, 268}));
  // "é" is not a piece: bytes C3 A9 -> ids 0xC3 + 3, 0xA9 + 3.
  EXPECT_EQ(must_encode(*tok, "a\xc3\xa9", true, true), (std::vector<int>{1, space, 260, 0xC3 + 3, 0xA9 + 3, 2}));
  // decode: a piece after BOS loses its leading space; byte pieces give raw bytes; "<0x20>" keeps its space.
  EXPECT_EQ(tok->decode(1, space), "");
  EXPECT_EQ(tok->decode(5, space), " ");
  EXPECT_EQ(tok->decode(1, 0x41 + 3), "A");
  EXPECT_EQ(tok->decode(1, 0x20 + 3), " ");
  EXPECT_EQ(tok->decode(1, 0x00 + 3), std::string(1, '\0'));
  EXPECT_EQ(tok->decode(0, -1), "");
  EXPECT_EQ(tok->decode(0, tok->vocab_size()), "");
}

// ---- bad input ------------------------------------------------------------------------

TEST_F(TokenizerFiles, MissingFile) {
  const std::string path = (dir_ / "no_such_tokenizer.bin").string();
  auto t = load_tokenizer(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kNotFound) << t.status().to_string();
  EXPECT_NE(t.status().message().find(path), std::string::npos) << t.status().to_string();
}

TEST_F(TokenizerFiles, EmptyFile) {
  const std::string path = write("empty.bin", "");
  expect_error(load_tokenizer(path).status(), StatusCode::kDataLoss, path, "empty file");
}

TEST_F(TokenizerFiles, GarbageIsNeitherFormat) {
  const std::string path = write("garbage.model", "this is not a tokenizer at all");
  expect_error(load_tokenizer(path).status(), StatusCode::kDataLoss, path, "SentencePiece");
  const std::string tiny = write("tiny.bin", "\x07");
  expect_error(load_tokenizer(tiny).status(), StatusCode::kDataLoss, tiny, "SentencePiece");
}

TEST_F(TokenizerFiles, TruncatedInTheMiddleOfAToken) {
  std::vector<Piece> p = base_pieces();
  p.push_back({" "});
  p.push_back({"hello"});
  const std::string full = bin_bytes(p);
  ASSERT_TRUE(load_tokenizer(write("full.bin", full)).ok());
  const std::string in_bytes = write("cut_bytes.bin", full.substr(0, full.size() - 2));  // "hel"
  expect_error(load_tokenizer(in_bytes).status(), StatusCode::kDataLoss, in_bytes, "truncated in token 260");
  const std::string in_header = write("cut_header.bin", full.substr(0, full.size() - 5 - 3));
  expect_error(load_tokenizer(in_header).status(), StatusCode::kDataLoss, in_header, "truncated at byte");
}

TEST_F(TokenizerFiles, TruncatedRealTokenizerBin) {
  LOWBIT_REQUIRE_FILE(shared_path("models/tok512.bin"));
  const std::string full = *read_file(shared_path("models/tok512.bin"));
  // Cut inside the bytes of token 300: walk the headers to find them.
  size_t at = 4;
  for (int i = 0; i < 300; ++i) {
    int32_t len;
    std::memcpy(&len, full.data() + at + 4, 4);
    at += 8 + static_cast<size_t>(len);
  }
  int32_t len;
  std::memcpy(&len, full.data() + at + 4, 4);
  ASSERT_GE(len, 2);
  const std::string path = write("tok512_cut.bin", full.substr(0, at + 8 + static_cast<size_t>(len) / 2));
  expect_error(load_tokenizer(path).status(), StatusCode::kDataLoss, path, "truncated in token 300");
}

TEST_F(TokenizerFiles, NegativeAndOversizedLengths) {
  std::vector<Piece> p = base_pieces();
  p.push_back({" "});
  std::string bytes = bin_bytes(p);
  const int32_t negative = -5;
  std::memcpy(bytes.data() + bytes.size() - 1 - 4, &negative, 4);  // the " " token's length
  const std::string neg = write("negative.bin", bytes);
  expect_error(load_tokenizer(neg).status(), StatusCode::kDataLoss, neg, "negative length -5");

  std::string huge_bytes = bin_bytes(p);
  const int32_t huge = 0x7fffffff;
  std::memcpy(huge_bytes.data() + huge_bytes.size() - 1 - 4, &huge, 4);
  const std::string huge_path = write("huge.bin", huge_bytes);
  expect_error(load_tokenizer(huge_path).status(), StatusCode::kDataLoss, huge_path, "> max_token_length");

  const std::string small_max = write("small_max.bin", bin_bytes(p, 3));  // "<0x00>" is 6 bytes
  expect_error(load_tokenizer(small_max).status(), StatusCode::kDataLoss, small_max, "max_token_length 3");
}

TEST_F(TokenizerFiles, MissingBytePiecesOrDummyPrefix) {
  std::vector<Piece> p = base_pieces();
  const std::string no_space = write("no_space.bin", bin_bytes(p));
  expect_error(load_tokenizer(no_space).status(), StatusCode::kDataLoss, no_space, "dummy prefix");
  p[10].text = "zz";
  p.push_back({" "});
  const std::string bad_byte = write("bad_byte.bin", bin_bytes(p));
  expect_error(load_tokenizer(bad_byte).status(), StatusCode::kDataLoss, bad_byte, "<0x07>");
  std::vector<Piece> few(p.begin(), p.begin() + 100);
  const std::string too_few = write("few.bin", bin_bytes(few));
  expect_error(load_tokenizer(too_few).status(), StatusCode::kDataLoss, too_few, "100 tokens");
  std::vector<Piece> nan = base_pieces();
  nan.push_back({" ", std::numeric_limits<float>::quiet_NaN()});
  const std::string nan_path = write("nan.bin", bin_bytes(nan));
  expect_error(load_tokenizer(nan_path).status(), StatusCode::kDataLoss, nan_path, "non-finite score");
}

TEST_F(TokenizerFiles, VocabMismatch) {
  std::vector<Piece> p = base_pieces();
  p.push_back({" "});
  const std::string path = write("v260.bin", bin_bytes(p));
  expect_error(load_tokenizer(path, 512).status(), StatusCode::kInvalidArgument, path + ": vocab 260, model expects 512", "");
  EXPECT_TRUE(load_tokenizer(path, 260).ok());
  for (const char* name : {"models/tok512.bin", "models/tok512.model"}) {
    LOWBIT_REQUIRE_FILE(shared_path(name));
    expect_error(load_tokenizer(shared_path(name), 32000).status(), StatusCode::kInvalidArgument,
                 shared_path(name), "vocab 512, model expects 32000");
  }
}

TEST_F(TokenizerFiles, InvalidUtf8TextIsAnError) {
  std::vector<Piece> p = base_pieces();
  p.push_back({" "});
  const std::string path = write("utf8.bin", bin_bytes(p));
  std::vector<std::string> paths = {path};
  for (const char* name : {"models/tok512.model", "models/tokenizer.model"}) {
    if (fs::exists(shared_path(name))) paths.push_back(shared_path(name));
  }
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"ab\xff", "byte 2"},              // never valid
      {"\xc0\xaf", "byte 0"},            // overlong '/'
      {"x\xed\xa0\x80", "byte 1"},       // UTF-16 surrogate
      {"ok \xe2\x82", "byte 3"},         // cut short
      {"\xf4\x90\x80\x80", "byte 0"},    // above U+10FFFF
      {"\x80", "byte 0"},                // lone continuation
  };
  for (const std::string& file : paths) {
    auto tok = must_load(file);
    ASSERT_TRUE(tok);
    for (const auto& [text, where] : bad) {
      expect_error(tok->encode(text, true, false).status(), StatusCode::kInvalidArgument, file, "not valid UTF-8 at " + where);
    }
    EXPECT_TRUE(tok->encode("caf\xc3\xa9 \xf0\x9f\x98\x80", true, false).ok()) << file;
  }
}


// ---- GGUF embedded tokenizers ------------------------------------------------------------

// tok512.bin's vocabulary written into a GGUF the way llama.cpp's converter stores a SentencePiece
// vocab ("llama": U+2581 for spaces, token_type 3 for <unk>/<s>/</s>, 6 for the byte pieces).
std::string write_llama_vocab_gguf(const std::string& path, const std::string& model) {
  const std::string data = read_file(shared_path("models/tok512.bin")).value();
  std::vector<GgufValue::Scalar> tokens, scores, types;
  for (size_t at = 4; at < data.size();) {
    float score;
    int32_t len;
    std::memcpy(&score, data.data() + at, 4);
    std::memcpy(&len, data.data() + at + 4, 4);
    std::string piece = data.substr(at + 8, static_cast<size_t>(len));
    at += 8 + static_cast<size_t>(len);
    const size_t id = tokens.size();
    std::string spm;
    for (char c : piece) spm += c == ' ' ? std::string("\xe2\x96\x81") : std::string(1, c);
    tokens.emplace_back(id == 1 ? std::string("<s>") : id == 2 ? std::string("</s>") : spm);
    scores.emplace_back(score);
    types.emplace_back(static_cast<int32_t>(id < 3 ? 3 : id < 259 ? 6 : 1));
  }
  GgufWriteSpec spec;
  spec.metadata = {{"tokenizer.ggml.model", GgufValue::str(model)},
                   {"tokenizer.ggml.tokens", GgufValue::array_of(GgufValueType::kString, tokens)},
                   {"tokenizer.ggml.scores", GgufValue::array_of(GgufValueType::kF32, scores)},
                   {"tokenizer.ggml.token_type", GgufValue::array_of(GgufValueType::kI32, types)},
                   {"tokenizer.ggml.bos_token_id", GgufValue::u32(1)},
                   {"tokenizer.ggml.eos_token_id", GgufValue::u32(2)}};
  EXPECT_TRUE(write_gguf(path, spec).ok());
  return path;
}

TEST(GgufTokenizer, LlamaVocabEncodesLikeTheLlama2cTokenizer) {
  if (!fs::exists(shared_path("models/tok512.bin"))) GTEST_SKIP() << "../shared is missing";
  const std::string path = write_llama_vocab_gguf(
      (fs::temp_directory_path() / ("lowbit_tok_llama_" + std::to_string(::getpid()) + ".gguf")).string(), "llama");
  Result<std::unique_ptr<Tokenizer>> g = load_tokenizer(path, 512);
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  Result<std::unique_ptr<Tokenizer>> ref = load_tokenizer(shared_path("models/tok512.bin"), 512);
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ((*g)->kind(), "gguf-llama");
  EXPECT_TRUE((*g)->add_bos());
  for (const char* text : {"Once upon a time, there was a little girl named Lily.", "", " x  y ", "naïve café 🦙 日本",
                           "1234 + 5678 = 6912\n\tTabs"}) {
    Result<std::vector<int>> a = (*g)->encode(text, true, true);
    Result<std::vector<int>> b = (*ref)->encode(text, true, true);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(*a, *b) << text;
    for (size_t i = 1; i + 1 < a->size(); ++i) EXPECT_EQ((*g)->decode((*a)[i - 1], (*a)[i]), (*ref)->decode((*b)[i - 1], (*b)[i]));
  }
  fs::remove(path);
}

TEST(GgufTokenizer, UnsupportedModelSaysWhich) {
  if (!fs::exists(shared_path("models/tok512.bin"))) GTEST_SKIP() << "../shared is missing";
  const std::string path = write_llama_vocab_gguf(
      (fs::temp_directory_path() / ("lowbit_tok_bert_" + std::to_string(::getpid()) + ".gguf")).string(), "bert");
  Result<std::unique_ptr<Tokenizer>> g = load_tokenizer(path);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(g.status().message().find("tokenizer.ggml.model 'bert' is not supported (supported: gpt2, llama)"),
            std::string::npos) << g.status().message();
  fs::remove(path);
}

// A line longer than SentencePiece's bound (1 MiB without a newline) is a one-line error naming
// the tokenizer, the line's length and where it starts, not gigabytes of encoder state.
TEST(TokenizerBounds, SentencePieceRefusesLinesOverOneMiB) {
  LOWBIT_REQUIRE_FILE(shared_path("models/tok512.model"));
  auto sp = must_load(shared_path("models/tok512.model"), 512);
  ASSERT_TRUE(sp);
  constexpr size_t kLimit = size_t{1} << 20;
  const std::string line(kLimit + 1, 'a');
  Result<std::vector<int>> r = sp->encode(line, true, false);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("tok512.model"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find(std::to_string(kLimit + 1) + " bytes"), std::string::npos) << r.status().message();
  EXPECT_EQ(r.status().message().find('\n'), std::string::npos);
  // The long line after a short one: found where it starts.
  r = sp->encode("Once upon a time.\n" + line, false, false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("at byte 18"), std::string::npos) << r.status().message();
  // Many short lines encode, however long the text (the bound is per line).
  std::string text;
  while (text.size() < 64 * 1024) text += "Once upon a time there was a cat.\n";
  Result<std::vector<int>> ok = sp->encode(text, true, false);
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_GT(ok->size(), text.size() / 8);
}

}  // namespace
}  // namespace lowbit
