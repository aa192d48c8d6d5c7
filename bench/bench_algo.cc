// Quantization speed: RTN and GPTQ of a 4096x4096 and an 11008x4096 (out x in) linear with
// synthetic, seeded weights and a synthetic positive-definite Hessian (identity plus a rank-64
// correlation), beside one fp32 GEMM of the same shape (M = 4096 tokens, Eigen) measured in
// the same run; the calibration Hessian's accumulation (batched folds vs a fold per window). Then the pipeline's working memory on synthetic models of 4, 8 and 16 layers of
// one width: it must not grow with depth.
//   bench_algo [--out=N] [--in=N] [--width=N] [--spec=TEXT]   (TEXT: a QuantSpec, default int4:g128:sym:fp16,
//              or gguf:<type> for llama.cpp's blocks, e.g. gguf:iq4_nl)
#include <benchmark/benchmark.h>

#include <Eigen/Dense>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>

#include "lowbit/parallel.h"
#include "lowbit/pipeline.h"
#include "lowbit/ptq.h"
#include "table_reporter.h"

#ifdef LOWBIT_HAVE_OPENBLAS
extern "C" void openblas_set_num_threads(int);
#endif

namespace {

using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
int64_t g_width = 512;
std::string g_spec = "int4:g128:sym:fp16";  // RTN's and GPTQ's weight spec
std::vector<std::pair<int, int64_t>> g_peaks;  // (layers, peak activation bytes)

lowbit::Tensor random_matrix(int64_t r, int64_t c, uint64_t seed, float sd) {
  lowbit::Tensor t = lowbit::Tensor::empty(lowbit::DType::kF32, {r, c}).value();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, sd);
  for (int64_t i = 0; i < r * c; ++i) t.data_as<float>()[i] = n(rng);
  return t;
}

std::vector<double> hessian(int64_t in) {
  const lowbit::Tensor v = random_matrix(in, 64, 99, 1.0f);
  Eigen::Map<const MatF> V(v.data_as<float>(), in, 64);
  Eigen::MatrixXd h = (V.cast<double>() * V.cast<double>().transpose());
  h.diagonal().array() += 1.0;
  std::vector<double> out(static_cast<size_t>(in * in));
  Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(out.data(), in, in) = h;
  return out;
}

// The baseline: one sgemm of 4096 tokens, OpenBLAS on all of lowbit's threads (its own threading:
// lowbit keeps OpenBLAS on one thread for thread-count-invariant bits, a baseline need not be).
void BM_sgemm(benchmark::State& state, int64_t out, int64_t in) {
  const lowbit::Tensor w = random_matrix(out, in, 1, 0.02f), x = random_matrix(4096, in, 2, 1.0f);
  MatF y(4096, out);
#ifdef LOWBIT_HAVE_OPENBLAS
  openblas_set_num_threads(lowbit::num_threads());
#endif
  for (auto _ : state) {
    y.noalias() = Eigen::Map<const MatF>(x.data_as<float>(), 4096, in) * Eigen::Map<const MatF>(w.data_as<float>(), out, in).transpose();
    benchmark::DoNotOptimize(y.data());
  }
#ifdef LOWBIT_HAVE_OPENBLAS
  openblas_set_num_threads(1);
#endif
}

void BM_rtn(benchmark::State& state, int64_t out, int64_t in) {
  const lowbit::Tensor w = random_matrix(out, in, 1, 0.02f);
  const lowbit::QuantSpec spec = lowbit::parse_spec(g_spec).value();
  for (auto _ : state) {
    auto q = lowbit::quantize(w.view(), spec);
    benchmark::DoNotOptimize(q);
  }
}

void BM_gptq(benchmark::State& state, int64_t out, int64_t in, bool act_order) {
  const lowbit::Tensor w = random_matrix(out, in, 1, 0.02f);
  const std::vector<double> h = hessian(in);
  const lowbit::QuantSpec spec = lowbit::parse_spec(g_spec).value();
  lowbit::GptqOptions opt;
  opt.act_order = act_order;
  for (auto _ : state) {
    auto q = lowbit::gptq_quantize(w.view(), h, spec, opt, "bench");
    if (!q.ok()) state.SkipWithError(q.status().to_string().c_str());
    benchmark::DoNotOptimize(q);
  }
}

