// The GRPO trainer: each step samples G completions for each of `prompts_per_step` prompts with the
// rollout engine, scores them with the RewardSet, turns the weighted rewards into group-normalised
// advantages, and takes num_iterations optimizer steps on the clipped-ratio objective (with the k3
// KL to a frozen reference when beta > 0). A step is five named phases, each a function of its own:
//
//   sample_step          scored rollouts (grpo/train/scored_rollouts.h), dynamic sampling    -> StepRollouts
//   build_grpo_batch     the groups as padded tensors (grpo/train/grpo_batch.h)               -> GrpoBatch
//   batch_logprobs       the reference policy's log-probs of the batch (beta > 0)             -> [N, L]
//   GrpoTrainer::optimise  num_iterations x (micro-batches of completion_forward + grpo_loss
//                        + MTP + balance loss, backward; clip; AdamW; router bias)           -> GrpoStepStats
//   GrpoTrainer::log_step  metrics.jsonl (the loss's and every reward function's), completions.jsonl
//
//   GrpoTrainer trainer(model, *tokenizer, prompt_cfg, cfg.grpo, reward_set, run);
//   trainer.train(rl_records, eval_fn, resume);
//
// The gradient of a step: grpo_loss normalises over the whole step batch (it gets the step's row and
// token counts), so micro-batching gives the same gradient as one big batch; the MTP loss
// (mtp_weight > 0) and the MoE balance loss (seq_aux_loss_alpha > 0) come from the same forward and
// are added weighted by each micro-batch's share of the rows, as in SFT.
// Old policy: with num_iterations 1 the ratio is computed against the current log-probs detached
// (exactly 1, as TRL); with more, against the log-probs the engine recorded while sampling (equal to
// a teacher-forced forward to 1e-5). The log-probs use the sampling temperature. Positions count
// real tokens from the first prompt token, as in generation. Dynamic sampling (DAPO) drops groups
// whose rewards are all equal and samples new prompts for up to max_refill_rounds rounds.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/core/metrics.h"
#include "grpo/core/run.h"
#include "grpo/data/dataset.h"
#include "grpo/data/prompt.h"
#include "grpo/data/record.h"
#include "grpo/data/tokenizer.h"
#include "grpo/dist/data_parallel.h"
#include "grpo/dist/world.h"
#include "grpo/model/causal_lm.h"
#include "grpo/rewards/reward_set.h"
#include "grpo/rollout/engine.h"
#include "grpo/train/async_rollouts.h"
#include "grpo/train/grpo_batch.h"
#include "grpo/train/grpo_loss.h"
#include "grpo/train/optimizer.h"
#include "grpo/train/schedule.h"
#include "grpo/train/scored_rollouts.h"
#include "grpo/train/train_state.h"

