// Thread count and a deterministic parallel_for over OpenMP. The range is cut into
// chunks of exactly `grain` indices (the last may be shorter) whatever the thread
// count, so per-chunk results (partial sums, RNG streams) are reproducible.
//
//   LOWBIT_RETURN_IF_ERROR(set_num_threads(opts.threads));   // CLI --threads
//   parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {  // rows in chunks of 16
//     for (int64_t r = r0; r < r1; ++r) quantize_row(w.row(r));
//   });
#pragma once

#include <omp.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>

#include "lowbit/status.h"

namespace lowbit {

inline constexpr int kMaxThreads = 1024;  // a sanity bound on --threads / LOWBIT_THREADS

// Threads parallel_for uses: set_num_threads(n) if called; else LOWBIT_THREADS, read on
// first use (an invalid value prints one line to stderr and exits with status 2; call
// init_threads_from_env first to handle the error yourself, as the CLI does); else
// omp_get_max_threads() (which honours OMP_NUM_THREADS and the CPU affinity mask).
int num_threads();
// InvalidArgument naming --threads unless 1 <= n <= kMaxThreads. Also sets the OpenMP
// default for the calling thread, so other OpenMP code (Eigen) follows it.
Status set_num_threads(int n);
// Validates LOWBIT_THREADS and applies it if set; InvalidArgument naming the variable otherwise.
Status init_threads_from_env();

// Calls fn(chunk_begin, chunk_end) once for each chunk [begin + k*grain, min(.. + grain, end))
// covering [begin, end). Chunks run concurrently on num_threads() threads (statically
// assigned); inline on the calling thread when there is one chunk, one thread, or the caller
// is already inside a parallel region. fn must not throw.
template <class F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, F&& fn) {
  LOWBIT_CHECK(grain >= 1, "parallel_for: grain must be at least 1");
  if (end <= begin) return;
  const int64_t chunks = (end - begin - 1) / grain + 1;  // no overflow of end - begin + grain
  auto run = [&](int64_t k) {
    const int64_t b = begin + k * grain;
    const int64_t e = (end - b > grain) ? b + grain : end;
    fn(b, e);
  };
  const int threads = num_threads();
  if (chunks == 1 || threads == 1 || omp_in_parallel()) {
    for (int64_t k = 0; k < chunks; ++k) run(k);
    return;
  }
  const int team = chunks < threads ? static_cast<int>(chunks) : threads;
#pragma omp parallel for schedule(static) num_threads(team)
  for (int64_t k = 0; k < chunks; ++k) run(k);
}

// As parallel_for, for chunks that write disjoint outputs and share nothing (row blocks of a
// matmul), so the result cannot depend on which thread ran a chunk: each thread starts on its
// contiguous static share, taking chunks from the front (streaming stays sequential per thread);
// a thread that finishes early takes chunks from the back of the share with the most left, so a
// thread the machine slows down does not hold the others at the barrier.
template <class F>
void parallel_for_balanced(int64_t begin, int64_t end, int64_t grain, F&& fn) {
  LOWBIT_CHECK(grain >= 1, "parallel_for_balanced: grain must be at least 1");
  if (end <= begin) return;
  const int64_t chunks = (end - begin - 1) / grain + 1;
  auto run = [&](int64_t k) {
    const int64_t b = begin + k * grain;
    const int64_t e = (end - b > grain) ? b + grain : end;
    fn(b, e);
  };
  const int threads = num_threads();
  if (chunks == 1 || threads == 1 || omp_in_parallel() || chunks >= (int64_t{1} << 31)) {
    if (chunks >= (int64_t{1} << 31)) return parallel_for(begin, end, grain, std::forward<F>(fn));
    for (int64_t k = 0; k < chunks; ++k) run(k);
    return;
  }
  const int team = chunks < threads ? static_cast<int>(chunks) : threads;
  // Share t: chunks [lo, hi) packed as lo << 32 | hi, one cache line each.
  struct alignas(64) Share {
    std::atomic<uint64_t> lohi;
  };
  const auto shares = std::make_unique<Share[]>(static_cast<size_t>(team));
  for (int t = 0; t < team; ++t) {
    const uint64_t lo = static_cast<uint64_t>(chunks * t / team), hi = static_cast<uint64_t>(chunks * (t + 1) / team);
    shares[static_cast<size_t>(t)].lohi.store(lo << 32 | hi, std::memory_order_relaxed);
  }
#pragma omp parallel num_threads(team)
  {
    const int me = omp_get_thread_num();
    std::atomic<uint64_t>& own = shares[static_cast<size_t>(me)].lohi;
    for (uint64_t v = own.load(std::memory_order_relaxed);;) {
      const uint64_t lo = v >> 32, hi = v & 0xFFFFFFFFu;
      if (lo >= hi) break;
      if (own.compare_exchange_weak(v, (lo + 1) << 32 | hi, std::memory_order_relaxed)) {
        run(static_cast<int64_t>(lo));
        v = own.load(std::memory_order_relaxed);
      }
    }
    for (;;) {  // steal from the back of the largest share left
      int victim = -1;
      uint64_t best = 0, vv = 0;
      for (int t = 0; t < team; ++t) {
        const uint64_t v = shares[static_cast<size_t>(t)].lohi.load(std::memory_order_relaxed);
        const uint64_t lo = v >> 32, hi = v & 0xFFFFFFFFu;
        if (hi > lo && hi - lo > best) best = hi - lo, victim = t, vv = v;
      }
      if (victim < 0) break;
      const uint64_t lo = vv >> 32, hi = vv & 0xFFFFFFFFu;
      if (shares[static_cast<size_t>(victim)].lohi.compare_exchange_strong(vv, lo << 32 | (hi - 1), std::memory_order_relaxed)) {
        run(static_cast<int64_t>(hi - 1));
      }
    }
  }
}

}  // namespace lowbit
