#include "grpo/core/thread_pool.h"

#include <algorithm>
#include <atomic>

namespace grpo {

namespace {
// The pool whose loop the current thread is running, to run nested loops inline.
thread_local const ThreadPool* t_running_in = nullptr;
}  // namespace

struct ThreadPool::Job {
  int64_t n = 0;
  const std::function<void(int64_t)>* fn = nullptr;
  std::atomic<int64_t> next{0};
  int64_t active = 0;  // workers inside run_indices (guarded by mutex_)
  std::mutex error_mutex;
  std::exception_ptr error;
};

ThreadPool::ThreadPool(int64_t threads) {
  if (threads <= 0) threads = std::max<int64_t>(1, std::thread::hardware_concurrency());
  workers_.reserve(static_cast<size_t>(threads - 1));
  for (int64_t i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_indices(Job& job) {
  for (;;) {
    const int64_t i = job.next.fetch_add(1);
    if (i >= job.n) return;
    try {
      (*job.fn)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(job.error_mutex);
      if (!job.error) job.error = std::current_exception();
    }
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    Job* job = nullptr;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || (job_ != nullptr && generation_ != seen); });
      if (stop_) return;
      seen = generation_;
      job = job_;
      ++job->active;
    }
    t_running_in = this;
    run_indices(*job);
    t_running_in = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --job->active;
    }
    done_.notify_all();
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1 || t_running_in == this) {
    // Inline: same semantics (all indices run, first exception rethrown at the end).
    std::exception_ptr error;
    for (int64_t i = 0; i < n; ++i) {
      try {
        fn(i);
      } catch (...) {
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
  std::lock_guard<std::mutex> submit(submit_mutex_);
  Job job;
  job.n = n;
  job.fn = &fn;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &job;
    ++generation_;
  }
  wake_.notify_all();
  const ThreadPool* outer = t_running_in;
  t_running_in = this;
  run_indices(job);
  t_running_in = outer;
  {
    // Every index has been claimed; wait for the workers still running one, then retire the job
    // so that no worker joins it late.
    std::unique_lock<std::mutex> lock(mutex_);
    job_ = nullptr;
    done_.wait(lock, [&] { return job.active == 0; });
  }
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace grpo