namespace grpo::train {

class DisaggregatedLink;  // grpo/train/disaggregated.h
struct BatchMeta;

// Router replay (R3) for MoE policies: off; record (the engine records each token's experts per
// MoE layer and the trainer reports how many of its own choices differ, routing_diff_fraction);
// rollout (the training forward uses the recorded experts, gate weights from its current scores).
enum class RouterReplay { off, record, rollout };
constexpr auto config_enum_names(RouterReplay) {
  return std::array{std::pair{RouterReplay::off, "off"}, std::pair{RouterReplay::record, "record"},
                    std::pair{RouterReplay::rollout, "rollout"}};
}

// bf16_cpu: on the CPU the whole stage (generation, the reference's and the training forwards,
// evaluation) runs under ATen's bf16 autocast, float32 master weights; with consistent_logprobs
// the invariant ops round each matmul's operands and result to bf16 instead (docs/training.md
// "bf16 on the CPU"). On CUDA, bf16_autocast alone covers the training and reference forwards.
// consistent_logprobs: for the whole stage (generation, reference and training forwards,
// evaluation) the model runs the batch-invariant ops of grpo/model/invariant_ops.h and, for MLA,
// the form generation decodes in (generation.mla_absorbed), so each sampled token's log-prob is
// the same number in the sampler and in the trainer's first forward (logprob_diff_max 0). Needs
// the model on the CPU in float32 without FP8 layers; off by default because those kernels are
// slower than MKL's (docs/rollouts.md "Consistent mode").
struct GrpoConfig {
  int64_t steps = 100;                             // generation steps (each with num_iterations optimizer steps)
  int64_t prompts_per_step = 8;                    // prompts (groups) per step
  rollout::GenerationConfig generation;            // num_generations (G), temperature, max_new_tokens, stop strings
  GrpoLossConfig loss;                             // loss type, clipping, beta, reward scaling
  int64_t num_iterations = 1;                      // optimizer passes over each generated batch (mu)
  int64_t micro_batch_size = 16;                   // completions per forward/backward
  int64_t logprob_chunk_size = 4096;               // vocabulary rows per chunk of the log-prob head (0 = whole logits)
  int64_t ref_refresh_steps = 0;                   // copy the policy into the reference every N steps (0 = never)
  bool mask_truncated_completions = false;         // completions cut at max_new_tokens get no loss
  bool dynamic_sampling = false;                   // drop groups whose rewards are all equal, refill with new prompts
  int64_t max_refill_rounds = 2;                   // dynamic sampling: extra generation rounds per step at most
  double mtp_weight = 0.0;                         // MTP loss on the sampled sequences during RL (0 = off)
  double router_bias_gamma = 0.001;                // aux-loss-free router bias update per optimizer step (0 = off)
  RouterReplay router_replay = RouterReplay::off;  // MoE: replay the sampler's experts in training (see above)
  bool bf16_autocast = true;                       // CUDA: bf16 autocast for the training forward
  bool bf16_cpu = false;                           // CPU: the whole stage under bf16 autocast (see below)
  bool consistent_logprobs = false;                // sampler and trainer log-probs through one op set (see below)
  bool activation_checkpointing = false;           // recompute each decoder block in backward (less memory)
  int64_t eval_every = 0;                          // steps between evaluations (0 = only at the end)
  std::string accuracy_reward = "math_accuracy";   // reward label logged as "accuracy" ("" = none)
  int64_t log_completions = 2;                     // completions per step written to the log and completions.jsonl
  int64_t seed_offset = 1;                         // added to run.seed for this stage's data order and sampling
  OptimizerConfig optim;                           // AdamW (R1: lr 3e-6)
  ScheduleConfig schedule;                         // warmup + decay
  CheckpointConfig checkpoint;                     // <run>/checkpoints/grpo
  AsyncConfig async;                               // one-step-off rollouts (grpo/train/async_rollouts.h)

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("steps", steps, "generation steps", Check().ge(1));
    v("prompts_per_step", prompts_per_step, "prompts (groups of num_generations) per step", Check().ge(1));
    v("generation", generation, "rollouts: num_generations, sampling, max_new_tokens, stop strings");
    v("loss", loss, "the GRPO objective");
    v("num_iterations", num_iterations, "optimizer passes over each generated batch (mu)", Check().ge(1));
    v("micro_batch_size", micro_batch_size, "completions per forward/backward", Check().ge(1));
    v("logprob_chunk_size", logprob_chunk_size,
      "vocabulary rows per chunk when computing token log-probs (bounds memory); 0 = whole logits", Check().ge(0));
    v("ref_refresh_steps", ref_refresh_steps, "copy the policy into the reference every N steps; 0 = never",
      Check().ge(0));
    v("mask_truncated_completions", mask_truncated_completions, "no loss on completions cut at max_new_tokens");
    v("router_replay", router_replay,
      "MoE: off | record (measure how many training routing decisions differ from the sampler's) | rollout "
      "(the training forward uses the sampler's experts)");
    v("dynamic_sampling", dynamic_sampling, "drop groups whose rewards are all equal and refill (DAPO)");
    v("max_refill_rounds", max_refill_rounds, "dynamic sampling: extra generation rounds per step", Check().ge(0));
    v("mtp_weight", mtp_weight, "MTP loss weight during RL; 0 = off", Check().ge(0));
    v("router_bias_gamma", router_bias_gamma, "aux-loss-free router bias update speed; 0 = off", Check().ge(0));
    v("bf16_autocast", bf16_autocast, "bf16 autocast on CUDA");
    v("bf16_cpu", bf16_cpu,
      "CPU: generation, reference, training forward and evaluation under bf16 autocast (with consistent_logprobs: "
      "the invariant ops with bf16 matmuls); needs bf16_autocast");
    v("consistent_logprobs", consistent_logprobs,
      "CPU float32: generation and training run the batch-invariant ops (grpo/model/invariant_ops.h) and one MLA "
      "form, so the trainer's log-probs equal the sampler's bitwise; slower");
    v("activation_checkpointing", activation_checkpointing, "recompute each decoder block in backward");
    v("eval_every", eval_every, "steps between evaluations; 0 = only at the end", Check().ge(0));
    v("accuracy_reward", accuracy_reward, "reward label logged as accuracy; \"\" = none (must be a reward label)");
    v("log_completions", log_completions, "completions per step written to the log and completions.jsonl",
      Check().ge(0));
    v("seed_offset", seed_offset, "added to run.seed for this stage", Check().ge(0));
    v("optim", optim, "AdamW");
    v("schedule", schedule, "learning-rate schedule over steps x num_iterations optimizer steps");
    v("checkpoint", checkpoint, "checkpoints under <run>/checkpoints/grpo");
    v("async", async, "one-step-off rollouts: a rollout thread samples the next batches during training");
  }
  std::string validate() const;
};

