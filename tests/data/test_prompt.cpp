// Prompt formatting: the R1 template's exact text, the completion, token ids and the completion mask.
#include <gtest/gtest.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/data/prompt.h"
#include "test_util.h"

namespace {

using grpo::data::AnswerStyle;
using grpo::data::format_completion;
using grpo::data::format_prompt;
using grpo::data::PromptConfig;
using grpo::data::Record;
using grpo::data::tokenize_example;
using grpo::data::tokenize_examples;
using grpo::data::Truncation;

// One id per byte (0..255), "<bos>" = 256 added by add_special_tokens, "</s>" = 257. Written here so
// these tests do not depend on the BPE implementation.
class ByteTokenizer : public grpo::data::Tokenizer {
 public:
  static constexpr int64_t kBos = 256, kEos = 257;
  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens) const override {
    std::vector<int64_t> ids;
    if (add_special_tokens) ids.push_back(kBos);
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::string out;
    for (int64_t id : ids) {
      if (id < 256) {
        out += static_cast<char>(id);
      } else if (!skip_special_tokens) {
        out += id == kBos ? "<bos>" : "</s>";
      }
    }
    return out;
  }
  int64_t vocab_size() const override { return 258; }
  std::optional<int64_t> token_to_id(std::string_view token) const override {
    if (token == "<bos>") return kBos;
    if (token == "</s>") return kEos;
    if (token.size() == 1) return static_cast<unsigned char>(token[0]);
    return std::nullopt;
  }
  std::optional<std::string> id_to_token(int64_t id) const override {
    if (id < 0 || id >= 258) return std::nullopt;
    return decode({id}, false);
  }
  bool is_special(int64_t id) const override { return id >= 256; }
};

// Like ByteTokenizer, but ": " is one token (300): encoding the prompt and the completion as one
// text would put that token across the boundary ("Assistant:" + " <think>").
class MergingTokenizer : public ByteTokenizer {
 public:
  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens) const override {
    std::vector<int64_t> ids;
    if (add_special_tokens) ids.push_back(kBos);
    for (std::size_t i = 0; i < text.size(); ++i) {
      if (text[i] == ':' && i + 1 < text.size() && text[i + 1] == ' ') {
        ids.push_back(300);
        ++i;
      } else {
        ids.push_back(static_cast<unsigned char>(text[i]));
      }
    }
    return ids;
  }
  int64_t vocab_size() const override { return 301; }
};

Record sum_record() {
  Record r;
  r.prompt = "What is 2 + 3?";
  r.answer = "5";
  r.reasoning = "2 + 3 = 5";
  return r;
}

std::vector<int64_t> bytes(const std::string& s) { return std::vector<int64_t>(s.begin(), s.end()); }

TEST(Prompt, DefaultIsTheR1TemplateExactly) {
  const PromptConfig cfg;
  EXPECT_EQ(format_prompt(cfg, sum_record()),
            "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
            "The assistant first thinks about the reasoning process in the mind and then provides the user with "
            "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
            "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
            "</answer>. User: What is 2 + 3? Assistant:");
  EXPECT_EQ(format_completion(cfg, sum_record()), " <think> 2 + 3 = 5 </think> <answer> 5 </answer>");
}

TEST(Prompt, ThinkInPromptMovesTheOpeningTagIntoThePrompt) {
  PromptConfig cfg;
  cfg.system = "";
  cfg.think_in_prompt = true;
  EXPECT_EQ(format_prompt(cfg, sum_record()), "User: What is 2 + 3? Assistant: <think>");
  EXPECT_EQ(format_completion(cfg, sum_record()), " 2 + 3 = 5 </think> <answer> 5 </answer>");
  // Prompt + completion is the text the whole template describes.
  EXPECT_EQ(format_prompt(cfg, sum_record()) + format_completion(cfg, sum_record()),
            "User: What is 2 + 3? Assistant: <think> 2 + 3 = 5 </think> <answer> 5 </answer>");
}

TEST(Prompt, BoxedStyleAndMissingReasoning) {
  PromptConfig cfg;
  cfg.answer_style = AnswerStyle::boxed;
  Record r = sum_record();
  r.answer = "\\frac{1}{2}";
  EXPECT_EQ(format_completion(cfg, r), " <think> 2 + 3 = 5 </think> \\boxed{\\frac{1}{2}}");
  r.reasoning.reset();
  EXPECT_EQ(format_completion(cfg, r), " <think> </think> \\boxed{\\frac{1}{2}}");
  cfg.answer_style = AnswerStyle::answer_tags;
  r.reasoning = "";
  EXPECT_EQ(format_completion(cfg, r), " <think> </think> <answer> \\frac{1}{2} </answer>");
}

