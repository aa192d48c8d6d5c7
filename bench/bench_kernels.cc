// Quantized kernels beside their baselines and the machine's limits, in one run: decode GEMV
// 1x4096x4096 and 1x4096x11008, prefill 128x4096x4096 (synthetic seeded weights). Each case
// times the lowbit kernel and its baseline (OpenBLAS sgemv/sgemm on the fp32 weights, oneDNN
// s8 matmul, dequantize + sgemm for fp8); a Markdown table (docs/results.md) closes the run.
// The comparisons themselves live in kernel_harness.cc, shared with `lowbit bench kernels`.
//
//   ./build/release/bench/bench_kernels [--benchmark_filter=1x4096] [--benchmark_min_time=0.5]
#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "kernel_harness.h"

namespace {

using lowbit::bench::Case;

std::map<std::string, Case>& cases() {
  static std::map<std::string, Case> c;
  return c;
}

Case& get_case(const std::string& id) {
  auto it = cases().find(id);
  if (it == cases().end()) it = cases().emplace(id, lowbit::bench::make_case(id)).first;
  return it->second;
}

void BM_case(benchmark::State& state, std::string id, bool baseline) {
  Case& c = get_case(id);
  const auto& fn = baseline ? c.baseline : c.run;
  if (!fn) {
    state.SkipWithError("baseline not built");
    for (auto _ : state) {
    }
    return;
  }
  fn();  // warm-up
  for (auto _ : state) fn();
  state.SetLabel(baseline ? c.baseline_name : c.kernel);
}

// Collects real time per iteration for each (case, kernel|baseline) and prints the table.
class Reporter : public benchmark::ConsoleReporter {
 public:
  explicit Reporter(lowbit::bench::Limits l) : limits_(l) {}
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.run_type != Run::RT_Iteration || r.error_occurred) continue;
      std::string name = r.benchmark_name();
      if (const size_t p = name.rfind("/real_time"); p != std::string::npos) name.erase(p);
      times_[name] = r.real_accumulated_time / static_cast<double>(r.iterations);  // seconds per call
    }
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::vector<lowbit::bench::Row> rows;
    for (const std::string& id : lowbit::bench::case_ids()) {
      const auto k = times_.find(id + "/kernel");
      if (k == times_.end()) continue;
      const auto b = times_.find(id + "/baseline");
      rows.push_back(lowbit::bench::make_row(get_case(id), k->second, b == times_.end() ? 0.0 : b->second, limits_));
    }
    std::printf("\n%s", lowbit::bench::markdown_table(rows, limits_).c_str());
  }

 private:
  lowbit::bench::Limits limits_;
  std::map<std::string, double> times_;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const lowbit::bench::Limits limits = lowbit::bench::measure_limits();
  for (const std::string& id : lowbit::bench::case_ids()) {
    benchmark::RegisterBenchmark((id + "/kernel").c_str(), BM_case, id, false)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark((id + "/baseline").c_str(), BM_case, id, true)->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  Reporter reporter(limits);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