struct GrpoResult {
  int64_t steps = 0;
  double last_reward = 0;
  double seconds = 0;
};

// Phase 1's result: the groups that train, and everything sampled for the metrics.
struct StepRollouts {
  std::vector<RolloutGroup> groups;  // [prompts_per_step] the groups of the training batch
  rewards::RewardScores scores;      // every completion sampled in the step (dropped groups included)
  int64_t generated_groups = 0;      // groups sampled (> prompts_per_step with dynamic sampling)
  int64_t zero_std_groups = 0;       // of those, groups whose rewards were all equal
  int64_t generated_tokens = 0;
  double generation_seconds = 0, reward_seconds = 0;
};

// Phase 1: prompts_per_step groups of G completions, the records drawn from `order`, request seeds
// derive_seed(seed, step, round, record). With dynamic sampling, groups whose totals are all equal
// are dropped and refilled from new prompts for up to max_refill_rounds further rounds (the last
// round keeps them).
// Data parallel (`world` of N ranks): every rank draws the same requests from `order`, samples and
// scores its share of each round's (dist::share: whole groups, so group advantages stay local),
// and the ranks agree on which groups were flat, so every rank refills the same number and the
// step's groups, over all ranks, are those one process samples. `groups`, `scores` and
// generated_tokens are this rank's; generated_groups and zero_std_groups count all ranks'.
StepRollouts sample_step(const Generator& generate, const data::Tokenizer& tokenizer, const data::PromptConfig& prompt,
                         const std::vector<data::Record>& records, data::DataOrder& order, const GrpoConfig& cfg,
                         const rewards::RewardSet& rewards, uint64_t seed, int64_t step, dist::World* world = nullptr);

// Phase 3: log-probs of the batch's completions under `model` (no grad), micro_batch rows at a time
// on the model's device, returned on the CPU: [N, L].
torch::Tensor batch_logprobs(model::CausalLM& model, const GrpoBatch& batch, int64_t micro_batch, double temperature,
                             int64_t chunk_size, bool autocast);

// Phase 4's result: the step's optimisation metrics, as 0-dim tensors on the model's device until
// log_step reads them back, all at once (read()).
struct GrpoStepStats {
  torch::Tensor loss, kl, clip_low, clip_high, clip_region;  // means over the iterations
  torch::Tensor mtp_loss, balance_loss;                      // means over the iterations (0 when off)
  torch::Tensor sampler_diff_sum, sampler_diff_max;          // |trainer - sampler| log-probs before any update
  // The mismatch per sequence and per token, before any update: the sum and max over sequences of
  // exp(sum_t (trainer - sampler)), and the tokens whose |trainer - sampler| exceeds 1e-3 and 1e-1.
  torch::Tensor seq_ratio_sum, seq_ratio_max, tokens_over_1e3, tokens_over_1e1;
  // The sampler correction's weights (grpo_loss's, before any update): sum, count, min, max.
  torch::Tensor weight_sum, weight_count, weight_min, weight_max;
  // Router replay: (token, layer) decisions whose expert set differs from the sampler's, and all of them.
  torch::Tensor routing_diff, routing_count;
  double grad_norm = 0, lr = 0, seconds = 0;  // of the last iteration; wall time of the phase