// q, k and v on one input (GQA: k and v with a quarter of q's rows), quantized by three GPTQ calls
// that each factor H⁻¹ (the way the pipeline ran before) or that share one GptqFactorCache.
void BM_gptq_qkv(benchmark::State& state, int64_t out, int64_t in, bool shared) {
  const lowbit::Tensor wq = random_matrix(out, in, 1, 0.02f), wk = random_matrix(out / 4, in, 2, 0.02f),
                       wv = random_matrix(out / 4, in, 3, 0.02f);
  const std::vector<double> h = hessian(in);
  const lowbit::QuantSpec spec = lowbit::parse_spec(g_spec).value();
  for (auto _ : state) {
    lowbit::GptqFactorCache cache;
    for (const lowbit::Tensor* w : {&wq, &wk, &wv}) {
      auto q = lowbit::gptq_quantize(w->view(), h, spec, {}, "bench", nullptr, shared ? &cache : nullptr);
      if (!q.ok()) state.SkipWithError(q.status().to_string().c_str());
      benchmark::DoNotOptimize(q);
    }
  }
}

// The calibration Hessian of one linear input `in` wide over 40 windows of 128 tokens (the pipeline's
// default calibration): folded once per ~64 MiB of gathered rows (InputStats' default) against folded
// after every window (fold_bytes = 1: a (in, in) float product, zero-fill and double add per window, the
// way it ran before).
void BM_hessian(benchmark::State& state, int64_t in, bool per_window) {
  const lowbit::Tensor x = random_matrix(40 * 128, in, 3, 1.0f);
  for (auto _ : state) {
    lowbit::InputStats st;
    st.init(in, true, 0);
    if (per_window) st.fold_bytes = 1;
    for (int w = 0; w < 40; ++w) st.add(x.data_as<float>() + int64_t{w} * 128 * in, 128);
    st.finish();
    benchmark::DoNotOptimize(st.hessian.data());
  }
}

// A random Llama of `layers` blocks of width g_width (FFN 8/3 width), weights owned.
lowbit::Model synthetic(int layers) {
  lowbit::Model m;
  lowbit::LlamaConfig& c = m.config;
  c.dim = static_cast<int>(g_width);
  c.hidden_dim = static_cast<int>(g_width * 8 / 3);
  c.n_layers = layers;
  c.n_heads = 8;
  c.n_kv_heads = 8;
  c.vocab_size = 256;
  c.seq_len = 256;
  m.owned.reserve(static_cast<size_t>(layers) * 9 + 3);
  uint64_t seed = 0;
  auto make = [&](int64_t r, int64_t k, float sd) {
    m.owned.push_back(random_matrix(r, k, ++seed, sd));
    return lowbit::ConstTensorView(m.owned.back().view());
  };
  auto norm = [&]() {
    lowbit::Tensor t = lowbit::Tensor::empty(lowbit::DType::kF32, {c.dim}).value();
    for (int i = 0; i < c.dim; ++i) t.data_as<float>()[i] = 1.0f;
    m.owned.push_back(std::move(t));
    return lowbit::ConstTensorView(m.owned.back().view());
  };
  const int64_t d = c.dim, h = c.hidden_dim;
  const float sd = 1.0f / std::sqrt(static_cast<float>(d));
  m.weights.tok_embeddings = make(c.vocab_size, d, 1.0f);
  for (int l = 0; l < layers; ++l) {
    lowbit::LayerWeights lw;
    lw.attn_norm = norm();
    lw.wq = make(d, d, sd);
    lw.wk = make(d, d, sd);
    lw.wv = make(d, d, sd);
    lw.wo = make(d, d, sd);
    lw.ffn_norm = norm();
    lw.w1 = make(h, d, sd);
    lw.w2 = make(d, h, 1.0f / std::sqrt(static_cast<float>(h)));
    lw.w3 = make(h, d, sd);
    m.weights.layers.push_back(lw);
  }
  m.weights.final_norm = norm();
  m.weights.classifier = m.weights.tok_embeddings;
  return m;
}

