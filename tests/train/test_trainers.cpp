// The SFT and GRPO trainers on a tiny DeepSeek-V3 model with the byte tokenizer: packed and padded
// batches give the same loss, the loss covers completion tokens only, metrics and checkpoints are
// written, resume continues bit-identically, and the golden step/loss pairs of the tiny config are
// reproduced.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "grpo/core/files.h"
#include "grpo/core/metrics.h"
#include "grpo/core/run.h"
#include "grpo/data/bpe_tokenizer.h"
#include "grpo/data/generators.h"
#include "grpo/train/grpo_trainer.h"
#include "grpo/train/job.h"
#include "grpo/train/sft_trainer.h"
#include "test_util.h"
#include "train/train_test_util.h"

namespace grpo::train {
namespace {

using test::addition;
using test::Fixture;
using test::params_of;
using test::byte_tokenizer;
using test::prompt_config;
using test::tiny_config;

TEST(SftBatches, PackedAndPaddedGiveTheSameLossAndTokens) {
  const auto tok = byte_tokenizer();
  const auto report = data::tokenize_examples(*tok, prompt_config(), addition(9, 1, true), 128);
  std::vector<const data::TokenizedExample*> ex;
  for (const auto& e : report.examples) ex.push_back(&e);
  torch::manual_seed(1);
  model::CausalLM model(tiny_config(tok->vocab_size()));
  model->eval();
  torch::NoGradGuard no_grad;
  const auto padded = pad_batch(ex), packed = pack_batch(ex, 128);
  EXPECT_LT(packed.input_ids.size(0), padded.input_ids.size(0));  // several examples share a row
  EXPECT_EQ(packed.completion_tokens, padded.completion_tokens);
  EXPECT_EQ(packed.tokens, padded.tokens);
  const auto loss_padded = sft_token_loss_sum(
      model(padded.input_ids, padded.position_ids, padded.attention_mask).logits, padded);
  const auto loss_packed = sft_token_loss_sum(
      model(packed.input_ids, packed.position_ids, packed.attention_mask).logits, packed);
  EXPECT_NEAR(loss_packed.item<double>(), loss_padded.item<double>(), 1e-4 * loss_padded.item<double>());
}

TEST(SftBatches, LossCoversCompletionTokensOnly) {
  const auto tok = byte_tokenizer();
  const auto report = data::tokenize_examples(*tok, prompt_config(), addition(1, 2, true), 128);
  const auto& e = report.examples.at(0);
  const auto b = pad_batch({&e});
  torch::manual_seed(2);
  const auto logits = torch::randn({1, static_cast<int64_t>(e.input_ids.size()), tok->vocab_size()});
  // By hand: sum over j with completion_mask[j] == 1 (j >= 1) of -log_softmax(logits[j - 1])[ids[j]].
  const auto lp = torch::log_softmax(logits, -1);
  double want = 0;
  int64_t n = 0;
  for (size_t j = 1; j < e.input_ids.size(); ++j) {
    if (!e.completion_mask[j]) continue;
    want -= lp[0][static_cast<int64_t>(j) - 1][e.input_ids[j]].item<double>();
    ++n;
  }
  EXPECT_EQ(n, e.completion_tokens);
  EXPECT_GT(static_cast<int64_t>(e.input_ids.size()), e.completion_tokens + 10);  // the prompt is not trained on
  EXPECT_NEAR(sft_token_loss_sum(logits, b).item<double>(), want, 1e-3);
}

SftConfig small_sft(int64_t steps) {
  SftConfig c;
  c.steps = steps;
  c.batch_size = 4;
  c.max_length = 128;
  c.optim.lr = 3e-3;
  c.schedule.kind = "constant";  // the stopped run's schedule must not depend on its shorter length
  c.checkpoint.every_steps = 3;
  c.checkpoint.keep_last = 0;
  return c;
}

TEST(SftTrainer, WritesMetricsAndCheckpointsAndResumesBitIdentically) {
  const auto records = addition(40, 4, true);
  Fixture straight("straight"), resumed("resumed");
  torch::manual_seed(5);
  model::CausalLM a(tiny_config(straight.tok->vocab_size()));
  SftTrainer(a, *straight.tok, prompt_config(), small_sft(6), *straight.run).train(records);

  torch::manual_seed(5);
  model::CausalLM b(tiny_config(resumed.tok->vocab_size()));
  SftTrainer(b, *resumed.tok, prompt_config(), small_sft(3), *resumed.run).train(records);
  torch::manual_seed(99);  // a resumed process starts from other RNG state
  model::CausalLM c(tiny_config(resumed.tok->vocab_size()));
  SftTrainer(c, *resumed.tok, prompt_config(), small_sft(6), *resumed.run).train(records, {}, /*resume=*/true);
  const auto pa = params_of(a), pc = params_of(c);
  ASSERT_EQ(pa.size(), pc.size());
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pc[i])) << "parameter " << i;

