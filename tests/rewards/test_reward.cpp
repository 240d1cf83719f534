// The reward registry, and the math-accuracy and format rewards built through it from YAML options.
#include "grpo/rewards/reward.h"

#include <gtest/gtest.h>

#include "grpo/rewards/format_reward.h"
#include "test_util.h"

namespace grpo::rewards {
namespace {

Sample sample(std::string completion, std::string answer = "") {
  Sample s;
  s.completion = std::move(completion);
  s.answer = std::move(answer);
  return s;
}

TEST(RewardRegistry, CreatesBuiltinsAndNamesUnknownOnes) {
  auto& reg = RewardRegistry::global();
  EXPECT_EQ(reg.create("format")->name(), "format");
  EXPECT_EQ(reg.create("math_accuracy")->name(), "math_accuracy");
  GRPO_EXPECT_THROW_MESSAGE(
      reg.create("formatt"), std::invalid_argument,
      "unknown reward function 'formatt' (did you mean 'format'?); known: code_execution, countdown, "
      "format, language, length, math_accuracy");
  RewardRegistry local;
  register_builtin_rewards(local);
  GRPO_EXPECT_THROW_MESSAGE(register_builtin_rewards(local), std::invalid_argument,
                            "reward function 'math_accuracy' is already registered");
}

TEST(RewardRegistry, OptionsGoThroughConfigValidation) {
  const auto options = config::parse_yaml_string("mode: loose\n", "rewards.yaml");
  GRPO_EXPECT_THROW_MESSAGE(RewardRegistry::global().create("format", options), config::ConfigError,
                            "rewards.yaml:1:7: mode: expected one of strict, lenient, found 'loose'");
}

TEST(MathAccuracyReward, ScoresAgainstTheReferenceAndSkipsRecordsWithout) {
  const auto fn = RewardRegistry::global().create("math_accuracy");
  const auto out = fn->score(
      {sample("so \\boxed{\\frac{3}{4}}", "0.75"), sample("<answer>7</answer>", "8"), sample("no reference here")});
  ASSERT_EQ(out.scores.size(), 3u);
  EXPECT_EQ(out.scores[0], 1.0);
  EXPECT_EQ(out.scores[1], 0.0);
  EXPECT_FALSE(out.scores[2].has_value());
  EXPECT_DOUBLE_EQ(out.metrics.at("extracted_fraction"), 1.0);
}

TEST(FormatReward, StrictAndLenient) {
  FormatRewardConfig strict;
  EXPECT_EQ(format_score("<think>a\nb</think>\n<answer>4</answer>\n", strict), 1.0);
  EXPECT_EQ(format_score("  <think>a</think><answer>4</answer>", strict), 1.0);
  EXPECT_EQ(format_score("x <think>a</think><answer>4</answer>", strict), 0.0);         // text before
  EXPECT_EQ(format_score("<think>a</think><answer>4</answer> trailing", strict), 0.0);  // text after
  EXPECT_EQ(format_score("<think>a</think>so <answer>4</answer>", strict), 0.0);        // text between
  EXPECT_EQ(format_score("<think>a</think><answer>4</answer><answer>5</answer>", strict), 0.0);
  EXPECT_EQ(format_score("<think>a<think>b</think><answer>4</answer>", strict), 0.0);
  EXPECT_EQ(format_score("<think>a</think>", strict), 0.0);
  FormatRewardConfig open = strict;
  open.think_in_prompt = true;
  EXPECT_EQ(format_score("reasoning</think> <answer>4</answer>", open), 1.0);
  FormatRewardConfig lenient;
  lenient.mode = "lenient";
  EXPECT_EQ(format_score("hm <think>a</think> so \\boxed{4}.", lenient), 1.0);
  EXPECT_EQ(format_score("<think>a</think> text <answer>4</answer> more", lenient), 1.0);
  EXPECT_EQ(format_score("<think>a</think> 4", lenient), 0.0);
  EXPECT_EQ(format_score("\\boxed{4} <think>a</think>", lenient), 0.0);  // answer before reasoning
  // Long completions do not exhaust the stack.
  EXPECT_EQ(format_score("<think>" + std::string(200000, 'x') + "</think><answer>1</answer>", strict), 1.0);
}

}  // namespace
}  // namespace grpo::rewards