void BM_pipeline(benchmark::State& state, int layers) {
  lowbit::Model m = synthetic(layers);
  lowbit::PipelineOptions opt;
  opt.method = lowbit::Method::kGptq;
  opt.plan = lowbit::make_plan(m.config, lowbit::parse_spec("int4:g128:sym:fp16").value(), std::nullopt).value();
  std::mt19937_64 rng(7);
  for (int w = 0; w < 8; ++w) {
    std::vector<int> win(256);
    for (int& t : win) t = static_cast<int>(rng() % 256);
    opt.calib.push_back(win);
  }
  int64_t peak = 0;
  for (auto _ : state) {
    lowbit::LlamaModel net(m);
    auto r = lowbit::quantize_model(net, opt);
    if (!r.ok()) state.SkipWithError(r.status().to_string().c_str());
    else peak = r->peak_activation_bytes;
  }
  state.counters["peak_activation_MiB"] = static_cast<double>(peak) / (1 << 20);
  g_peaks.emplace_back(layers, peak);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t out = 4096, in = 4096;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--out=", 6) == 0) out = std::strtoll(argv[i] + 6, nullptr, 10);
    if (std::strncmp(argv[i], "--in=", 5) == 0) in = std::strtoll(argv[i] + 5, nullptr, 10);
    if (std::strncmp(argv[i], "--width=", 8) == 0) g_width = std::strtoll(argv[i] + 8, nullptr, 10);
    if (std::strncmp(argv[i], "--spec=", 7) == 0) g_spec = argv[i] + 7;
  }
  const auto spec = lowbit::parse_spec(g_spec);
  if (!spec.ok()) {
    std::fprintf(stderr, "bench_algo: --spec=%s: %s\n", g_spec.c_str(), spec.status().message().c_str());
    return 2;
  }
  std::printf("weight spec: %s\n", g_spec.c_str());
  const bool ggml = spec.value().ggml != lowbit::GgmlType::kF32;  // ggml blocks: no act-order
  const std::pair<int64_t, int64_t> shapes[] = {{out, in}, {out * 11008 / 4096, in}};
  for (const auto& [o, k] : shapes) {
    const std::string s = std::to_string(o) + "x" + std::to_string(k);
    benchmark::RegisterBenchmark(("sgemm/" + s).c_str(), BM_sgemm, o, k)->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
    benchmark::RegisterBenchmark(("rtn/" + s).c_str(), BM_rtn, o, k)->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
    benchmark::RegisterBenchmark(("gptq/" + s).c_str(), BM_gptq, o, k, false)->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
    if (!ggml) benchmark::RegisterBenchmark(("gptq-act-order/" + s).c_str(), BM_gptq, o, k, true)->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
  }
  const std::string hs = std::to_string(out) + "x" + std::to_string(in);
  benchmark::RegisterBenchmark(("gptq-qkv-own-factors/" + hs).c_str(), BM_gptq_qkv, out, in, false)->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
  benchmark::RegisterBenchmark(("gptq-qkv-shared-factor/" + hs).c_str(), BM_gptq_qkv, out, in, true)->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
  benchmark::RegisterBenchmark(("hessian-40x128-tokens/" + hs).c_str(), BM_hessian, in, false)->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
  benchmark::RegisterBenchmark(("hessian-fold-per-window/" + hs).c_str(), BM_hessian, in, true)->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
  for (int layers : {4, 8, 16}) {
    benchmark::RegisterBenchmark(("pipeline-gptq/layers:" + std::to_string(layers)).c_str(), BM_pipeline, layers)
        ->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
  }
  benchmark::Initialize(&argc, argv);
  lowbit::bench::TableReporter* rep = nullptr;
  lowbit::bench::TableReporter reporter([&](const lowbit::bench::TableReporter::Rows&) {
    const auto& secs = rep->seconds();
    std::printf("\n%d threads\n\n| shape (out x in) | method | seconds | sgemm seconds (4096 tokens) | x sgemm |\n|---|---|---:|---:|---:|\n",
                lowbit::num_threads());
    for (const auto& [name, t] : secs) {
      if (name.rfind("pipeline", 0) == 0 || name.rfind("sgemm", 0) == 0) continue;
      const std::string shape = name.substr(name.find('/') + 1);  // "<out>x<in>/iterations:1"
      const double base = lowbit::bench::TableReporter::find(secs, "sgemm/" + shape);
      std::printf("| %s | %s | %.2f | %.2f | %.2f |\n", shape.substr(0, shape.find('/')).c_str(), name.substr(0, name.find('/')).c_str(), t, base, base > 0 ? t / base : 0.0);
    }
    std::printf("\n| synthetic model (width %lld) | GPTQ pipeline seconds | peak activations + statistics (MiB) |\n|---|---:|---:|\n",
                static_cast<long long>(g_width));
    for (const auto& [layers, peak] : g_peaks) {
      const double t = lowbit::bench::TableReporter::find(secs, "pipeline-gptq/layers:" + std::to_string(layers) + "/iterations:1");
      std::printf("| %d layers | %.2f | %.1f |\n", layers, t, static_cast<double>(peak) / (1 << 20));
    }
  });
  rep = &reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
