#include "lowbit/parallel.h"

#include <omp.h>

#include <atomic>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

namespace lowbit {
namespace {

#ifdef LOWBIT_HAVE_OPENBLAS
extern "C" void openblas_set_num_threads(int);
#endif

constexpr int kUnset = 0;
std::atomic<int> g_threads{kUnset};
std::mutex g_init_mu;

int default_threads() {
  int n = omp_get_max_threads();
  if (n < 1) n = static_cast<int>(std::thread::hardware_concurrency());
  if (n < 1) n = 1;
  return n < kMaxThreads ? n : kMaxThreads;
}

// Parses a thread count; `what` names its source ("--threads", "LOWBIT_THREADS").
Result<int> parse_threads(std::string_view text, const char* what) {
  int n = 0;
  const char* first = text.data();
  const char* last = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(first, last, n);
  if (ec != std::errc() || ptr != last || n < 1 || n > kMaxThreads) {
    return InvalidArgument(std::string(what) + ": expected a thread count from 1 to " +
                           std::to_string(kMaxThreads) + ", got '" + std::string(text) + "'");
  }
  return n;
}

// The count OpenMP (lowbit's loops, Eigen) uses. OpenBLAS (the BLAS Eigen calls in gptq.cc and
// llama.cc, see their CMakeLists) always runs on one thread: OpenBLAS 0.3.21's threaded sgemm,
// strsm, ssyrk and strmm give different bits on 1 and 2 threads on some CPUs (an EPYC VM: 6531 of
// 36,864 outputs of a 64×576×576 sgemm), so the callers split their products into chunks that
// depend on the shape alone and run those on lowbit's threads.
void apply_threads(int n) {
  g_threads.store(n, std::memory_order_release);
  omp_set_num_threads(n);
#ifdef LOWBIT_HAVE_OPENBLAS
  openblas_set_num_threads(1);
#endif
}

}  // namespace

Status set_num_threads(int n) {
  if (n < 1 || n > kMaxThreads) {
    return InvalidArgument("--threads: expected a thread count from 1 to " + std::to_string(kMaxThreads) +
                           ", got " + std::to_string(n));
  }
  apply_threads(n);
  return OkStatus();
}

Status init_threads_from_env() {
  std::lock_guard<std::mutex> lock(g_init_mu);
  const char* env = std::getenv("LOWBIT_THREADS");
  if (env == nullptr || *env == '\0') {
    if (g_threads.load() == kUnset) apply_threads(default_threads());
    return OkStatus();
  }
  Result<int> n = parse_threads(env, "LOWBIT_THREADS");
  if (!n.ok()) return n.status();
  apply_threads(*n);
  return OkStatus();
}

int num_threads() {
  int n = g_threads.load(std::memory_order_acquire);
  if (n != kUnset) return n;
  Status s = init_threads_from_env();
  if (!s.ok()) {
    std::fprintf(stderr, "lowbit: %s\n", s.to_string().c_str());
    std::exit(2);
  }
  return g_threads.load(std::memory_order_acquire);
}

}  // namespace lowbit
