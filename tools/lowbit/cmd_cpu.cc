// lowbit cpu [--json] [--supports ISA]: what this CPU has, which ISA levels lowbit can
// use, and which one dispatch uses now (LOWBIT_ISA forces a lower one).
#include <fmt/format.h>

#include <memory>

#include "cli.h"
#include "lowbit/cpu.h"
#include "lowbit/parallel.h"

namespace lowbit::cli {
namespace {

struct CpuArgs {
  bool json = false;
  std::string supports;
};

void run_cpu(const CpuArgs& a) {
  if (!a.supports.empty()) {
    Result<Isa> isa = parse_isa(a.supports);
    if (!isa.ok()) fail(kExitUsage, "cpu --supports: " + isa.status().message());
    if (!isa_supported(*isa)) fail(kExitFailure, fmt::format("this CPU does not support {}", a.supports));
    return;
  }
  const CpuFeatures& f = cpu_features();
  const std::vector<std::pair<const char*, bool>> flags = {
      {"avx2", f.avx2},         {"fma", f.fma},           {"f16c", f.f16c},
      {"avx512f", f.avx512f},   {"avx512bw", f.avx512bw}, {"avx512vl", f.avx512vl},
      {"avx512dq", f.avx512dq}, {"avx512_vnni", f.avx512vnni}, {"avx512_bf16", f.avx512bf16}};
  std::vector<std::string> levels;
  for (Isa isa : supported_isas()) levels.emplace_back(isa_name(isa));
  if (a.json) {
    nlohmann::json features = nlohmann::json::object();
    for (auto& [name, on] : flags) features[name] = on;
    nlohmann::json out = {{"brand", f.brand},
                          {"features", features},
                          {"supported_isas", levels},
                          {"best_isa", isa_name(best_isa())},
                          {"active_isa", isa_name(active_isa())},
                          {"threads", num_threads()}};
    fmt::print("{}\n", out.dump(2));
    return;
  }
  fmt::print("cpu:        {}\n", f.brand.empty() ? "(unknown)" : f.brand);
  std::string have;
  for (auto& [name, on] : flags) have += fmt::format("{}{}{}", have.empty() ? "" : " ", on ? "+" : "-", name);
  fmt::print("features:   {}\n", have);
  fmt::print("isa levels: {}\n", fmt::join(levels, " "));
  fmt::print("active:     {}{}\n", isa_name(active_isa()), active_isa() == best_isa() ? "" : " (forced by LOWBIT_ISA)");
  fmt::print("threads:    {}\n", num_threads());
}

}  // namespace

void register_cpu(CLI::App& app) {
  auto args = std::make_shared<CpuArgs>();
  auto* cmd = app.add_subcommand("cpu", "CPU features, the ISA levels lowbit can dispatch to, and the active one");
  cmd->add_flag("--json", args->json, "Machine-readable output");
  cmd->add_option("--supports", args->supports, "Exit 0 if this CPU supports ISA (scalar|avx2|avx512|avx512vnni), 1 if not");
  cmd->callback([args] { run_cpu(*args); });
}

}  // namespace lowbit::cli
