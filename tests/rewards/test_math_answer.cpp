// Math answers: extraction, parsing and comparison by hand, then agreement with math-verify on the
// pairs that tests/rewards/math_verify_oracle.py writes (MathVerifyOracle).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "grpo/rewards/math_answer.h"

namespace {

using grpo::rewards::AnswerFallback;
using grpo::rewards::AnswerPreference;
using grpo::rewards::extract_answer;
using grpo::rewards::math_accuracy;
using grpo::rewards::MathAnswerConfig;
using grpo::rewards::parse_answer;
using grpo::rewards::ParsedAnswer;
using Kind = grpo::rewards::ParsedAnswer::Kind;

const MathAnswerConfig kDefault;

TEST(MathAnswerExtract, LastBoxedWithNestedBraces) {
  EXPECT_EQ(extract_answer("so \\boxed{\\frac{3}{4}} done", kDefault), "\\frac{3}{4}");
  EXPECT_EQ(extract_answer("\\boxed{1} then \\boxed{{2}}", kDefault), "{2}");
  EXPECT_EQ(extract_answer("first \\boxed{1}, finally \\fbox{7}.", kDefault), "7");
  EXPECT_EQ(extract_answer("\\boxed 5", kDefault), "5");
  EXPECT_EQ(extract_answer("$\\boxed{\\left(1, \\frac{1}{2}\\right)}$", kDefault), "\\left(1, \\frac{1}{2}\\right)");
}

TEST(MathAnswerExtract, UnclosedBoxedFallsBack) {
  EXPECT_EQ(extract_answer("we get 12 so \\boxed{3", kDefault), "3");
  MathAnswerConfig none;
  none.fallback = AnswerFallback::none;
  EXPECT_EQ(extract_answer("we get 12 so \\boxed{3", none), std::nullopt);
}

TEST(MathAnswerExtract, AnswerTags) {
  EXPECT_EQ(extract_answer("<think>7 and 8</think> <answer> 42 </answer>", kDefault), "42");
  EXPECT_EQ(extract_answer("<answer>1</answer> <answer>\\boxed{2}</answer>", kDefault), "2");
  EXPECT_EQ(extract_answer("<answer>1</answer><answer>3</answer>", kDefault), "3");
}

TEST(MathAnswerExtract, Preference) {
  const std::string text = "<answer>5</answer> but \\boxed{6}";
  const std::string text2 = "\\boxed{6} and <answer>5</answer>";
  MathAnswerConfig tags;
  tags.prefer = AnswerPreference::answer_tags;
  MathAnswerConfig last;
  last.prefer = AnswerPreference::last;
  EXPECT_EQ(extract_answer(text, kDefault), "6");
  EXPECT_EQ(extract_answer(text2, kDefault), "6");
  EXPECT_EQ(extract_answer(text, tags), "5");
  EXPECT_EQ(extract_answer(text2, tags), "5");
  EXPECT_EQ(extract_answer(text, last), "6");
  EXPECT_EQ(extract_answer(text2, last), "5");
}

TEST(MathAnswerExtract, Fallback) {
  EXPECT_EQ(extract_answer("I got 41, then 7 more: 48.", kDefault), "48");
  EXPECT_EQ(extract_answer("total is 1,234,567 apples", kDefault), "1,234,567");
  EXPECT_EQ(extract_answer("it is -3.5 degrees", kDefault), "-3.5");
  EXPECT_EQ(extract_answer("rate of 12.5% today", kDefault), "12.5%");
  EXPECT_EQ(extract_answer("so x = 3/4", kDefault), "3/4");
  EXPECT_EQ(extract_answer("so x = \\frac{3}{4} indeed", kDefault), "\\frac{3}{4}");
  EXPECT_EQ(extract_answer("no numbers at all", kDefault), std::nullopt);
  MathAnswerConfig none;
  none.fallback = AnswerFallback::none;
  EXPECT_EQ(extract_answer("The answer is 42", none), std::nullopt);
}

void expect_number(std::string_view text, std::int64_t num, std::int64_t den, bool decimal = false,
                   bool percent = false) {
  auto parsed = parse_answer(text);
  ASSERT_TRUE(parsed.has_value()) << text;
  ASSERT_EQ(parsed->kind, Kind::number) << text << " -> text '" << parsed->text << "'";
  EXPECT_TRUE(parsed->number.exact) << text;
  EXPECT_EQ(parsed->number.numerator, num) << text;
  EXPECT_EQ(parsed->number.denominator, den) << text;
  EXPECT_EQ(parsed->number.decimal, decimal) << text;
  EXPECT_EQ(parsed->number.percent, percent) << text;
}

TEST(MathAnswerParse, Numbers) {
  expect_number("42", 42, 1);
  expect_number("-42", -42, 1);
  expect_number("- 42", -42, 1);
  expect_number("+7", 7, 1);
  expect_number("1,234,567", 1234567, 1);
  expect_number("3.0", 3, 1, true);
  expect_number(".5", 1, 2, true);
  expect_number("-0.25", -1, 4, true);
  expect_number("12,345.5", 24691, 2, true);
  expect_number("3/4", 3, 4);
  expect_number("\\frac{2}{4}", 1, 2);
  expect_number("\\dfrac{3}{4}", 3, 4);
  expect_number("\\tfrac12", 1, 2);
  expect_number("-\\frac{1}{2}", -1, 2);
  expect_number("\\frac{-1}{2}", -1, 2);
  expect_number("2\\frac{1}{2}", 5, 2);
  expect_number("50\\%", 50, 1, false, true);
  expect_number("12.5%", 25, 2, true, true);
  expect_number("1.5\\times 10^{3}", 1500, 1, true);
  expect_number("10^{-3}", 1, 1000);
  expect_number("3 \\cdot 10^2", 300, 1);
}

TEST(MathAnswerParse, Wrappers) {
  expect_number("$42$", 42, 1);
  expect_number("\\(42\\)", 42, 1);
  expect_number("\\text{3}", 3, 1);
  expect_number("\\mathrm{3}", 3, 1);
  expect_number("5\\text{ cm}", 5, 1);
  expect_number("5\\,\\text{cm}", 5, 1);
  expect_number("\\$5", 5, 1);
  expect_number("1\\!000", 1000, 1);
  expect_number("\\left(\\frac{1}{2}\\right)", 1, 2);
  expect_number("7.", 7, 1);
}

TEST(MathAnswerParse, SequencesAndText) {
  auto interval = parse_answer("[-3, \\frac{1}{2})");
  ASSERT_TRUE(interval);
  ASSERT_EQ(interval->kind, Kind::sequence);
  EXPECT_EQ(interval->open, '[');
  EXPECT_EQ(interval->close, ')');
  ASSERT_EQ(interval->elements.size(), 2u);
  EXPECT_EQ(interval->elements[0].numerator, -3);
  EXPECT_EQ(interval->elements[1].denominator, 2);
  auto tuple = parse_answer("\\left(1, 2, 3\\right)");
  ASSERT_TRUE(tuple);
  EXPECT_EQ(tuple->kind, Kind::sequence);
  EXPECT_EQ(tuple->elements.size(), 3u);
  auto list = parse_answer("1, 2");
  ASSERT_TRUE(list);
  EXPECT_EQ(list->kind, Kind::sequence);
  EXPECT_EQ(list->open, 0);
  auto text = parse_answer("\\text{ yes }");
  ASSERT_TRUE(text);
  EXPECT_EQ(text->kind, Kind::text);
  EXPECT_EQ(text->text, "yes");
  EXPECT_EQ(parse_answer("  "), std::nullopt);
  EXPECT_EQ(parse_answer("1e3")->kind, Kind::text);  // math-verify does not read e-notation either
}

bool equal(std::string_view a, std::string_view b, const MathAnswerConfig& config = kDefault) {
  auto pa = parse_answer(a);
  auto pb = parse_answer(b);
  return pa && pb && grpo::rewards::answers_equal(*pa, *pb, config);
}

TEST(MathAnswerEqual, NearMisses) {
  EXPECT_TRUE(equal("0.5", "1/2"));
  EXPECT_FALSE(equal("0.5", "0.51"));
  EXPECT_FALSE(equal("1/2", "2/1"));
  EXPECT_TRUE(equal("\\frac{2}{4}", "1/2"));
  EXPECT_TRUE(equal("3.0", "3"));
  EXPECT_FALSE(equal("-3", "3"));
  EXPECT_TRUE(equal("1,000", "1000"));
  EXPECT_TRUE(equal("1/3", "0.333333"));  // rounded to 6 decimals
  EXPECT_FALSE(equal("1/3", "0.3333"));
  EXPECT_FALSE(equal("1", "1.000001"));
  EXPECT_TRUE(equal("(1,2)", "(1, 2)"));
  EXPECT_FALSE(equal("(1,2)", "(2,1)"));
  EXPECT_FALSE(equal("[1,2)", "[1,2]"));
  EXPECT_TRUE(equal("1, 3, 5", "5, 3, 1"));  // a bare list is a set
  EXPECT_TRUE(equal("(1,2)", "1, 2"));
  EXPECT_FALSE(equal("5", "\\text{yes}"));
}

TEST(MathAnswerEqual, Percent) {
  EXPECT_TRUE(equal("10\\%", "0.1"));
  EXPECT_TRUE(equal("10\\%", "10"));
  EXPECT_FALSE(equal("10\\%", "1"));
  EXPECT_TRUE(equal("25\\%", "\\frac{1}{4}"));
  MathAnswerConfig bare;
  bare.percent_equals_fraction = false;
  EXPECT_FALSE(equal("10\\%", "0.1", bare));
  EXPECT_TRUE(equal("10\\%", "10", bare));
}

TEST(MathAnswerAccuracy, EndToEnd) {
  EXPECT_TRUE(math_accuracy("0.75", "... so the answer is \\boxed{\\dfrac{3}{4}}.", kDefault));
  EXPECT_TRUE(math_accuracy("42", "<think>6*7</think> <answer>42</answer>", kDefault));
  EXPECT_TRUE(math_accuracy("\\boxed{7}", "hence 7", kDefault));
  EXPECT_FALSE(math_accuracy("42", "no idea", kDefault));
  EXPECT_FALSE(math_accuracy("", "\\boxed{1}", kDefault));
}

TEST(MathAnswerConfig, ReadsFromYaml) {
  auto root = grpo::config::parse_yaml_string(
      "fallback: none\nprefer: last\nfloat_rounding: 4\npercent_equals_fraction: false\n", "math.yaml");
  auto config = grpo::config::from_value<MathAnswerConfig>(root);
  EXPECT_EQ(config.fallback, AnswerFallback::none);
  EXPECT_EQ(config.prefer, AnswerPreference::last);
  EXPECT_EQ(config.float_rounding, 4);
  EXPECT_FALSE(config.percent_equals_fraction);
  auto round_trip = grpo::config::from_value<MathAnswerConfig>(
      grpo::config::parse_yaml_string(grpo::config::to_yaml(config), "round_trip.yaml"));
  EXPECT_EQ(round_trip.prefer, AnswerPreference::last);
  EXPECT_EQ(round_trip.float_rounding, 4);
  auto bad = grpo::config::parse_yaml_string("prefer: boxes\n", "math.yaml");
  EXPECT_THROW(grpo::config::from_value<MathAnswerConfig>(bad), std::exception);
}

// Random strings over the characters the parser cares about: no exception, no crash.
TEST(MathAnswerAccuracy, SurvivesRandomText) {
  const std::string alphabet = "0123456789.,-+/%$\\{}()[]^ ebofxacrtdlgh<>/answer";
  std::uint32_t state = 12345;
  auto next = [&] { return state = state * 1664525u + 1013904223u; };
  const std::vector<std::string> pieces = {"\\boxed{", "\\frac",      "}",       "{",        "<answer>", "</answer>",
                                           "\\text{",  "\\times 10^", "\\left(", "\\right)", "\\%",      "\\fbox"};
  for (int trial = 0; trial < 20000; ++trial) {
    std::string text;
    const int length = static_cast<int>(next() % 24);
    for (int k = 0; k < length; ++k) {
      if (next() % 4 == 0) text += pieces[next() % pieces.size()];
      else text += alphabet[next() % alphabet.size()];
    }
    EXPECT_NO_THROW({
      (void)math_accuracy(text, text, kDefault);
      (void)math_accuracy("1/2", text, kDefault);
    }) << text;
  }
}

// Agreement with math-verify on the pairs math_verify_oracle.py writes.
TEST(MathVerifyOracle, AgreesOnSupportedForms) {
  const char* path = std::getenv("GRPO_MATH_VERIFY_CASES");
  if (!path || !*path) GTEST_SKIP() << "GRPO_MATH_VERIFY_CASES is not set (ctest test math_verify_oracle_cpp sets it)";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot read " << path;
  int total = 0, agree = 0, supported = 0, supported_agree = 0;
  std::map<std::string, std::pair<int, int>> by_form;  // form -> (agree, total)
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto row = nlohmann::json::parse(line);
    const std::string reference = row["reference"], completion = row["completion"], form = row["form"];
    const bool theirs = row["verdict"];
    const bool is_supported = row["unsupported"].is_null();
    const bool ours = math_accuracy(reference, completion, kDefault);
    ++total;
    agree += ours == theirs;
    auto& counts = by_form[form.substr(0, form.find('/'))];
    counts.first += ours == theirs;
    ++counts.second;
    if (is_supported) {
      ++supported;
      supported_agree += ours == theirs;
      EXPECT_EQ(ours, theirs) << "form " << form << ": reference '" << reference << "', completion '" << completion
                              << "': ours " << ours << ", math-verify " << theirs;
    } else if (ours != theirs) {
      std::printf("unsupported form %s: reference '%s', completion '%s': ours %d, math-verify %d (%s)\n", form.c_str(),
                  reference.c_str(), completion.c_str(), ours, theirs, row["unsupported"].get<std::string>().c_str());
    }
  }
  ASSERT_GE(total, 500);
  for (const auto& [form, counts] : by_form) {
    std::printf("  %-22s %3d / %3d\n", form.c_str(), counts.first, counts.second);
  }
  std::printf("math-verify agreement: %d / %d pairs (%.1f%%); supported forms %d / %d (%.1f%%)\n", agree, total,
              100.0 * agree / total, supported_agree, supported, 100.0 * supported_agree / supported);
}

}  // namespace
