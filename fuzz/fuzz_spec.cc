// libFuzzer: the QuantSpec text parser; what parses must print back to a spec that parses to
// the same text (round trip).
#include <string>

#include "lowbit/quant.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  lowbit::Result<lowbit::QuantSpec> s = lowbit::parse_spec(text);
  if (!s.ok()) return 0;
  const std::string back = lowbit::to_string(*s);
  lowbit::Result<lowbit::QuantSpec> again = lowbit::parse_spec(back);
  if (!again.ok() || lowbit::to_string(*again) != back) __builtin_trap();
  (void)lowbit::bits_per_weight(*s, 7, 129);
  return 0;
}
