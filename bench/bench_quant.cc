// Quantize throughput (GB/s of fp32 input) for the common weight and activation specs,
// single-threaded and threaded, fast path and scalar reference, beside a plain fp32 copy
// of the same bytes in the same run. A Markdown table (docs/results.md) closes the run.
//
//   ./build/release/bench/bench_quant [--benchmark_filter=g128] [--rows=4096 --cols=4096]
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "lowbit/parallel.h"
#include "lowbit/quant.h"
#include "lowbit/tensor.h"
#include "table_reporter.h"

namespace {

int64_t g_rows = 4096, g_cols = 4096;

lowbit::Tensor& input() {
  static lowbit::Tensor t = [] {
    lowbit::Tensor x = std::move(lowbit::Tensor::empty(lowbit::DType::kF32, {g_rows, g_cols}).value());
    std::mt19937 rng(7);
    std::normal_distribution<float> dist(0.0f, 0.02f);  // weight-like values
    float* p = x.data_as<float>();
    for (int64_t i = 0; i < g_rows * g_cols; ++i) p[i] = dist(rng);
    return x;
  }();
  return t;
}

double input_bytes() { return static_cast<double>(g_rows * g_cols) * sizeof(float); }

void BM_copy(benchmark::State& state) {
  lowbit::Tensor& x = input();
  std::vector<float> out(static_cast<size_t>(g_rows * g_cols));
  for (auto _ : state) {
    std::memcpy(out.data(), x.data(), static_cast<size_t>(input_bytes()));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * input_bytes()));
}

void BM_quantize(benchmark::State& state, std::string spec_text, int threads, bool reference) {
  const lowbit::QuantSpec spec = lowbit::parse_spec(spec_text).value();
  lowbit::Tensor& x = input();
  (void)lowbit::set_num_threads(threads);
  lowbit::QuantizeOptions opt;
  opt.use_reference = reference;
  for (auto _ : state) {
    auto q = lowbit::quantize(x.view(), spec, opt);
    benchmark::DoNotOptimize(q);
    if (!q.ok()) state.SkipWithError(q.status().to_string().c_str());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * input_bytes()));
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--rows=", 7) == 0) g_rows = std::strtoll(argv[i] + 7, nullptr, 10);
    if (std::strncmp(argv[i], "--cols=", 7) == 0) g_cols = std::strtoll(argv[i] + 7, nullptr, 10);
  }
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  benchmark::RegisterBenchmark("copy", BM_copy)->Unit(benchmark::kMillisecond)->UseRealTime();
  const char* specs[] = {"int8:row:sym:fp32", "int4:g128:sym:fp16", "e4m3:tile1x128:sym:fp32",
                         "e4m3:block128x128:sym:fp32", "e2m1:g32:sym:e8m0", "e2m1:g16:sym:e4m3*fp32"};
  for (const char* spec : specs) {
    for (int threads : {1, hw}) {
      for (bool ref : {false, true}) {
        if (ref && threads != 1) continue;  // the reference is the scalar twin: one thread is enough
        const std::string name = std::string("quantize/") + spec + (ref ? "/reference" : "/fast") +
                                 "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(), BM_quantize, std::string(spec), threads, ref)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
      if (hw == 1) break;
    }
  }
  benchmark::Initialize(&argc, argv);
  lowbit::bench::TableReporter reporter([](const lowbit::bench::TableReporter::Rows& rows) {
    const double base = lowbit::bench::TableReporter::find(rows, "copy");
    std::printf("\n| spec | path | threads | GB/s (fp32 in) | fp32 copy GB/s | time / copy time |\n|---|---|---:|---:|---:|---:|\n");
    for (const auto& [name, g] : rows) {
      if (name == "copy") continue;
      // name: quantize/<spec>/<path>/threads:<n>
      const size_t a = name.find('/'), b = name.find('/', a + 1), c = name.find('/', b + 1);
      std::printf("| `%s` | %s | %s | %.2f | %.2f | %.1f× |\n", name.substr(a + 1, b - a - 1).c_str(),
                  name.substr(b + 1, c - b - 1).c_str(), name.substr(c + 9).c_str(), g, base, base / g);
    }
  });
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
