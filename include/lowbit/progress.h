// A one-line progress bar on stderr for long jobs (quantizing layers, evaluating text):
//   gptq [#########.....................] 37/100 12.3/s ETA 0:05
// redrawn in place at most ~10 times a second. It draws only when stderr is a terminal and
// LOWBIT_NO_PROGRESS is unset; otherwise it writes nothing, so logs and pipes stay clean.
//
//   Progress bar("quantize", num_layers);
//   parallel_for(0, num_layers, 1, [&](int64_t l0, int64_t l1) { ...; bar.advance(l1 - l0); });
//   bar.finish();                                // or let the destructor do it
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

namespace lowbit {

bool stderr_is_tty();

class Progress {
 public:
  // Draws on stderr when `enabled` and LOWBIT_NO_PROGRESS is unset (or empty).
  // total <= 0 means unknown: the bar shows the count and rate only.
  Progress(std::string label, int64_t total, bool enabled = stderr_is_tty());
  // Test hook: draws to `sink` when `enabled`, whatever the environment.
  Progress(std::string label, int64_t total, bool enabled, std::FILE* sink);
  ~Progress();  // calls finish()
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Thread-safe and cheap: an atomic add; a redraw only when one is due and no other
  // thread is drawing (try_lock, so workers never wait on the terminal).
  void advance(int64_t n = 1);
  // Draws the final state and ends the line. Idempotent; advance() after it counts but draws nothing.
  void finish();

  int64_t count() const { return count_.load(std::memory_order_relaxed); }

 private:
  using Clock = std::chrono::steady_clock;
  void draw(bool final);  // caller holds mu_

  const std::string label_;
  const int64_t total_;
  const bool enabled_;
  std::FILE* const sink_;
  const Clock::time_point start_;
  std::atomic<int64_t> count_{0};
  std::atomic<int64_t> next_draw_ns_{0};  // since start_
  std::mutex mu_;
  bool finished_ = false;  // guarded by mu_
  size_t last_len_ = 0;    // guarded by mu_; to blank a longer previous line
};

}  // namespace lowbit