  const auto rows = read_metrics(straight.run->path("metrics.jsonl"));
  ASSERT_EQ(rows.size(), 6u);
  EXPECT_GT(rows[0].get("loss", -1), rows[5].get("loss", 1e9));  // it learns
  EXPECT_GT(rows[5].get("mtp_loss", -1), 0.0);
  EXPECT_GE(rows[5].get("router_imbalance_max", -1), 1.0);
  EXPECT_TRUE(std::filesystem::exists(straight.run->path("checkpoints/sft/step_6/model/config.json")));
}

GrpoConfig small_grpo(int64_t steps) {
  GrpoConfig c;
  c.steps = steps;
  c.prompts_per_step = 2;
  c.generation.num_generations = 4;
  c.generation.max_new_tokens = 24;
  c.generation.sampling.temperature = 1.0;
  c.generation.stop_strings = {"</answer>"};
  c.loss.loss_type = LossType::grpo;
  c.loss.beta = 0.04;
  c.micro_batch_size = 3;  // not a divisor of 8: uneven micro-batches
  c.optim.lr = 1e-3;
  c.schedule.kind = "constant";
  c.checkpoint.every_steps = 1;
  c.checkpoint.keep_last = 0;
  return c;
}

rewards::RewardsConfig reward_config() {
  const auto root = config::parse_yaml_string(
      "functions: [{name: math_accuracy, weight: 1.0}, {name: format, weight: 0.5, options: {mode: lenient}}]\n",
      "rewards.yaml");
  return config::from_value<rewards::RewardsConfig>(root);
}

TEST(GrpoTrainer, LogsTheMetricsWritesCompletionsAndResumesBitIdentically) {
  const auto records = addition(30, 6, false);
  const rewards::RewardSet rewards(reward_config());
  Fixture straight("straight"), resumed("resumed");
  torch::manual_seed(7);
  model::CausalLM a(tiny_config(straight.tok->vocab_size()));
  GrpoTrainer(a, *straight.tok, prompt_config(), small_grpo(3), rewards, *straight.run).train(records);

  torch::manual_seed(7);
  model::CausalLM b(tiny_config(resumed.tok->vocab_size()));
  GrpoTrainer(b, *resumed.tok, prompt_config(), small_grpo(2), rewards, *resumed.run).train(records);
  torch::manual_seed(42);
  model::CausalLM c(tiny_config(resumed.tok->vocab_size()));
  GrpoTrainer(c, *resumed.tok, prompt_config(), small_grpo(3), rewards, *resumed.run).train(records, {}, true);
  const auto pa = params_of(a), pc = params_of(c);
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pc[i])) << "parameter " << i;

  const auto rows = read_metrics(straight.run->path("metrics.jsonl"));
  ASSERT_EQ(rows.size(), 3u);
  for (const char* key :
       {"loss", "reward", "reward_std", "kl", "clip_ratio_low", "clip_ratio_high", "entropy", "completion_length",
        "completion_length_max", "truncated_fraction", "zero_std_fraction", "gen_tokens_per_s", "train_tokens_per_s",
        "rewards/math_accuracy/mean", "rewards/format/mean", "accuracy", "grad_norm", "lr"}) {
    EXPECT_FALSE(std::isnan(rows[2].get(key, NAN))) << key;
  }
  EXPECT_GT(rows[2].get("entropy", 0), 0.0);
  EXPECT_GE(rows[1].get("kl", -1), 0.0);
  EXPECT_LE(rows[2].get("completion_length_max", 99), 24.0);
  const std::string completions = grpo::test::read_text(straight.run->path("completions.jsonl"));
  EXPECT_EQ(std::count(completions.begin(), completions.end(), '\n'), 6);  // 2 per step
  EXPECT_TRUE(std::filesystem::exists(straight.run->path("checkpoints/grpo/reference/config.json")));
}

