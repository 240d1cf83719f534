// Rejection sampling for distillation: the exact trace parser, the keep rules on hand-made scores,
// and whole runs (a scripted teacher whose verdicts are known, and the tiny model) that write a
// JSONL the dataset loader reads back, resume byte-identically after an interruption or a torn
// batch, and refuse to resume with other settings.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>

#include "grpo/core/files.h"
#include "grpo/core/random.h"
#include "grpo/data/dataset.h"
#include "grpo/train/rejection_sampling.h"
#include "test_util.h"
#include "train/train_test_util.h"

namespace grpo::train {
namespace {

using test::addition;
using test::byte_tokenizer;
using test::prompt_config;
using test::tiny_config;

// ---------------------------------------------------------------------------------------------
// parse_trace

TEST(ParseTrace, SplitsTheDefaultFormatWithOrWithoutTheLeadingSeparator) {
  const data::PromptConfig p;  // " <think> ... </think> <answer> ... </answer>"
  for (const std::string text :
       {" <think> 2 + 3 = 5 </think> <answer> 5 </answer>", "<think> 2 + 3 = 5 </think> <answer> 5 </answer>"}) {
    const auto t = parse_trace(text, p);
    ASSERT_TRUE(t) << text;
    EXPECT_EQ(t->reasoning, "2 + 3 = 5");
    EXPECT_EQ(t->answer, "5");
  }
  // Reasoning with inner spacing and newlines is kept verbatim.
  const auto t = parse_trace(" <think> a\n b  c </think> <answer> x = 1, 2 </answer>", p);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->reasoning, "a\n b  c");
  EXPECT_EQ(t->answer, "x = 1, 2");
}

TEST(ParseTrace, RejectsEverythingFormatCompletionWouldNotWrite) {
  const data::PromptConfig p;
  for (const std::string text : {
           "<think>2+3=5</think><answer>5</answer>",                             // no separators
           " <think> 2+3=5 </think> <answer> 5 </answer> ",                      // trailing space
           " <think> 2+3=5 </think> <answer> 5 </answer> thanks",                // trailing text
           "Sure. <think> 2+3=5 </think> <answer> 5 </answer>",                  // leading text
           " <think> 2+3=5 </think>  <answer> 5 </answer>",                      // double space between parts
           " <think> 2+3=5 </think> <answer>  5 </answer>",                      // answer with a space around it
           " <think> 2+3=5 </think> <answer> </answer>",                         // empty answer (just one space)
           " <think>   </think> <answer> 5 </answer>",                           // blank reasoning
           " <think> </think> <answer> 5 </answer>",                             // empty reasoning
           " <think> 2+3=5 </think> <answer> 5 </answer> <answer> 6 </answer>",  // two answers
           " <think> a <think> b </think> <answer> 5 </answer>",                 // nested think
           " <think> a </think> b </think> <answer> 5 </answer>",                // a second close tag
           " <think> 2+3=5 </think> \\boxed{5}",                                 // wrong answer style
           " <think> 2+3=5 </think>",                                            // no answer
           " <think> 2+3=5 <answer> 5 </answer>",                                // unclosed think
           "",
       }) {
    EXPECT_FALSE(parse_trace(text, p)) << "'" << text << "'";
  }
}

TEST(ParseTrace, BoxedStyleThinkInPromptAndOtherSeparators) {
  data::PromptConfig boxed;
  boxed.answer_style = data::AnswerStyle::boxed;
  auto t = parse_trace(" <think> half </think> \\boxed{\\frac{1}{2}}", boxed);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->answer, "\\frac{1}{2}");
  EXPECT_FALSE(parse_trace(" <think> half </think> \\boxed{\\frac{1}{2}", boxed));  // unclosed
  EXPECT_FALSE(parse_trace(" <think> half </think> \\boxed{1}}", boxed));           // unbalanced
  EXPECT_FALSE(parse_trace(" <think> half </think> <answer> 1 </answer>", boxed));  // tags, not boxed

  data::PromptConfig tip;  // the prompt ends with "<think>"
  tip.think_in_prompt = true;
  t = parse_trace(" 2 + 3 = 5 </think> <answer> 5 </answer>", tip);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->reasoning, "2 + 3 = 5");
  t = parse_trace("2 + 3 = 5 </think> <answer> 5 </answer>", tip);  // separator left out
  ASSERT_TRUE(t);
  EXPECT_EQ(t->reasoning, "2 + 3 = 5");
  EXPECT_FALSE(parse_trace(" <think> 2 + 3 = 5 </think> <answer> 5 </answer>", tip));  // think opened twice

  data::PromptConfig nl;
  nl.separator = "\n";
  t = parse_trace("\n<think>\nstep 1\nstep 2\n</think>\n<answer>\n7\n</answer>", nl);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->reasoning, "step 1\nstep 2");
  EXPECT_EQ(t->answer, "7");
  EXPECT_FALSE(parse_trace(" <think> a </think> <answer> 7 </answer>", nl));
}

