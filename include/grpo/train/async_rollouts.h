// Asynchronous rollouts for GRPO (docs/training.md "One-step-off rollouts"): a rollout thread with
// its own copy of the policy samples the next batches while the trainer optimises on this one.
//
//   step k:  trainer  [take batch k] [snapshot W_k -> batch k + s] [optimise: W_k -> W_k+1] ...
//            rollouts          ... [sync W_k, sample batch k + s] ...
//
// Batch j is sampled by the policy with the weights the trainer had before step j - s (s =
// max_staleness; the first s batches of a run, by the weights it starts with), so a batch is never
// more than s updates old. The weights travel as snapshots (copies taken between two optimizer
// steps), so the rollout thread never reads weights the optimizer is writing. Everything a batch
// depends on (the snapshot, the request seeds, the data order, each side's thread count) is fixed
// by the step, so a run is reproducible for a fixed seed and staleness, however the two threads
// interleave.
#pragma once

#include <array>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "grpo/config/value.h"
#include "grpo/data/dataset.h"
#include "grpo/model/causal_lm.h"

namespace grpo::train {

struct StepRollouts;

// off: generation and training alternate; one_step_off: a rollout thread samples ahead;
// disaggregated: under grpo launch, generator ranks sample ahead (grpo/train/disaggregated.h).
enum class AsyncMode { off, one_step_off, disaggregated };
constexpr auto config_enum_names(AsyncMode) {
  return std::array{std::pair{AsyncMode::off, "off"}, std::pair{AsyncMode::one_step_off, "one_step_off"},
                    std::pair{AsyncMode::disaggregated, "disaggregated"}};
}

struct AsyncConfig {
  AsyncMode mode = AsyncMode::off;
  int64_t max_staleness = 1;         // batch k is sampled by the weights before step k - max_staleness
  int64_t rollout_threads = 0;       // intra-op threads of the rollout thread (0 = half the cores, at least 1)
  int64_t trainer_threads = 0;       // intra-op threads of the trainer (0 = the other cores, at least 1)
  bool hash_weights = false;         // log each batch's sampler weights and the trainer's as hashes
  int64_t generator_ranks = 1;       // disaggregated: the last N ranks only generate
  double bucket_mb = 25;             // disaggregated: weight broadcast bucket size
  int64_t partial_after_tokens = 0;  // disaggregated: 0 = off; N: partial rollouts switch weights after N decode steps

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("mode", mode,
      "off | one_step_off (a rollout thread samples the next batches during training) | disaggregated (under grpo "
      "launch, generator ranks sample them)");
    v("max_staleness", max_staleness, "optimizer steps a batch lags behind", Check().ge(1).le(8));
    v("rollout_threads", rollout_threads, "intra-op threads of the rollout thread; 0 = half the cores",
      Check().ge(0).le(1024));
    v("trainer_threads", trainer_threads, "intra-op threads of the trainer; 0 = the other cores",
      Check().ge(0).le(1024));
    v("hash_weights", hash_weights,
      "log sampler_weights_hash and policy_weights_hash (FNV-1a of every parameter and buffer) per step");
    v("generator_ranks", generator_ranks, "disaggregated: how many ranks (the last ones) only generate",
      Check().ge(1).le(4096));
    v("bucket_mb", bucket_mb, "disaggregated: weight broadcast bucket size in MiB", Check().gt(0).le(65536));
    v("partial_after_tokens", partial_after_tokens,
      "disaggregated: 0 = off; N = partial rollouts: batch k starts on the weights before step k - s and continues on "
      "those before step k - s + 1 after N decode steps",
      Check().ge(0).le(1 << 20));
  }
};

// The policy's parameters and buffers as copies, in named order: what the trainer hands the
// rollout thread between two optimizer steps.
struct WeightSnapshot {
  int64_t version = 0;  // optimizer steps (generation steps) the trainer had taken
  std::vector<torch::Tensor> tensors;
  int64_t bytes = 0;
  double seconds = 0;  // taking the copy
  std::string hash;    // 16 hex digits of FNV-1a 64 over every tensor's bytes ("" unless asked)
};

WeightSnapshot take_snapshot(model::CausalLM& model, int64_t version, bool hash);
// FNV-1a 64 over the bytes of every parameter and buffer in named order, as 16 hex digits.
std::string weights_hash(model::CausalLM& model);

// What one batch of the rollout thread gives back.
struct AsyncBatch {
  std::shared_ptr<StepRollouts> rollouts;
  data::DataOrderState order;  // the data order after this batch's prompts were drawn
  int64_t version = 0;         // the snapshot that sampled it
  std::string hash;            // its hash ("" unless asked)
  double sync_seconds = 0;     // the snapshot's copy, then its copy into the rollout model
  int64_t sync_bytes = 0;
  double idle_seconds = 0;  // the rollout thread's wait for this batch's request
  double wait_seconds = 0;  // the trainer's wait for this batch (set by take)
};

// The rollout thread. `sample(model, index)` samples batch `index` with `model` (the thread's copy
// of the policy, holding the submitted weights) and returns its rollouts and the data order after
// them; it runs on the thread only, in index order.
class RolloutWorker {
 public:
  using Sample = std::function<std::pair<StepRollouts, data::DataOrderState>(model::CausalLM& model, int64_t index)>;

  RolloutWorker(model::CausalLM model, Sample sample, int64_t threads);
  ~RolloutWorker();  // stops after the batch in progress and joins
  RolloutWorker(const RolloutWorker&) = delete;
  RolloutWorker& operator=(const RolloutWorker&) = delete;

  // Queues batch `index` (one more than the last) on `weights`.
  void submit(int64_t index, WeightSnapshot weights);
  // Waits for batch `index`; rethrows what the rollout thread threw, naming the batch.
  AsyncBatch take(int64_t index);
  // Waits until every submitted batch is sampled (its results stay for take).
  void drain();

 private:
  void run();

  model::CausalLM model_;
  Sample sample_;
  int64_t threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<int64_t, WeightSnapshot>> queue_;
  std::map<int64_t, AsyncBatch> done_;
  std::optional<std::pair<int64_t, std::string>> failed_;  // batch and what() of the first failure
  int64_t busy_ = 0;                                       // batches queued or in progress
  bool stop_ = false;
  std::thread thread_;
};

// The intra-op thread counts of the two sides on a machine of `cores` cores.
std::pair<int64_t, int64_t> async_thread_split(const AsyncConfig& cfg, int64_t cores);

}  // namespace grpo::train