TEST(GrpoTrainer, ConfigErrorsAreCaughtAtStart) {
  GrpoConfig c = small_grpo(2);
  c.generation.num_generations = 1;
  EXPECT_NE(c.validate().find("num_generations must be >= 2"), std::string::npos);
  c = small_grpo(2);
  c.generation.sampling.temperature = 0;  // greedy: no group to compare, and no log-probs to train on
  EXPECT_NE(c.validate().find("sampling.temperature must be > 0"), std::string::npos);
  c = small_grpo(2);
  c.schedule.warmup_steps = 5;
  EXPECT_EQ(c.validate(), "schedule: warmup of 5 steps is longer than the run's 2 optimizer steps");
}

// Keys that were removed get the usual unknown-key error, naming the file, line and key, with what
// replaced them.
TEST(GrpoTrainer, RemovedKeysGetTheUnknownKeyErrorWithAHint) {
  const auto message = [](auto parse) -> std::string {
    try {
      parse();
    } catch (const config::ConfigError& e) {
      return e.what();
    }
    return "no error";
  };
  const auto grpo = message([] {
    config::from_value<GrpoConfig>(config::parse_yaml_string("steps: 2\nloss:\n  temperature: 1.0\n", "g.yaml"));
  });
  EXPECT_NE(grpo.find("g.yaml:3:3: unknown key 'loss.temperature' (removed: the log-probs use the sampling "
                      "temperature, generation.sampling.temperature)"),
            std::string::npos)
      << grpo;
  for (const char* key : {"bias_update_gamma", "mtp_loss_weight"}) {
    const auto model = message([&] {
      config::from_value<model::ModelConfig>(config::parse_yaml_string(std::string(key) + ": 0.3\n", "m.yaml"));
    });
    EXPECT_NE(model.find("m.yaml:1:1: unknown key '" + std::string(key) + "' (removed: the trainers' "),
              std::string::npos)
        << model;
  }
}

// GRPO moves the policy toward what is rewarded: the share of completion tokens that are the
// digit 7 is about 1/261 for the untrained model and much larger after a few steps.
class SevensReward : public rewards::RewardFunction {
 public:
  std::string name() const override { return "sevens"; }
  rewards::RewardBatch score(const std::vector<rewards::Sample>& batch) const override {
    rewards::RewardBatch out;
    for (const auto& s : batch) {
      const double n = static_cast<double>(std::max<size_t>(s.completion_ids.size(), 1));
      out.scores.push_back(static_cast<double>(std::count(s.completion_ids.begin(), s.completion_ids.end(), '7')) / n);
    }
    return out;
  }
};

