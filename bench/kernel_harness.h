// The kernel comparisons that bench/bench_kernels (Google Benchmark) and `lowbit bench kernels`
// both run: each case times a lowbit kernel beside its baseline (OpenBLAS sgemm/sgemv on the
// fp32 weights, oneDNN int8 matmul where this build has it, dequantize + sgemm for fp8) and
// the machine limit it is judged against (DRAM read bandwidth, AVX2 int8 / fp32 FMA peak),
// all measured in the same run. Synthetic seeded weights.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace lowbit::bench {

struct Limits {
  double dram_gbs = 0;     // streaming read, GB/s, over a buffer >> LLC
  double int8_gops = 0;    // register-only vpmaddubsw + vpmaddwd + vpaddd, 2 ops per multiply-add
  double fp32_gflops = 0;  // register-only vfmadd231ps
};
Limits measure_limits();  // on num_threads() threads

// DRAM read bandwidth, one pass at a time, for pairing with other timings in the same seconds
// (`bench model --limits` alternates it with decode steps): a 512 MiB buffer each num_threads()
// thread reads its own slice of.
class DramProbe {
 public:
  DramProbe();
  double read_gbs();  // one pass over the buffer; 0 without AVX2

 private:
  std::shared_ptr<void> buf_;
  int64_t bytes_ = 0;
};

// One comparison: the kernel, its baseline, and how its figure is computed.
struct Case {
  std::string kernel;         // registry name, e.g. gemm_a16_w4g128_f32__avx2
  std::string shape;          // "MxKxN"
  std::string baseline_name;  // "openblas_sgemv", "onednn_s8s8_f32", "dequant+openblas_sgemm"
  std::string limit_name;     // "dram_gbs" | "int8_gops" | "fp32_gflops"
  double work = 0;            // bytes (dram_gbs) or ops (int8_gops / fp32_gflops) per call
  std::function<void()> run;
  std::function<void()> baseline;
  std::shared_ptr<void> state;  // keeps the buffers alive
};
// Names of the cases (cheap); make_case builds one (quantizes and packs its weights).
std::vector<std::string> case_ids();
Case make_case(const std::string& id);

struct Row {
  std::string kernel, shape, baseline_name, limit_name;
  double seconds = 0, baseline_seconds = 0;
  double figure = 0;      // in the limit's unit: GB/s, Gop/s or GFLOP/s
  double limit = 0;
  double x_vs_baseline = 0;  // baseline time / kernel time
  double pct_of_limit = 0;
};
Row make_row(const Case& c, double seconds, double baseline_seconds, const Limits& l);
// Mean seconds per call over at least min_seconds (after one warm-up call).
double time_call(const std::function<void()>& fn, double min_seconds);
// The Markdown table docs/results.md records.
std::string markdown_table(const std::vector<Row>& rows, const Limits& l);

}  // namespace lowbit::bench
