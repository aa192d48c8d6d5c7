#include "lowbit/parallel.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

namespace lowbit {
namespace {

// Restores the thread count a test changes.
class ParallelFor : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = num_threads(); }
  void TearDown() override { ASSERT_TRUE(set_num_threads(saved_).ok()); }
  int saved_ = 1;
};

TEST_F(ParallelFor, VisitsEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 7}) {
    ASSERT_TRUE(set_num_threads(threads).ok());
    EXPECT_EQ(num_threads(), threads);
    for (int64_t begin : {0, 5, -13}) {
      for (int64_t len : {0, 1, 2, 7, 127, 129, 1000}) {
        for (int64_t grain : {1, 2, 3, 16, 127, 5000}) {
          const int64_t end = begin + len;
          std::vector<std::atomic<int>> hits(static_cast<size_t>(len));
          std::atomic<int64_t> calls{0};
          parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
            calls.fetch_add(1);
            ASSERT_LT(b, e);
            ASSERT_LE(e - b, grain);
            for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i - begin)].fetch_add(1);
          });
          for (int64_t i = 0; i < len; ++i) {
            ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1)
                << "index " << begin + i << " threads=" << threads << " grain=" << grain << " len=" << len;
          }
          EXPECT_EQ(calls.load(), len == 0 ? 0 : (len + grain - 1) / grain);
        }
      }
    }
  }
}

// parallel_for_balanced: the same chunks as parallel_for, each run exactly once, at any thread
// count; a thread held up on its first chunk has the rest of its share taken by the others, and
// a free thread starts on its own share from the front (the static split of parallel_for).
TEST_F(ParallelFor, BalancedVisitsEveryChunkOnceAndStealsFromASlowThread) {
  for (int threads : {1, 2, 3, 7}) {
    ASSERT_TRUE(set_num_threads(threads).ok());
    for (int64_t begin : {0, -13}) {
      for (int64_t len : {0, 1, 2, 7, 129, 1000}) {
        for (int64_t grain : {1, 3, 16, 5000}) {
          std::vector<std::atomic<int>> hits(static_cast<size_t>(len));
          std::mutex mu;
          std::set<std::pair<int64_t, int64_t>> got;
          parallel_for_balanced(begin, begin + len, grain, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i - begin)].fetch_add(1);
            const std::lock_guard<std::mutex> lock(mu);
            got.insert({b, e});
          });
          std::set<std::pair<int64_t, int64_t>> want;
          parallel_for(begin, begin + len, grain, [&](int64_t b, int64_t e) {
            const std::lock_guard<std::mutex> lock(mu);
            want.insert({b, e});
          });
          EXPECT_EQ(got, want) << "threads=" << threads << " len=" << len << " grain=" << grain;
          for (int64_t i = 0; i < len; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "index " << begin + i;
        }
      }
    }
  }
  // Two threads, 64 chunks: thread 0's share is 0..31. Chunk 0 waits until 40 other chunks have
  // run, which thread 0 cannot do alone: thread 1 must take chunks of thread 0's share.
  ASSERT_TRUE(set_num_threads(2).ok());
  std::atomic<int> done{0};
  std::vector<int> runner(64, -1);
  parallel_for_balanced(0, 64, 1, [&](int64_t b, int64_t) {
    if (b == 0) {
      while (done.load() < 40) std::this_thread::yield();
    }
    runner[static_cast<size_t>(b)] = omp_get_thread_num();
    done.fetch_add(1);
  });
  EXPECT_EQ(done.load(), 64);
  int stolen = 0;
  for (int64_t k = 1; k < 32; ++k) stolen += runner[static_cast<size_t>(k)] == 1;
  EXPECT_GE(stolen, 8) << "thread 1 should take the back of the held-up share";
}

