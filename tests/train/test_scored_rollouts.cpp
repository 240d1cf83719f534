// Scored rollouts (grpo/train/scored_rollouts.h), the seed rule (grpo/core/random.h) and merged
// reward scores (grpo/rewards/reward_set.h): requests built from records as the tokenizer and
// prompt template say, completions grouped per request, scores in row order, the errors; seeds
// against the formula written out by hand; two merged score() calls against one call over all rows.
#include "grpo/train/scored_rollouts.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <stdexcept>

#include "grpo/config/config.h"
#include "grpo/core/random.h"
#include "grpo/train/rejection_sampling.h"
#include "train/train_test_util.h"

namespace grpo::train {
namespace {

using test::addition;
using test::byte_tokenizer;
using test::prompt_config;

// A generator that writes down what it was asked and answers request p's sample g with the text
// "<answer> {p + g} </answer>" (so the accuracy is known), G samples each.
struct ScriptedGenerator {
  int64_t G = 2;
  std::vector<rollout::GenerationRequest> seen;
  Generator generator() {
    return [this](const std::vector<rollout::GenerationRequest>& reqs, rollout::GenerationStats* stats) {
      std::vector<rollout::Completion> out;
      for (size_t p = 0; p < reqs.size(); ++p) {
        seen.push_back(reqs[p]);
        for (int64_t g = 0; g < G; ++g) {
          rollout::Completion c;
          c.prompt_index = static_cast<int64_t>(p);
          c.sample_index = g;
          c.text = "<answer> " + std::to_string(static_cast<int64_t>(p) + g) + " </answer>";
          c.token_ids.assign(static_cast<size_t>(3 + g), 65);
          c.logprobs.assign(c.token_ids.size(), -1.0f);
          out.push_back(c);
        }
      }
      if (stats != nullptr) stats->completions += static_cast<int64_t>(out.size());
      return out;
    };
  }
};

rewards::RewardSet accuracy_set() {
  const auto root = config::parse_yaml_string(
      "functions: [{name: math_accuracy}, {name: format, weight: 0.5, options: {mode: lenient}}]\n", "r.yaml");
  return rewards::RewardSet(config::from_value<rewards::RewardsConfig>(root));
}

TEST(ScoredRollouts, BuildsRequestsFromRecordsAndScoresEveryCompletionInRowOrder) {
  const auto tok = byte_tokenizer();
  const auto prompt = prompt_config();
  auto records = addition(5, 1, false);
  records[3].answer = "1";  // request 1 (record 3), sample 0 answers 1: correct
  records[0].answer = "3";  // request 2 (record 0), sample 1 answers 3: correct
  const auto rewards = accuracy_set();
  ScriptedGenerator gen;
  const std::vector<RolloutRequest> want = {
      {.record = 2, .seed = 11}, {.record = 3, .seed = 12}, {.record = 0, .seed = 13}};
  const auto r = sample_scored(gen.generator(), *tok, prompt, records, want, &rewards);

  ASSERT_EQ(gen.seen.size(), 3u);
  ASSERT_EQ(r.groups.size(), 3u);
  EXPECT_EQ(r.group_size(), 2);
  for (size_t p = 0; p < 3; ++p) {
    const auto& rec = records[static_cast<size_t>(want[p].record)];
    const auto text = data::format_prompt(prompt, rec);
    EXPECT_EQ(r.groups[p].record, want[p].record);
    EXPECT_EQ(r.groups[p].prompt_text, text);
    EXPECT_EQ(r.groups[p].prompt_ids, tok->encode(text, prompt.add_special_tokens));
    EXPECT_EQ(gen.seen[p].prompt_ids, r.groups[p].prompt_ids);
    ASSERT_TRUE(gen.seen[p].seed.has_value());
    EXPECT_EQ(*gen.seen[p].seed, want[p].seed);
    EXPECT_EQ(r.groups[p].seed, want[p].seed);
    ASSERT_EQ(r.groups[p].completions.size(), 2u);
    EXPECT_EQ(r.groups[p].completions[1].text, "<answer> " + std::to_string(p + 1) + " </answer>");
  }
  EXPECT_EQ(r.generated_tokens, 3 * (3 + 4));
  // Rows p * G + g: accuracy 1 exactly where the answer matches; totals are 1 * acc + 0.5 * format.
  ASSERT_EQ(r.scores.total.size(), 6u);
  const size_t acc = reward_index(r.scores.labels, "math_accuracy", "test");
  for (size_t i = 0; i < 6; ++i) {
    const bool correct = i == 2 || i == 5;
    ASSERT_TRUE(r.scores.scores[acc][i].has_value()) << i;
    EXPECT_EQ(*r.scores.scores[acc][i], correct ? 1.0 : 0.0) << i;
    EXPECT_DOUBLE_EQ(r.groups[i / 2].totals[i % 2], r.scores.total[i]);
  }
  EXPECT_NEAR(r.scores.metrics.at("rewards/math_accuracy/mean"), 2.0 / 6, 1e-12);
  EXPECT_EQ(r.scores.metrics.at("rewards/math_accuracy/applied"), 1.0);

  // Without a reward set: the same groups, totals 0, no scores.
  const auto unscored = sample_scored(gen.generator(), *tok, prompt, records, want, nullptr);
  EXPECT_TRUE(unscored.scores.total.empty());
  EXPECT_EQ(unscored.groups[2].totals, (std::vector<double>{0.0, 0.0}));
}

TEST(ScoredRollouts, RefusesRecordsOutOfRangeAndGeneratorsThatDoNotReturnGroups) {
  const auto tok = byte_tokenizer();
  const auto records = addition(3, 1, false);
  ScriptedGenerator gen;
  EXPECT_THROW(sample_scored(gen.generator(), *tok, prompt_config(), records, {{.record = 3}}, nullptr),
               std::out_of_range);
  const Generator short_by_one = [&](const std::vector<rollout::GenerationRequest>& reqs, rollout::GenerationStats* s) {
    auto out = gen.generator()(reqs, s);
    out.pop_back();
    return out;
  };
  try {
    sample_scored(short_by_one, *tok, prompt_config(), records, {{.record = 0}, {.record = 1}}, nullptr);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("returned 3 completions for 2 requests"), std::string::npos) << e.what();
  }
}

TEST(ScoredRollouts, RewardIndexNamesTheKeyAndTheLabels) {
  EXPECT_EQ(reward_index({"a", "b"}, "b", "k"), 1u);
  try {
    reward_index({"math_accuracy", "format"}, "accuracy", "grpo.accuracy_reward");
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()),
              "grpo.accuracy_reward 'accuracy' is not one of the reward functions (math_accuracy, format)");
  }
}

