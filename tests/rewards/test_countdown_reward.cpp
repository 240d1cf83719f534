// The countdown reward: the expression parser, extraction from completions, the number multiset rule,
// and a property test over generated problems.
#include "grpo/rewards/countdown_reward.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "grpo/data/generators.h"

namespace grpo::rewards {
namespace {

Rational value_of(std::string_view text) {
  const ExpressionResult r = evaluate_expression(text);
  EXPECT_TRUE(r.value.has_value()) << text << ": " << r.error;
  return r.value.value_or(Rational{-999999, 1});
}

std::string error_of(std::string_view text) {
  const ExpressionResult r = evaluate_expression(text);
  EXPECT_FALSE(r.value.has_value()) << text;
  return r.error;
}

Sample record(std::string completion, std::string numbers = "[3,7,25,1]", std::string target = "24") {
  Sample s;
  s.completion = std::move(completion);
  s.extra["numbers"] = std::move(numbers);
  s.extra["target"] = std::move(target);
  return s;
}

CountdownRewardConfig with_format_score(double f) {
  CountdownRewardConfig cfg;
  cfg.format_score = f;
  return cfg;
}

TEST(CountdownExpression, PrecedenceAndAssociativity) {
  EXPECT_EQ(value_of("8-3-2"), (Rational{3, 1}));
  EXPECT_EQ(value_of("2*3+4"), (Rational{10, 1}));
  EXPECT_EQ(value_of("2+3*4"), (Rational{14, 1}));
  EXPECT_EQ(value_of("24/4/2"), (Rational{3, 1}));
  EXPECT_EQ(value_of("(1+2)*(3+4)"), (Rational{21, 1}));
  EXPECT_EQ(value_of("6/4*2"), (Rational{3, 1}));  // exact: 3/2 * 2
  EXPECT_EQ(value_of("1/3+1/6"), (Rational{1, 2}));
  EXPECT_EQ(value_of(" [ (25 - 7) * 3 ] - 16 "), (Rational{38, 1}));
  EXPECT_EQ(value_of("2/4"), (Rational{1, 2}));
  EXPECT_EQ(to_string(value_of("1-7/2")), "-5/2");
  const ExpressionResult r = evaluate_expression("(25 - 7) * 3 - 16");
  EXPECT_EQ(r.numbers, (std::vector<int64_t>{25, 7, 3, 16}));
  EXPECT_TRUE(r.error.empty());
}

TEST(CountdownExpression, UnaryMinusNegatesAGivenNumber) {
  EXPECT_EQ(value_of("-3+7"), (Rational{4, 1}));
  EXPECT_EQ(value_of("7*-3"), (Rational{-21, 1}));
  EXPECT_EQ(value_of("--3"), (Rational{3, 1}));
  EXPECT_EQ(value_of("-(2+3)*2"), (Rational{-10, 1}));
  EXPECT_EQ(evaluate_expression("-3+7").numbers, (std::vector<int64_t>{3, 7}));  // the literal is 3
}

TEST(CountdownExpression, UnicodeAndLatexOperators) {
  EXPECT_EQ(value_of("3 × 8"), (Rational{24, 1}));
  EXPECT_EQ(value_of("48 ÷ 2"), (Rational{24, 1}));
  EXPECT_EQ(value_of("4 · 6"), (Rational{24, 1}));
  EXPECT_EQ(value_of("30 − 6"), (Rational{24, 1}));  // U+2212 minus sign
  EXPECT_EQ(value_of("3 \\times 8"), (Rational{24, 1}));
  EXPECT_EQ(value_of("48 \\div 2"), (Rational{24, 1}));
  EXPECT_EQ(value_of("4 \\cdot 6"), (Rational{24, 1}));
  EXPECT_EQ(value_of("\\left(25 - 1\\right) \\times 1"), (Rational{24, 1}));
  EXPECT_EQ(value_of("\\frac{48}{2}"), (Rational{24, 1}));
  EXPECT_EQ(value_of("3\\,\\times\\,8"), (Rational{24, 1}));
}

TEST(CountdownExpression, Errors) {
  EXPECT_EQ(error_of("2.5*4"), "numbers must be integers (found 2.5)");
  EXPECT_EQ(error_of("4/(2-2)"), "division by zero");
  EXPECT_TRUE(evaluate_expression("4/(2-2)").parsed);
  EXPECT_EQ(error_of("9223372036854775807*2"), "overflow");
  EXPECT_EQ(error_of("99999999999999999999+1"), "overflow");  // literal beyond 64 bits
  EXPECT_EQ(error_of("-9223372036854775807-2"), "overflow");
  EXPECT_EQ(error_of(""), "empty expression");
  EXPECT_EQ(error_of("3 +"), "expected a number at 3, found end of expression");
  EXPECT_EQ(error_of("(3+4"), "expected ')' at 4, found end of expression");
  EXPECT_EQ(error_of("(3+4]"), "expected ')' at 4, found ']'");
  EXPECT_EQ(error_of("3 4"), "unexpected number at 2");
  EXPECT_EQ(error_of("x+1"), "unexpected 'x' at 0");
  EXPECT_EQ(error_of("3 é 4"), "unexpected 'é' at 2");
  EXPECT_EQ(error_of("\\sqrt{4}"), "unknown command '\\sqrt' at 0");
  EXPECT_FALSE(evaluate_expression("3\xff+4").parsed);  // an invalid byte
  EXPECT_FALSE(evaluate_expression("the answer is 24").parsed);
}

TEST(CountdownExpression, HostileNestingAndLengthAreErrors) {
  EXPECT_EQ(error_of(std::string(10000, '(') + "1" + std::string(10000, ')')), "expression longer than 4096 bytes");
  EXPECT_EQ(error_of(std::string(10000, '(')), "expression longer than 4096 bytes");
  EXPECT_EQ(error_of(std::string(300, '(') + "1" + std::string(300, ')')), "nested deeper than 200 levels");
  EXPECT_EQ(error_of(std::string(300, '-') + "1"), "nested deeper than 200 levels");
  EXPECT_EQ(value_of(std::string(150, '(') + "1" + std::string(150, ')')), (Rational{1, 1}));
  // A hostile completion goes through the whole reward without crashing.
  const auto o = countdown_score(record("<answer>" + std::string(10000, '(') + "</answer>"), {});
  EXPECT_EQ(o.score, 0.0);
  EXPECT_EQ(o.reason, "cannot parse: expression longer than 4096 bytes");
}

TEST(CountdownExtraction, AnswerTagsThenBoxedThenLastLine) {
  CountdownRewardConfig cfg;
  EXPECT_EQ(extract_countdown_expression("<answer>1+2</answer> \\boxed{3+4} <answer> (25-1)*1 = 24 </answer>", cfg),
            "(25-1)*1");
  EXPECT_EQ(extract_countdown_expression("<answer>\\boxed{2 \\times 12}</answer>", cfg), "2 \\times 12");
  EXPECT_EQ(extract_countdown_expression("so \\boxed{1+2} and \\boxed{\\frac{48}{2}}.", cfg), "\\frac{48}{2}");
  EXPECT_EQ(extract_countdown_expression("try 3+4\n(25 - 1) * 1 = 24\nDone, that works.", cfg), "(25 - 1) * 1");
  EXPECT_EQ(extract_countdown_expression("<answer>$(25-1)\\times 1$.</answer>", cfg), "(25-1)\\times 1");
  EXPECT_EQ(extract_countdown_expression("no equation here\n24", cfg), std::nullopt);  // one number is not one
  cfg.fallback_last_line = false;
  EXPECT_EQ(extract_countdown_expression("(25 - 1) * 1", cfg), std::nullopt);
}

TEST(CountdownReward, ScoresAndReasons) {
  const CountdownRewardConfig cfg = with_format_score(0.1);
  const auto check = [&](const std::string& completion, std::optional<double> score, const std::string& reason) {
    const auto o = countdown_score(record(completion), cfg);
    EXPECT_EQ(o.score, score) << completion;
    EXPECT_EQ(o.reason, reason) << completion;
  };
  check("<think>hm</think><answer>(25 - 1) * (7 - 3 - 3)</answer>", 0.1, "uses 3 twice");
  check("<answer>25 - 1 + (7 - 7 / 7 * 3)</answer>", 0.1, "uses 7 3 times, given 1");
  check("<answer>25 - 1</answer>", 0.1, "does not use 3");                                     // missing numbers
  check("<answer>25 - 1 + 7 - 3 - 4</answer>", 0.1, "uses 4, which is not in [3, 7, 25, 1]");  // extra number
  check("<answer>(25 - 1) * (7 - 6)</answer>", 0.1, "uses 6, which is not in [3, 7, 25, 1]");  // not in the list
  check("<answer>25 - 1 + 7 - 3</answer>", 0.1, "evaluates to 28, target 24");
  check("<answer>(25 + 1) / (7 - 3)</answer>", 0.1, "evaluates to 13/2, target 24");
  check("<answer>1 + 25 - 7 + 3 + 2.5</answer>", 0.0, "cannot parse: numbers must be integers (found 2.5)");
  check("<answer>fish</answer>", 0.0, "cannot parse: unexpected 'f' at 0");
  check("<answer></answer>", 0.0, "cannot parse: empty expression");
  check("I give up.", 0.0, "no equation found");
}

TEST(CountdownReward, CorrectInEachPlaceAndWithUnaryMinus) {
  const CountdownRewardConfig cfg = with_format_score(0.1);
  const auto score = [&](const std::string& completion, const std::string& numbers, const std::string& target) {
    return countdown_score(record(completion, numbers, target), cfg);
  };
  EXPECT_EQ(score("<answer>2 * 3 * 4</answer>", "[2,3,4]", "24").score, 1.0);
  EXPECT_EQ(score("so \\boxed{4 \\times (3 \\times 2)}", "[2,3,4]", "24").score, 1.0);
  EXPECT_EQ(score("let me see\n2*3*4 = 24\n", "[2,3,4]", "24").score, 1.0);
  EXPECT_EQ(score("<answer>(25 - 1) * 1 = 25</answer>", "[25,1,1]", "24").score, 1.0);  // after '=' is ignored
  EXPECT_EQ(score("<answer>25 - 1 = 24</answer>", "[25,1,1]", "24").reason, "uses 1 only 1 of 2 times");
  EXPECT_EQ(score("<answer>-3 + 7 * 4</answer>", "[3,7,4]", "25").score, 1.0);
  EXPECT_EQ(score("<answer>-3 + 7 * 4</answer>", "[-3,7,4]", "25").reason, "uses 3, which is not in [-3, 7, 4]");
  EXPECT_EQ(score("<answer>6 / 4 * 16</answer>", "[6,4,16]", "24").score, 1.0);
  // use_all: false lets a number go unused but still not twice.
  CountdownRewardConfig some = cfg;
  some.use_all = false;
  EXPECT_EQ(countdown_score(record("<answer>25 - 1</answer>"), some).score, 1.0);
  EXPECT_EQ(countdown_score(record("<answer>25 - 1 + 1 - 1</answer>"), some).reason, "uses 1 3 times, given 1");
  // Division by zero and overflow: parsed, right numbers, format_score.
  auto o = score("<answer>4 / (3 - 3)</answer>", "[4,3,3]", "24");
  EXPECT_EQ(o.score, 0.1);
  EXPECT_EQ(o.reason, "division by zero");
  o = score("<answer>9223372036854775807 * 2</answer>", "[9223372036854775807,2]", "24");
  EXPECT_EQ(o.score, 0.1);
  EXPECT_EQ(o.reason, "overflow");
}

TEST(CountdownReward, RecordWithoutFieldsDoesNotApply) {
  Sample s;
  s.completion = "<answer>1+2</answer>";
  auto o = countdown_score(s, {});
  EXPECT_FALSE(o.score.has_value());
  EXPECT_EQ(o.reason, "record has no 'numbers'");
  o = countdown_score(record("<answer>1+2</answer>", "3, 7", "24"), {});
  EXPECT_FALSE(o.score.has_value());
  EXPECT_EQ(o.reason, "record's 'numbers' is not a list of integers: 3, 7");
  o = countdown_score(record("<answer>1+2</answer>", "[1,2]", "twenty"), {});
  EXPECT_FALSE(o.score.has_value());
  EXPECT_EQ(o.reason, "record's 'target' is not an integer: twenty");
  s.extra["numbers"] = "[1,2]";
  EXPECT_EQ(countdown_score(s, {}).reason, "record has no 'target'");
}

TEST(CountdownReward, BatchThroughTheFunction) {
  const auto fn = make_countdown_reward(with_format_score(0.1));
  EXPECT_EQ(fn->name(), "countdown");
  Sample none;
  const auto out = fn->score({record("<answer>2*3*4</answer>", "[2,3,4]", "24"),
                              record("<answer>2+3+4</answer>", "[2,3,4]", "24"), record("nothing"), none});
  ASSERT_EQ(out.scores.size(), 4u);
  ASSERT_EQ(out.reasons.size(), 4u);
  EXPECT_EQ(out.scores[0], 1.0);
  EXPECT_EQ(out.scores[1], 0.1);
  EXPECT_EQ(out.reasons[1], "evaluates to 9, target 24");
  EXPECT_EQ(out.scores[2], 0.0);
  EXPECT_FALSE(out.scores[3].has_value());
  EXPECT_DOUBLE_EQ(out.metrics.at("found_fraction"), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(out.metrics.at("parsed_fraction"), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(out.metrics.at("correct_fraction"), 1.0 / 3.0);
}

TEST(CountdownReward, OptionsThroughConfig) {
  const auto cfg = config::from_value<CountdownRewardConfig>(
      config::parse_yaml_string("format_score: 0.1\nuse_all: false\n", "r.yaml"));
  EXPECT_EQ(cfg.format_score, 0.1);
  EXPECT_FALSE(cfg.use_all);
  EXPECT_THROW(config::from_value<CountdownRewardConfig>(config::parse_yaml_string("tolerance: -1\n", "r.yaml")),
               config::ConfigError);
}

// Every generated problem's reference answer is correct; changing one of its numbers to a value not
// given makes it wrong (format_score).
TEST(CountdownReward, GeneratedReferenceAnswersScoreCorrect) {
  data::GeneratorConfig gen;
  gen.kind = data::GeneratorKind::countdown;
  gen.count = 300;
  gen.seed = 7;
  gen.with_reasoning = false;
  const auto records = data::generate(gen);
  ASSERT_EQ(records.size(), 300u);
  const CountdownRewardConfig cfg = with_format_score(0.1);
  for (const auto& r : records) {
    Sample s;
    s.answer = r.answer;
    s.extra = r.extra;
    s.completion = "<think>...</think><answer>" + r.answer + "</answer>";
    const auto good = countdown_score(s, cfg);
    ASSERT_EQ(good.score, 1.0) << r.answer << " " << r.extra.at("numbers") << " -> " << r.extra.at("target") << ": "
                               << good.reason;
    // Swap the first literal for a value not in the list.
    const ExpressionResult parsed = evaluate_expression(r.answer);
    const std::set<int64_t> given(parsed.numbers.begin(), parsed.numbers.end());
    int64_t other = 1;
    while (given.count(other)) ++other;
    const size_t begin = r.answer.find_first_of("0123456789");
    const size_t end = r.answer.find_first_not_of("0123456789", begin);
    s.completion = "<answer>" + r.answer.substr(0, begin) + std::to_string(other) +
                   (end == std::string::npos ? "" : r.answer.substr(end)) + "</answer>";
    const auto bad = countdown_score(s, cfg);
    ASSERT_EQ(bad.score, 0.1) << s.completion;
    ASSERT_NE(bad.reason.find("which is not in"), std::string::npos) << bad.reason;
  }
}

}  // namespace
}  // namespace grpo::rewards
