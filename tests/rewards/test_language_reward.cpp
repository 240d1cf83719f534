// The language-consistency reward: words by Unicode script, scopes, LaTeX and code skipping.
#include "grpo/rewards/language_reward.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace grpo::rewards {
namespace {

LanguageRewardConfig target(const std::string& script) {
  LanguageRewardConfig cfg;
  cfg.script = script;
  return cfg;
}

int64_t total_words(std::string_view text, const LanguageRewardConfig& cfg = {}) {
  return count_script_words(text, cfg).total;
}

TEST(LanguageReward, WholeScripts) {
  EXPECT_EQ(language_consistency("<think>First add 3 and 4, which gives 7. Don't forget the carry!</think>"
                                 "<answer>7</answer>",
                                 {}),
            1.0);
  EXPECT_EQ(language_consistency("<think>我们先把三和四相加，得到七。</think><answer>7</answer>", {}), 0.0);
  EXPECT_EQ(language_consistency("<think>Сначала сложим три и четыре.</think>", target("cyrillic")), 1.0);
  EXPECT_EQ(language_consistency("<think>我们先相加</think>", target("han")), 1.0);
  EXPECT_EQ(language_consistency("<think>ひらがなとカタカナと漢字</think>", target("japanese")), 1.0);
  EXPECT_EQ(language_consistency("<think>Πρώτα προσθέτουμε</think>", target("greek")), 1.0);
  EXPECT_EQ(language_consistency("<think>안녕하세요 세계</think>", target("hangul")), 1.0);
  EXPECT_EQ(language_consistency("<think>สวัสดี</think>", target("thai")), 1.0);
  EXPECT_EQ(language_consistency("<think>नमस्ते दुनिया</think>", target("devanagari")), 1.0);
}

TEST(LanguageReward, HandCountedMixture) {
  // 6 English words and 2 Han characters (each one word): 6 / 8.
  const std::string text = "<think>So we need the 总数 of apples</think>";
  EXPECT_EQ(count_script_words(language_scope_text(text, "think"), {}).total, 8);
  EXPECT_EQ(count_script_words(language_scope_text(text, "think"), {}).target, 6);
  EXPECT_EQ(language_consistency(text, {}), 0.75);
  EXPECT_EQ(language_consistency(text, target("han")), 0.25);
  // Scripts change inside a run without spaces: "abcабв" is two words.
  EXPECT_EQ(total_words("abcабв"), 2);
  // Digits and punctuation are not words; apostrophes and combining marks continue a word.
  EXPECT_EQ(total_words("12 + 34 = 46!!"), 0);
  EXPECT_EQ(total_words("don't stop, nai\xCC\x88ve x2y"), 5);  // don't, stop, naïve, x, y
}

TEST(LanguageReward, LatexAndCodeAreSkipped) {
  // Counted words: So, the, answer, is, and, done (6). Not: frac, sqrt, x, text in math, code.
  const std::string text =
      "So the answer is \\frac{1}{2} and \\sqrt{4} $x^2 + y$ \\(a b\\) \\[c d\\] $$e f$$\n"
      "```python\nprint(value)\n```\ndone";
  EXPECT_EQ(total_words(text), 6);
  LanguageRewardConfig raw;
  raw.skip_latex = false;
  EXPECT_GT(total_words(text, raw), 6);
  EXPECT_EQ(total_words("\\text{apples} cost"), 2);  // \text's argument is prose
  EXPECT_EQ(total_words("costs $5"), 1);             // an unclosed $ is left alone
  EXPECT_EQ(total_words("```\nunclosed code fence"), 0);
  // Chinese reasoning with LaTeX math is still all Han.
  EXPECT_EQ(language_consistency("<think>计算 $\\frac{a}{b}$ 的值</think>", target("han")), 1.0);
}

TEST(LanguageReward, Scopes) {
  const std::string text = "<think>Let us compute this</think><answer>答案是七</answer>";
  EXPECT_EQ(language_consistency(text, {}), 1.0);
  LanguageRewardConfig whole;
  whole.scope = "completion";
  EXPECT_EQ(language_consistency(text, whole), 4.0 / 8.0);  // 4 English words, 4 Han characters (tags are not words)
  // The prompt opened <think>: the reasoning is what comes before </think>.
  EXPECT_EQ(language_scope_text("Let us compute</think> 答案", "think"), "Let us compute");
  EXPECT_EQ(language_consistency("Let us compute</think> 答案", {}), 1.0);
  // An unclosed think block runs to the end; no tags at all: the whole completion.
  EXPECT_EQ(language_scope_text("x <think>still thinking", "think"), "still thinking");
  EXPECT_EQ(language_scope_text("plain text", "think"), "plain text");
}

TEST(LanguageReward, InvalidUtf8IsSkipped) {
  EXPECT_EQ(total_words("good\xff\xfe words \xc3 here \xe4\xb8"), 3);  // good, words, here
  EXPECT_EQ(total_words("ab\xff"
                        "cd"),
            2);  // an invalid byte ends a word
  EXPECT_EQ(language_consistency("<think>\x80\x81\xc0\xaf ok</think>", {}), 1.0);
  std::string noise;
  for (int b = 0; b < 256; ++b) noise += static_cast<char>(b);
  EXPECT_NO_THROW(language_consistency(noise + noise, {}));
}

TEST(LanguageReward, EmptyReasoning) {
  EXPECT_EQ(language_consistency("<think>  12 + 3 = 15  </think>", {}), 0.0);
  LanguageRewardConfig absent;
  absent.empty_score = "absent";
  EXPECT_EQ(language_consistency("<think></think><answer>x</answer>", absent), std::nullopt);
  const auto fn = make_language_reward(absent);
  EXPECT_EQ(fn->name(), "language");
  std::vector<Sample> batch(2);
  batch[0].completion = "<think>one two</think>";
  batch[1].completion = "<think>42</think>";
  const auto out = fn->score(batch);
  ASSERT_EQ(out.scores.size(), 2u);
  EXPECT_EQ(out.scores[0], 1.0);
  EXPECT_FALSE(out.scores[1].has_value());
  EXPECT_EQ(out.reasons[0], "2 of 2 words latin");
  EXPECT_EQ(out.reasons[1], "no words");
  EXPECT_DOUBLE_EQ(out.metrics.at("no_words_fraction"), 0.5);
  EXPECT_DOUBLE_EQ(out.metrics.at("mean_words"), 1.0);
}

TEST(LanguageReward, ConfigErrors) {
  const auto load = [](const std::string& yaml) {
    return config::from_value<LanguageRewardConfig>(config::parse_yaml_string(yaml, "r.yaml"));
  };
  EXPECT_EQ(load("script: cyrillic\nscope: completion\n").script, "cyrillic");
  GRPO_EXPECT_THROW_MESSAGE(load("script: latn\n"), config::ConfigError,
                            "r.yaml:1:9: script: expected one of latin, han, cyrillic, greek, arabic, hebrew, "
                            "devanagari, hangul, japanese, thai, found 'latn' (did you mean 'latin'?)");
  EXPECT_THROW(load("scope: answer\n"), config::ConfigError);
  EXPECT_THROW(load("empty_score: one\n"), config::ConfigError);
  GRPO_EXPECT_THROW_MESSAGE(make_language_reward(target("klingon")), std::invalid_argument,
                            "language reward: unknown script 'klingon'; known: latin, han, cyrillic, greek, arabic, "
                            "hebrew, devanagari, hangul, japanese, thai");
}

}  // namespace
}  // namespace grpo::rewards
