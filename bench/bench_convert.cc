// Bulk conversion throughput: every converter at every ISA level this CPU has, scalar
// and SIMD side by side, with memcpy of the same bytes as the baseline, all in one run.
// Throughput is GB/s of fp32 data (input for encoders, output for decoders). At the end a
// Markdown table (the one in docs/results.md) gives each figure beside the baseline.
//
//   ./build/release/bench/bench_convert [--benchmark_filter=bf16] [--n=16777216]
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "lowbit/convert.h"
#include "lowbit/cpu.h"
#include "lowbit/tensor.h"
#include "table_reporter.h"

namespace {

using lowbit::ConvertKernels;
using lowbit::Isa;

size_t g_n = size_t{1} << 24;  // 16 Mi elements: 64 MiB of fp32, well beyond the caches

struct Buffers {
  std::vector<float> f32, f32_out;
  std::vector<uint16_t> u16;
  std::vector<uint8_t> u8;
  explicit Buffers(size_t n) : f32(n), f32_out(n), u16(n), u8(n) {
    std::mt19937 rng(42);
    std::normal_distribution<float> dist(0.0f, 2.0f);  // activation-like values
    for (float& v : f32) v = dist(rng);
  }
};

Buffers& buffers() {
  static Buffers b(g_n);
  return b;
}

void finish(benchmark::State& state, size_t fp32_bytes) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(fp32_bytes));
}

void BM_memcpy(benchmark::State& state) {
  Buffers& b = buffers();
  for (auto _ : state) {
    std::memcpy(b.f32_out.data(), b.f32.data(), g_n * sizeof(float));
    benchmark::ClobberMemory();
  }
  finish(state, g_n * sizeof(float));
}

enum class Op { kF16Enc, kBf16Enc, kE4m3Enc, kE5m2Enc, kF16Dec, kBf16Dec, kE4m3Dec, kE5m2Dec };

void run_op(const ConvertKernels& k, Op op, Buffers& b) {
  switch (op) {
    case Op::kF16Enc: k.f32_to_f16(b.f32.data(), b.u16.data(), g_n, false); break;
    case Op::kBf16Enc: k.f32_to_bf16(b.f32.data(), b.u16.data(), g_n, false); break;
    case Op::kE4m3Enc: k.f32_to_e4m3(b.f32.data(), b.u8.data(), g_n, true); break;
    case Op::kE5m2Enc: k.f32_to_e5m2(b.f32.data(), b.u8.data(), g_n, true); break;
    case Op::kF16Dec: k.f16_to_f32(b.u16.data(), b.f32_out.data(), g_n); break;
    case Op::kBf16Dec: k.bf16_to_f32(b.u16.data(), b.f32_out.data(), g_n); break;
    case Op::kE4m3Dec: k.e4m3_to_f32(b.u8.data(), b.f32_out.data(), g_n); break;
    case Op::kE5m2Dec: k.e5m2_to_f32(b.u8.data(), b.f32_out.data(), g_n); break;
  }
}

void BM_convert(benchmark::State& state, const ConvertKernels* k, Op op) {
  Buffers& b = buffers();
  // Decoders read valid codes: produce them once with the scalar encoders.
  const ConvertKernels& ref = *lowbit::convert_kernels(Isa::kScalar);
  static bool codes_ready = false;
  if (!codes_ready) {
    ref.f32_to_f16(b.f32.data(), b.u16.data(), g_n, false);
    ref.f32_to_e4m3(b.f32.data(), b.u8.data(), g_n, true);
    codes_ready = true;
  }
  for (auto _ : state) {
    run_op(*k, op, b);
    benchmark::ClobberMemory();
  }
  finish(state, g_n * sizeof(float));
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--n=", 4) == 0) g_n = std::strtoull(argv[i] + 4, nullptr, 10);
  }
  benchmark::RegisterBenchmark("memcpy", BM_memcpy)->Unit(benchmark::kMillisecond)->UseRealTime();
  const std::pair<const char*, Op> ops[] = {
      {"f32_to_f16", Op::kF16Enc},  {"f32_to_bf16", Op::kBf16Enc}, {"f32_to_e4m3_sat", Op::kE4m3Enc},
      {"f32_to_e5m2_sat", Op::kE5m2Enc}, {"f16_to_f32", Op::kF16Dec},  {"bf16_to_f32", Op::kBf16Dec},
      {"e4m3_to_f32", Op::kE4m3Dec}, {"e5m2_to_f32", Op::kE5m2Dec}};
  for (auto& [name, op] : ops) {
    for (Isa isa : lowbit::supported_isas()) {
      const ConvertKernels* k = lowbit::convert_kernels(isa);
      if (k == nullptr || k->isa != isa) continue;  // levels that reuse a lower level's kernels
      benchmark::RegisterBenchmark((std::string(name) + "/" + std::string(lowbit::isa_name(isa))).c_str(), BM_convert,
                                   k, op)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
  benchmark::Initialize(&argc, argv);
  lowbit::bench::TableReporter reporter([](const lowbit::bench::TableReporter::Rows& rows) {
    const double base = lowbit::bench::TableReporter::find(rows, "memcpy");
    std::printf("\n| converter | isa | GB/s (fp32 side) | memcpy GB/s | time / memcpy time |\n|---|---|---:|---:|---:|\n");
    for (const auto& [name, g] : rows) {
      if (name == "memcpy") continue;
      const auto slash = name.find('/');
      std::printf("| %s | %s | %.2f | %.2f | %.2f× |\n", name.substr(0, slash).c_str(), name.substr(slash + 1).c_str(), g,
                  base, base > 0 ? base / g : 0.0);
    }
  });
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
