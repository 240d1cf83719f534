// ThreadPool: every index runs once, work overlaps, exceptions come back after the loop, nested and
// concurrent loops neither deadlock nor lose indices.
#include "grpo/core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

namespace grpo {
namespace {

TEST(ThreadPool, RunsEveryIndexExactlyOnce) {
  for (int64_t threads : {1, 2, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 7, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.parallel_for(n, [&](int64_t i) { ++hits[static_cast<size_t>(i)]; });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "n " << n << " i " << i;
    }
  }
  EXPECT_GE(ThreadPool(0).size(), 1);
}

TEST(ThreadPool, WorkOverlapsAcrossThreads) {
  ThreadPool pool(4);
  std::atomic<int> active{0}, peak{0};
  pool.parallel_for(4, [&](int64_t) {
    const int now = ++active;
    int seen = peak.load();
    while (now > seen && !peak.compare_exchange_weak(seen, now)) {
    }
    const auto t0 = std::chrono::steady_clock::now();
    while (peak.load() < 4 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5))
      std::this_thread::yield();
    --active;
  });
  EXPECT_EQ(peak.load(), 4);
}

TEST(ThreadPool, FirstExceptionIsRethrownAfterAllIndicesRan) {
  ThreadPool pool(3);
  std::atomic<int> ran{0};
  EXPECT_THROW(pool.parallel_for(50,
                                 [&](int64_t i) {
                                   ++ran;
                                   if (i % 10 == 3) throw std::runtime_error("index " + std::to_string(i));
                                 }),
               std::runtime_error);
  EXPECT_EQ(ran.load(), 50);
  // The pool is still usable.
  std::atomic<int> again{0};
  pool.parallel_for(20, [&](int64_t) { ++again; });
  EXPECT_EQ(again.load(), 20);
}

TEST(ThreadPool, NestedAndConcurrentLoopsComplete) {
  ThreadPool pool(3);
  std::atomic<int> inner{0};
  pool.parallel_for(6, [&](int64_t) { pool.parallel_for(5, [&](int64_t) { ++inner; }); });
  EXPECT_EQ(inner.load(), 30);
  std::atomic<int> total{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&] {
      for (int k = 0; k < 20; ++k) pool.parallel_for(10, [&](int64_t) { ++total; });
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), 4 * 20 * 10);
}

}  // namespace
}  // namespace grpo
