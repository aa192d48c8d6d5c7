// Every checked-in fuzz regression input (fuzz/regressions/<target>/*) replayed through the same
// code the libFuzzer target runs (fuzz/targets.h), in the ordinary gcc builds: a crash the long
// fuzz runs found and that was fixed must stay fixed in CI, under ASan/UBSan in the asan preset,
// without clang. A reader may refuse an input (any Status); it must not crash, and the targets'
// own invariants (the spec round trip) must hold.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "../../fuzz/targets.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<fs::path> inputs_of(const std::string& target) {
  std::vector<fs::path> out;
  const fs::path dir = fs::path(LOWBIT_SOURCE_DIR) / "fuzz" / "regressions" / target;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file()) out.push_back(it->path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

class FuzzRegressions : public ::testing::Test {
 protected:
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(fuzz::scratch_dir(), ec);
  }
};

TEST_F(FuzzRegressions, EveryCheckedInInputReplaysWithoutCrash) {
  const std::string tok_path = std::string(LOWBIT_SOURCE_DIR) + "/../shared/models/tok512.bin";
  std::unique_ptr<Tokenizer> tok;
  if (auto t = load_tokenizer(tok_path); t.ok()) tok = std::move(*t);
  size_t replayed = 0;
  for (const std::string target : {"llama2c", "gguf", "safetensors", "tokenizer", "text", "spec", "plan"}) {
    for (const fs::path& p : inputs_of(target)) {
      SCOPED_TRACE(p.string());
      const std::vector<uint8_t> in = read_bytes(p);
      bool ok = true;
      if (target == "llama2c") ok = fuzz::run_llama2c(in.data(), in.size());
      if (target == "gguf") ok = fuzz::run_gguf(in.data(), in.size());
      if (target == "safetensors") ok = fuzz::run_safetensors(in.data(), in.size());
      if (target == "tokenizer") ok = fuzz::run_tokenizer(in.data(), in.size());
      if (target == "text") {
        if (!tok) continue;  // ../shared absent: the other targets still run
        ok = fuzz::run_text(*tok, in.data(), in.size());
      }
      if (target == "spec") ok = fuzz::run_spec(in.data(), in.size());
      if (target == "plan") ok = fuzz::run_plan(in.data(), in.size());
      EXPECT_TRUE(ok) << target << ": the target's invariant failed";
      ++replayed;
    }
  }
  std::printf("[   info   ] %zu regression inputs replayed\n", replayed);
  EXPECT_GT(replayed, 0u) << "fuzz/regressions/ holds no inputs";
}

// The spec target's invariant is a real check: a parse that did not round-trip would be caught.
TEST_F(FuzzRegressions, SpecTargetAcceptsRoundTrippingSpecs) {
  const std::string good = "int4:g32:sym:fp16";
  EXPECT_TRUE(fuzz::run_spec(reinterpret_cast<const uint8_t*>(good.data()), good.size()));
  const std::string bad = "int4:g128:asym:fp16:sym";  // refused by the parser: not an invariant failure
  EXPECT_TRUE(fuzz::run_spec(reinterpret_cast<const uint8_t*>(bad.data()), bad.size()));
}

}  // namespace
}  // namespace lowbit
