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

#include <cstdint>
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

}  // namespace lowbit
