// Console reporter that also collects each benchmark's throughput (GB/s, from
// SetBytesProcessed) in run order, so a benchmark can close its run with a Markdown table
// of every figure beside the baseline measured in the same run (docs/results.md).
#pragma once

#include <benchmark/benchmark.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace lowbit::bench {

class TableReporter : public benchmark::ConsoleReporter {
 public:
  // (name without the "/real_time" suffix, GB/s) in run order.
  using Rows = std::vector<std::pair<std::string, double>>;
  explicit TableReporter(std::function<void(const Rows&)> print_table) : print_table_(std::move(print_table)) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.run_type != Run::RT_Iteration || r.error_occurred) continue;
      std::string name = r.benchmark_name();
      if (const size_t p = name.rfind("/real_time"); p != std::string::npos) name.erase(p);
      seconds_.emplace_back(name, r.iterations ? r.real_accumulated_time / static_cast<double>(r.iterations) : 0.0);
      const auto it = r.counters.find("bytes_per_second");
      if (it != r.counters.end()) rows_.emplace_back(name, it->second.value / 1e9);
    }
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    print_table_(rows_);
  }

  // Seconds per iteration (wall clock) of every run, in run order.
  const Rows& seconds() const { return seconds_; }

  // GB/s of the row called `name`, or 0 when it did not run.
  static double find(const Rows& rows, const std::string& name) {
    for (const auto& [n, g] : rows)
      if (n == name) return g;
    return 0.0;
  }

 private:
  std::function<void(const Rows&)> print_table_;
  Rows rows_;
  Rows seconds_;
};

}  // namespace lowbit::bench