  struct Values {
    double loss, kl, clip_low, clip_high, clip_region, mtp_loss, balance_loss, sampler_diff_sum, sampler_diff_max;
    double seq_ratio_sum, seq_ratio_max, tokens_over_1e3, tokens_over_1e1;
    double weight_sum, weight_count, weight_min, weight_max;
    double routing_diff, routing_count;
  };
  // One device-to-host copy of every tensor above; data parallel: each rank holds its part of the
  // step's sums (every normaliser is global), so the values are summed over ranks (the max: max).
  Values read(dist::World* world = nullptr) const;
};

class GrpoTrainer {
 public:
  using EvalFn = std::function<std::vector<Metric>(int64_t step)>;

  GrpoTrainer(model::CausalLM model, const data::Tokenizer& tokenizer, data::PromptConfig prompt, GrpoConfig cfg,
              const rewards::RewardSet& rewards, Run& run, std::string stage = "grpo");

  // Trains on prompts drawn from `records` (their answers and extra columns go to the rewards).
  GrpoResult train(const std::vector<data::Record>& records, const EvalFn& eval = {}, bool resume = false);

  // Phase 4: num_iterations optimizer steps on the batch (optimizer steps step * num_iterations ...).
  // Data parallel: `batch` is this rank's groups (none: an empty GrpoBatch); the loss's row and token
  // normalisers and batch-level reward scaling are the whole step's, over all ranks.
  GrpoStepStats optimise(const GrpoBatch& batch, dist::DataParallel& dp, int64_t step);

  std::string checkpoint_dir() const;

 private:
  // Phase 5: one metrics.jsonl row and the sample completions of a finished step (1-based);
  // returns the batch's mean reward and the KL for the progress line.
  struct StepSummary {
    double reward = 0, kl = 0, length = 0;
  };
  StepSummary log_step(int64_t step, const StepRollouts& rollouts, const GrpoBatch& batch, const GrpoStepStats& stats,
                       std::vector<Metric> eval_metrics, double step_seconds, const std::vector<data::Record>& records,
                       std::ostream& completions_log, dist::World& world);
  // Whether the training and reference forwards run under ATen's bf16 autocast on `device`.
  bool autocast_training(const torch::Device& device) const;
  // Whether an evaluation runs after step `step` (1-based).
  bool evaluates_at(const EvalFn& eval, int64_t step) const;
  // Disaggregated: whether rank 0 sends the generators version n (the weights after step n).
  bool sends_version(int64_t n, const EvalFn& eval) const;
  // Disaggregated rollouts (grpo/train/disaggregated.h): a trainer's share of a batch from the
  // generators' parts; a generator's loop (it samples every batch from `start` and returns).
  StepRollouts take_share(const std::vector<std::string>& parts, DisaggregatedLink& link, dist::World& trainers,
                          BatchMeta& meta) const;
  GrpoResult serve_rollouts(DisaggregatedLink& link, rollout::Engine& engine, const std::vector<data::Record>& records,
                            data::DataOrder& order, uint64_t seed, int64_t start, const EvalFn& eval, bool aten_bf16);

  model::CausalLM model_;
  const data::Tokenizer& tokenizer_;
  data::PromptConfig prompt_;
  GrpoConfig cfg_;
  const rewards::RewardSet& rewards_;
  Run& run_;
  std::string stage_;
  std::optional<size_t> accuracy_index_;  // the accuracy reward among the reward labels
};

// A deep copy of `model` (same config, device and dtype; parameters and buffers copied), frozen
// (requires_grad false) and in eval mode: the reference policy.
model::CausalLM frozen_copy(model::CausalLM& model);

}  // namespace grpo::train
