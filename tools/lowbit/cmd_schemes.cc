// lowbit schemes [--json] [--shape ROWSxCOLS]: the named schemes, their weight and
// activation specs, and what they cost in bits per weight (scale overhead included).
#include <fmt/format.h>

#include <memory>

#include "cli.h"
#include "lowbit/quant.h"

namespace lowbit::cli {
namespace {

struct SchemesArgs {
  bool json = false;
  std::string shape = "4096x4096";
};

void run_schemes(const SchemesArgs& a) {
  int64_t rows = 0, cols = 0;
  char x = 0;
  int n_read = 0;
  if (std::sscanf(a.shape.c_str(), "%ld%c%ld%n", &rows, &x, &cols, &n_read) != 3 || x != 'x' ||
      static_cast<size_t>(n_read) != a.shape.size() || rows < 1 || cols < 1) {
    fail(kExitUsage, "schemes --shape: '" + a.shape + "' is not ROWSxCOLS with positive integers (e.g. 4096x4096)");
  }
  // 2^24 per side is past any LLM matrix (vocabularies are < 2^20) and keeps every bit count
  // of a block grid far inside int64.
  constexpr int64_t kMaxSide = int64_t{1} << 24;
  check_range("schemes --shape rows", rows, 1, kMaxSide);
  check_range("schemes --shape cols", cols, 1, kMaxSide);
  nlohmann::json out = nlohmann::json::array();
  std::string text = fmt::format("{:<12} {:>7}  {:<28} {:<26} {}\n", "scheme", "bpw", "weights", "activations", "description");
  for (const Scheme& s : named_schemes()) {
    Result<QuantSpec> w = parse_spec(s.weights);
    if (!w.ok()) fail(kExitFailure, "internal: scheme " + std::string(s.name) + ": " + w.status().message());
    const double bpw = bits_per_weight(*w, rows, cols);
    if (a.json) {
      out.push_back({{"name", s.name},
                     {"weights", to_string(*w)},
                     {"activations", s.activations.empty() ? nlohmann::json(nullptr) : nlohmann::json(s.activations)},
                     {"bits_per_weight", bpw},
                     {"shape", {rows, cols}},
                     {"description", s.description}});
    } else {
      text += fmt::format("{:<12} {:>7.4f}  {:<28} {:<26} {}\n", s.name, bpw, to_string(*w),
                          s.activations.empty() ? "-" : s.activations, s.description);
    }
  }
  if (a.json) {
    fmt::print("{}\n", out.dump(2));
  } else {
    fmt::print("{}bits per weight for a {} x {} weight, scale and zero-point overhead included\n", text, rows, cols);
  }
}

}  // namespace

void register_schemes(CLI::App& app) {
  auto args = std::make_shared<SchemesArgs>();
  auto* cmd = app.add_subcommand("schemes", "Named quantization schemes, their specs and bits per weight");
  cmd->add_flag("--json", args->json, "Machine-readable output");
  cmd->add_option("--shape", args->shape, "Weight shape ROWSxCOLS the bits per weight are computed for")
      ->default_val("4096x4096");
  cmd->callback([args] { run_schemes(*args); });
}

}  // namespace lowbit::cli
