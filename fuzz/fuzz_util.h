// Shared by the libFuzzer targets: the readers take paths, so each input is written to a file
// (in a per-process folder under $TMPDIR) first. Built only with -DLOWBIT_FUZZ=ON (preset fuzz).
//
//   extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
//     const std::string path = lowbit::fuzz::write_input("x.gguf", data, size);
//     (void)lowbit::load_gguf(path);   // any Status is fine; a crash or sanitizer report is not
//     return 0;
//   }
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace lowbit::fuzz {

inline std::string scratch_dir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::filesystem::path d = std::filesystem::path(tmp != nullptr ? tmp : "/tmp") /
                              ("lowbit_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d.string();
  }();
  return dir;
}

// Writes `data` to scratch_dir()/name and returns the path.
inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

}  // namespace lowbit::fuzz
