#include "grpo/train/async_rollouts.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <stdexcept>

#include "grpo/train/grpo_trainer.h"

namespace grpo::train {
namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<torch::Tensor> named_state(model::CausalLM& model) {
  std::vector<torch::Tensor> out;
  for (const auto& item : model->named_parameters()) out.push_back(item.value());
  for (const auto& item : model->named_buffers()) out.push_back(item.value());
  return out;
}

std::string fnv1a(const std::vector<torch::Tensor>& tensors) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& t : tensors) {
    const auto c = t.detach().to(torch::kCPU).contiguous();
    const auto* p = static_cast<const unsigned char*>(c.data_ptr());
    const size_t n = static_cast<size_t>(c.nbytes());
    for (size_t i = 0; i < n; ++i) {
      h ^= p[i];
      h *= 1099511628211ull;
    }
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace

WeightSnapshot take_snapshot(model::CausalLM& model, int64_t version, bool hash) {
  const double t0 = now_seconds();
  torch::NoGradGuard no_grad;
  WeightSnapshot s;
  s.version = version;
  for (const auto& t : named_state(model)) {
    s.tensors.push_back(t.detach().clone());
    s.bytes += static_cast<int64_t>(t.nbytes());
  }
  if (hash) s.hash = fnv1a(s.tensors);
  s.seconds = now_seconds() - t0;
  return s;
}

std::string weights_hash(model::CausalLM& model) { return fnv1a(named_state(model)); }

std::pair<int64_t, int64_t> async_thread_split(const AsyncConfig& cfg, int64_t cores) {
  cores = std::max<int64_t>(1, cores);
  const int64_t rollout = cfg.rollout_threads > 0 ? cfg.rollout_threads : std::max<int64_t>(1, cores / 2);
  const int64_t trainer = cfg.trainer_threads > 0 ? cfg.trainer_threads : std::max<int64_t>(1, cores - rollout);
  return {rollout, trainer};
}

RolloutWorker::RolloutWorker(model::CausalLM model, Sample sample, int64_t threads)
    : model_(std::move(model)), sample_(std::move(sample)), threads_(threads) {
  thread_ = std::thread([this] { run(); });
}

RolloutWorker::~RolloutWorker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    queue_.clear();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void RolloutWorker::submit(int64_t index, WeightSnapshot weights) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.emplace_back(index, std::move(weights));
    ++busy_;
  }
  cv_.notify_all();
}

AsyncBatch RolloutWorker::take(int64_t index) {
  const double t0 = now_seconds();
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return done_.count(index) > 0 || failed_.has_value(); });
  if (done_.count(index) == 0) {
    throw std::runtime_error("rollout thread: batch " + std::to_string(failed_->first) + " failed: " + failed_->second);
  }
  AsyncBatch b = std::move(done_.at(index));
  done_.erase(index);
  b.wait_seconds = now_seconds() - t0;
  return b;
}

void RolloutWorker::drain() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return busy_ == 0 || failed_.has_value(); });
}

void RolloutWorker::run() {
  at::set_num_threads(static_cast<int>(threads_));
  auto state = named_state(model_);
  double idle_from = now_seconds();
  while (true) {
    std::pair<int64_t, WeightSnapshot> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    AsyncBatch out;
    out.idle_seconds = now_seconds() - idle_from;
    try {
      const double t0 = now_seconds();
      {
        torch::NoGradGuard no_grad;
        auto& w = job.second.tensors;
        TORCH_CHECK(w.size() == state.size(), "the snapshot has ", w.size(), " tensors, the rollout model ",
                    state.size());
        for (size_t i = 0; i < w.size(); ++i) state[i].copy_(w[i]);
      }
      out.sync_seconds = job.second.seconds + (now_seconds() - t0);
      out.sync_bytes = job.second.bytes;
      out.version = job.second.version;
      out.hash = job.second.hash;
      job.second.tensors.clear();  // the copy is in the model now
      auto [rollouts, order] = sample_(model_, job.first);
      out.rollouts = std::make_shared<StepRollouts>(std::move(rollouts));
      out.order = std::move(order);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!failed_) failed_ = std::make_pair(job.first, std::string(e.what()));
      --busy_;
      cv_.notify_all();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_.emplace(job.first, std::move(out));
      --busy_;
    }
    cv_.notify_all();
    idle_from = now_seconds();
  }
}

}  // namespace grpo::train
