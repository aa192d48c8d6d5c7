// See kernel_harness.h. OpenBLAS and oneDNN are optional peers (LOWBIT_HAVE_OPENBLAS,
// LOWBIT_HAVE_DNNL); without them the baseline column says so and the figure still runs.
#include "kernel_harness.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <stdexcept>
#include <tuple>

#include <fmt/format.h>

#include "lowbit/cpu.h"
#include "lowbit/kernels.h"
#include "lowbit/parallel.h"
#include "lowbit/quant.h"
#include "lowbit/tensor.h"

#if defined(LOWBIT_HAVE_OPENBLAS)
#include <cblas.h>
#endif
#if defined(LOWBIT_HAVE_DNNL)
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace lowbit::bench {

int64_t int8_peak_loop(int64_t iters);
float fp32_peak_loop(int64_t iters);
uint64_t stream_read(const uint8_t* p, size_t n);

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

template <class F>
double best_of(int reps, F&& fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    fn();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

// Twice the 32 MiB L3 of the machines we measure on: larger than any last-level cache here.
constexpr int64_t kColdBytes = int64_t{64} << 20;

struct State {
  int64_t m = 0, k = 0, n = 0;
  std::vector<float> w;      // (n, k) fp32 weights, the baselines' input
  std::vector<float> wdq;    // (n, k) dequantize target (fp8 baseline)
  QuantizedTensor q;
  PackedWeights packed;
  // Decode cases rotate over copies of the packed weights spanning kColdBytes, so every call reads
  // its weights from DRAM, as a model's layers do, instead of from the last call's L3 lines.
  std::vector<PackedWeights> cold;
  size_t next_cold = 0;
  MatmulOptions opt;
  std::vector<float> x, y, yb;  // (m, k), (m, n), (m, n)
  std::vector<int8_t> a8, w8;   // oneDNN peer inputs
  std::shared_ptr<void> peer;   // oneDNN objects
};

void sgemm(const float* x, const float* w, float* y, int64_t m, int64_t k, int64_t n) {
#if defined(LOWBIT_HAVE_OPENBLAS)
  openblas_set_num_threads(num_threads());
  if (m == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(n), static_cast<int>(k), 1.0f, w, static_cast<int>(k), x, 1,
                0.0f, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
                1.0f, x, static_cast<int>(k), w, static_cast<int>(k), 0.0f, y, static_cast<int>(n));
  }
#else
  (void)x, (void)w, (void)y, (void)m, (void)k, (void)n;
#endif
}

#if defined(LOWBIT_HAVE_OPENBLAS)
constexpr bool kHaveBlas = true;
#else
constexpr bool kHaveBlas = false;
#endif

#if defined(LOWBIT_HAVE_DNNL)
struct DnnlPeer {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  dnnl::matmul prim;
  dnnl::memory a, b, c;
};
// s8 (m, k) x s8 (k, n) -> f32 (m, n), weights reordered once into oneDNN's preferred layout.
std::function<void()> onednn_int8(State& s) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  auto p = std::make_shared<DnnlPeer>();
  const dnnl::memory::desc a_md({s.m, s.k}, dt::s8, tag::ab), b_any({s.k, s.n}, dt::s8, tag::any),
      b_plain({s.k, s.n}, dt::s8, tag::ba), c_md({s.m, s.n}, dt::f32, tag::ab);
  const dnnl::matmul::desc d(a_md, b_any, c_md);
  const dnnl::matmul::primitive_desc pd(d, p->eng);
  p->prim = dnnl::matmul(pd);
  p->a = dnnl::memory(pd.src_desc(), p->eng, s.a8.data());
  p->b = dnnl::memory(pd.weights_desc(), p->eng);
  p->c = dnnl::memory(pd.dst_desc(), p->eng, s.yb.data());
  dnnl::memory plain(b_plain, p->eng, s.w8.data());
  dnnl::reorder(plain, p->b).execute(p->strm, plain, p->b);
  p->strm.wait();
  s.peer = p;
  DnnlPeer* raw = p.get();
  return [raw] {
    raw->prim.execute(raw->strm, {{DNNL_ARG_SRC, raw->a}, {DNNL_ARG_WEIGHTS, raw->b}, {DNNL_ARG_DST, raw->c}});
    raw->strm.wait();
  };
}
constexpr bool kHaveDnnl = true;
#else
std::function<void()> onednn_int8(State&) { return nullptr; }
constexpr bool kHaveDnnl = false;
#endif

struct Spec {
  std::string id, op, weights;
  int64_t m, k, n;
};

