// lowbit kernels [--json]: the quantized matmul kernels this build has for this CPU, and the
// one dispatch picks per op under the active ISA (LOWBIT_ISA forces a lower level).
#include <fmt/format.h>

#include <memory>

#include "cli.h"
#include "lowbit/cpu.h"
#include "lowbit/kernels.h"

namespace lowbit::cli {
namespace {

struct KernelsArgs {
  bool json = false;
};

struct Chosen {
  KernelOp op;
  WeightKind kind;
  int64_t group;
  const char* weights;  // an example weight spec
};

void run_kernels(const KernelsArgs& a) {
  const std::vector<KernelInfo> all = available_kernels();
  const Chosen chosen[] = {{KernelOp::kGemmA8W8, WeightKind::kInt8Row, 0, "int8:row:sym"},
                           {KernelOp::kGemmA16W4, WeightKind::kInt4Group, 128, "int4:g128:sym"},
                           {KernelOp::kGemmA16W4, WeightKind::kNf4Group, 64, "nf4:g64"},
                           {KernelOp::kGemmA8W4, WeightKind::kInt4Group, 128, "int4:g128:sym"},
                           {KernelOp::kGemmFp8Block, WeightKind::kE4m3Block, 128, "e4m3:block128x128"}};
  if (a.json) {
    nlohmann::json avail = nlohmann::json::array();
    for (const KernelInfo& k : all) {
      avail.push_back({{"name", k.name}, {"op", op_name(k.op)}, {"isa", isa_name(k.isa)}, {"contract", k.contract}});
    }
    nlohmann::json pick = nlohmann::json::array();
    for (const Chosen& c : chosen) {
      pick.push_back({{"op", op_name(c.op)}, {"weights", c.weights}, {"kernel", kernel_name(c.op, c.kind, c.group, kernel_isa(c.op))}});
    }
    fmt::print("{}\n", nlohmann::json{{"active_isa", isa_name(active_isa())}, {"available", avail}, {"chosen", pick}}.dump(2));
    return;
  }
  fmt::print("active isa: {}\n\navailable on this CPU:\n", isa_name(active_isa()));
  for (const KernelInfo& k : all) fmt::print("  {:<44} {}\n", k.name, k.contract);
  fmt::print("\nchosen per op:\n");
  for (const Chosen& c : chosen) {
    fmt::print("  {:<16} {:<20} -> {}\n", op_name(c.op), c.weights, kernel_name(c.op, c.kind, c.group, kernel_isa(c.op)));
  }
}

}  // namespace

void register_kernels(CLI::App& app) {
  auto args = std::make_shared<KernelsArgs>();
  auto* cmd = app.add_subcommand("kernels", "Quantized matmul kernels available on this CPU and the one chosen per op");
  cmd->add_flag("--json", args->json, "Machine-readable output");
  cmd->callback([args] { run_kernels(*args); });
}

}  // namespace lowbit::cli