TEST_F(ParallelFor, ChunksDoNotDependOnThreadCount) {
  auto chunks_with = [](int threads) {
    EXPECT_TRUE(set_num_threads(threads).ok());
    std::mutex mu;
    std::set<std::pair<int64_t, int64_t>> chunks;
    parallel_for(3, 1003, 64, [&](int64_t b, int64_t e) {
      std::lock_guard<std::mutex> lock(mu);
      chunks.emplace(b, e);
    });
    return chunks;
  };
  const auto one = chunks_with(1);
  EXPECT_EQ(one.size(), 16u);
  EXPECT_EQ(one.begin()->first, 3);
  EXPECT_EQ(one.begin()->second, 67);
  EXPECT_EQ(one.rbegin()->first, 963);
  EXPECT_EQ(one.rbegin()->second, 1003);
  for (int threads : {2, 3, 7}) EXPECT_EQ(chunks_with(threads), one) << threads;
}

TEST_F(ParallelFor, UsesTheRequestedThreads) {
  for (int threads : {2, 3, 7}) {
    ASSERT_TRUE(set_num_threads(threads).ok());
    std::mutex mu;
    std::set<int> ids;
    // 20 chunks; static scheduling gives each of the team's threads at least one.
    parallel_for(0, 20, 1, [&](int64_t, int64_t) {
      std::lock_guard<std::mutex> lock(mu);
      ids.insert(omp_get_thread_num());
    });
    EXPECT_EQ(ids.size(), static_cast<size_t>(threads));
  }
}

TEST_F(ParallelFor, RunsInlineForOneChunkOrOneThread) {
  ASSERT_TRUE(set_num_threads(4).ok());
  int calls = 0;  // not atomic on purpose: inline runs on this thread
  parallel_for(0, 10, 10, [&](int64_t b, int64_t e) {
    EXPECT_FALSE(omp_in_parallel());
    EXPECT_EQ(b, 0);
    EXPECT_EQ(e, 10);
    ++calls;
  });
  EXPECT_EQ(calls, 1);
  ASSERT_TRUE(set_num_threads(1).ok());
  parallel_for(0, 10, 3, [&](int64_t, int64_t) {
    EXPECT_FALSE(omp_in_parallel());
    ++calls;
  });
  EXPECT_EQ(calls, 5);
}

TEST_F(ParallelFor, NestedCallsRunInline) {
  ASSERT_TRUE(set_num_threads(3).ok());
  std::atomic<int64_t> sum{0};
  parallel_for(0, 6, 1, [&](int64_t b, int64_t) {
    parallel_for(0, 100, 7, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) sum.fetch_add(b * 100 + i);
    });
  });
  int64_t want = 0;
  for (int64_t b = 0; b < 6; ++b)
    for (int64_t i = 0; i < 100; ++i) want += b * 100 + i;
  EXPECT_EQ(sum.load(), want);
}

TEST_F(ParallelFor, SetNumThreadsRejectsOutOfRange) {
  ASSERT_TRUE(set_num_threads(2).ok());
  for (int bad : {0, -1, kMaxThreads + 1}) {
    Status s = set_num_threads(bad);
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("--threads"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(std::to_string(bad)), std::string::npos) << s.message();
  }
  EXPECT_EQ(num_threads(), 2) << "a rejected value must not change the count";
}

TEST_F(ParallelFor, InitThreadsFromEnvValidates) {
  ASSERT_EQ(setenv("LOWBIT_THREADS", "3", 1), 0);
  EXPECT_TRUE(init_threads_from_env().ok());
  EXPECT_EQ(num_threads(), 3);
  for (const char* bad : {"0", "-2", "abc", "4x", "99999999999"}) {
    ASSERT_EQ(setenv("LOWBIT_THREADS", bad, 1), 0);
    Status s = init_threads_from_env();
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_NE(s.message().find("LOWBIT_THREADS"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(std::string("'") + bad + "'"), std::string::npos) << s.message();
    EXPECT_EQ(num_threads(), 3);
  }
  ASSERT_EQ(unsetenv("LOWBIT_THREADS"), 0);
  EXPECT_TRUE(init_threads_from_env().ok());
  EXPECT_EQ(num_threads(), 3) << "unset env keeps an explicit count";
}

}  // namespace
}  // namespace lowbit
