// The training GEMMs (include/lowbit/gemm_f32.h) at SmolLM2-135M's shapes for one QAT step of
// 2 x 64 tokens, each at the scalar twin (the loops train_ops ran before, the baseline) and the
// AVX2 level, in the same run: GFLOP/s as the `GFLOPS` counter. Single thread (the kernels take
// a row range; train_ops threads over ranges).
//
//   LOWBIT_THREADS=1 OMP_WAIT_POLICY=passive build/release/bench/bench_train_gemm
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "lowbit/cpu.h"
#include "lowbit/gemm_f32.h"

namespace {

using lowbit::Isa;

enum Op { kXwt, kDx, kDw };

void BM_gemm_f32(benchmark::State& st) {
  const Op op = static_cast<Op>(st.range(0));
  const Isa isa = static_cast<Isa>(st.range(1));
  const int64_t N = st.range(2);
  const int C = static_cast<int>(st.range(3)), OC = static_cast<int>(st.range(4));
  if (!lowbit::isa_supported(isa)) {
    st.SkipWithError("ISA not supported here");
    return;
  }
  lowbit::ScopedIsa force(isa);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  auto fill = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = nd(rng);
    return v;
  };
  std::vector<float> x = fill(N * C), W = fill(int64_t{OC} * C), dy = fill(N * OC), y(static_cast<size_t>(N * OC)),
                     dx(static_cast<size_t>(N * C)), dW(static_cast<size_t>(int64_t{OC} * C));
  for (auto _ : st) {
    switch (op) {
      case kXwt: lowbit::gemm_f32_xwt(y.data(), x.data(), W.data(), N, C, OC, 0, OC); break;
      case kDx: lowbit::gemm_f32_dx(dx.data(), dy.data(), W.data(), N, C, OC, 0, N); break;
      case kDw: lowbit::gemm_f32_dw(dW.data(), dy.data(), x.data(), N, C, OC, 0, OC); break;
    }
    benchmark::ClobberMemory();
  }
  st.counters["GFLOPS"] = benchmark::Counter(2.0 * static_cast<double>(N) * C * OC * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  static const char* kOps[] = {"xwt", "dx", "dw"};
  st.SetLabel(std::string(kOps[op]) + " " + std::string(lowbit::isa_name(isa)));
}

// ops: xwt, dx, dw; ISA: scalar (0), avx2 (1); N = 128 tokens; (C, OC): wq/wo (576, 576),
// w1/w3 (576, 1536), w2 (1536, 576), the tied classifier's dgrad (576, 49152).
void Shapes(benchmark::internal::Benchmark* b) {
  for (int op = 0; op < 3; ++op) {
    for (int isa = 0; isa < 2; ++isa) {
      for (auto [c, oc] : {std::pair{576, 576}, std::pair{576, 1536}, std::pair{1536, 576}, std::pair{576, 49152}}) {
        if (oc == 49152 && op == kDw) continue;  // the classifier is frozen in QAT: no wgrad
        b->Args({op, isa, 128, c, oc});
      }
    }
  }
}
BENCHMARK(BM_gemm_f32)->Apply(Shapes)->Unit(benchmark::kMillisecond)->MinTime(0.2);

}  // namespace

BENCHMARK_MAIN();
