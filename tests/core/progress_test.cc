#include "lowbit/progress.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "lowbit/parallel.h"

namespace lowbit {
namespace {

// Captures what a Progress writes to its sink.
class Capture {
 public:
  Capture() : file_(open_memstream(&buf_, &len_)) {}
  ~Capture() {
    if (file_ != nullptr) std::fclose(file_);
    std::free(buf_);
  }
  std::FILE* file() { return file_; }
  std::string text() {
    std::fflush(file_);
    return {buf_, len_};
  }

 private:
  char* buf_ = nullptr;
  size_t len_ = 0;
  std::FILE* file_;
};

TEST(Progress, DisabledWritesNothing) {
  Capture cap;
  ASSERT_NE(cap.file(), nullptr);
  {
    Progress p("quantize", 100, /*enabled=*/false, cap.file());
    for (int i = 0; i < 1000; ++i) p.advance();
    EXPECT_EQ(p.count(), 1000);
    p.finish();
  }
  EXPECT_EQ(cap.text(), "");
}

TEST(Progress, EnabledShowsLabelCountAndBar) {
  Capture cap;
  {
    Progress p("gptq", 100, /*enabled=*/true, cap.file());
    p.advance(30);
    p.advance(7);
    p.finish();
    p.finish();  // idempotent
    p.advance();  // after finish: counted, not drawn
  }
  const std::string out = cap.text();
  EXPECT_EQ(out.front(), '\r');
  EXPECT_NE(out.find("gptq [.............................."), std::string::npos) << out;  // first frame
  EXPECT_NE(out.find("gptq [###########...................] 37/100"), std::string::npos) << out;
  EXPECT_NE(out.find("/s"), std::string::npos);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_EQ(out.back(), '\n');
}

TEST(Progress, UnknownTotalShowsCountOnly) {
  Capture cap;
  {
    Progress p("tokens", 0, true, cap.file());
    p.advance(12345);
  }  // destructor finishes
  const std::string out = cap.text();
  EXPECT_NE(out.find("tokens 12345 "), std::string::npos) << out;
  EXPECT_EQ(out.find('['), std::string::npos) << out;
  EXPECT_EQ(out.back(), '\n');
}

TEST(Progress, RedrawsAreThrottledAndThreadSafe) {
  Capture cap;
  const auto start = std::chrono::steady_clock::now();
  {
    Progress p("eval", 200000, true, cap.file());
    parallel_for(0, 200000, 1000, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p.advance();
    });
    EXPECT_EQ(p.count(), 200000);
  }
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  const std::string out = cap.text();
  const auto draws = std::count(out.begin(), out.end(), '\r');
  // First frame, final frame, and at most one per 100 ms in between.
  EXPECT_LE(draws, 3 + static_cast<long>(ms / 100)) << out;
  EXPECT_NE(out.find("200000/200000"), std::string::npos);
}

TEST(Progress, RedrawsWhenDue) {
  Capture cap;
  {
    Progress p("slow", 3, true, cap.file());
    for (int i = 0; i < 3; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(120));
      p.advance();
    }
    const std::string mid = cap.text();
    EXPECT_NE(mid.find("1/3"), std::string::npos) << mid;
    EXPECT_NE(mid.find("ETA "), std::string::npos) << mid;
  }
  EXPECT_NE(cap.text().find("3/3"), std::string::npos);
}

// Runs fn with file descriptor 2 redirected to a temp file; returns what reached it.
template <class F>
std::string capture_stderr(F fn) {
  std::fflush(stderr);
  std::FILE* tmp = std::tmpfile();
  const int saved = ::dup(STDERR_FILENO);
  ::dup2(::fileno(tmp), STDERR_FILENO);
  fn();
  std::fflush(stderr);
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  std::string out;
  std::rewind(tmp);
  for (int c; (c = std::fgetc(tmp)) != EOF;) out.push_back(static_cast<char>(c));
  std::fclose(tmp);
  return out;
}

TEST(Progress, EnvironmentDisablesTheStderrBar) {
  auto run = [] {
    Progress p("envcheck", 10, /*enabled=*/true);
    p.advance(10);
  };
  ASSERT_EQ(unsetenv("LOWBIT_NO_PROGRESS"), 0);
  EXPECT_NE(capture_stderr(run).find("envcheck"), std::string::npos) << "explicitly enabled draws on stderr";
  ASSERT_EQ(setenv("LOWBIT_NO_PROGRESS", "1", 1), 0);
  EXPECT_EQ(capture_stderr(run), "");
  ASSERT_EQ(unsetenv("LOWBIT_NO_PROGRESS"), 0);
}

}  // namespace
}  // namespace lowbit
