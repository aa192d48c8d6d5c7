// `lowbit kernels` through the built binary: lists this CPU's kernels and the chosen one per op,
// following LOWBIT_ISA.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <string>

namespace {

std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  pclose(p);
  return out;
}

TEST(CliKernels, ListsAndChoosesPerIsa) {
  const std::string scalar = run(std::string("LOWBIT_ISA=scalar ") + LOWBIT_CLI_PATH + " kernels --json");
  EXPECT_NE(scalar.find("\"gemm_a8_w4g128_f32__scalar\""), std::string::npos) << scalar;
  EXPECT_NE(scalar.find("\"active_isa\": \"scalar\""), std::string::npos) << scalar;
  EXPECT_NE(scalar.find("\"kernel\": \"gemm_fp8_block128_f32__scalar\""), std::string::npos) << scalar;
  const std::string text = run(std::string(LOWBIT_CLI_PATH) + " kernels");
  EXPECT_NE(text.find("chosen per op:"), std::string::npos) << text;
  EXPECT_NE(text.find("gemm_a16_w4g128_f32__"), std::string::npos) << text;
}

}  // namespace
