// The format reward: 1 when a completion has the R1 structure, <think> reasoning </think> then the
// answer, else 0.
//   strict:  exactly <think>...</think> followed by <answer>...</answer> and nothing else
//            (whitespace allowed between and around them)
//   lenient: a closed <think>...</think> followed somewhere later by <answer>...</answer> or \boxed{}
#pragma once

#include <string>
#include <string_view>

#include "grpo/config/config.h"

namespace grpo::rewards {

struct FormatRewardConfig {
  std::string mode = "strict";   // strict | lenient
  bool think_in_prompt = false;  // the prompt already opened <think>: the completion starts inside it

  template <class V>
  void visit(V& v) {
    v("mode", mode, "strict | lenient", config::Check().one_of({"strict", "lenient"}));
    v("think_in_prompt", think_in_prompt, "the prompt ends with <think>: the completion starts inside it");
  }
};

// 1.0 when `completion` has the structure, else 0.0.
double format_score(std::string_view completion, const FormatRewardConfig& cfg);

}  // namespace grpo::rewards
