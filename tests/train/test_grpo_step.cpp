// The phases of a GRPO step, each alone: build_grpo_batch against a layout written out by hand;
// sample_step's dynamic sampling and seeds with a scripted generator; optimise's MTP and balance
// losses against an independent forward of the same batch; every reward function's metrics in
// metrics.jsonl.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>

#include "grpo/core/metrics.h"
#include "grpo/core/random.h"
#include "grpo/train/grpo_trainer.h"
#include "train/train_test_util.h"

namespace grpo::train {
namespace {

using test::addition;
using test::Fixture;
using test::prompt_config;
using test::tiny_config;

rollout::Completion completion(std::vector<int64_t> ids, rollout::FinishReason reason, float logp = -0.5f) {
  rollout::Completion c;
  c.token_ids = std::move(ids);
  c.logprobs.assign(c.token_ids.size(), logp);
  c.finish_reason = reason;
  return c;
}

// Two groups of G = 2: prompts of 2 and 3 tokens, completions of 1 to 3 tokens, one cut at
// max_new_tokens.
std::vector<RolloutGroup> two_groups() {
  using rollout::FinishReason;
  RolloutGroup a, b;
  a.prompt_ids = {10, 11};
  a.completions = {completion({20}, FinishReason::eos, -0.1f), completion({21, 22, 23}, FinishReason::length, -0.2f)};
  a.totals = {1.0, 0.0};
  b.prompt_ids = {12, 13, 14};
  b.completions = {completion({24, 25}, FinishReason::stop, -0.3f), completion({26}, FinishReason::eos, -0.4f)};
  b.totals = {0.5, 0.25};
  return {a, b};
}

TEST(GrpoBatch, PadsPromptsLeftAndCompletionsRight) {
  const auto batch = build_grpo_batch(two_groups(), /*mask_truncated=*/true);
  // P = 3, L = 3.
  const auto ids = torch::tensor(
                       {0, 10, 11, 20, 0, 0, 0, 10, 11, 21, 22, 23, 12, 13, 14, 24, 25, 0, 12, 13, 14, 26, 0, 0},
                       torch::kLong)
                       .view({4, 6});
  const auto mask = torch::tensor({0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0},
                                  torch::kLong)
                        .view({4, 6});
  const auto positions = torch::tensor({0, 0, 1, 2, 2, 2, 0, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 4, 0, 1, 2, 3, 3, 3},
                                       torch::kLong)
                             .view({4, 6});
  EXPECT_TRUE(torch::equal(batch.input_ids, ids));
  EXPECT_TRUE(torch::equal(batch.attention_mask, mask));
  EXPECT_TRUE(torch::equal(batch.position_ids, positions));
  // The truncated completion (row 1) gets no loss.
  EXPECT_TRUE(torch::equal(batch.completion_mask,
                           torch::tensor({1.f, 0.f, 0.f, 0.f, 0.f, 0.f, 1.f, 1.f, 0.f, 1.f, 0.f, 0.f}).view({4, 3})));
  EXPECT_TRUE(torch::allclose(
      batch.sampler_logps,
      torch::tensor({-0.1f, 0.f, 0.f, -0.2f, -0.2f, -0.2f, -0.3f, -0.3f, 0.f, -0.4f, 0.f, 0.f}).view({4, 3})));
  EXPECT_TRUE(torch::equal(batch.rewards, torch::tensor({1.f, 0.f, 0.5f, 0.25f})));
  EXPECT_EQ(batch.lengths, (std::vector<double>{1, 3, 2, 1}));
  EXPECT_EQ(batch.truncated, 1);
  EXPECT_EQ(batch.group_size, 2);
  EXPECT_EQ(batch.completion_tokens(), 4.0);
  EXPECT_EQ(build_grpo_batch(two_groups(), false).completion_tokens(), 7.0);
  const auto rows = batch.rows(1, 2);
  EXPECT_TRUE(torch::equal(rows.input_ids, ids.narrow(0, 1, 2)));
  EXPECT_EQ(rows.size(), 2);
  auto uneven = two_groups();
  uneven[1].completions.pop_back();
  EXPECT_THROW(build_grpo_batch(uneven, false), std::invalid_argument);
  EXPECT_THROW(build_grpo_batch({}, false), std::invalid_argument);
}

// Each sample's reward is its text: "1" or "0". The generator answers from the request seed, so a
// group is flat (all "0") for some seeds: those are refilled with new prompts.
class TextReward : public rewards::RewardFunction {
 public:
  std::string name() const override { return "text"; }
  rewards::RewardBatch score(const std::vector<rewards::Sample>& batch) const override {
    rewards::RewardBatch out;
    for (const auto& s : batch) out.scores.push_back(s.completion == "1" ? 1.0 : 0.0);
    return out;
  }
};

TEST(GrpoSampleStep, DynamicSamplingRefillsFlatGroupsWithSeedsFromTheRule) {
  rewards::RewardRegistry registry;
  registry.add("text", [](const config::Value&) { return std::make_unique<TextReward>(); });
  const rewards::RewardSet rewards(
      config::from_value<rewards::RewardsConfig>(config::parse_yaml_string("functions: [{name: text}]\n", "r.yaml")),
      "", registry);
  const auto tok = test::byte_tokenizer();
  const auto records = addition(40, 3, false);
  std::vector<uint64_t> seeds;
  // Flat (all "0") unless the seed is a multiple of 3; then sample 0 answers "1".
  const Generator generate = [&](const std::vector<rollout::GenerationRequest>& reqs, rollout::GenerationStats*) {
    std::vector<rollout::Completion> out;
    for (const auto& r : reqs) {
      seeds.push_back(*r.seed);
      for (int g = 0; g < 3; ++g) {
        auto c = completion({49}, rollout::FinishReason::eos);
        c.text.assign(1, *r.seed % 3 == 0 && g == 0 ? '1' : '0');
        out.push_back(c);
      }
    }
    return out;
  };
  GrpoConfig cfg;
  cfg.prompts_per_step = 4;
  cfg.generation.num_generations = 3;
  cfg.dynamic_sampling = true;
  cfg.max_refill_rounds = 2;
  data::DataOrder order(static_cast<int64_t>(records.size()), {.batch_size = 1}, 5);
  data::DataOrder replay(static_cast<int64_t>(records.size()), {.batch_size = 1}, 5);
  const uint64_t seed = 77;
  const auto r = sample_step(generate, *tok, prompt_config(), records, order, cfg, rewards, seed, /*step=*/4);

  // Replay the rule: round by round, the records drawn in order, seeds derive_seed(seed, 4, round, record).
  size_t drawn = 0, kept = 0;
  int64_t flat = 0;
  std::vector<int64_t> want_groups;
  for (int64_t round = 0; kept < 4; ++round) {
    const size_t need = 4 - kept;
    for (size_t i = 0; i < need; ++i, ++drawn) {
      const int64_t record = replay.next_batch().front();
      const uint64_t s = derive_seed(seed, 4, static_cast<uint64_t>(round), static_cast<uint64_t>(record));
      ASSERT_LT(drawn, seeds.size());
      EXPECT_EQ(seeds[drawn], s) << "request " << drawn;
      const bool is_flat = s % 3 != 0;
      flat += is_flat;
      if (!is_flat || round == cfg.max_refill_rounds) {
        want_groups.push_back(record);
        ++kept;
      }
    }
  }
  ASSERT_EQ(seeds.size(), drawn);
  ASSERT_EQ(r.groups.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(r.groups[i].record, want_groups[i]);
  EXPECT_EQ(r.generated_groups, static_cast<int64_t>(drawn));
  EXPECT_EQ(r.zero_std_groups, flat);
  EXPECT_GT(flat, 0) << "the scripted seeds gave no flat group: the test shows nothing";
  // The metrics cover every completion sampled, dropped groups included.
  EXPECT_EQ(r.scores.total.size(), drawn * 3);
  EXPECT_EQ(r.scores.metrics.at("rewards/text/applied"), 1.0);
}

// optimise() on one micro-batch with the MTP loss and the MoE balance loss on: both come from the
// step's single forward and equal what a separate forward of the same batch gives; the GRPO loss
// is the rest. Then every reward function's metrics reach metrics.jsonl.
TEST(GrpoOptimise, AddsTheMtpAndBalanceLossesOfTheSameForward) {
  Fixture f("optimise");
  auto cfg = tiny_config(f.tok->vocab_size());
  cfg.seq_aux_loss_alpha = 0.01;
  torch::manual_seed(4);
  model::CausalLM model(cfg);
  const auto rewards = rewards::RewardSet(config::from_value<rewards::RewardsConfig>(
      config::parse_yaml_string("functions: [{name: math_accuracy}]\n", "r.yaml")));
  GrpoConfig g;
  g.steps = 1;
  g.prompts_per_step = 2;
  g.generation.num_generations = 2;
  g.micro_batch_size = 16;  // one micro-batch: the step's losses are the batch's
  g.mtp_weight = 0.3;
  g.loss.loss_type = LossType::grpo;
  g.router_bias_gamma = 0;
  g.optim.lr = 1e-3;
  GrpoTrainer trainer(model, *f.tok, prompt_config(), g, rewards, *f.run);
  auto groups = two_groups();
  groups[0].completions[1].finish_reason = rollout::FinishReason::eos;
  const auto batch = build_grpo_batch(groups, false);

  // The independent forward, before the update, in training mode (the balance loss exists there).
  model->train();
  double want_mtp = 0, want_balance = 0;
  {
    torch::NoGradGuard no_grad;
    model::ForwardOptions fo;
    fo.mtp = true;
    const auto out = model->forward(batch.input_ids, batch.position_ids, batch.attention_mask, nullptr, fo);
    auto mtp_mask = torch::zeros_like(batch.input_ids);
    mtp_mask.narrow(1, 3, 3).copy_(batch.completion_mask.to(torch::kLong));
    want_mtp = model::mtp_loss(out, batch.input_ids, mtp_mask, 0.3).item<double>();
    ASSERT_TRUE(out.balance_loss.defined());
    want_balance = out.balance_loss.item<double>();
  }
  const auto gate_before = model->moe_layers().front()->gate_weight.detach().clone();
  dist::DataParallel dp(model, g.optim);  // a world of one
  const auto stats = trainer.optimise(batch, dp, 0);
  EXPECT_NEAR(stats.mtp_loss.item<double>(), want_mtp, 1e-5 * want_mtp);
  EXPECT_NEAR(stats.balance_loss.item<double>(), want_balance, 1e-5 * want_balance);
  EXPECT_GT(want_balance, 0.0);
  // The GRPO part: ratio 1, so the loss is -mean over sequences of A x (tokens / tokens) = -mean(A) = 0.
  const double grpo_part = stats.loss.item<double>() - stats.mtp_loss.item<double>() -
                           stats.balance_loss.item<double>();
  EXPECT_NEAR(grpo_part, 0.0, 1e-5);
  EXPECT_FALSE(torch::equal(model->moe_layers().front()->gate_weight, gate_before));
}

// Router replay in the trainer: two optimizer passes per batch with the router and its bias moving
// in between; the second pass's routing differs from the sampler's under `record`, never under
// `rollout`.
TEST(GrpoTrainer, RouterReplayKeepsTheSamplersExpertsOverIterations) {
  const auto rewards = rewards::RewardSet(config::from_value<rewards::RewardsConfig>(
      config::parse_yaml_string("functions: [{name: math_accuracy}]\n", "r.yaml")));
  for (const auto mode : {RouterReplay::record, RouterReplay::rollout}) {
    Fixture f(mode == RouterReplay::record ? "replay_record" : "replay_rollout");
    torch::manual_seed(3);
    model::CausalLM model(tiny_config(f.tok->vocab_size()));
    GrpoConfig g;
    g.steps = 2;
    g.prompts_per_step = 2;
    g.generation.num_generations = 2;
    g.generation.max_new_tokens = 8;
    g.num_iterations = 2;
    g.router_bias_gamma = 0.05;
    g.optim.lr = 1e-2;
    g.checkpoint.every_steps = 0;
    g.router_replay = mode;
    GrpoTrainer(model, *f.tok, prompt_config(), g, rewards, *f.run).train(addition(6, 2, false));
    const auto rows = read_metrics(f.run->path("metrics.jsonl"));
    ASSERT_EQ(rows.size(), 2u);
    double most = 0;
    for (const auto& r : rows) most = std::max(most, r.get("routing_diff_fraction", -1));
    if (mode == RouterReplay::record) {
      EXPECT_GT(most, 0.0) << "the router moved between the passes: some decisions should differ";
    } else {
      for (const auto& r : rows) EXPECT_EQ(r.get("routing_diff_fraction", -1), 0.0);
    }
  }
  // A dense model has nothing to replay.
  Fixture f("replay_dense");
  auto dense = model::test::tiny_qwen2();
  dense.vocab_size = f.tok->vocab_size();
  dense.eos_token_ids = {256};
  model::CausalLM model(dense);
  GrpoConfig g;
  g.steps = 1;
  g.prompts_per_step = 2;
  g.generation.num_generations = 2;
  g.router_replay = RouterReplay::rollout;
  EXPECT_THROW(GrpoTrainer(model, *f.tok, prompt_config(), g, rewards, *f.run).train(addition(4, 2, false)),
               std::invalid_argument);
}

// A reward with metrics of its own: they reach metrics.jsonl as rewards/<label>/<metric>.
class MeteredReward : public rewards::RewardFunction {
 public:
  std::string name() const override { return "metered"; }
  rewards::RewardBatch score(const std::vector<rewards::Sample>& batch) const override {
    rewards::RewardBatch out;
    for (size_t i = 0; i < batch.size(); ++i)
      out.scores.push_back(i % 2 == 0 ? std::optional<double>(1.0) : std::nullopt);
    out.metrics["custom"] = 0.25;
    return out;
  }
};

TEST(GrpoTrainer, LogsEveryRewardFunctionsMetrics) {
  rewards::RewardRegistry registry;
  rewards::register_builtin_rewards(registry);
  registry.add("metered", [](const config::Value&) { return std::make_unique<MeteredReward>(); });
  const rewards::RewardSet rewards(
      config::from_value<rewards::RewardsConfig>(
          config::parse_yaml_string("functions: [{name: metered, batch_size: 0}, {name: math_accuracy}]\n", "r.yaml")),
      "", registry);
  Fixture f("reward_metrics");
  torch::manual_seed(3);
  model::CausalLM model(tiny_config(f.tok->vocab_size()));
  GrpoConfig g;
  g.steps = 1;
  g.prompts_per_step = 2;
  g.generation.num_generations = 2;
  g.generation.max_new_tokens = 6;
  g.checkpoint.every_steps = 0;
  g.accuracy_reward = "math_accuracy";
  GrpoTrainer(model, *f.tok, prompt_config(), g, rewards, *f.run).train(addition(6, 2, false));
  const auto rows = read_metrics(f.run->path("metrics.jsonl"));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].get("rewards/metered/custom", -1), 0.25);
  EXPECT_EQ(rows[0].get("rewards/metered/applied", -1), 0.5);
  EXPECT_EQ(rows[0].get("rewards/metered/errors", -1), 0.0);
  EXPECT_GE(rows[0].get("rewards/metered/seconds", -1), 0.0);
  EXPECT_EQ(rows[0].get("rewards/math_accuracy/applied", -1), 1.0);
  EXPECT_FALSE(std::isnan(rows[0].get("rewards/math_accuracy/extracted_fraction", NAN)));
  EXPECT_FALSE(std::isnan(rows[0].get("rewards/total/mean", NAN)));
  EXPECT_EQ(rows[0].get("accuracy", -1), rows[0].get("rewards/math_accuracy/mean", -2));
  // An accuracy_reward that is not a reward label is refused at construction.
  g.accuracy_reward = "accuracy";
  EXPECT_THROW(GrpoTrainer(model, *f.tok, prompt_config(), g, rewards, *f.run), std::invalid_argument);
}

}  // namespace
}  // namespace grpo::train

