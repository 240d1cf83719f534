// Length shaping: DAPO's soft overlong punishment and the cosine-scaled reward.
#include "grpo/rewards/length_reward.h"

#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"

namespace grpo::rewards {
namespace {

Sample sample_of_length(int64_t tokens, std::string completion = "x", std::string answer = "") {
  Sample s;
  s.completion = std::move(completion);
  s.completion_ids.assign(static_cast<size_t>(tokens), 7);
  s.answer = std::move(answer);
  return s;
}

LengthRewardConfig dapo(int64_t max_length, int64_t cache_length) {
  LengthRewardConfig cfg;
  cfg.max_length = max_length;
  cfg.cache_length = cache_length;
  return cfg;
}

TEST(LengthReward, DapoBoundaries) {
  const LengthRewardConfig cfg = dapo(100, 20);  // soft limit 80
  EXPECT_EQ(dapo_overlong_penalty(0, cfg), 0.0);
  EXPECT_EQ(dapo_overlong_penalty(80, cfg), 0.0);    // L_max - L_cache
  EXPECT_EQ(dapo_overlong_penalty(81, cfg), -0.05);  // (80 - 81) / 20
  EXPECT_EQ(dapo_overlong_penalty(90, cfg), -0.5);
  EXPECT_EQ(dapo_overlong_penalty(100, cfg), -1.0);  // L_max
  EXPECT_EQ(dapo_overlong_penalty(101, cfg), -1.0);  // L_max + 1
  EXPECT_EQ(dapo_overlong_penalty(100000, cfg), -1.0);
  LengthRewardConfig half = cfg;
  half.penalty_factor = 0.5;
  EXPECT_EQ(dapo_overlong_penalty(90, half), -0.25);
  EXPECT_EQ(dapo_overlong_penalty(101, half), -0.5);
  // cache_length 0: a hard step at max_length.
  const LengthRewardConfig hard = dapo(100, 0);
  EXPECT_EQ(dapo_overlong_penalty(100, hard), 0.0);
  EXPECT_EQ(dapo_overlong_penalty(101, hard), -1.0);
}

TEST(LengthReward, DapoThroughTheFunction) {
  const auto fn = make_length_reward(dapo(100, 20));
  EXPECT_EQ(fn->name(), "length");
  const auto out = fn->score(
      {sample_of_length(50), sample_of_length(90), sample_of_length(101), sample_of_length(0, "")});
  ASSERT_EQ(out.scores.size(), 4u);
  EXPECT_EQ(out.scores[0], 0.0);
  EXPECT_EQ(out.scores[1], -0.5);
  EXPECT_EQ(out.scores[2], -1.0);
  EXPECT_EQ(out.scores[3], 0.0);  // an empty completion has length 0
  EXPECT_EQ(out.reasons[1], "90 tokens in the overlong band above 80");
  EXPECT_EQ(out.reasons[2], "101 tokens > max_length 100");
  EXPECT_DOUBLE_EQ(out.metrics.at("mean_length"), (50 + 90 + 101 + 0) / 4.0);
  EXPECT_DOUBLE_EQ(out.metrics.at("over_length_fraction"), 0.25);
}

// open-r1's cosine_scaled_reward, written out independently.
double expected_cosine(int64_t length, bool correct, int64_t max_length) {
  const double pi = std::acos(-1.0);
  const double progress = static_cast<double>(std::min(length, max_length)) / static_cast<double>(max_length);
  const double c = std::cos(progress * pi);
  double lo = 0.5, hi = 1.0;  // correct: min_value_correct, max_value_correct
  if (!correct) {             // wrong: swapped, min = max_value_wrong, max = min_value_wrong
    lo = -0.5;
    hi = -1.0;
  }
  return lo + 0.5 * (hi - lo) * (1.0 + c);
}

TEST(LengthReward, CosineMatchesTheFormula) {
  LengthRewardConfig cfg;
  cfg.mode = "cosine";
  cfg.max_length = 1000;
  for (int64_t length : {0, 1, 100, 250, 500, 750, 999, 1000, 1500}) {
    EXPECT_NEAR(cosine_length_reward(length, true, cfg), expected_cosine(length, true, 1000), 1e-12) << length;
    EXPECT_NEAR(cosine_length_reward(length, false, cfg), expected_cosine(length, false, 1000), 1e-12) << length;
  }
  EXPECT_NEAR(cosine_length_reward(0, true, cfg), 1.0, 1e-12);
  EXPECT_NEAR(cosine_length_reward(1000, true, cfg), 0.5, 1e-12);
  EXPECT_NEAR(cosine_length_reward(500, true, cfg), 0.75, 1e-12);
  EXPECT_NEAR(cosine_length_reward(0, false, cfg), -1.0, 1e-12);
  EXPECT_NEAR(cosine_length_reward(1000, false, cfg), -0.5, 1e-12);
  EXPECT_NEAR(cosine_length_reward(500, false, cfg), -0.75, 1e-12);
}

TEST(LengthReward, CosineMonotonicity) {
  LengthRewardConfig cfg;
  cfg.mode = "cosine";
  cfg.max_length = 300;
  for (int64_t length = 0; length < 400; ++length) {
    EXPECT_GE(cosine_length_reward(length, true, cfg), cosine_length_reward(length + 1, true, cfg)) << length;
    EXPECT_LE(cosine_length_reward(length, false, cfg), cosine_length_reward(length + 1, false, cfg)) << length;
    EXPECT_GT(cosine_length_reward(length, true, cfg), cosine_length_reward(length, false, cfg)) << length;
  }
}

TEST(LengthReward, CosineThroughTheFunctionUsesMathAccuracy) {
  LengthRewardConfig cfg;
  cfg.mode = "cosine";
  cfg.max_length = 1000;
  const auto fn = make_length_reward(cfg);
  const auto out = fn->score({sample_of_length(500, "so \\boxed{42}", "42"),
                              sample_of_length(500, "so \\boxed{41}", "42"), sample_of_length(500, "so \\boxed{42}")});
  ASSERT_EQ(out.scores.size(), 3u);
  EXPECT_NEAR(*out.scores[0], 0.75, 1e-12);
  EXPECT_NEAR(*out.scores[1], -0.75, 1e-12);
  EXPECT_FALSE(out.scores[2].has_value());  // no reference answer
  EXPECT_EQ(out.reasons[0], "correct, 500 tokens");
  EXPECT_EQ(out.reasons[2], "no reference answer");
  EXPECT_DOUBLE_EQ(out.metrics.at("correct_fraction"), 0.5);
}

TEST(LengthReward, ThrowsWithoutTokenIds) {
  const auto fn = make_length_reward(dapo(100, 10));
  Sample s;
  s.completion = "some text";
  GRPO_EXPECT_THROW_MESSAGE(fn->score({s}), std::invalid_argument,
                            "length reward needs the completion's token ids (Sample::completion_ids); sample 0 has 9 "
                            "bytes of text and no ids");
}

TEST(LengthReward, ConfigValidation) {
  const auto load = [](const std::string& yaml) {
    return config::from_value<LengthRewardConfig>(config::parse_yaml_string(yaml, "r.yaml"));
  };
  EXPECT_EQ(load("max_length: 100\ncache_length: 20\n").cache_length, 20);
  EXPECT_EQ(load("mode: cosine\nmax_length: 10\nmath: {fallback: none}\n").math.fallback, AnswerFallback::none);
  GRPO_EXPECT_THROW_MESSAGE(load("mode: cosin\nmax_length: 10\n"), config::ConfigError,
                            "r.yaml:1:7: mode: expected one of dapo_overlong, cosine, found 'cosin' (did you mean "
                            "'cosine'?)");
  GRPO_EXPECT_THROW_MESSAGE(load("max_length: 100\ncache_length: 100\n"), config::ConfigError,
                            "r.yaml:1:1: cache_length (100) must be < max_length (100)");
  EXPECT_THROW(load("cache_length: 10\n"), config::ConfigError);  // max_length is required
  EXPECT_THROW(load("max_length: 0\n"), config::ConfigError);
  EXPECT_THROW(load("max_length: 10\ncache_length: -1\n"), config::ConfigError);
  // The factory refuses a config that was not loaded through validation.
  GRPO_EXPECT_THROW_MESSAGE(make_length_reward(LengthRewardConfig{}), std::invalid_argument,
                            "length reward: max_length must be > 0 (completion tokens), found 0");
  GRPO_EXPECT_THROW_MESSAGE(make_length_reward(dapo(10, 10)), std::invalid_argument,
                            "length reward: cache_length (10) must be < max_length (10)");
}

}  // namespace
}  // namespace grpo::rewards