TEST(DeriveSeed, IsTheChainOfTheWrittenOutFormula) {
  const auto step = [](uint64_t s, uint64_t t) {
    return splitmix64(splitmix64(s) ^ (t * 0xD1B54A32D192ED03ULL + 0x2545F4914F6CDD1DULL));
  };
  EXPECT_EQ(derive_seed(42), 42u);
  EXPECT_EQ(derive_seed(42, 7), step(42, 7));
  EXPECT_EQ(derive_seed(42, 7, 0, 3), step(step(step(42, 7), 0), 3));
  // Rejection sampling's seeds are this rule with the prompt index (its trace files did not move).
  EXPECT_EQ(prompt_seed(42, 9), step(42, 9));
  // Tags in another order, or one more, give other seeds.
  EXPECT_NE(derive_seed(42, 1, 2), derive_seed(42, 2, 1));
  EXPECT_NE(derive_seed(42, 1), derive_seed(42, 1, 0));
  const double u = unit_interval(derive_seed(5, 1));
  EXPECT_GE(u, 0.0);
  EXPECT_LT(u, 1.0);
}

// A reward with a metric of its own (the fraction of samples it saw in its call), batch_size 0 so
// that each score() call is one call of the function.
class CountingReward : public rewards::RewardFunction {
 public:
  std::string name() const override { return "counting"; }
  rewards::RewardBatch score(const std::vector<rewards::Sample>& batch) const override {
    rewards::RewardBatch out;
    double long_ones = 0;
    for (const auto& s : batch) {
      const bool is_long = s.completion.size() > 3;
      long_ones += is_long;
      out.scores.push_back(is_long ? std::optional<double>(static_cast<double>(s.completion.size())) : std::nullopt);
    }
    out.metrics["long_fraction"] = long_ones / static_cast<double>(batch.size());
    return out;
  }
};

TEST(AppendScores, TwoCallsMergedEqualOneCallOverAllRows) {
  rewards::RewardRegistry registry;
  registry.add("counting", [](const config::Value&) { return std::make_unique<CountingReward>(); });
  const auto root = config::parse_yaml_string("functions: [{name: counting, batch_size: 0, weight: 2}]\n", "r.yaml");
  const rewards::RewardSet set(config::from_value<rewards::RewardsConfig>(root), "", registry);
  std::vector<rewards::Sample> all;
  for (const char* text : {"a", "abcd", "abcdef", "xy", "hello", "abcdefgh", "z"}) {
    rewards::Sample s;
    s.completion = text;
    all.push_back(s);
  }
  const std::vector<rewards::Sample> first(all.begin(), all.begin() + 3), second(all.begin() + 3, all.end());
  const auto whole = set.score(all);
  rewards::RewardScores merged;
  rewards::append_scores(merged, set.score(first));
  rewards::append_scores(merged, set.score(second));
  EXPECT_EQ(merged.total, whole.total);
  EXPECT_EQ(merged.scores, whole.scores);
  for (const char* key : {"rewards/counting/mean", "rewards/counting/applied", "rewards/total/mean",
                          "rewards/total/std", "rewards/counting/long_fraction", "rewards/counting/errors"}) {
    ASSERT_TRUE(merged.metrics.count(key)) << key;
    EXPECT_NEAR(merged.metrics.at(key), whole.metrics.at(key), 1e-12) << key;
  }
  // Hand values: long completions 4, 6, 5, 8 of 7: mean 23 / 4, applied 4 / 7.
  EXPECT_NEAR(merged.metrics.at("rewards/counting/mean"), 23.0 / 4, 1e-12);
  EXPECT_NEAR(merged.metrics.at("rewards/counting/applied"), 4.0 / 7, 1e-12);
  EXPECT_NEAR(merged.metrics.at("rewards/counting/long_fraction"), 4.0 / 7, 1e-12);
  EXPECT_GE(merged.metrics.at("rewards/counting/seconds"), 0.0);
  // Scores of another set are refused.
  const auto other_root = config::parse_yaml_string("functions: [{name: counting, label: other}]\n", "r.yaml");
  const rewards::RewardSet other(config::from_value<rewards::RewardsConfig>(other_root), "", registry);
  EXPECT_THROW(rewards::append_scores(merged, other.score(first)), std::invalid_argument);
}

}  // namespace
}  // namespace grpo::train
