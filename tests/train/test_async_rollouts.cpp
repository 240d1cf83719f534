// One-step-off rollouts (grpo/train/async_rollouts.h): the rollout thread samples each batch on the
// snapshot submitted for it, in order, and reports its failures; in the trainer, batch k is
// sampled by exactly the weights the trainer had before step k - s (checked by hash against the
// trainer's own), the ratio is taken against the sampler's log-probs, and two runs with the same
// seed and staleness give the same batches and the same weights.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <fstream>

#include "grpo/train/async_rollouts.h"
#include "grpo/train/grpo_trainer.h"
#include "train/train_test_util.h"

namespace grpo::train {
namespace {

using test::addition;
using test::Fixture;
using test::prompt_config;
using test::tiny_config;

TEST(RolloutWorker, SamplesEachBatchOnItsSnapshotInOrderAndReportsFailures) {
  torch::manual_seed(1);
  model::CausalLM policy(model::test::tiny_qwen2());
  std::vector<std::string> seen;  // the rollout model's hash when each batch ran (the thread's only)
  RolloutWorker worker(
      model::CausalLM(model::test::tiny_qwen2()),
      [&](model::CausalLM& m, int64_t index) {
        if (index == 3) throw std::runtime_error("reward plugin crashed");
        seen.push_back(weights_hash(m));
        StepRollouts r;
        r.generated_tokens = index;
        return std::make_pair(std::move(r), data::DataOrderState{});
      },
      1);
  std::vector<std::string> submitted;
  for (int64_t k = 0; k < 3; ++k) {
    auto s = take_snapshot(policy, k, true);
    EXPECT_EQ(s.hash, weights_hash(policy));
    submitted.push_back(s.hash);
    worker.submit(k, std::move(s));
    torch::NoGradGuard no_grad;
    for (auto& p : policy->parameters()) p.add_(0.01);  // the trainer moves on
  }
  for (int64_t k = 0; k < 3; ++k) {
    const auto b = worker.take(k);
    EXPECT_EQ(b.rollouts->generated_tokens, k);
    EXPECT_EQ(b.version, k);
    EXPECT_EQ(b.hash, submitted[static_cast<size_t>(k)]);
    EXPECT_GT(b.sync_bytes, 0);
  }
  EXPECT_EQ(seen, submitted);
  worker.submit(3, take_snapshot(policy, 3, false));
  try {
    worker.take(3);
    ADD_FAILURE() << "expected the batch's failure";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), "rollout thread: batch 3 failed: reward plugin crashed");
  }
}

struct AsyncRun {
  std::vector<nlohmann::json> rows;
  std::string final_hash;
};

AsyncRun run_async(const std::string& name, int64_t staleness) {
  const auto rewards = rewards::RewardSet(config::from_value<rewards::RewardsConfig>(
      config::parse_yaml_string("functions: [{name: math_accuracy}]\n", "r.yaml")));
  Fixture f(name);
  torch::manual_seed(3);
  model::CausalLM model(tiny_config(f.tok->vocab_size()));
  GrpoConfig g;
  g.steps = 4;
  g.prompts_per_step = 2;
  g.generation.num_generations = 2;
  g.generation.max_new_tokens = 6;
  g.optim.lr = 1e-2;
  g.checkpoint.every_steps = 0;
  g.async.mode = AsyncMode::one_step_off;
  g.async.max_staleness = staleness;
  g.async.hash_weights = true;
  g.async.rollout_threads = 1;
  g.async.trainer_threads = 1;
  GrpoTrainer(model, *f.tok, prompt_config(), g, rewards, *f.run).train(addition(8, 2, false));
  AsyncRun out;
  std::ifstream in(f.run->path("metrics.jsonl"));
  for (std::string line; std::getline(in, line);) out.rows.push_back(nlohmann::json::parse(line));
  out.final_hash = weights_hash(model);
  return out;
}

TEST(GrpoTrainer, OneStepOffSamplesOnTheWeightsOfStepKMinusStalenessAndIsReproducible) {
  for (const int64_t s : {1, 2}) {
    const auto a = run_async("async_a" + std::to_string(s), s);
    ASSERT_EQ(a.rows.size(), 4u);
    for (int64_t k = 0; k < 4; ++k) {
      const auto& r = a.rows[static_cast<size_t>(k)];
      EXPECT_EQ(r.at("staleness").get<int64_t>(), std::min(k, s)) << "step " << k;
      // The sampler's weights are the trainer's before step k - staleness (the first batches: the start).
      const auto& sampled_by = a.rows[static_cast<size_t>(std::max<int64_t>(0, k - s))];
      EXPECT_EQ(r.at("sampler_weights_hash").get<std::string>(),
                sampled_by.at("policy_weights_hash").get<std::string>())
          << "step " << k;
      EXPECT_GT(r.at("weight_sync_bytes").get<int64_t>(), 0);
      EXPECT_GE(r.at("trainer_wait_seconds").get<double>(), 0.0);
    }
    // The trainer's weights move every step.
    EXPECT_NE(a.rows[1].at("policy_weights_hash"), a.rows[2].at("policy_weights_hash"));
    // A second run: the same batches, the same weights.
    const auto b = run_async("async_b" + std::to_string(s), s);
    EXPECT_EQ(a.final_hash, b.final_hash);
    for (size_t k = 0; k < 4; ++k) {
      for (const char* key : {"reward", "loss", "completion_length", "logprob_diff_max", "sampler_weights_hash"}) {
        EXPECT_EQ(a.rows[k].at(key), b.rows[k].at(key)) << key << " at step " << k;
      }
    }
    // Stale batches: the trainer's log-probs differ from the sampler's by more than rounding.
    EXPECT_GT(a.rows[2].at("logprob_diff_max").get<double>(), 1e-4);
  }
}

// Partial rollouts belong to disaggregated mode: elsewhere a one-line error.
TEST(GrpoConfig, PartialRolloutsNeedDisaggregatedMode) {
  GrpoConfig g;
  g.generation.num_generations = 2;
  g.async.partial_after_tokens = 8;
  for (const auto mode : {AsyncMode::off, AsyncMode::one_step_off}) {
    g.async.mode = mode;
    EXPECT_EQ(g.validate(), "async.partial_after_tokens needs async.mode: disaggregated");
  }
  g.async.mode = AsyncMode::disaggregated;
  EXPECT_EQ(g.validate(), "");
}

}  // namespace
}  // namespace grpo::train
