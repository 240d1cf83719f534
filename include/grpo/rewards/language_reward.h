// The language-consistency reward (registry name "language"), as in DeepSeek-R1: the share of the
// chain of thought's words that are written in the target script.
//
//   language_consistency("<think>Let me add 3 and 4.</think> <answer>7</answer>", {})   -> 1.0
//   language_consistency("<think>Let me 计算 this</think>", {})                          -> 3/5 (2 Han words)
//
// Words: a word is a maximal run of letters (u_isalpha) of one Unicode script; combining marks and
// apostrophes (' and U+2019) inside a word continue it ("don't", "naïve" written with a combining
// diaeresis). For Han, Hiragana, Katakana and Thai, written without spaces between words, each letter
// counts as one word (so "我们计算" is 4 words: counting characters, not dictionary words).
// Letters of the Common or Inherited script join the word they touch and never count on their own.
// Digits, punctuation and symbols are not words, nor are the tags <think> </think> <answer> </answer>. Invalid UTF-8 bytes are skipped (they end a word).
//
// Scope "think": the text inside <think>...</think> (to the end when it never closes); without
// "<think>" but with "</think>" (the prompt opened the block) the text before "</think>"; with
// neither, the whole completion. Scope "completion": the whole completion.
//
// skip_latex removes, before counting: code inside ``` fences, math inside $$...$$, $...$, \(...\)
// and \[...\], and the names of \commands (\frac, \text; the argument of \text{...} outside math is
// still prose and counts). An unclosed $ is left as is.
//
// Score = target-script words / all words; a text with no words scores 0 (empty_score zero) or is
// absent (empty_score absent).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "grpo/config/config.h"
#include "grpo/rewards/reward.h"

namespace grpo::rewards {

struct LanguageRewardConfig {
  std::string script = "latin";      // target script: latin, han, cyrillic, greek, arabic, hebrew, devanagari,
                                     // hangul, japanese (hiragana + katakana + han), thai
  std::string scope = "think";       // think (the reasoning block) | completion (all of it)
  bool skip_latex = true;            // skip \command names, $...$ / \(..\) / \[..\] math and ``` code fences
  std::string empty_score = "zero";  // no words to judge: zero (score 0) | absent (does not apply)

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("script", script, "target script of the reasoning",
      Check().one_of(
          {"latin", "han", "cyrillic", "greek", "arabic", "hebrew", "devanagari", "hangul", "japanese", "thai"}));
    v("scope", scope, "think: the <think> block; completion: the whole completion",
      Check().one_of({"think", "completion"}));
    v("skip_latex", skip_latex, "skip \\command names, inline/display math and ``` code fences");
    v("empty_score", empty_score, "a text without words: zero (score 0) or absent", Check().one_of({"zero", "absent"}));
  }
};

struct WordCount {
  int64_t target = 0;  // words in the target script
  int64_t total = 0;   // all words
};

// The part of `completion` that `scope` judges (see the top comment).
std::string_view language_scope_text(std::string_view completion, const std::string& scope);

// Counts the words of `text` (already scoped), after the skip_latex removal when enabled.
WordCount count_script_words(std::string_view text, const LanguageRewardConfig& cfg);

// target / total words of the scoped completion; nullopt only for no words with empty_score absent.
std::optional<double> language_consistency(std::string_view completion, const LanguageRewardConfig& cfg);

// Registry name "language". Throws std::invalid_argument for an unknown script, scope or empty_score.
// Metrics: no_words_fraction, mean_words.
std::unique_ptr<RewardFunction> make_language_reward(const LanguageRewardConfig& cfg);

}  // namespace grpo::rewards
