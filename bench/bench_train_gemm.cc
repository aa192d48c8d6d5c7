// The training GEMMs (include/lowbit/gemm_f32.h) at SmolLM2-135M's shapes for one QAT step of
// 2 x 64 tokens, each at the scalar twin (the loops train_ops ran before, the baseline) and the
// AVX2 level, in the same run, beside the same product through OpenBLAS's sgemm (the peer: other
// summation order, one thread, as lowbit runs it): GFLOP/s as the `GFLOPS` counter. Single thread
// (the kernels take a row range; train_ops threads over ranges).
//
//   LOWBIT_THREADS=1 OMP_WAIT_POLICY=passive build/release/bench/bench_train_gemm
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <random>
#include <vector>

#include "lowbit/cpu.h"
#include "lowbit/gemm_f32.h"
#include "lowbit/parallel.h"

#include <Eigen/Core>

namespace {

using lowbit::Isa;

enum Op { kXwt, kDx, kDw };
constexpr int kOpenBlas = 2;  // the ISA argument's peer row: Eigen's product, OpenBLAS's sgemm behind it where linked

using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Map = Eigen::Map<MatF>;

void peer(Op op, float* y, float* dx, float* dW, float* x, float* W, float* dy, int64_t N, int C, int OC) {
  switch (op) {
    case kXwt: Map(y, N, OC).noalias() = Map(x, N, C) * Map(W, OC, C).transpose(); break;
    case kDx: Map(dx, N, C).noalias() += Map(dy, N, OC) * Map(W, OC, C); break;
    case kDw: Map(dW, OC, C).noalias() += Map(dy, N, OC).transpose() * Map(x, N, C); break;
  }
}

void BM_gemm_f32(benchmark::State& st) {
  const Op op = static_cast<Op>(st.range(0));
  const bool blas = st.range(1) == kOpenBlas;
  if (!lowbit::set_num_threads(1).ok()) std::abort();  // also puts OpenBLAS on one thread
  const Isa isa = blas ? lowbit::active_isa() : static_cast<Isa>(st.range(1));
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
    if (blas) {
      peer(op, y.data(), dx.data(), dW.data(), x.data(), W.data(), dy.data(), N, C, OC);
      benchmark::ClobberMemory();
      continue;
    }
    switch (op) {
      case kXwt: lowbit::gemm_f32_xwt(y.data(), x.data(), W.data(), N, C, OC, 0, OC); break;
      case kDx: lowbit::gemm_f32_dx(dx.data(), dy.data(), W.data(), N, C, OC, 0, N); break;
      case kDw: lowbit::gemm_f32_dw(dW.data(), dy.data(), x.data(), N, C, OC, 0, OC); break;
    }
    benchmark::ClobberMemory();
  }
  st.counters["GFLOPS"] = benchmark::Counter(2.0 * static_cast<double>(N) * C * OC * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  static const char* kOps[] = {"xwt", "dx", "dw"};
  st.SetLabel(std::string(kOps[op]) + " " + (blas ? std::string("openblas") : std::string(lowbit::isa_name(isa))));
}

// ops: xwt, dx, dw; ISA: scalar (0), avx2 (1), the OpenBLAS peer (2); N = 128 and 512 tokens (a QAT
// step of 2 x 64 and of 4 x 128); (C, OC): wq/wo (576, 576),
// w1/w3 (576, 1536), w2 (1536, 576), the tied classifier's dgrad (576, 49152).
void Shapes(benchmark::internal::Benchmark* b) {
  for (int op = 0; op < 3; ++op) {
    for (int isa = 0; isa < 3; ++isa) {
      for (int n : {128, 512}) {
        for (auto [c, oc] : {std::pair{576, 576}, std::pair{576, 1536}, std::pair{1536, 576}, std::pair{576, 49152}}) {
          if (oc == 49152 && op == kDw) continue;  // the classifier is frozen in QAT: no wgrad
          b->Args({op, isa, n, c, oc});
        }
      }
    }
  }
}
BENCHMARK(BM_gemm_f32)->Apply(Shapes)->Unit(benchmark::kMillisecond)->MinTime(0.2);

}  // namespace

BENCHMARK_MAIN();
