#include "grpo/rewards/language_reward.h"

#include <unicode/uchar.h>
#include <unicode/uscript.h>
#include <unicode/utf8.h>

#include <stdexcept>
#include <vector>

namespace grpo::rewards {
namespace {

// The scripts a target name accepts; empty for an unknown name.
std::vector<UScriptCode> target_scripts(const std::string& name) {
  if (name == "latin") return {USCRIPT_LATIN};
  if (name == "han") return {USCRIPT_HAN};
  if (name == "cyrillic") return {USCRIPT_CYRILLIC};
  if (name == "greek") return {USCRIPT_GREEK};
  if (name == "arabic") return {USCRIPT_ARABIC};
  if (name == "hebrew") return {USCRIPT_HEBREW};
  if (name == "devanagari") return {USCRIPT_DEVANAGARI};
  if (name == "hangul") return {USCRIPT_HANGUL};
  if (name == "japanese") return {USCRIPT_HIRAGANA, USCRIPT_KATAKANA, USCRIPT_HAN};
  if (name == "thai") return {USCRIPT_THAI};
  return {};
}

// Scripts written without spaces between words: each letter is a word.
bool letter_is_word(UScriptCode s) {
  return s == USCRIPT_HAN || s == USCRIPT_HIRAGANA || s == USCRIPT_KATAKANA || s == USCRIPT_THAI;
}

bool is_ascii_letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// `text` with code fences, math and \command names replaced by a space (so that they split words).
std::string strip_markup(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  // Skips from i past the closing `close` of a span opened by `open`; false (nothing skipped) when
  // it never closes and `unclosed_to_end` is false.
  const auto skip_span = [&](std::string_view open, std::string_view close, bool unclosed_to_end) {
    if (text.substr(i, open.size()) != open) return false;
    const size_t end = text.find(close, i + open.size());
    if (end == std::string_view::npos && !unclosed_to_end) return false;
    i = end == std::string_view::npos ? text.size() : end + close.size();
    out += ' ';
    return true;
  };
  while (i < text.size()) {
    if (skip_span("```", "```", true) || skip_span("$$", "$$", false) || skip_span("\\(", "\\)", false) ||
        skip_span("\\[", "\\]", false) || skip_span("$", "$", false)) {
      continue;
    }
    if (text[i] == '\\' && i + 1 < text.size() && is_ascii_letter(text[i + 1])) {
      ++i;
      while (i < text.size() && is_ascii_letter(text[i])) ++i;
      out += ' ';
      continue;
    }
    out += text[i++];
  }
  return out;
}

// `text` with the format's tags (<think> </think> <answer> </answer>) replaced by a space: they are not words.
std::string remove_format_tags(std::string_view text) {
  static constexpr std::string_view kTags[] = {"<think>", "</think>", "<answer>", "</answer>"};
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    bool tag = false;
    for (std::string_view t : kTags) {
      if (text.substr(i, t.size()) == t) {
        out += ' ';
        i += t.size();
        tag = true;
        break;
      }
    }
    if (!tag) out += text[i++];
  }
  return out;
}

class LanguageReward : public RewardFunction {
 public:
  explicit LanguageReward(LanguageRewardConfig cfg) : cfg_(std::move(cfg)) {}
  std::string name() const override { return "language"; }
  RewardBatch score(const std::vector<Sample>& batch) const override {
    RewardBatch out;
    int64_t no_words = 0, words = 0;
    for (const auto& s : batch) {
      const WordCount count = count_script_words(language_scope_text(s.completion, cfg_.scope), cfg_);
      words += count.total;
      if (count.total == 0) {
        ++no_words;
        out.scores.push_back(cfg_.empty_score == "zero" ? std::optional<double>(0.0) : std::nullopt);
        out.reasons.push_back("no words");
        continue;
      }
      out.scores.push_back(static_cast<double>(count.target) / static_cast<double>(count.total));
      out.reasons.push_back(std::to_string(count.target) + " of " + std::to_string(count.total) + " words " +
                            cfg_.script);
    }
    if (!batch.empty()) {
      const double n = static_cast<double>(batch.size());
      out.metrics["no_words_fraction"] = no_words / n;
      out.metrics["mean_words"] = words / n;
    }
    return out;
  }

