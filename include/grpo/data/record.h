// Record: one problem of a dataset, as the prompt formatter, the SFT trainer and the reward
// functions see it, whichever file or generator it came from.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace grpo::data {

struct Record {
  std::string prompt;                        // the question, as the user asks it
  std::string answer;                        // the reference answer: "42", "\frac{1}{2}", "(25 - 7) * 3"
  std::optional<std::string> reasoning;      // worked solution for SFT; nullopt for RL-only prompts
  std::map<std::string, std::string> extra;  // other columns for reward functions: a string column
                                             // as its text, any other JSON value as compact JSON
  std::string source;                        // provenance for messages: file path or "generator:countdown"
  int64_t line = 0;                          // 1-based line in `source` (index + 1 for generators)

  // "data/gsm8k.jsonl:17": where this record came from, for error messages.
  std::string where() const { return source + ":" + std::to_string(line); }
};

}  // namespace grpo::data