TEST(GrpoTrainer, RaisesTheRewardOfWhatIsRewarded) {
  rewards::RewardRegistry registry;
  registry.add("sevens", [](const config::Value&) { return std::make_unique<SevensReward>(); });
  const auto root = config::parse_yaml_string("functions: [{name: sevens}]\n", "rewards.yaml");
  const rewards::RewardSet rewards(config::from_value<rewards::RewardsConfig>(root), "", registry);
  Fixture f("learn");
  torch::manual_seed(8);
  auto cfg = tiny_config(f.tok->vocab_size());
  model::CausalLM m(cfg);
  GrpoConfig c = small_grpo(30);
  c.prompts_per_step = 4;
  c.generation.num_generations = 8;
  c.generation.max_new_tokens = 8;
  c.generation.stop_strings.clear();
  c.loss.beta = 0;
  c.optim.lr = 3e-3;
  c.checkpoint.every_steps = 0;
  c.accuracy_reward = "sevens";
  GrpoTrainer(m, *f.tok, prompt_config(), c, rewards, *f.run).train(addition(20, 9, false));
  const auto rows = read_metrics(f.run->path("metrics.jsonl"));
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) {
    first += rows[static_cast<size_t>(i)].get("reward", 0) / 5;
    last += rows[rows.size() - 1 - static_cast<size_t>(i)].get("reward", 0) / 5;
  }
  std::cout << "reward over the first 5 steps " << first << ", over the last 5 " << last << "\n";
  EXPECT_GT(last, first + 0.2);
}

// The same with completions of different lengths: generation stops at the first 7 (a stop string),
// and the reward is 1 / length for a completion that reached it (0 otherwise): the policy learns to
// write the 7 early, so rows of the batch end at different places.
class EarlySevenReward : public rewards::RewardFunction {
 public:
  std::string name() const override { return "early_seven"; }
  rewards::RewardBatch score(const std::vector<rewards::Sample>& batch) const override {
    rewards::RewardBatch out;
    for (const auto& s : batch) {
      const bool reached = !s.completion_ids.empty() && s.completion_ids.back() == '7';
      out.scores.push_back(reached ? 1.0 / static_cast<double>(s.completion_ids.size()) : 0.0);
    }
    return out;
  }
};

TEST(GrpoTrainer, LearnsWithCompletionsOfDifferentLengths) {
  rewards::RewardRegistry registry;
  registry.add("early_seven", [](const config::Value&) { return std::make_unique<EarlySevenReward>(); });
  const auto root = config::parse_yaml_string("functions: [{name: early_seven}]\n", "rewards.yaml");
  const rewards::RewardSet rewards(config::from_value<rewards::RewardsConfig>(root), "", registry);
  Fixture f("learn_lengths");
  torch::manual_seed(9);
  model::CausalLM m(tiny_config(f.tok->vocab_size()));
  GrpoConfig c = small_grpo(40);
  c.prompts_per_step = 4;
  c.generation.num_generations = 8;
  c.generation.max_new_tokens = 48;
  c.generation.stop_strings = {"7"};
  c.loss.beta = 0;
  c.optim.lr = 3e-3;
  c.checkpoint.every_steps = 0;
  c.accuracy_reward = "early_seven";
  GrpoTrainer(m, *f.tok, prompt_config(), c, rewards, *f.run).train(addition(20, 9, false));
  const auto rows = read_metrics(f.run->path("metrics.jsonl"));
  double first = 0, last = 0, len_first = 0, len_last = 0;
  for (int i = 0; i < 5; ++i) {
    first += rows[static_cast<size_t>(i)].get("reward", 0) / 5;
    last += rows[rows.size() - 1 - static_cast<size_t>(i)].get("reward", 0) / 5;
    len_first += rows[static_cast<size_t>(i)].get("completion_length", 0) / 5;
    len_last += rows[rows.size() - 1 - static_cast<size_t>(i)].get("completion_length", 0) / 5;
  }
  std::cout << "reward " << first << " -> " << last << ", length " << len_first << " -> " << len_last << "\n";
  EXPECT_GT(last, first + 0.2);
  EXPECT_LT(len_last, len_first);
}

}  // namespace
}  // namespace grpo::train
