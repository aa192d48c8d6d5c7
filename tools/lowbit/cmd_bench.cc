// lowbit bench kernels [--json] [--filter TEXT] [--min-time S]: the kernel comparisons of
// bench/bench_kernels from the installed binary — per kernel and shape the figure, its
// baseline measured in the same run, x_vs_baseline and pct_of_limit of the measured limit.
#include <fmt/format.h>

#include <memory>

#include "cli.h"
#include "kernel_harness.h"

namespace lowbit::cli {
namespace {

struct BenchArgs {
  bool json = false;
  std::string filter;
  double min_time = 0.3;
};

void run_bench_kernels(const BenchArgs& a) {
  const bench::Limits limits = bench::measure_limits();
  std::vector<bench::Row> rows;
  for (const std::string& id : bench::case_ids()) {
    if (!a.filter.empty() && id.find(a.filter) == std::string::npos) continue;
    const bench::Case c = bench::make_case(id);
    const double t = bench::time_call(c.run, a.min_time);
    const double tb = c.baseline ? bench::time_call(c.baseline, a.min_time) : 0.0;
    rows.push_back(bench::make_row(c, t, tb, limits));
  }
  if (a.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const bench::Row& r : rows) {
      out.push_back({{"kernel", r.kernel},
                     {"shape", r.shape},
                     {"seconds", r.seconds},
                     {"figure", r.figure},
                     {"baseline", r.baseline_name},
                     {"baseline_seconds", r.baseline_seconds},
                     {"x_vs_baseline", r.x_vs_baseline},
                     {"limit_name", r.limit_name},
                     {"limit", r.limit},
                     {"pct_of_limit", r.pct_of_limit}});
    }
    fmt::print("{}\n", out.dump(2));
    return;
  }
  fmt::print("{}", bench::markdown_table(rows, limits));
}

}  // namespace

void register_bench(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  auto* bench_cmd = app.add_subcommand("bench", "Benchmarks beside their baselines, measured in the same run");
  bench_cmd->require_subcommand(1);
  register_bench_model(*bench_cmd);
  auto* cmd = bench_cmd->add_subcommand("kernels", "Quantized kernels vs OpenBLAS / oneDNN / dequantize+sgemm and the measured limits");
  cmd->add_flag("--json", args->json, "JSON rows with kernel, shape, limit_name, x_vs_baseline, pct_of_limit");
  cmd->add_option("--filter", args->filter, "Only cases whose id contains TEXT (e.g. 1x4096x4096, a8_w8)");
  cmd->add_option("--min-time", args->min_time, "Seconds to time each kernel and baseline")->check(CLI::Range(0.0, 60.0));
  cmd->callback([args] { run_bench_kernels(*args); });
}

}  // namespace lowbit::cli