TEST(Prompt, EveryPieceIsConfigurable) {
  PromptConfig cfg;
  cfg.system = "Solve it.";
  cfg.user_prefix = "Q: ";
  cfg.assistant_prefix = "A:";
  cfg.separator = "\n";
  cfg.think_open = "<reason>";
  cfg.think_close = "</reason>";
  cfg.answer_open = "<final>";
  cfg.answer_close = "</final>";
  EXPECT_EQ(format_prompt(cfg, sum_record()), "Solve it.\nQ: What is 2 + 3?\nA:");
  EXPECT_EQ(format_completion(cfg, sum_record()), "\n<reason>\n2 + 3 = 5\n</reason>\n<final>\n5\n</final>");
}

TEST(Prompt, ConfigLoadsFromYamlAndRejectsUnknownStyles) {
  const auto cfg = grpo::config::from_value<PromptConfig>(grpo::config::parse_yaml_string(
      "system: ''\nanswer_style: boxed\ntruncation: drop\nthink_in_prompt: true\neos_token: '</s>'\n", "p.yaml"));
  EXPECT_EQ(cfg.system, "");
  EXPECT_EQ(cfg.answer_style, AnswerStyle::boxed);
  EXPECT_EQ(cfg.truncation, Truncation::drop);
  EXPECT_TRUE(cfg.think_in_prompt);
  EXPECT_EQ(cfg.eos_token, "</s>");
  EXPECT_EQ(PromptConfig().system, grpo::data::kR1SystemPrompt);
  GRPO_EXPECT_THROW_MESSAGE(
      grpo::config::from_value<PromptConfig>(grpo::config::parse_yaml_string("answer_style: boxd\n", "p.yaml")),
      grpo::config::ConfigError,
      "p.yaml:1:15: answer_style: expected one of answer_tags, boxed, found 'boxd' (did you mean 'boxed'?)");
}

