#include "lowbit/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <utility>

namespace lowbit {
namespace {

constexpr int64_t kRedrawIntervalNs = 100'000'000;  // at most ~10 redraws a second
constexpr int kBarWidth = 30;

bool progress_disabled_by_env() {
  const char* env = std::getenv("LOWBIT_NO_PROGRESS");
  return env != nullptr && *env != '\0';
}

// "0:05", "12:34", "1:02:03".
std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 359999) return "--:--";  // NaN, negative or absurd
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

}  // namespace

bool stderr_is_tty() { return ::isatty(STDERR_FILENO) == 1; }

Progress::Progress(std::string label, int64_t total, bool enabled)
    : Progress(std::move(label), total, enabled && !progress_disabled_by_env(), stderr) {}

Progress::Progress(std::string label, int64_t total, bool enabled, std::FILE* sink)
    : label_(std::move(label)),
      total_(total),
      enabled_(enabled && sink != nullptr),
      sink_(sink),
      start_(Clock::now()) {
  if (enabled_) {
    std::lock_guard<std::mutex> lock(mu_);
    draw(false);
    next_draw_ns_.store(kRedrawIntervalNs, std::memory_order_relaxed);
  }
}

Progress::~Progress() { finish(); }

void Progress::advance(int64_t n) {
  count_.fetch_add(n, std::memory_order_relaxed);
  if (!enabled_) return;
  const int64_t now_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start_).count();
  if (now_ns < next_draw_ns_.load(std::memory_order_relaxed)) return;
  std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
  if (!lock.owns_lock()) return;  // another thread is drawing this very moment
  if (finished_ || now_ns < next_draw_ns_.load(std::memory_order_relaxed)) return;
  draw(false);
  next_draw_ns_.store(now_ns + kRedrawIntervalNs, std::memory_order_relaxed);
}

void Progress::finish() {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  draw(true);
  finished_ = true;
}

void Progress::draw(bool final) {
  const int64_t done = count_.load(std::memory_order_relaxed);
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;

  std::string line = label_;
  if (total_ > 0) {
    const int64_t clamped = done < 0 ? 0 : (done > total_ ? total_ : done);
    const int filled = static_cast<int>(clamped * kBarWidth / total_);
    line += " [";
    line.append(static_cast<size_t>(filled), '#');
    line.append(static_cast<size_t>(kBarWidth - filled), '.');
    line += fmt::format("] {}/{}", done, total_);
  } else {
    line += fmt::format(" {}", done);
  }
  line += fmt::format(" {:.1f}/s", rate);
  if (final) {
    line += " in " + format_duration(elapsed);
  } else if (total_ > 0) {
    const int64_t left = total_ > done ? total_ - done : 0;
    const double eta = done > 0 ? static_cast<double>(left) / rate : -1.0;
    line += " ETA " + format_duration(eta);
  }

  const size_t len = line.size();
  if (len < last_len_) line.append(last_len_ - len, ' ');  // blank the rest of a longer line
  last_len_ = len;
  std::fputc('\r', sink_);
  std::fputs(line.c_str(), sink_);
  if (final) std::fputc('\n', sink_);
  std::fflush(sink_);
}

}  // namespace lowbit
