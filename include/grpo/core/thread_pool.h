// ThreadPool: a fixed set of worker threads that run index-parallel loops.
//
//   grpo::ThreadPool pool(0);                        // one thread per hardware thread
//   pool.parallel_for(n, [&](int64_t i) { out[i] = work(i); });
//
// parallel_for returns when every index has run. The calling thread takes indices too, so a pool
// of size 1 runs everything on the caller. An exception thrown by `fn` does not stop the other
// indices; the first one (in time) is rethrown once all have finished. Loops submitted from several
// threads at once run one after the other. Calling parallel_for from inside `fn` on the same pool
// runs the inner loop on the calling thread (no deadlock, no extra parallelism).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace grpo {

class ThreadPool {
 public:
  // `threads` workers including the caller; 0 = std::thread::hardware_concurrency() (at least 1).
  explicit ThreadPool(int64_t threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int64_t size() const { return static_cast<int64_t>(workers_.size()) + 1; }

  // Runs fn(i) for every i in [0, n).
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  struct Job;
  void worker_loop();
  static void run_indices(Job& job);

  std::vector<std::thread> workers_;
  std::mutex submit_mutex_;  // one loop at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  Job* job_ = nullptr;       // the running loop, null between loops
  uint64_t generation_ = 0;  // bumped per loop so a worker joins each loop once
  bool stop_ = false;
};

}  // namespace grpo
