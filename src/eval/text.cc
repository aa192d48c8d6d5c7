// Text in for eval, calibration and the Python module: stories to token streams, and the
// tokenizer that belongs to a model (include/lowbit/eval.h).
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "lowbit/eval.h"
#include "lowbit/file.h"
#include "lowbit/tokenizer.h"

namespace lowbit {

Result<std::vector<int>> stories_to_tokens(const Tokenizer& tok, const std::string& path, const std::string& split) {
  LOWBIT_ASSIGN_OR_RETURN(std::vector<std::string> stories, load_stories(path, split));
  const bool bos = tok.add_bos();
  std::vector<int> tokens;
  for (const std::string& s : stories) {
    LOWBIT_ASSIGN_OR_RETURN(std::vector<int> ids, tok.encode(bos ? s : s + "\n\n", bos, /*eos=*/false));
    tokens.insert(tokens.end(), ids.begin(), ids.end());
  }
  return tokens;
}

Result<std::string> find_tokenizer(const std::string& model_path, int vocab, std::string_view what) {
  // A GGUF model carries its own tokenizer (tokenizer.ggml.*); a broken one is reported as
  // such, not as a missing one.
  if (Result<MappedFile> f = MappedFile::open(model_path);
      f.ok() && f->size() >= 4 && std::memcmp(f->bytes().data(), "GGUF", 4) == 0) {
    Result<std::unique_ptr<Tokenizer>> t = load_tokenizer(model_path, vocab);
    if (t.ok()) return model_path;
    if (t.status().code() != StatusCode::kNotFound) return t.status();
  }
  std::error_code ec;  // a saved safetensors model is a folder holding its tokenizer
  const std::filesystem::path dir = std::filesystem::is_directory(model_path, ec)
                                        ? std::filesystem::path(model_path)
                                        : std::filesystem::path(model_path).parent_path();
  const std::string names[] = {fmt::format("tok{}.model", vocab), fmt::format("tok{}.bin", vocab), "tokenizer.model",
                               "tokenizer.bin", "tokenizer.gguf"};
  for (const std::string& name : names) {
    const std::filesystem::path p = dir / name;
    if (std::filesystem::exists(p, ec) && load_tokenizer(p.string(), vocab).ok()) return p.string();
  }
  return InvalidArgument(fmt::format("{}: no tokenizer with a vocab of {} beside {} (pass --tokenizer)", what, vocab, model_path));
}

std::string model_weights_file(const std::string& model_path) {
  std::error_code ec;
  if (!std::filesystem::is_directory(model_path, ec)) return model_path;
  const std::filesystem::path one = std::filesystem::path(model_path) / "model.safetensors";
  const std::filesystem::path index = std::filesystem::path(model_path) / "model.safetensors.index.json";
  if (!std::filesystem::exists(one, ec) && std::filesystem::exists(index, ec)) return index.string();  // sharded: the index
  return one.string();
}

}  // namespace lowbit
