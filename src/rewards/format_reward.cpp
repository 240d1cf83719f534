#include "grpo/rewards/format_reward.h"

namespace grpo::rewards {
namespace {

// Plain string scanning rather than std::regex: libstdc++'s regex recurses per character and can
// exhaust the stack on completions of many thousands of characters.

size_t skip_space(std::string_view s, size_t pos) {
  while (pos < s.size() && (s[pos] == ' ' || s[pos] == '\n' || s[pos] == '\t' || s[pos] == '\r')) ++pos;
  return pos;
}

bool starts_at(std::string_view s, size_t pos, std::string_view what) { return s.substr(pos, what.size()) == what; }

}  // namespace

double format_score(std::string_view text, const FormatRewardConfig& cfg) {
  constexpr std::string_view open_think = "<think>", close_think = "</think>";
  constexpr std::string_view open_answer = "<answer>", close_answer = "</answer>";
  size_t pos = 0;
  if (!cfg.think_in_prompt) {
    pos = text.find(open_think);
    if (pos == std::string_view::npos) return 0.0;
    if (cfg.mode == "strict" && skip_space(text, 0) != pos) return 0.0;  // nothing before <think>
    pos += open_think.size();
  }
  const size_t think_end = text.find(close_think, pos);
  if (think_end == std::string_view::npos) return 0.0;
  const std::string_view reasoning = text.substr(pos, think_end - pos);
  pos = think_end + close_think.size();

  if (cfg.mode == "lenient") {
    const size_t answer = text.find(open_answer, pos);
    if (answer != std::string_view::npos &&
        text.find(close_answer, answer + open_answer.size()) != std::string_view::npos) {
      return 1.0;
    }
    return text.find("\\boxed{", pos) != std::string_view::npos ? 1.0 : 0.0;
  }
  // strict: one reasoning block, then exactly one answer block, then only whitespace.
  if (reasoning.find(open_think) != std::string_view::npos) return 0.0;
  pos = skip_space(text, pos);
  if (!starts_at(text, pos, open_answer)) return 0.0;
  pos += open_answer.size();
  const size_t answer_end = text.find(close_answer, pos);
  if (answer_end == std::string_view::npos) return 0.0;
  if (text.substr(pos, answer_end - pos).find(open_answer) != std::string_view::npos) return 0.0;
  return skip_space(text, answer_end + close_answer.size()) == text.size() ? 1.0 : 0.0;
}

}  // namespace grpo::rewards