TEST(Prompt, TokenizedExampleConcatenatesPromptAndCompletionWithAnExactMask) {
  const ByteTokenizer tok;
  PromptConfig cfg;
  cfg.system = "";
  cfg.eos_token = "</s>";
  const Record r = sum_record();
  const auto ex = tokenize_example(tok, cfg, r, 1000);
  const std::string prompt = "User: What is 2 + 3? Assistant:";
  const std::string completion = " <think> 2 + 3 = 5 </think> <answer> 5 </answer>";

  std::vector<int64_t> expected = {ByteTokenizer::kBos};
  for (int64_t id : bytes(prompt)) expected.push_back(id);
  for (int64_t id : bytes(completion)) expected.push_back(id);
  expected.push_back(ByteTokenizer::kEos);
  EXPECT_EQ(ex.input_ids, expected);

  const auto n_prompt = static_cast<int64_t>(prompt.size()) + 1;  // + BOS
  EXPECT_EQ(ex.prompt_tokens, n_prompt);
  EXPECT_EQ(ex.completion_tokens, static_cast<int64_t>(completion.size()) + 1);  // + EOS
  EXPECT_EQ(ex.full_length, static_cast<int64_t>(expected.size()));
  ASSERT_EQ(ex.completion_mask.size(), ex.input_ids.size());
  for (std::size_t i = 0; i < ex.completion_mask.size(); ++i) {
    EXPECT_EQ(ex.completion_mask[i], static_cast<int64_t>(i) >= n_prompt ? 1 : 0) << "position " << i;
  }
  EXPECT_FALSE(ex.truncated);
  EXPECT_FALSE(ex.dropped);

  // The masked tokens decode to exactly the completion (and EOS).
  std::vector<int64_t> trained;
  for (std::size_t i = 0; i < ex.input_ids.size(); ++i) {
    if (ex.completion_mask[i]) trained.push_back(ex.input_ids[i]);
  }
  EXPECT_EQ(tok.decode(trained, false), completion + "</s>");

  cfg.add_special_tokens = false;
  cfg.eos_token = "";
  const auto plain = tokenize_example(tok, cfg, r, 1000);
  EXPECT_EQ(plain.prompt_tokens, static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(tok.decode(plain.input_ids, false), prompt + completion);
}

TEST(Prompt, BoundaryIsExactEvenWhereJointTokenizationWouldMergeAcrossIt) {
  const MergingTokenizer tok;
  PromptConfig cfg;
  cfg.system = "";
  cfg.add_special_tokens = false;
  const Record r = sum_record();
  const std::string prompt = format_prompt(cfg, r);
  const std::string completion = format_completion(cfg, r);
  // Encoded as one text, ": " would be a single token straddling "Assistant:" | " <think>".
  const auto joint = tok.encode(prompt + completion, false);
  const auto ex = tokenize_example(tok, cfg, r, 1000);
  EXPECT_EQ(ex.input_ids.size(), joint.size() + 1);
  const std::vector<int64_t> prompt_ids(ex.input_ids.begin(), ex.input_ids.begin() + ex.prompt_tokens);
  const std::vector<int64_t> completion_ids(ex.input_ids.begin() + ex.prompt_tokens, ex.input_ids.end());
  EXPECT_EQ(prompt_ids, tok.encode(prompt, false));
  EXPECT_EQ(completion_ids, tok.encode(completion, false));
  EXPECT_EQ(prompt_ids.back(), ':');
  EXPECT_EQ(completion_ids.front(), ' ');
}

TEST(Prompt, TruncationCutsTheCompletionOrDropsTheRecord) {
  const ByteTokenizer tok;
  PromptConfig cfg;
  cfg.system = "";
  cfg.eos_token = "</s>";
  const Record r = sum_record();
  const auto full = tokenize_example(tok, cfg, r, 1000);
  const int64_t max_length = full.prompt_tokens + 5;

  cfg.truncation = Truncation::cut_completion;
  const auto cut = tokenize_example(tok, cfg, r, max_length);
  EXPECT_TRUE(cut.truncated);
  EXPECT_FALSE(cut.dropped);
  EXPECT_EQ(static_cast<int64_t>(cut.input_ids.size()), max_length);
  EXPECT_EQ(cut.prompt_tokens, full.prompt_tokens);
  EXPECT_EQ(cut.completion_tokens, 5);
  EXPECT_EQ(cut.full_length, full.full_length);
  EXPECT_EQ(cut.input_ids, std::vector<int64_t>(full.input_ids.begin(), full.input_ids.begin() + max_length));
  EXPECT_EQ(cut.completion_mask,
            std::vector<int64_t>(full.completion_mask.begin(), full.completion_mask.begin() + max_length));

  cfg.truncation = Truncation::drop;
  const auto dropped = tokenize_example(tok, cfg, r, max_length);
  EXPECT_TRUE(dropped.dropped);
  EXPECT_TRUE(dropped.input_ids.empty());
  EXPECT_TRUE(dropped.completion_mask.empty());
  EXPECT_EQ(dropped.full_length, full.full_length);

  // Exactly max_length fits in either mode.
  const auto exact = tokenize_example(tok, cfg, r, full.full_length);
  EXPECT_FALSE(exact.dropped);
  EXPECT_FALSE(exact.truncated);
  EXPECT_EQ(exact.input_ids, full.input_ids);

  // A prompt with no room left for one completion token is dropped even when cutting.
  cfg.truncation = Truncation::cut_completion;
  EXPECT_TRUE(tokenize_example(tok, cfg, r, full.prompt_tokens).dropped);
  const auto one = tokenize_example(tok, cfg, r, full.prompt_tokens + 1);
  EXPECT_EQ(one.completion_tokens, 1);
  EXPECT_EQ(one.completion_mask.back(), 1);
}

TEST(Prompt, TokenizeExamplesReportsKeptTruncatedAndDropped) {
  const ByteTokenizer tok;
  PromptConfig cfg;
  cfg.system = "";
  std::vector<Record> records(3, sum_record());
  records[1].reasoning = std::string(200, 'x');  // longer than max_length
  records[2].prompt = std::string(300, 'q');     // prompt alone longer than max_length
  const int64_t max_length = 120;

  auto report = tokenize_examples(tok, cfg, records, max_length);
  EXPECT_EQ(report.kept, 2);
  EXPECT_EQ(report.truncated, 1);
  EXPECT_EQ(report.dropped, 1);
  ASSERT_EQ(report.examples.size(), 2u);
  EXPECT_FALSE(report.examples[0].truncated);
  EXPECT_TRUE(report.examples[1].truncated);
  EXPECT_EQ(static_cast<int64_t>(report.examples[1].input_ids.size()), max_length);

  cfg.truncation = Truncation::drop;
  report = tokenize_examples(tok, cfg, records, max_length);
  EXPECT_EQ(report.kept, 1);
  EXPECT_EQ(report.truncated, 0);
  EXPECT_EQ(report.dropped, 2);
}

TEST(Prompt, BadEosTokenAndMaxLengthAreErrors) {
  const ByteTokenizer tok;
  PromptConfig cfg;
  cfg.eos_token = "<|end|>";
  GRPO_EXPECT_THROW_MESSAGE(tokenize_example(tok, cfg, sum_record(), 100), std::invalid_argument,
                            "eos_token '<|end|>' is not in the tokenizer's vocabulary");
  cfg.eos_token = "";
  GRPO_EXPECT_THROW_MESSAGE(tokenize_example(tok, cfg, sum_record(), 0), std::invalid_argument,
                            "tokenize_example: max_length must be >= 1, found 0");
}

}  // namespace