 private:
  LanguageRewardConfig cfg_;
};

}  // namespace

std::string_view language_scope_text(std::string_view completion, const std::string& scope) {
  if (scope == "completion") return completion;
  constexpr std::string_view open = "<think>", close = "</think>";
  const size_t start = completion.find(open);
  if (start != std::string_view::npos) {
    const size_t body = start + open.size();
    const size_t end = completion.find(close, body);
    return completion.substr(body, end == std::string_view::npos ? std::string_view::npos : end - body);
  }
  const size_t end = completion.find(close);
  return end == std::string_view::npos ? completion : completion.substr(0, end);
}

WordCount count_script_words(std::string_view text, const LanguageRewardConfig& cfg) {
  const std::vector<UScriptCode> targets = target_scripts(cfg.script);
  if (targets.empty()) throw std::invalid_argument("language reward: unknown script '" + cfg.script + "'");
  const std::string stripped = remove_format_tags(cfg.skip_latex ? strip_markup(text) : std::string(text));
  const auto* s = reinterpret_cast<const uint8_t*>(stripped.data());
  const auto n = static_cast<int64_t>(stripped.size());

  WordCount count;
  const auto add_word = [&](UScriptCode script) {
    ++count.total;
    for (UScriptCode t : targets) count.target += t == script;
  };
  bool in_word = false;
  UScriptCode current = USCRIPT_INVALID_CODE;
  for (int64_t i = 0; i < n;) {
    UChar32 c = 0;
    U8_NEXT(s, i, n, c);
    if (c < 0) {  // an invalid byte sequence: skipped, ends the word
      in_word = false;
      continue;
    }
    if (u_isalpha(c)) {
      UErrorCode error = U_ZERO_ERROR;
      const UScriptCode script = uscript_getScript(c, &error);
      if (U_FAILURE(error) || script == USCRIPT_COMMON || script == USCRIPT_INHERITED) continue;  // joins its word
      if (letter_is_word(script) || !in_word || script != current) add_word(script);
      in_word = true;
      current = script;
      continue;
    }
    const bool mark = (U_GET_GC_MASK(c) & U_GC_M_MASK) != 0;
    if (mark || c == '\'' || c == 0x2019) continue;  // inside a word it continues it; elsewhere nothing
    in_word = false;
  }
  return count;
}

std::optional<double> language_consistency(std::string_view completion, const LanguageRewardConfig& cfg) {
  const WordCount count = count_script_words(language_scope_text(completion, cfg.scope), cfg);
  if (count.total == 0) return cfg.empty_score == "zero" ? std::optional<double>(0.0) : std::nullopt;
  return static_cast<double>(count.target) / static_cast<double>(count.total);
}

std::unique_ptr<RewardFunction> make_language_reward(const LanguageRewardConfig& cfg) {
  if (target_scripts(cfg.script).empty()) {
    throw std::invalid_argument("language reward: unknown script '" + cfg.script +
                                "'; known: latin, han, cyrillic, greek, arabic, hebrew, devanagari, hangul, "
                                "japanese, thai");
  }
  if (cfg.scope != "think" && cfg.scope != "completion") {
    throw std::invalid_argument("language reward: scope must be think or completion, found '" + cfg.scope + "'");
  }
  if (cfg.empty_score != "zero" && cfg.empty_score != "absent") {
    throw std::invalid_argument("language reward: empty_score must be zero or absent, found '" + cfg.empty_score + "'");
  }
  return std::make_unique<LanguageReward>(cfg);
}

}  // namespace grpo::rewards