TEST(ParseTrace, FormatCompletionOfTheParsedPartsGivesTheTextBack) {
  for (int style = 0; style < 2; ++style) {
    for (const bool tip : {false, true}) {
      data::PromptConfig p;
      p.answer_style = style ? data::AnswerStyle::boxed : data::AnswerStyle::answer_tags;
      p.think_in_prompt = tip;
      for (const std::string reasoning : {"r", "a b\nc", " lead", "{x}"}) {
        data::Record r;
        r.reasoning = reasoning;
        r.answer = "4{2}";
        const std::string full = data::format_completion(p, r);
        for (const std::string& text : {full, full.substr(1)}) {
          const auto t = parse_trace(text, p);
          ASSERT_TRUE(t) << text;
          data::Record back;
          back.reasoning = t->reasoning;
          back.answer = t->answer;
          const std::string again = data::format_completion(p, back);
          EXPECT_TRUE(again == text || again == " " + text) << text << " vs " << again;
          EXPECT_EQ(t->answer, "4{2}");
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// select_traces on hand-made scores

const std::string kGood = " <think> 2 + 3 = 5 </think> <answer> 5 </answer>";
const std::string kGood2 = " <think> 3 + 2 = 5 </think> <answer> 5 </answer>";
const std::string kGood3 = " <think> five </think> <answer> 5 </answer>";
const std::string kBad = "five, I think";

// Scores with labels {math_accuracy, format}: accuracy per row (nullopt = absent), totals per row.
rewards::RewardScores scores_of(const std::vector<std::optional<double>>& acc, const std::vector<double>& total) {
  rewards::RewardScores s;
  s.labels = {"math_accuracy", "format"};
  s.weights = {1.0, 0.5};
  s.scores = {acc, std::vector<std::optional<double>>(acc.size(), 1.0)};
  s.total = total;
  return s;
}

RejectionSamplingConfig rule(KeepRule k, int64_t n = 1) {
  RejectionSamplingConfig c;
  c.keep = k;
  c.max_per_prompt = n;
  return c;
}

using V = TraceVerdict;

TEST(SelectTraces, BestKeepsTheHighestTotalAndTheFirstOnTies) {
  const data::PromptConfig p;
  const std::vector<std::string> texts = {kGood, kGood2, kBad, kGood3};
  auto s = select_traces(texts, scores_of({1.0, 1.0, 1.0, 1.0}, {1.2, 1.4, 9.0, 1.3}), p, rule(KeepRule::best));
  EXPECT_EQ(s.kept, (std::vector<int64_t>{1}));
  EXPECT_EQ(s.verdicts, (std::vector<V>{V::not_selected, V::kept, V::malformed, V::not_selected}));
  EXPECT_EQ(s.accepted, 3);
  EXPECT_EQ(s.malformed, 1);
  // Ties: the lowest sample index.
  s = select_traces(texts, scores_of({1.0, 1.0, 1.0, 1.0}, {1.5, 1.5, 1.5, 1.5}), p, rule(KeepRule::best));
  EXPECT_EQ(s.kept, (std::vector<int64_t>{0}));
  // An incorrect completion never wins, however high its total.
  s = select_traces(texts, scores_of({0.0, 1.0, 1.0, std::nullopt}, {3.0, 1.0, 1.0, 5.0}), p, rule(KeepRule::best));
  EXPECT_EQ(s.kept, (std::vector<int64_t>{1}));
  EXPECT_EQ(s.verdicts, (std::vector<V>{V::incorrect, V::kept, V::malformed, V::incorrect}));
  EXPECT_EQ(s.incorrect, 2);
  // Almost 1 is correct, clearly less is not.
  s = select_traces({kGood, kGood2}, scores_of({1.0 - 1e-12, 0.999}, {1, 2}), p, rule(KeepRule::best));
  EXPECT_EQ(s.verdicts, (std::vector<V>{V::kept, V::incorrect}));
}

TEST(SelectTraces, AllCorrectKeepsEveryAcceptedOneInSampleOrderDedupedOrNot) {
  const data::PromptConfig p;
  const std::vector<std::string> texts = {kGood, kGood2, kGood, kBad, kGood3, kGood2};
  const auto sc = scores_of({1.0, 1.0, 1.0, 1.0, 0.0, 1.0}, {1.0, 2.0, 3.0, 4.0, 5.0, 0.5});
  auto s = select_traces(texts, sc, p, rule(KeepRule::all_correct));
  EXPECT_EQ(s.kept, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(s.verdicts, (std::vector<V>{V::kept, V::kept, V::duplicate, V::malformed, V::incorrect, V::duplicate}));
  EXPECT_EQ(s.accepted, 4);
  EXPECT_EQ(s.duplicates, 2);
  auto c = rule(KeepRule::all_correct);
  c.dedupe = false;
  s = select_traces(texts, sc, p, c);
  EXPECT_EQ(s.kept, (std::vector<int64_t>{0, 1, 2, 5}));
  EXPECT_EQ(s.duplicates, 0);
}

TEST(SelectTraces, AtMostNTakesTheHighestDistinctTexts) {
  const data::PromptConfig p;
  const std::vector<std::string> texts = {kGood, kGood2, kGood2, kGood3, kGood};
  const auto sc = scores_of({1.0, 1.0, 1.0, 1.0, 1.0}, {1.0, 3.0, 3.0, 2.0, 2.0});
  auto c = rule(KeepRule::at_most_n, 2);
  c.dedupe = false;  // at_most_n keeps distinct texts anyway
  auto s = select_traces(texts, sc, p, c);
  EXPECT_EQ(s.kept, (std::vector<int64_t>{1, 3}));  // 3.0 (sample 1), then 2.0 (sample 3 before 4)
  EXPECT_EQ(s.verdicts, (std::vector<V>{V::not_selected, V::kept, V::duplicate, V::kept, V::not_selected}));
  s = select_traces(texts, sc, p, rule(KeepRule::at_most_n, 10));
  EXPECT_EQ(s.kept, (std::vector<int64_t>{1, 3, 4}));  // kGood at 2.0 (sample 4) before kGood at 1.0
  EXPECT_EQ(s.verdicts[0], V::duplicate);
}

TEST(SelectTraces, MinRewardRequireFormatOffsetAndErrors) {
  const data::PromptConfig p;
  auto c = rule(KeepRule::all_correct);
  c.min_reward = 1.5;
  const std::vector<std::string> texts = {kGood, kGood2, kGood3};
  auto s = select_traces(texts, scores_of({1.0, 1.0, 0.0}, {1.5, 1.49, 0.0}), p, c);
  EXPECT_EQ(s.verdicts, (std::vector<V>{V::kept, V::below_min_reward, V::incorrect}));
  EXPECT_EQ(s.below_min_reward, 1);

  // Without require_format an unparseable text is kept; invalid UTF-8 never is.
  c = rule(KeepRule::all_correct);
  c.require_format = false;
  s = select_traces({kBad, std::string("\xff\xfe bytes"), std::string("caf\xc3\xa9")},
                    scores_of({1.0, 1.0, 1.0}, {1, 1, 1}), p, c);
  EXPECT_EQ(s.verdicts, (std::vector<V>{V::kept, V::malformed, V::kept}));

  // Rows [offset, offset + k) of a batch's scores.
  const auto batch = scores_of({0.0, 0.0, 1.0, 1.0}, {0, 0, 1, 2});
  s = select_traces({kGood, kGood2}, batch, p, rule(KeepRule::best), 2);
  EXPECT_EQ(s.kept, (std::vector<int64_t>{1}));
  s = select_traces({kGood, kGood2}, batch, p, rule(KeepRule::best), 0);
  EXPECT_TRUE(s.kept.empty());
  EXPECT_THROW(select_traces({kGood, kGood2}, batch, p, rule(KeepRule::best), 3), std::invalid_argument);
  c = rule(KeepRule::best);
  c.accuracy_reward = "countdown";
  try {
    select_traces({kGood}, batch, p, c);
    FAIL() << "no throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("countdown"), std::string::npos) << e.what();
  }
}

TEST(RejectionSamplingConfig, NumGenerationsMustAgreeWithSamplesPerPrompt) {
  RejectionSamplingConfig c;
  c.samples_per_prompt = 4;
  EXPECT_EQ(c.validate(), "");
  c.generation.num_generations = 4;
  EXPECT_EQ(c.validate(), "");
  c.generation.num_generations = 3;
  EXPECT_NE(c.validate().find("num_generations"), std::string::npos);
  // And the struct loads from YAML with the enum by name.
  const auto root = config::parse_yaml_string("keep: at_most_n\nmax_per_prompt: 2\nmin_reward: 0.5\n", "rs.yaml");
  const auto loaded = config::from_value<RejectionSamplingConfig>(root);
  EXPECT_EQ(loaded.keep, KeepRule::at_most_n);
  EXPECT_EQ(loaded.max_per_prompt, 2);
  EXPECT_EQ(loaded.min_reward, 0.5);
}

// ---------------------------------------------------------------------------------------------
// Whole runs with a scripted teacher: sample g of prompt i is chosen from (its request seed, g),
// so the verdicts are known in advance and depend on the per-prompt seed being right.

rewards::RewardsConfig reward_config() {
  const auto root = config::parse_yaml_string(
      "threads: 1\nfunctions: [{name: math_accuracy, weight: 1.0}, {name: format, weight: 0.5}]\n", "rewards.yaml");
  return config::from_value<rewards::RewardsConfig>(root);
}

struct Script {
  std::map<uint64_t, int64_t> index_of_seed;  // request seed -> prompt index
  const std::vector<data::Record>* records = nullptr;
  int64_t k = 4;
  int64_t calls = 0;

  Script(const std::vector<data::Record>& recs, uint64_t seed, int64_t k_) : records(&recs), k(k_) {
    for (int64_t i = 0; i < static_cast<int64_t>(recs.size()); ++i) index_of_seed[prompt_seed(seed, i)] = i;
  }
  // The kind of sample g of a request: 0 correct, 1 correct (other reasoning), 2 wrong answer,
  // 3 malformed, 4 a copy of kind 0.
  static int kind(uint64_t seed, int64_t g) { return static_cast<int>(splitmix64(seed + 31 * g) % 5); }
  static std::string text(int kind, const data::Record& r, int64_t index) {
    const std::string a = r.answer;
    switch (kind) {
      case 0:
      case 4: return " <think> so it is " + a + " </think> <answer> " + a + " </answer>";
      case 1:
        return "<think> prompt " + std::to_string(index) + " gives " + a + " </think> <answer> " + a + " </answer>";
      case 2: return " <think> guess </think> <answer> " + a + "1 </answer>";
      default: return "I'd say " + a;
    }
  }
  TraceGenerator fn() {
    return [this](const std::vector<rollout::GenerationRequest>& reqs) {
      ++calls;
      std::vector<rollout::Completion> out;
      for (size_t p = 0; p < reqs.size(); ++p) {
        const auto it = index_of_seed.find(*reqs[p].seed);
        if (it == index_of_seed.end()) throw std::runtime_error("unexpected request seed");
        for (int64_t g = 0; g < k; ++g) {
          rollout::Completion c;
          c.prompt_index = static_cast<int64_t>(p);
          c.sample_index = g;
          c.text = text(kind(*reqs[p].seed, g), (*records)[static_cast<size_t>(it->second)], it->second);
          c.token_ids.assign(c.text.size(), 1);
          out.push_back(std::move(c));
        }
      }
      return out;
    };
  }
};

RejectionSamplingConfig run_config(const std::string& output) {
  RejectionSamplingConfig c;
  c.samples_per_prompt = 4;
  c.keep = KeepRule::all_correct;
  c.prompts_per_batch = 3;
  c.seed = 11;
  c.output = output;
  c.generation.sampling.temperature = 0.7;
  c.generation.max_new_tokens = 40;
  return c;
}

std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

TEST(GenerateTraces, ScriptedTeacherWritesTheExpectedTracesThatLoadBackAsSftRecords) {
  grpo::test::TempDir dir;
  const auto tok = byte_tokenizer();
  const auto prompt = prompt_config();
  const auto records = addition(10, 3, false);
  const rewards::RewardSet rewards(reward_config());
  auto cfg = run_config(dir.path("traces.jsonl"));
  Script script(records, cfg.seed, cfg.samples_per_prompt);
  const auto r = generate_traces_with(script.fn(), *tok, prompt, records, rewards, cfg, {.teacher = "scripted"}, false);

  // Expected by hand from the script's kinds (all_correct + dedupe: kinds 0 and 1 once each, in
  // sample order; 4 is a duplicate of 0 when 0 came first, else kept and 0 is its duplicate).
  int64_t accepted = 0, malformed = 0, incorrect = 0, kept = 0, with_trace = 0;
  std::vector<std::pair<int64_t, int64_t>> expect_lines;  // (prompt, sample)
  for (int64_t i = 0; i < 10; ++i) {
    std::vector<std::string> seen;
    const uint64_t seed = prompt_seed(cfg.seed, i);
    int64_t before = kept;
    for (int64_t g = 0; g < 4; ++g) {
      const int kind = Script::kind(seed, g);
      if (kind == 3) ++malformed;
      if (kind == 2) ++incorrect;
      if (kind == 0 || kind == 1 || kind == 4) {
        ++accepted;
        const std::string t = Script::text(kind, records[static_cast<size_t>(i)], i);
        if (std::find(seen.begin(), seen.end(), t) == seen.end()) {
          seen.push_back(t);
          expect_lines.emplace_back(i, g);
          ++kept;
        }
      }
    }
    with_trace += kept > before;
  }
  ASSERT_GT(kept, 3);
  ASSERT_GT(malformed, 0);
  ASSERT_GT(incorrect, 0);
  EXPECT_EQ(r.prompts, 10);
  EXPECT_EQ(r.completions, 40);
  EXPECT_EQ(r.accepted, accepted);
  EXPECT_EQ(r.malformed, malformed);
  EXPECT_EQ(r.incorrect, incorrect);
  EXPECT_EQ(r.kept, kept);
  EXPECT_EQ(r.prompts_with_trace, with_trace);
  EXPECT_EQ(r.duplicates, accepted - kept);
  EXPECT_DOUBLE_EQ(r.pass_rate, static_cast<double>(accepted) / 40.0);
  EXPECT_EQ(script.calls, 4);  // batches of 3, 3, 3, 1

  const auto lines = lines_of(cfg.output);
  ASSERT_EQ(static_cast<int64_t>(lines.size()), kept);
  for (size_t l = 0; l < lines.size(); ++l) {
    const auto j = nlohmann::json::parse(lines[l]);
    const auto [i, g] = expect_lines[l];
    const auto& rec = records[static_cast<size_t>(i)];
    EXPECT_EQ(j.at("prompt_index").get<int64_t>(), i);
    EXPECT_EQ(j.at("sample_index").get<int64_t>(), g);
    EXPECT_EQ(j.at("prompt"), rec.prompt);
    EXPECT_EQ(j.at("answer"), rec.answer);
    EXPECT_EQ(j.at("reference_answer"), rec.answer);
    EXPECT_EQ(j.at("completion"), Script::text(Script::kind(prompt_seed(cfg.seed, i), g), rec, i));
    EXPECT_EQ(j.at("rewards").at("math_accuracy").get<double>(), 1.0);
    EXPECT_EQ(j.at("rewards").at("format").get<double>(), 1.0);
    EXPECT_DOUBLE_EQ(j.at("reward").get<double>(), 1.5);
    EXPECT_EQ(j.at("source"), rec.where());
    EXPECT_EQ(j.at("teacher"), "scripted");
    EXPECT_EQ(j.at("temperature").get<double>(), 0.7);
    EXPECT_EQ(j.at("top_p").get<double>(), 1.0);
    EXPECT_EQ(j.at("top_k").get<int64_t>(), 0);
    EXPECT_EQ(j.at("max_new_tokens").get<int64_t>(), 40);
    EXPECT_EQ(j.at("seed").get<uint64_t>(), prompt_seed(cfg.seed, i));
    EXPECT_FALSE(j.contains("well_formed"));
  }

  // (a) The dataset loader (reasoning mapped) gives Records whose SFT target is the completion.
  data::DatasetConfig dc;
  dc.path = cfg.output;
  dc.fields.reasoning = "reasoning";
  const auto loaded = data::load_jsonl(dc);
  ASSERT_EQ(loaded.size(), lines.size());
  for (size_t l = 0; l < loaded.size(); ++l) {
    const std::string completion = nlohmann::json::parse(lines[l]).at("completion");
    const std::string target = data::format_completion(prompt, loaded[l]);
    EXPECT_TRUE(target == completion || target == prompt.separator + completion) << target << " vs " << completion;
    EXPECT_EQ(loaded[l].prompt, records[static_cast<size_t>(expect_lines[l].first)].prompt);
  }
  // The default field map loads it too (the extra keys are ignored), just without reasoning.
  data::DatasetConfig plain;
  plain.path = cfg.output;
  EXPECT_EQ(data::load_jsonl(plain).size(), lines.size());

  // The state says done; a resumed call returns at once with the same counts.
  const auto state = nlohmann::json::parse(read_file(cfg.output + ".state.json"));
  EXPECT_TRUE(state.at("done").get<bool>());
  EXPECT_EQ(state.at("prompts_done").get<int64_t>(), 10);
  EXPECT_EQ(state.at("bytes").get<int64_t>(), static_cast<int64_t>(std::filesystem::file_size(cfg.output)));
  const auto again = generate_traces_with(script.fn(), *tok, prompt, records, rewards, cfg, {.teacher = "scripted"},
                                          true);
  EXPECT_EQ(script.calls, 4);
  EXPECT_EQ(again.kept, r.kept);
  EXPECT_EQ(again.accepted, r.accepted);
  EXPECT_EQ(again.malformed, r.malformed);
  EXPECT_EQ(again.resumed_prompts, 10);
}

TEST(GenerateTraces, KeepRulesOnAWholeRun) {
  grpo::test::TempDir dir;
  const auto tok = byte_tokenizer();
  const auto records = addition(8, 5, false);
  const rewards::RewardSet rewards(reward_config());
  auto cfg = run_config(dir.path("best.jsonl"));
  cfg.keep = KeepRule::best;
  Script script(records, cfg.seed, cfg.samples_per_prompt);
  const auto best = generate_traces_with(script.fn(), *tok, prompt_config(), records, rewards, cfg, {}, false);
  EXPECT_EQ(best.kept, best.prompts_with_trace);  // one per prompt that has an accepted completion
  int64_t with_correct = 0;
  for (int64_t i = 0; i < 8; ++i) {
    bool any = false;
    for (int64_t g = 0; g < 4; ++g) {
      const int kind = Script::kind(prompt_seed(cfg.seed, i), g);
      any = any || kind == 0 || kind == 1 || kind == 4;
    }
    with_correct += any;
  }
  EXPECT_EQ(best.kept, with_correct);

  cfg.output = dir.path("none.jsonl");
  cfg.min_reward = 2.0;  // above every total (1.5)
  const auto none = generate_traces_with(script.fn(), *tok, prompt_config(), records, rewards, cfg, {}, false);
  EXPECT_EQ(none.kept, 0);
  EXPECT_EQ(none.below_min_reward, best.accepted);
  EXPECT_EQ(std::filesystem::file_size(cfg.output), 0u);
}

// (b) An interrupted run, a torn batch, and garbage appended after the last batch all resume to
// the bytes of an uninterrupted run.
TEST(GenerateTraces, InterruptedAndTornRunsResumeToTheSameBytes) {
  grpo::test::TempDir dir;
  const auto tok = byte_tokenizer();
  const auto prompt = prompt_config();
  const auto records = addition(10, 3, false);
  const rewards::RewardSet rewards(reward_config());
  auto straight = run_config(dir.path("straight.jsonl"));
  Script script(records, straight.seed, straight.samples_per_prompt);
  const auto r = generate_traces_with(script.fn(), *tok, prompt, records, rewards, straight, {.teacher = "t"}, false);
  const std::string want = read_file(straight.output);
  ASSERT_FALSE(want.empty());

  auto cfg = run_config(dir.path("resumed.jsonl"));
  const std::string state = cfg.output + ".state.json";
  // Stop after 3 prompts (one batch); keep that state aside.
  cfg.max_prompts = 3;
  auto part = generate_traces_with(script.fn(), *tok, prompt, records, rewards, cfg, {.teacher = "t"}, false);
  EXPECT_EQ(part.prompts, 3);
  const std::string state_after_3 = read_file(state);
  // Go on to 6 with resume, then pretend the process died after appending batch 2 but before its
  // state was written (old state back), and a third batch was half written.
  cfg.max_prompts = 6;
  part = generate_traces_with(script.fn(), *tok, prompt, records, rewards, cfg, {.teacher = "t"}, true);
  EXPECT_EQ(part.prompts, 6);
  EXPECT_EQ(part.resumed_prompts, 3);
  write_file_atomic(state, state_after_3);
  {
    std::ofstream torn(cfg.output, std::ios::app | std::ios::binary);
    torn << "{\"prompt\": \"What is 1";  // no newline
  }
  cfg.max_prompts = 0;
  const auto done = generate_traces_with(script.fn(), *tok, prompt, records, rewards, cfg, {.teacher = "t"}, true);
  EXPECT_EQ(done.resumed_prompts, 3);
  EXPECT_EQ(read_file(cfg.output), want);
  EXPECT_EQ(done.kept, r.kept);
  EXPECT_EQ(done.accepted, r.accepted);
  EXPECT_EQ(done.completions, r.completions);
  EXPECT_EQ(read_file(state), read_file(straight.output + ".state.json"));

  // Garbage after a finished file is dropped too.
  {
    std::ofstream junk(cfg.output, std::ios::app | std::ios::binary);
    junk << "garbage\n";
  }
  generate_traces_with(script.fn(), *tok, prompt, records, rewards, cfg, {.teacher = "t"}, true);
  EXPECT_EQ(read_file(cfg.output), want);

  // A file shorter than the state says cannot be resumed.
  std::filesystem::resize_file(cfg.output, want.size() - 5);
  EXPECT_THROW(generate_traces_with(script.fn(), *tok, prompt, records, rewards, cfg, {.teacher = "t"}, true),
               std::runtime_error);
}

// (c) Resuming with other settings fails and names the key; the file is left alone.
TEST(GenerateTraces, ResumeWithOtherSettingsThrowsNamingTheKey) {
  grpo::test::TempDir dir;
  const auto tok = byte_tokenizer();
  const auto prompt = prompt_config();
  const auto records = addition(6, 3, false);
  const rewards::RewardSet rewards(reward_config());
  auto cfg = run_config(dir.path("t.jsonl"));
  cfg.max_prompts = 3;
  Script script(records, cfg.seed, cfg.samples_per_prompt);
  generate_traces_with(script.fn(), *tok, prompt, records, rewards, cfg, {.teacher = "a"}, false);
  const std::string before = read_file(cfg.output);
  cfg.max_prompts = 0;

  const auto expect_key = [&](RejectionSamplingConfig c, const TraceProvenance& prov,
                              const std::vector<data::Record>& recs, const std::string& key) {
    try {
      Script s(recs, c.seed, c.samples_per_prompt);
      generate_traces_with(s.fn(), *tok, prompt, recs, rewards, c, prov, true);
      ADD_FAILURE() << "no throw for " << key;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
    EXPECT_EQ(read_file(cfg.output), before);
  };
  auto c = cfg;
  c.seed = 12;
  expect_key(c, {.teacher = "a"}, records, "seed (was '11', now '12')");
  expect_key(cfg, {.teacher = "b"}, records, "teacher (was 'a', now 'b')");
  c = cfg;
  c.generation.sampling.temperature = 1.0;
  expect_key(c, {.teacher = "a"}, records, "generation.sampling.temperature");
  c = cfg;
  c.keep = KeepRule::best;
  expect_key(c, {.teacher = "a"}, records, "keep (was 'all_correct', now 'best')");
  auto other = records;
  other[4].prompt = "What is 1 + 1?";
  expect_key(cfg, {.teacher = "a"}, other, "prompts_hash");
  expect_key(cfg, {.teacher = "a"}, addition(7, 3, false), "prompts (was '6', now '7')");

  // The same settings resume fine.
  const auto ok = generate_traces_with(script.fn(), *tok, prompt, records, rewards, cfg, {.teacher = "a"}, true);
  EXPECT_EQ(ok.prompts, 6);
  EXPECT_EQ(ok.resumed_prompts, 3);
}

TEST(GenerateTraces, FreshStartsAndOutputsWithoutState) {
  grpo::test::TempDir dir;
  const auto tok = byte_tokenizer();
  const auto records = addition(4, 3, false);
  const rewards::RewardSet rewards(reward_config());
  auto cfg = run_config(dir.path("sub/t.jsonl"));  // the folder is created
  Script script(records, cfg.seed, cfg.samples_per_prompt);
  // An output without state: resume refuses, a fresh start replaces it.
  std::filesystem::create_directories(dir.path("sub"));
  { std::ofstream(cfg.output) << "someone else's data\n"; }
  EXPECT_THROW(generate_traces_with(script.fn(), *tok, prompt_config(), records, rewards, cfg, {}, true),
               std::runtime_error);
  EXPECT_EQ(read_file(cfg.output), "someone else's data\n");
  const auto a = generate_traces_with(script.fn(), *tok, prompt_config(), records, rewards, cfg, {}, false);
  const std::string first = read_file(cfg.output);
  EXPECT_EQ(first.find("someone"), std::string::npos);
  // resume = false starts over even when a finished state exists: same bytes again, all generated.
  const int64_t calls = script.calls;
  const auto b = generate_traces_with(script.fn(), *tok, prompt_config(), records, rewards, cfg, {}, false);
  EXPECT_GT(script.calls, calls);
  EXPECT_EQ(b.resumed_prompts, 0);
  EXPECT_EQ(b.kept, a.kept);
  EXPECT_EQ(read_file(cfg.output), first);
  // Resume with no state and no output: a fresh start.
  auto c2 = cfg;
  c2.output = dir.path("new.jsonl");
  EXPECT_EQ(generate_traces_with(script.fn(), *tok, prompt_config(), records, rewards, c2, {}, true).kept, a.kept);
  // Bad settings.
  c2.generation.num_generations = 3;
  EXPECT_THROW(generate_traces_with(script.fn(), *tok, prompt_config(), records, rewards, c2, {}, false),
               std::invalid_argument);
  c2 = cfg;
  c2.accuracy_reward = "countdown";
  EXPECT_THROW(generate_traces_with(script.fn(), *tok, prompt_config(), records, rewards, c2, {}, false),
               std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// The tiny DeepSeek-V3 model as the teacher. Its text is random, so a reward that accepts
// everything and require_format: false keep what it writes (valid UTF-8 only).

class AcceptAll : public rewards::RewardFunction {
 public:
  std::string name() const override { return "accept_all"; }
  rewards::RewardBatch score(const std::vector<rewards::Sample>& batch) const override {
    rewards::RewardBatch out;
    for (const auto& s : batch) out.scores.push_back(1.0 + 0.01 * static_cast<double>(s.completion_ids.size()));
    return out;
  }
};

TEST(GenerateTraces, TinyModelTeacherResumesByteIdentically) {
  grpo::test::TempDir dir;
  const auto tok = byte_tokenizer();
  const auto prompt = prompt_config();
  const auto records = addition(6, 9, false);
  rewards::RewardRegistry registry;
  registry.add("accept_all", [](const config::Value&) { return std::make_unique<AcceptAll>(); });
  const auto root = config::parse_yaml_string("threads: 1\nfunctions: [{name: accept_all}]\n", "rewards.yaml");
  const rewards::RewardSet rewards(config::from_value<rewards::RewardsConfig>(root), "", registry);

  torch::manual_seed(21);
  model::CausalLM teacher(tiny_config(tok->vocab_size()));
  teacher->train();
  RejectionSamplingConfig cfg;
  cfg.samples_per_prompt = 3;
  cfg.keep = KeepRule::all_correct;
  cfg.accuracy_reward = "accept_all";
  cfg.require_format = false;
  cfg.prompts_per_batch = 2;
  cfg.seed = 5;
  cfg.generation.max_new_tokens = 3;
  cfg.generation.sampling.temperature = 1.0;
  cfg.generation.sampling.top_k = 8;  // a few likely tokens: some repeats, some ASCII
  cfg.output = dir.path("straight.jsonl");
  const auto r = generate_traces(teacher, *tok, prompt, records, rewards, cfg, {.teacher = "tiny"}, false);
  EXPECT_TRUE(teacher->is_training());  // restored
  EXPECT_EQ(r.completions, 18);
  EXPECT_EQ(r.accepted + r.malformed, 18);  // every valid UTF-8 text is accepted
  EXPECT_EQ(r.kept + r.duplicates, r.accepted);
  const auto lines = lines_of(cfg.output);
  EXPECT_EQ(static_cast<int64_t>(lines.size()), r.kept);
  for (const auto& l : lines) {
    const auto j = nlohmann::json::parse(l);
    EXPECT_EQ(j.at("teacher"), "tiny");
    EXPECT_EQ(j.at("top_k").get<int64_t>(), 8);
    EXPECT_EQ(j.at("seed").get<uint64_t>(), prompt_seed(cfg.seed, j.at("prompt_index").get<int64_t>()));
    // Random text does not parse: kept whole as the reasoning, with the reference answer.
    const std::string completion = j.at("completion");
    ASSERT_FALSE(parse_trace(completion, prompt)) << completion;
    EXPECT_EQ(j.at("well_formed"), false);
    EXPECT_EQ(j.at("reasoning"), completion.rfind(' ', 0) == 0 ? completion.substr(1) : completion);
    EXPECT_EQ(j.at("answer"), j.at("reference_answer"));
  }
  const std::string want = read_file(cfg.output);

  // Interrupted after 2 prompts, then resumed with all of them by a fresh process's model.
  cfg.output = dir.path("resumed.jsonl");
  cfg.max_prompts = 2;
  generate_traces(teacher, *tok, prompt, records, rewards, cfg, {.teacher = "tiny"}, false);
  cfg.max_prompts = 0;
  torch::manual_seed(21);
  model::CausalLM again(tiny_config(tok->vocab_size()));
  torch::manual_seed(1234);  // other global RNG state: sampling must not use it
  const auto r2 = generate_traces(again, *tok, prompt, records, rewards, cfg, {.teacher = "tiny"}, true);
  EXPECT_EQ(r2.resumed_prompts, 2);
  EXPECT_EQ(r2.kept, r.kept);
  EXPECT_EQ(read_file(cfg.output), want);
}

}  // namespace
}  // namespace grpo::train