std::vector<Spec> specs() {
  std::vector<Spec> v;
  for (auto [m, k, n] : {std::tuple<int64_t, int64_t, int64_t>{1, 4096, 4096}, {1, 4096, 11008}, {128, 4096, 4096}}) {
    const std::string shape = fmt::format("{}x{}x{}", m, k, n);
    v.push_back({"a16_w4g128/" + shape, "a16", "int4:g128:sym:fp16", m, k, n});
    v.push_back({"a8_w4g128/" + shape, "a8w4", "int4:g128:sym:fp16", m, k, n});
    if (n == 4096) {
      v.push_back({"a8_w8/" + shape, "a8w8", "int8:row:sym:fp32", m, k, n});
      v.push_back({"fp8_block/" + shape, "fp8", "e4m3:block128x128:sym:fp32", m, k, n});
    }
    if (m == 1 && n == 4096) v.push_back({"a16_nf4g64/" + shape, "a16", "nf4:g64:sym:fp32", m, k, n});
  }
  return v;
}

}  // namespace

Limits measure_limits() {
  Limits l;
  const int threads = num_threads();
  if (!isa_supported(Isa::kAvx2)) return l;
  // DRAM: 512 MiB (16x a 32 MiB LLC), read by every thread over its own slice; best of 3.
  const size_t bytes = size_t{512} << 20;
  Tensor buf = std::move(Tensor::empty(DType::kU8, {static_cast<int64_t>(bytes)}).value());
  std::memset(buf.data(), 1, bytes);
  const uint8_t* p = static_cast<const uint8_t*>(buf.data());
  const int64_t slice = static_cast<int64_t>(bytes) / threads / 128 * 128;
  volatile uint64_t sink = 0;
  const double t_dram = best_of(3, [&] {
    parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) sink = sink + stream_read(p + t * slice, static_cast<size_t>(slice));
    });
  });
  l.dram_gbs = static_cast<double>(slice) * threads / t_dram / 1e9;
  const int64_t iters = 20'000'000;
  volatile int64_t isink = 0;
  const double t_int8 = best_of(3, [&] {
    parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) isink = isink + int8_peak_loop(iters);
    });
  });
  l.int8_gops = 2.0 * 6 * 32 * static_cast<double>(iters) * threads / t_int8 / 1e9;
  volatile float fsink = 0;
  const double t_fp32 = best_of(3, [&] {
    parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) fsink = fsink + fp32_peak_loop(iters);
    });
  });
  l.fp32_gflops = 2.0 * 12 * 8 * static_cast<double>(iters) * threads / t_fp32 / 1e9;
  return l;
}

DramProbe::DramProbe() {
  if (!isa_supported(Isa::kAvx2)) return;
  bytes_ = int64_t{512} << 20;
  auto t = std::make_shared<Tensor>(std::move(Tensor::empty(DType::kU8, {bytes_}).value()));
  std::memset(t->data(), 1, static_cast<size_t>(bytes_));
  buf_ = t;
}

double DramProbe::read_gbs() {
  if (!buf_) return 0.0;
  const int threads = num_threads();
  const uint8_t* p = static_cast<const uint8_t*>(static_cast<Tensor*>(buf_.get())->data());
  const int64_t slice = bytes_ / threads / 128 * 128;
  volatile uint64_t sink = 0;
  const auto t0 = Clock::now();
  parallel_for(0, threads, 1, [&](int64_t t0_, int64_t t1_) {
    for (int64_t t = t0_; t < t1_; ++t) sink = sink + stream_read(p + t * slice, static_cast<size_t>(slice));
  });
  return static_cast<double>(slice) * threads / seconds_since(t0) / 1e9;
}

std::vector<std::string> case_ids() {
  std::vector<std::string> ids;
  for (const Spec& s : specs()) ids.push_back(s.id);
  return ids;
}

