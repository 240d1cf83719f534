#include "grpo/data/prompt.h"

#include <stdexcept>

#include "grpo/core/log.h"

namespace grpo::data {

std::string format_prompt(const PromptConfig& cfg, const Record& record) {
  std::string out;
  if (!cfg.system.empty()) out += cfg.system + cfg.separator;
  out += cfg.user_prefix + record.prompt + cfg.separator + cfg.assistant_prefix;
  if (cfg.think_in_prompt) out += cfg.separator + cfg.think_open;
  return out;
}

std::string format_answer(const PromptConfig& cfg, const std::string& answer) {
  switch (cfg.answer_style) {
    case AnswerStyle::boxed: return "\\boxed{" + answer + "}";
    case AnswerStyle::answer_tags: break;
  }
  return cfg.answer_open + cfg.separator + answer + cfg.separator + cfg.answer_close;
}

std::string format_completion(const PromptConfig& cfg, const Record& record) {
  std::string out;
  if (!cfg.think_in_prompt) out += cfg.separator + cfg.think_open;
  if (record.reasoning && !record.reasoning->empty()) out += cfg.separator + *record.reasoning;
  out += cfg.separator + cfg.think_close;
  out += cfg.separator + format_answer(cfg, record.answer);
  return out;
}

TokenizedExample tokenize_example(const Tokenizer& tokenizer, const PromptConfig& cfg, const Record& record,
                                  int64_t max_length) {
  if (max_length < 1) {
    throw std::invalid_argument("tokenize_example: max_length must be >= 1, found " + std::to_string(max_length));
  }
  std::vector<int64_t> prompt = tokenizer.encode(format_prompt(cfg, record), cfg.add_special_tokens);
  std::vector<int64_t> completion = tokenizer.encode(format_completion(cfg, record), false);
  if (!cfg.eos_token.empty()) {
    const auto eos = tokenizer.token_to_id(cfg.eos_token);
    if (!eos) {
      throw std::invalid_argument("eos_token '" + cfg.eos_token + "' is not in the tokenizer's vocabulary");
    }
    completion.push_back(*eos);
  }

  TokenizedExample ex;
  const auto n_prompt = static_cast<int64_t>(prompt.size());
  auto n_completion = static_cast<int64_t>(completion.size());
  ex.full_length = n_prompt + n_completion;
  if (ex.full_length > max_length) {
    // A prompt that leaves no completion token to train on is useless in either mode.
    if (cfg.truncation == Truncation::drop || n_prompt >= max_length) {
      ex.dropped = true;
      return ex;
    }
    n_completion = max_length - n_prompt;
    ex.truncated = true;
  }
  ex.prompt_tokens = n_prompt;
  ex.completion_tokens = n_completion;
  ex.input_ids = std::move(prompt);
  ex.input_ids.insert(ex.input_ids.end(), completion.begin(), completion.begin() + n_completion);
  ex.completion_mask.assign(static_cast<std::size_t>(n_prompt), 0);
  ex.completion_mask.resize(static_cast<std::size_t>(n_prompt + n_completion), 1);
  return ex;
}

TokenizeReport tokenize_examples(const Tokenizer& tokenizer, const PromptConfig& cfg,
                                 const std::vector<Record>& records, int64_t max_length) {
  TokenizeReport report;
  report.examples.reserve(records.size());
  const Record* first_long = nullptr;
  int64_t first_long_length = 0;
  for (const Record& r : records) {
    TokenizedExample ex = tokenize_example(tokenizer, cfg, r, max_length);
    if (ex.dropped || ex.truncated) {
      if (first_long == nullptr) {
        first_long = &r;
        first_long_length = ex.full_length;
      }
    }
    if (ex.dropped) {
      ++report.dropped;
      continue;
    }
    if (ex.truncated) ++report.truncated;
    report.examples.push_back(std::move(ex));
  }
  report.kept = static_cast<int64_t>(report.examples.size());
  if (first_long != nullptr) {
    log::warn(
        "tokenize: {} of {} records longer than max_length {}: {} dropped, {} truncated "
        "(truncation: {}); the first is {} with {} tokens",
        report.dropped + report.truncated, records.size(), max_length, report.dropped, report.truncated,
        config::enum_name(cfg.truncation), first_long->where(), first_long_length);
  }
  return report;
}

}  // namespace grpo::data
