// libFuzzer: safetensors (header JSON, dtypes, offsets, quantized tensors) and the model loader
// with its config.json. The input is split at the first 0xFF 0x00 0xFF: before it config.json,
// after it model.safetensors (no separator: the whole input is the weights file).
#include <cstring>
#include <string_view>

#include "fuzz_util.h"
#include "lowbit/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t cut = in.find(std::string_view("\xff\x00\xff", 3));
  const std::string_view config = cut == std::string_view::npos ? std::string_view() : in.substr(0, cut);
  const std::string_view weights = cut == std::string_view::npos ? in : in.substr(cut + 3);
  const std::string dir = lowbit::fuzz::scratch_dir() + "/st";
  std::filesystem::create_directories(dir);
  lowbit::fuzz::write_input("st/model.safetensors", reinterpret_cast<const uint8_t*>(weights.data()), weights.size());
  if (cut != std::string_view::npos) {
    lowbit::fuzz::write_input("st/config.json", reinterpret_cast<const uint8_t*>(config.data()), config.size());
  } else {
    std::filesystem::remove(dir + "/config.json");
  }
  (void)lowbit::open_safetensors(dir + "/model.safetensors");
  (void)lowbit::load_safetensors(dir);
  return 0;
}