namespace grpo::train {
namespace {

// The mismatch tests' policy: the tiny DeepSeek-V3 (MoE, MLA) or the tiny Qwen2 (dense).
model::ModelConfig mismatch_policy(bool dense, int64_t vocab) {
  if (!dense) return tiny_config(vocab);
  auto cfg = model::test::tiny_qwen2();
  cfg.vocab_size = vocab;
  cfg.max_position_embeddings = 128;
  cfg.eos_token_ids = {256};
  return cfg;
}

// Two GRPO steps with ragged prompts, sampler chunks of 4 rows against training micro-batches of 3,
// an update between the steps and the reference's KL on.
GrpoConfig mismatch_steps() {
  GrpoConfig g;
  g.steps = 2;
  g.prompts_per_step = 3;
  g.generation.num_generations = 2;
  g.generation.max_new_tokens = 8;
  g.generation.max_batch_rows = 4;
  g.micro_batch_size = 3;
  g.loss.beta = 0.04;
  g.optim.lr = 1e-2;
  g.checkpoint.every_steps = 0;
  return g;
}

// Consistent mode over whole GRPO steps (ragged prompts, two micro-batches that group the rows
// otherwise than the sampler's chunks, an update between the steps): the trainer's first forward
// gets the sampler's log-probs bitwise, logprob_diff_max 0 on every step; without it, the usual
// rounding difference. The DeepSeek-V3 model decodes in the absorbed MLA form, which the trainer
// then takes too.
TEST(GrpoTrainer, ConsistentLogprobsMakeTheSamplerTrainerDifferenceZero) {
  const auto rewards = rewards::RewardSet(config::from_value<rewards::RewardsConfig>(
      config::parse_yaml_string("functions: [{name: math_accuracy}]\n", "r.yaml")));
  for (const bool dense : {false, true}) {
    for (const bool consistent : {true, false}) {
      Fixture f(std::string(dense ? "consistent_dense_" : "consistent_moe_") + (consistent ? "on" : "off"));
      torch::manual_seed(3);
      model::CausalLM model(mismatch_policy(dense, f.tok->vocab_size()));
      auto g = mismatch_steps();
      g.consistent_logprobs = consistent;
      GrpoTrainer(model, *f.tok, prompt_config(), g, rewards, *f.run).train(addition(6, 2, false));
      const auto rows = read_metrics(f.run->path("metrics.jsonl"));
      ASSERT_EQ(rows.size(), 2u);
      double most = 0;
      for (const auto& r : rows) most = std::max(most, r.get("logprob_diff_max", -1));
      std::printf("%s, consistent_logprobs %d: logprob_diff_max over 2 steps %.3g\n", dense ? "qwen2" : "deepseek_v3",
                  consistent, most);
      if (consistent) {
        for (const auto& r : rows) EXPECT_EQ(r.get("logprob_diff_max", -1), 0.0);
        EXPECT_EQ(model->config().attention_impl, model::AttentionImpl::naive) << "the model's form is restored";
      } else {
        EXPECT_GT(most, 0.0);
      }
    }
  }
  // Where the ops do not exist, a clear error up front.
  Fixture f("consistent_double");
  model::CausalLM model(tiny_config(f.tok->vocab_size()), torch::TensorOptions().dtype(torch::kDouble));
  GrpoConfig g;
  g.steps = 1;
  g.prompts_per_step = 2;
  g.generation.num_generations = 2;
  g.consistent_logprobs = true;
  try {
    GrpoTrainer(model, *f.tok, prompt_config(), g, rewards, *f.run).train(addition(4, 2, false));
    ADD_FAILURE() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("grpo.consistent_logprobs: needs the model on the CPU in float32"),
              std::string::npos)
        << e.what();
  }
}

// bf16 on the CPU (grpo.bf16_cpu): the stage runs under ATen's bf16 autocast, so sampler and
// trainer each round to bf16 in their own GEMM blocking and their log-probs differ by far more
// than float32's; in consistent mode the invariant ops with bf16 matmuls bring it back to 0 (and
// still round: the log-probs are not float32's).
TEST(GrpoTrainer, Bf16OnCpuWidensTheMismatchAndConsistentModeRemovesIt) {
  const auto rewards = rewards::RewardSet(config::from_value<rewards::RewardsConfig>(
      config::parse_yaml_string("functions: [{name: math_accuracy}]\n", "r.yaml")));
  for (const bool dense : {false, true}) {
    std::map<std::string, double> most;
    for (const std::string mode : {"fp32", "bf16", "bf16_consistent"}) {
      Fixture f(std::string(dense ? "bf16_dense_" : "bf16_moe_") + mode);
      torch::manual_seed(3);
      model::CausalLM model(mismatch_policy(dense, f.tok->vocab_size()));
      auto g = mismatch_steps();
      g.bf16_cpu = mode != "fp32";
      g.consistent_logprobs = mode == "bf16_consistent";
      GrpoTrainer(model, *f.tok, prompt_config(), g, rewards, *f.run).train(addition(6, 2, false));
      const auto rows = read_metrics(f.run->path("metrics.jsonl"));
      ASSERT_EQ(rows.size(), 2u);
      for (const auto& r : rows) {
        EXPECT_TRUE(std::isfinite(r.get("loss", NAN))) << mode;
        most[mode] = std::max(most[mode], r.get("logprob_diff_max", -1));
      }
      std::printf("%s, %s: logprob_diff_max over 2 steps %.3g\n", dense ? "qwen2" : "deepseek_v3", mode.c_str(),
                  most[mode]);
    }
    EXPECT_GT(most["bf16"], 10 * most["fp32"]) << "bf16 rounds far coarser than float32";
    EXPECT_EQ(most["bf16_consistent"], 0.0);
  }
  // bf16_cpu needs autocast on.
  GrpoConfig g;
  g.generation.num_generations = 2;
  g.bf16_cpu = true;
  g.bf16_autocast = false;
  EXPECT_NE(g.validate().find("bf16_cpu needs bf16_autocast"), std::string::npos) << g.validate();
}

}  // namespace
}  // namespace grpo::train
