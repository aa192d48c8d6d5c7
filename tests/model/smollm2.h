// Where the tests find SmolLM2-135M-Instruct.Q4_1.gguf (issue 8): ../shared/models/ when it is
// there, else the copy scripts/setup extracts into .cache/models/. The one place that knows;
// tests/cli/smollm2.py is its Python twin. Without either, tests fail (never skip) with the fix.
//
//   const std::string path = smollm2_path();
//   if (path.empty()) FAIL() << kSmolLM2Missing;
#pragma once

#include <filesystem>
#include <string>

namespace lowbit::testing {

inline constexpr const char* kSmolLM2File = "SmolLM2-135M-Instruct.Q4_1.gguf";
inline constexpr const char* kSmolLM2Missing =
    "SmolLM2-135M-Instruct.Q4_1.gguf not found in ../shared/models/ or .cache/models/: run scripts/setup";

inline std::string smollm2_path() {
  const std::filesystem::path root(LOWBIT_SOURCE_DIR);
  for (const std::filesystem::path& p : {root / ".." / "shared" / "models" / kSmolLM2File,
                                         root / ".cache" / "models" / kSmolLM2File}) {
    if (std::filesystem::exists(p)) return p.string();
  }
  return {};
}

}  // namespace lowbit::testing