Case make_case(const std::string& id) {
  const std::vector<Spec> all = specs();
  const auto it = std::find_if(all.begin(), all.end(), [&](const Spec& s) { return s.id == id; });
  if (it == all.end()) throw std::invalid_argument("unknown kernel bench case " + id);
  const Spec sp = *it;
  auto s = std::make_shared<State>();
  s->m = sp.m;
  s->k = sp.k;
  s->n = sp.n;
  std::mt19937 rng(42);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  s->w.resize(static_cast<size_t>(sp.n * sp.k));
  for (float& v : s->w) v = dist(rng);
  s->x.resize(static_cast<size_t>(sp.m * sp.k));
  for (float& v : s->x) v = 50.0f * dist(rng);
  s->y.assign(static_cast<size_t>(sp.m * sp.n), 0.0f);
  s->yb.assign(static_cast<size_t>(sp.m * sp.n), 0.0f);
  ConstTensorView wv(s->w.data(), DType::kF32, {sp.n, sp.k});
  s->q = quantize(wv, parse_spec(sp.weights).value()).value();
  s->packed = pack_weights(s->q).value();
  s->opt.op = sp.op == "a8w4" ? KernelOp::kGemmA8W4 : KernelOp::kAuto;

  Case c;
  c.kernel = kernel_name(s->packed, s->opt);
  c.shape = fmt::format("{}x{}x{}", sp.m, sp.k, sp.n);
  if (sp.m == 1) {
    const int64_t bytes = std::max<int64_t>(1, s->packed.bytes());
    const int64_t copies = std::max<int64_t>(2, (kColdBytes + bytes - 1) / bytes);
    s->cold.assign(static_cast<size_t>(copies), s->packed);
  }
  State* st = s.get();
  c.run = [st] {
    const PackedWeights& w = st->cold.empty() ? st->packed : st->cold[st->next_cold++ % st->cold.size()];
    if (!matmul(w, st->x.data(), st->m, st->k, st->y.data(), st->n, st->opt).ok()) std::abort();
  };
  const double flops = 2.0 * static_cast<double>(sp.m * sp.n * sp.k);
  const bool gemv = sp.m == 1;
  c.limit_name = gemv ? "dram_gbs" : (sp.op == "a8w8" || sp.op == "a8w4") ? "int8_gops" : "fp32_gflops";
  c.work = gemv ? static_cast<double>(s->packed.bytes()) : flops;
  const std::string blas = gemv ? "openblas_sgemv" : "openblas_sgemm";
  if (sp.op == "fp8") {
    s->wdq.resize(s->w.size());
    c.baseline_name = "dequant+" + blas;
    c.baseline = [st] {
      TensorView out(st->wdq.data(), DType::kF32, {st->n, st->k});
      if (!dequantize(st->q, out).ok()) std::abort();
      sgemm(st->x.data(), st->wdq.data(), st->yb.data(), st->m, st->k, st->n);
    };
  } else if (sp.op == "a8w8" && !gemv && kHaveDnnl) {
    s->a8.resize(s->x.size());
    s->w8.resize(s->w.size());
    for (size_t i = 0; i < s->a8.size(); ++i) s->a8[i] = static_cast<int8_t>(static_cast<int>(i * 7) % 255 - 127);
    for (int64_t r = 0; r < sp.n; ++r) {
      for (int64_t cc = 0; cc < sp.k; ++cc) s->w8[r * sp.k + cc] = static_cast<int8_t>(s->q.code_at(r, cc));
    }
    c.baseline_name = "onednn_s8s8_f32";
    c.baseline = onednn_int8(*s);
  } else {
    c.baseline_name = blas;
    c.baseline = [st] { sgemm(st->x.data(), st->w.data(), st->yb.data(), st->m, st->k, st->n); };
  }
  if (!kHaveBlas && c.baseline_name.find("openblas") != std::string::npos) {
    c.baseline_name += " (not built)";
    c.baseline = nullptr;
  }
  c.state = s;
  return c;
}

double time_call(const std::function<void()>& fn, double min_seconds) {
  fn();  // warm-up: page faults, caches, thread pools
  int64_t iters = 0;
  const auto t0 = Clock::now();
  double t = 0;
  do {
    fn();
    ++iters;
    t = seconds_since(t0);
  } while (t < min_seconds);
  return t / static_cast<double>(iters);
}

Row make_row(const Case& c, double seconds, double baseline_seconds, const Limits& l) {
  Row r;
  r.kernel = c.kernel;
  r.shape = c.shape;
  r.baseline_name = c.baseline_name;
  r.limit_name = c.limit_name;
  r.seconds = seconds;
  r.baseline_seconds = baseline_seconds;
  const double scale = 1e9;
  r.figure = c.work / seconds / scale;
  r.limit = c.limit_name == "dram_gbs" ? l.dram_gbs : c.limit_name == "int8_gops" ? l.int8_gops : l.fp32_gflops;
  r.x_vs_baseline = baseline_seconds > 0 ? baseline_seconds / seconds : 0;
  r.pct_of_limit = r.limit > 0 ? 100.0 * r.figure / r.limit : 0;
  return r;
}

std::string markdown_table(const std::vector<Row>& rows, const Limits& l) {
  std::string out = fmt::format(
      "Limits measured in this run ({} threads): DRAM read {:.1f} GB/s, AVX2 int8 peak {:.0f} Gop/s, fp32 FMA peak {:.0f} GFLOP/s\n\n",
      num_threads(), l.dram_gbs, l.int8_gops, l.fp32_gflops);
  out += "| kernel | shape MxKxN | time (ms) | figure | % of limit | baseline | baseline (ms) | x vs baseline |\n";
  out += "|---|---|---:|---:|---:|---|---:|---:|\n";
  for (const Row& r : rows) {
    const char* unit = r.limit_name == "dram_gbs" ? "GB/s" : r.limit_name == "int8_gops" ? "Gop/s" : "GFLOP/s";
    out += fmt::format("| {} | {} | {:.3f} | {:.1f} {} | {:.0f}% of {} | {} | {:.3f} | {:.2f} |\n", r.kernel, r.shape,
                       r.seconds * 1e3, r.figure, unit, r.pct_of_limit, r.limit_name, r.baseline_name,
                       r.baseline_seconds * 1e3, r.x_vs_baseline);
  }
  return out;
}

}  // namespace lowbit::bench
