// Prompt formatting: a Record as the text the model sees (the DeepSeek-R1 template) and the
// completion it is trained to write, and both as token ids with a mask of the trained tokens.
//
// With the defaults (R1's template, answer tags, a space as separator):
//
//   format_prompt:      "A conversation between User and Assistant. ... </answer>. User: What is
//                        2 + 3? Assistant:"
//   format_completion:  " <think> 2 + 3 = 5 </think> <answer> 5 </answer>"
//
// The completion starts with the separator, so that a byte-level BPE sees " <think>" exactly as it
// would in the whole text. With `think_in_prompt` the prompt ends in "Assistant: <think>" and the
// completion starts with the reasoning: the model is made to think first (R1-Zero's set-up).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/data/record.h"
#include "grpo/data/tokenizer.h"

namespace grpo::data {

// The system text of DeepSeek-R1's training template (R1 paper, table 1).
inline constexpr const char* kR1SystemPrompt =
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user "
    "with the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> "
    "answer here </answer>.";

// How the final answer is written in a completion.
enum class AnswerStyle {
  answer_tags,  // "<answer> 42 </answer>" (answer_open, answer_close)
  boxed,        // "\boxed{42}"
};
constexpr auto config_enum_names(AnswerStyle) {
  return std::array{std::pair{AnswerStyle::answer_tags, "answer_tags"}, std::pair{AnswerStyle::boxed, "boxed"}};
}

// What tokenize_example does with a prompt + completion longer than max_length.
enum class Truncation {
  drop,            // drop the record (reported as dropped)
  cut_completion,  // keep the whole prompt and the completion's first tokens (reported as truncated)
};
constexpr auto config_enum_names(Truncation) {
  return std::array{std::pair{Truncation::drop, "drop"}, std::pair{Truncation::cut_completion, "cut_completion"}};
}

struct PromptConfig {
  std::string system = kR1SystemPrompt;         // text before the user turn; "" = none
  std::string user_prefix = "User: ";           // written before the record's prompt
  std::string assistant_prefix = "Assistant:";  // the prompt ends with it (then think_open with think_in_prompt)
  std::string separator = " ";                  // between system, user turn, assistant turn and each tag
  bool think_in_prompt = false;                 // end the prompt with "<think>": the model must reason first
  AnswerStyle answer_style = AnswerStyle::answer_tags;  // answer_tags | boxed
  std::string think_open = "<think>";
  std::string think_close = "</think>";
  std::string answer_open = "<answer>";
  std::string answer_close = "</answer>";
  std::string eos_token;                               // appended to the completion's ids; "" = none, e.g. "</s>"
  bool add_special_tokens = true;                      // let the tokenizer add its BOS (or the like) to the prompt
  Truncation truncation = Truncation::cut_completion;  // drop | cut_completion

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("system", system, "system text before the user turn (default: DeepSeek-R1's); \"\" = none");
    v("user_prefix", user_prefix, "written before the question");
    v("assistant_prefix", assistant_prefix, "the prompt ends with it; the completion follows");
    v("separator", separator, "between the system text, the turns and each tag");
    v("think_in_prompt", think_in_prompt, "end the prompt with think_open, so the model reasons first");
    v("answer_style", answer_style, "answer_tags: <answer> 42 </answer>; boxed: \\boxed{42}");
    v("think_open", think_open, "opens the reasoning", Check().nonempty());
    v("think_close", think_close, "closes the reasoning", Check().nonempty());
    v("answer_open", answer_open, "opens the answer (answer_tags)", Check().nonempty());
    v("answer_close", answer_close, "closes the answer (answer_tags)", Check().nonempty());
    v("eos_token", eos_token, "token appended to completions (e.g. the tokenizer's EOS); \"\" = none");
    v("add_special_tokens", add_special_tokens, "let the tokenizer add its BOS to the prompt");
    v("truncation", truncation, "too long for max_length: drop the record, or cut_completion");
  }
};

// The text the model sees before it generates: system, user turn, assistant prefix (and
// think_open with think_in_prompt), joined by the separator.
std::string format_prompt(const PromptConfig& cfg, const Record& record);

// The SFT target that follows format_prompt: the reasoning in think tags, then the answer in the
// configured style, each part preceded by the separator. A record without reasoning gets empty
// think tags ("<think> </think>" with the default separator). The EOS token is not part of the text
// (tokenize_example appends its id).
std::string format_completion(const PromptConfig& cfg, const Record& record);

// The answer as the completion writes it: "<answer> 42 </answer>" or "\boxed{42}".
std::string format_answer(const PromptConfig& cfg, const std::string& answer);

struct TokenizedExample {
  std::vector<int64_t> input_ids;        // (T) prompt ids then completion ids; empty when dropped
  std::vector<int64_t> completion_mask;  // (T) 1 for completion tokens (trained on), 0 for prompt tokens
  int64_t prompt_tokens = 0;             // prompt ids, all kept (the prompt is never cut)
  int64_t completion_tokens = 0;         // completion ids kept (EOS included)
  int64_t full_length = 0;               // prompt + completion ids before any truncation
  bool truncated = false;                // the completion was cut to max_length
  bool dropped = false;                  // too long: nothing kept
};

// Tokenizes format_prompt and format_completion separately (prompt with cfg.add_special_tokens,
// completion without) and concatenates them, so the mask boundary is exactly the text boundary;
// appends the EOS id when cfg.eos_token is set. When the total exceeds max_length: drop, or cut the
// completion to fit; a prompt that leaves no room for a single completion token is always dropped.
// Throws std::invalid_argument naming the token when eos_token is not in the vocabulary, and when
// max_length < 1.
TokenizedExample tokenize_example(const Tokenizer& tokenizer, const PromptConfig& cfg, const Record& record,
                                  int64_t max_length);

struct TokenizeReport {
  std::vector<TokenizedExample> examples;  // the kept ones (whole or truncated), in record order
  int64_t kept = 0;                        // examples.size()
  int64_t truncated = 0;                   // kept with a cut completion
  int64_t dropped = 0;                     // not in `examples`
};

// tokenize_example over many records; logs one warning with the counts when any record was cut or
// dropped, naming the first such record.
TokenizeReport tokenize_examples(const Tokenizer& tokenizer, const PromptConfig& cfg,
                                 const std::vector<Record>& records, int64_t max_length);

}  // namespace grpo::data
