// Datasets: JSONL loading (GSM8K and MATH styles, every error path), write_jsonl, and DataOrder.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/data/dataset.h"
#include "test_util.h"

namespace {

using grpo::data::AnswerExtract;
using grpo::data::DataOrder;
using grpo::data::DataOrderConfig;
using grpo::data::DataOrderState;
using grpo::data::DatasetConfig;
using grpo::data::extract_boxed;
using grpo::data::JsonlReader;
using grpo::data::load_jsonl;
using grpo::data::load_jsonl_report;
using grpo::data::Record;
using grpo::test::TempDir;

std::string fixture(const std::string& name) { return std::string(GRPO_SOURCE_DIR) + "/tests/data/fixtures/" + name; }

DatasetConfig gsm8k_config(const std::string& path) {
  DatasetConfig cfg;
  cfg.path = path;
  cfg.fields.prompt = "question";
  cfg.fields.answer = "answer";
  cfg.answer_extract = AnswerExtract::gsm8k;
  return cfg;
}

// Loads `text` written to a temp file as a dataset with prompt "q", answer "a"; returns the message.
std::string load_error(const std::string& text, DatasetConfig cfg = {}) {
  TempDir dir;
  cfg.path = dir.write("d.jsonl", text);
  if (cfg.fields.prompt == "prompt") cfg.fields.prompt = "q";
  if (cfg.fields.answer == "answer") cfg.fields.answer = "a";
  try {
    load_jsonl(cfg);
  } catch (const std::runtime_error& e) {
    std::string m = e.what();
    const auto p = m.find(cfg.path);  // the temp path differs per run
    if (p != std::string::npos) m.replace(p, cfg.path.size(), "d.jsonl");
    return m;
  }
  return "(no error)";
}

TEST(Dataset, Gsm8kStyleSplitsReasoningAndFinalAnswer) {
  const auto records = load_jsonl(gsm8k_config(fixture("gsm8k_sample.jsonl")));
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0].prompt,
            "Mia has 12 apples. She gives 5 to her brother and buys 8 more. How many apples does she have now?");
  EXPECT_EQ(records[0].answer, "15");
  EXPECT_EQ(records[0].reasoning,
            "After giving 5 away she has 12 - 5 = <<12-5=7>>7 apples.\nAfter buying 8 more she has 7 + 8 = "
            "<<7+8=15>>15 apples.");
  EXPECT_EQ(records[1].answer, "168");
  EXPECT_EQ(records[2].answer, "250");
  // Provenance: the empty line 3 is counted.
  EXPECT_EQ(records[0].source, fixture("gsm8k_sample.jsonl"));
  EXPECT_EQ(records[0].line, 1);
  EXPECT_EQ(records[1].line, 2);
  EXPECT_EQ(records[2].line, 4);
  EXPECT_TRUE(records[0].extra.empty());
}

TEST(Dataset, MathStyleTakesTheLastBoxedAnswerWithNestedBraces) {
  DatasetConfig cfg;
  cfg.path = fixture("math_sample.jsonl");
  cfg.fields.prompt = "problem";
  cfg.fields.answer = "solution";
  cfg.fields.extra = {"level", "type"};
  cfg.answer_extract = AnswerExtract::boxed;
  const auto records = load_jsonl(cfg);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0].prompt, "What is $\\frac{1}{4} + \\frac{1}{4}$?");
  EXPECT_EQ(records[0].answer, "\\frac{1}{2}");
  EXPECT_EQ(records[0].reasoning,
            "Adding the numerators gives $\\frac{2}{4}$, which reduces to $\\boxed{\\frac{1}{2}}$.");
  EXPECT_EQ(records[0].extra, (std::map<std::string, std::string>{{"level", "Level 1"}, {"type", "Prealgebra"}}));
  EXPECT_EQ(records[1].answer, "4");
  EXPECT_EQ(records[2].answer, "\\{-1, 1\\}");  // the last box; escaped braces do not count
  EXPECT_EQ(records[2].extra.at("type"), "Algebra");
}

TEST(Dataset, ExtractBoxed) {
  EXPECT_EQ(extract_boxed("so \\boxed{\\frac{1}{2}}."), "\\frac{1}{2}");
  EXPECT_EQ(extract_boxed("\\boxed{\\sqrt{\\frac{a}{b}}}"), "\\sqrt{\\frac{a}{b}}");
  EXPECT_EQ(extract_boxed("\\boxed{1} then \\boxed{2}"), "2");
  EXPECT_EQ(extract_boxed("\\fbox{7}"), "7");
  EXPECT_EQ(extract_boxed("\\boxed{}"), "");
  EXPECT_EQ(extract_boxed("no box here"), std::nullopt);
  EXPECT_EQ(extract_boxed("\\boxed{\\frac{1}{2}"), std::nullopt);  // unclosed
}

TEST(Dataset, ShippedConfigsLoadAndReadTheFixtures) {
  const std::string dir = std::string(GRPO_SOURCE_DIR) + "/configs/data/";
  auto gsm8k = grpo::config::load<DatasetConfig>(dir + "gsm8k.yaml", {"path=" + fixture("gsm8k_sample.jsonl")});
  EXPECT_EQ(gsm8k.answer_extract, AnswerExtract::gsm8k);
  EXPECT_EQ(load_jsonl(gsm8k).size(), 3u);
  auto math = grpo::config::load<DatasetConfig>(dir + "math.yaml", {"path=" + fixture("math_sample.jsonl")});
  EXPECT_EQ(math.fields.extra, (std::vector<std::string>{"level", "type"}));
  EXPECT_EQ(load_jsonl(math)[0].answer, "\\frac{1}{2}");
}

TEST(Dataset, ConfigRequiresAPathAndKnowsItsKeys) {
  using grpo::config::ConfigError;
  using grpo::config::parse_yaml_string;
  GRPO_EXPECT_THROW_MESSAGE(grpo::config::from_value<DatasetConfig>(parse_yaml_string("format: jsonl\n", "d.yaml")),
                            ConfigError, "d.yaml:1:1: missing required key 'path'");
  GRPO_EXPECT_THROW_MESSAGE(
      grpo::config::from_value<DatasetConfig>(parse_yaml_string("path: x.jsonl\nanswer_extract: gsm\n", "d.yaml")),
      ConfigError,
      "d.yaml:2:17: answer_extract: expected one of none, gsm8k, boxed, found 'gsm' (did you mean 'gsm8k'?)");
  const auto cfg = grpo::config::from_value<DatasetConfig>(
      parse_yaml_string("path: x.jsonl\nfields: {prompt: q, answer: a, reasoning: r, extra: [x.y]}\n", "d.yaml"));
  EXPECT_EQ(cfg.fields.reasoning, "r");
  EXPECT_EQ(cfg.fields.extra, std::vector<std::string>{"x.y"});
}

TEST(Dataset, MissingFileAndFolder) {
  TempDir dir;
  DatasetConfig cfg;
  cfg.path = dir.path("nope.jsonl");
  GRPO_EXPECT_THROW_MESSAGE(load_jsonl(cfg), std::runtime_error, "dataset file '" + cfg.path + "' does not exist");
  cfg.path = dir.path();
  GRPO_EXPECT_THROW_MESSAGE(load_jsonl(cfg), std::runtime_error,
                            "dataset '" + cfg.path + "' is a folder, not a JSONL file");
}

TEST(Dataset, MalformedJsonNamesFileAndLine) {
  EXPECT_EQ(load_error("{\"q\": \"a\", \"a\": \"1\"}\n{\"q\": \"b\", \"a\": \n"),
            "d.jsonl:2: malformed JSON: syntax error while parsing value - unexpected end of input; expected '[', "
            "'{', or a literal (column 17)");
  EXPECT_EQ(load_error("{\"q\": \"a\", \"a\": \"1\"} trailing\n"),
            "d.jsonl:1: malformed JSON: syntax error while parsing value - invalid literal; last read: '\"1\"} tra'; "
            "expected end of input (column 24)");
  EXPECT_EQ(load_error("[1, 2]\n"), "d.jsonl:1: expected a JSON object, found a list");
  EXPECT_EQ(load_error("\"text\"\n"), "d.jsonl:1: expected a JSON object, found a string");
}

TEST(Dataset, MissingFieldNamesTheMapping) {
  DatasetConfig cfg = gsm8k_config("");
  TempDir dir;
  cfg.path = dir.write("g.jsonl", "{\"question\": \"x\", \"answer\": \"#### 1\"}\n\n\n{\"answer\": \"#### 2\"}\n");
  GRPO_EXPECT_THROW_MESSAGE(load_jsonl(cfg), std::runtime_error,
                            cfg.path + ":4: missing field 'question' (mapped to prompt)");
  EXPECT_EQ(load_error("{\"q\": \"x\"}\n"), "d.jsonl:1: missing field 'a' (mapped to answer)");
  DatasetConfig with_extra;
  with_extra.fields.extra = {"meta.level"};
  EXPECT_EQ(load_error("{\"q\": \"x\", \"a\": \"1\", \"meta\": {}}\n", with_extra),
            "d.jsonl:1: missing field 'meta.level' (mapped to extra)");
  DatasetConfig with_reasoning;
  with_reasoning.fields.reasoning = "why";
  EXPECT_EQ(load_error("{\"q\": \"x\", \"a\": \"1\"}\n", with_reasoning),
            "d.jsonl:1: missing field 'why' (mapped to reasoning)");
}

TEST(Dataset, WrongTypesAndAllowedCoercions) {
  EXPECT_EQ(load_error("{\"q\": \"x\", \"a\": {\"v\": 1}}\n"),
            "d.jsonl:1: field 'a' must be a string or number, found an object");
  EXPECT_EQ(load_error("{\"q\": \"x\", \"a\": [1]}\n"),
            "d.jsonl:1: field 'a' must be a string or number, found a list");
  EXPECT_EQ(load_error("{\"q\": \"x\", \"a\": true}\n"),
            "d.jsonl:1: field 'a' must be a string or number, found a boolean");
  EXPECT_EQ(load_error("{\"q\": \"x\", \"a\": null}\n"), "d.jsonl:1: field 'a' must be a string or number, found null");
  EXPECT_EQ(load_error("{\"q\": 7, \"a\": \"1\"}\n"), "d.jsonl:1: field 'q' must be a string, found a number");
  DatasetConfig with_reasoning;
  with_reasoning.fields.reasoning = "why";
  EXPECT_EQ(load_error("{\"q\": \"x\", \"a\": \"1\", \"why\": 3}\n", with_reasoning),
            "d.jsonl:1: field 'why' must be a string, found a number");

  // Numbers become answers as JSON writes them; extras of any type are kept (non-strings as JSON).
  TempDir dir;
  DatasetConfig cfg;
  cfg.path = dir.write("ok.jsonl",
                       "{\"prompt\": \"x\", \"answer\": 42, \"n\": [3, 7], \"t\": 38, \"s\": \"Level 1\"}\r\n"
                       "{\"prompt\": \"y\", \"answer\": -0.5, \"n\": {\"k\": null}, \"t\": true, \"s\": \"\"}\n");
  cfg.fields.extra = {"n", "t", "s"};
  const auto records = load_jsonl(cfg);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].answer, "42");
  EXPECT_EQ(records[0].extra, (std::map<std::string, std::string>{{"n", "[3,7]"}, {"t", "38"}, {"s", "Level 1"}}));
  EXPECT_EQ(records[1].answer, "-0.5");
  EXPECT_EQ(records[1].extra, (std::map<std::string, std::string>{{"n", "{\"k\":null}"}, {"t", "true"}, {"s", ""}}));
}

TEST(Dataset, ExtractionFailuresAreLineErrors) {
  DatasetConfig gsm;
  gsm.answer_extract = AnswerExtract::gsm8k;
  EXPECT_EQ(load_error("{\"q\": \"x\", \"a\": \"the answer is 4\"}\n", gsm),
            "d.jsonl:1: field 'a' has no '####' before the final answer (answer_extract: gsm8k)");
  EXPECT_EQ(load_error("{\"q\": \"x\", \"a\": \"4 ####  \"}\n", gsm), "d.jsonl:1: field 'a' has nothing after '####'");
  EXPECT_EQ(load_error("{\"q\": \"x\", \"a\": 4}\n", gsm),
            "d.jsonl:1: field 'a' has no '####' before the final answer (answer_extract: gsm8k)");
  DatasetConfig boxed;
  boxed.answer_extract = AnswerExtract::boxed;
  EXPECT_EQ(load_error("{\"q\": \"x\", \"a\": \"so $x = 4$\"}\n", boxed),
            "d.jsonl:1: field 'a' has no \\boxed{...} answer (answer_extract: boxed)");
}

TEST(Dataset, NestedPathsAndMappedReasoning) {
  TempDir dir;
  DatasetConfig cfg;
  cfg.path = dir.write(
      "n.jsonl",
      "{\"meta\": {\"question\": \"Q1\"}, \"turns\": [{\"text\": \"hi\"}, {\"text\": \"2 + 2 = 4 #### 4\"}], "
      "\"why\": \"explicit\"}\n");
  cfg.fields.prompt = "meta.question";
  cfg.fields.answer = "turns.1.text";
  cfg.fields.reasoning = "why";
  cfg.fields.extra = {"turns.0.text"};
  cfg.answer_extract = AnswerExtract::gsm8k;
  const auto records = load_jsonl(cfg);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].prompt, "Q1");
  EXPECT_EQ(records[0].answer, "4");
  EXPECT_EQ(records[0].reasoning, "explicit");  // a mapped reasoning field wins over the text before ####
  EXPECT_EQ(records[0].extra.at("turns.0.text"), "hi");
  cfg.fields.answer = "turns.2.text";
  GRPO_EXPECT_THROW_MESSAGE(load_jsonl(cfg), std::runtime_error,
                            cfg.path + ":1: missing field 'turns.2.text' (mapped to answer)");
}

TEST(Dataset, SkipBadLinesCountsAndReportsThem) {
  DatasetConfig cfg = gsm8k_config(fixture("gsm8k_broken.jsonl"));
  const std::string f = cfg.path;
  GRPO_EXPECT_THROW_MESSAGE(load_jsonl(cfg), std::runtime_error,
                            f + ":2: malformed JSON: syntax error while parsing object - unexpected end of input; "
                                "expected '}' (column 61)");
  cfg.skip_bad_lines = true;
  const auto report = load_jsonl_report(cfg);
  ASSERT_EQ(report.records.size(), 2u);
  EXPECT_EQ(report.records[0].answer, "4");
  EXPECT_EQ(report.records[1].answer, "12");
  EXPECT_EQ(report.records[1].line, 5);
  EXPECT_EQ(report.bad_lines, 3);
  EXPECT_EQ(report.first_errors,
            (std::vector<std::string>{
                f + ":2: malformed JSON: syntax error while parsing object - unexpected end of input; expected '}' "
                    "(column 61)",
                f + ":3: missing field 'question' (mapped to prompt)",
                f + ":4: field 'answer' must be a string or number, found an object"}));

  cfg.max_bad_lines = 2;
  GRPO_EXPECT_THROW_MESSAGE(load_jsonl(cfg), std::runtime_error,
                            f + ": 3 bad lines, more than max_bad_lines (2); the last: " + f +
                                ":4: field 'answer' must be a string or number, found an object");
  cfg.max_bad_lines = 3;
  EXPECT_EQ(load_jsonl(cfg).size(), 2u);
}

TEST(Dataset, OnlyTheFirstFewBadLinesAreKept) {
  TempDir dir;
  DatasetConfig cfg;
  std::string text;
  for (int i = 0; i < 9; ++i) text += "{\"prompt\": \"x\"}\n";
  text += "{\"prompt\": \"x\", \"answer\": \"1\"}\n";
  cfg.path = dir.write("many.jsonl", text);
  cfg.skip_bad_lines = true;
  const auto report = load_jsonl_report(cfg);
  EXPECT_EQ(report.records.size(), 1u);
  EXPECT_EQ(report.bad_lines, 9);
  ASSERT_EQ(report.first_errors.size(), static_cast<std::size_t>(JsonlReader::kLoggedErrors));
  EXPECT_EQ(report.first_errors.back(), cfg.path + ":5: missing field 'answer' (mapped to answer)");
}

TEST(Dataset, StreamingReaderAndLimit) {
  DatasetConfig cfg = gsm8k_config(fixture("gsm8k_sample.jsonl"));
  JsonlReader reader(cfg);
  std::vector<std::string> answers;
  while (auto r = reader.next()) answers.push_back(r->answer);
  EXPECT_EQ(answers, (std::vector<std::string>{"15", "168", "250"}));
  EXPECT_EQ(reader.records(), 3);
  EXPECT_FALSE(reader.next().has_value());  // stays at the end
  cfg.limit = 2;
  EXPECT_EQ(load_jsonl(cfg).size(), 2u);
}

TEST(Dataset, WriteJsonlReadsBackTheSameRecords) {
  TempDir dir;
  std::vector<Record> records(3);
  records[0].prompt = "Using the numbers [3, 7], make 21.";
  records[0].answer = "7 * 3";
  records[0].reasoning = "7 * 3 = 21\n\"quoted\" and ünïcode";
  records[0].extra = {{"numbers", "[3,7]"}, {"target", "21"}, {"kind", "countdown"}};
  records[1].prompt = "What is 1 + 1?";
  records[1].answer = "2";
  records[1].extra = {{"numbers", "[]"}, {"target", "2"}, {"kind", "[not json"}};
  records[2].prompt = "p";
  records[2].answer = "a";
  records[2].reasoning = "";
  records[2].extra = {{"numbers", "{\"a\":1}"}, {"target", "null"}, {"kind", ""}};
  const std::string path = dir.path("out/set.jsonl");
  grpo::data::write_jsonl(path, records);
  const std::string text = grpo::test::read_text(path);
  EXPECT_EQ(text.substr(0, text.find('\n')),
            "{\"prompt\":\"Using the numbers [3, 7], make 21.\",\"answer\":\"7 * 3\",\"reasoning\":\"7 * 3 = "
            "21\\n\\\"quoted\\\" "
            "and ünïcode\",\"kind\":\"countdown\",\"numbers\":[3,7],\"target\":21}");

  DatasetConfig cfg;
  cfg.path = path;
  cfg.fields.reasoning = "reasoning";
  cfg.fields.extra = {"numbers", "target", "kind"};
  // reasoning is written only when set: record 1 has none, so map it only where present.
  cfg.skip_bad_lines = true;
  const auto report = load_jsonl_report(cfg);
  ASSERT_EQ(report.records.size(), 2u);
  EXPECT_EQ(report.bad_lines, 1);
  EXPECT_EQ(report.first_errors[0], path + ":2: missing field 'reasoning' (mapped to reasoning)");
  for (int k : {0, 1}) {
    const Record& got = report.records[k];
    const Record& want = records[k == 0 ? 0 : 2];
    EXPECT_EQ(got.prompt, want.prompt);
    EXPECT_EQ(got.answer, want.answer);
    EXPECT_EQ(got.reasoning, want.reasoning);
    EXPECT_EQ(got.extra, want.extra);
  }
  cfg.fields.reasoning.reset();
  cfg.skip_bad_lines = false;
  const auto all = load_jsonl(cfg);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[1].extra, records[1].extra);

  records[0].extra["prompt"] = "x";
  GRPO_EXPECT_THROW_MESSAGE(grpo::data::write_jsonl(path, records), std::invalid_argument,
                            "write_jsonl: record 0 has an extra field named 'prompt', which is a Record member");
}

// ---------------------------------------------------------------------------------------------
// DataOrder

DataOrderConfig order_config(int64_t batch_size, bool shuffle = true, bool drop_last = false) {
  DataOrderConfig c;
  c.batch_size = batch_size;
  c.shuffle = shuffle;
  c.drop_last = drop_last;
  return c;
}

TEST(DataOrder, EpochPermutationDependsOnlyOnSeedAndEpoch) {
  DataOrder a(50, order_config(7), 42), b(50, order_config(7), 42);
  // Consuming from `a` does not change what epoch 3 is.
  for (int i = 0; i < 20; ++i) a.next_batch();
  EXPECT_EQ(a.epoch_indices(3), b.epoch_indices(3));
  for (int64_t e = 0; e < 4; ++e) {
    auto idx = b.epoch_indices(e);
    std::vector<int64_t> sorted = idx;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> all(50);
    std::iota(all.begin(), all.end(), int64_t{0});
    EXPECT_EQ(sorted, all) << "epoch " << e << " is a permutation";
  }
  EXPECT_NE(b.epoch_indices(0), b.epoch_indices(1));
  EXPECT_NE(b.epoch_indices(0), DataOrder(50, order_config(7), 43).epoch_indices(0));
  // Pinned values: the order must not change with the standard library or a refactor.
  EXPECT_EQ(DataOrder(10, order_config(4), 7).epoch_indices(0), (std::vector<int64_t>{7, 8, 0, 4, 1, 6, 9, 5, 2, 3}));

  DataOrder plain(5, order_config(2, /*shuffle=*/false), 1);
  EXPECT_EQ(plain.epoch_indices(9), (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(DataOrder, BatchesWalkEpochsAndNeverSpanTwo) {
  DataOrder order(10, order_config(4, /*shuffle=*/false), 1);
  EXPECT_EQ(order.batches_per_epoch(), 3);
  EXPECT_EQ(order.next_batch(), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(order.next_batch(), (std::vector<int64_t>{4, 5, 6, 7}));
  EXPECT_EQ(order.next_batch(), (std::vector<int64_t>{8, 9}));
  EXPECT_EQ(order.epoch(), 1);
  EXPECT_EQ(order.state().offset, 0);
  EXPECT_EQ(order.next_batch(), (std::vector<int64_t>{0, 1, 2, 3}));

  DataOrder dropping(10, order_config(4, /*shuffle=*/false, /*drop_last=*/true), 1);
  EXPECT_EQ(dropping.batches_per_epoch(), 2);
  dropping.next_batch();
  EXPECT_EQ(dropping.next_batch(), (std::vector<int64_t>{4, 5, 6, 7}));
  EXPECT_EQ(dropping.epoch(), 1);
  EXPECT_EQ(dropping.next_batch(), (std::vector<int64_t>{0, 1, 2, 3}));
}

TEST(DataOrder, RanksGetDisjointEqualSharesAndTheRemainderIsDropped) {
  const int64_t n = 103, world = 4;
  std::set<int64_t> dropped_in_epoch0;
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::set<int64_t> seen;
    for (int64_t rank = 0; rank < world; ++rank) {
      DataOrder order(n, order_config(8), 5, rank, world);
      EXPECT_EQ(order.per_rank(), 25);
      EXPECT_EQ(order.batches_per_epoch(), 4);
      const auto share = order.epoch_indices(epoch);
      ASSERT_EQ(share.size(), 25u);
      for (int64_t i : share) EXPECT_TRUE(seen.insert(i).second) << "index " << i << " on two ranks";
      // The batches of one epoch are exactly the share.
      std::vector<int64_t> batched;
      for (int64_t b = 0; b < epoch * order.batches_per_epoch(); ++b) order.next_batch();
      for (int64_t b = 0; b < order.batches_per_epoch(); ++b) {
        const auto batch = order.next_batch();
        batched.insert(batched.end(), batch.begin(), batch.end());
      }
      EXPECT_EQ(batched, share);
    }
    EXPECT_EQ(seen.size(), 100u);  // 3 of 103 dropped this epoch
    std::set<int64_t> dropped;
    for (int64_t i = 0; i < n; ++i) {
      if (!seen.count(i)) dropped.insert(i);
    }
    if (epoch == 0) {
      dropped_in_epoch0 = dropped;
    } else {
      EXPECT_NE(dropped, dropped_in_epoch0) << "the dropped remainder changes with the epoch";
    }
  }
}

TEST(DataOrder, RestoredOrderContinuesExactlyLikeAnUninterruptedOne) {
  for (int64_t k : {0, 1, 5, 6, 13}) {  // 6 batches per epoch: inside, at and past epoch ends
    DataOrder uninterrupted(23, order_config(4), 99, 1, 2);
    DataOrder first(23, order_config(4), 99, 1, 2);
    for (int64_t i = 0; i < k; ++i) {
      EXPECT_EQ(first.next_batch(), uninterrupted.next_batch());
    }
    const std::string saved = first.state().to_json();
    DataOrder resumed(23, order_config(4), /*seed=*/0, 1, 2);  // the seed comes from the state
    resumed.restore(DataOrderState::from_json(saved));
    EXPECT_EQ(resumed.state(), first.state());
    for (int i = 0; i < 20; ++i) {
      EXPECT_EQ(resumed.next_batch(), uninterrupted.next_batch()) << "k=" << k << " batch " << i;
    }
  }
  DataOrder order(23, order_config(4), 99);
  for (int i = 0; i < 7; ++i) order.next_batch();
  EXPECT_EQ(order.state().to_json(), "{\"dataset_size\":23,\"epoch\":1,\"offset\":4,\"seed\":99,\"world_size\":1}");
}

TEST(DataOrder, ErrorsNameWhatDoesNotFit) {
  GRPO_EXPECT_THROW_MESSAGE(DataOrder(10, order_config(2), 1, 2, 2), std::invalid_argument,
                            "DataOrder: rank 2 is not in [0, world_size 2)");
  GRPO_EXPECT_THROW_MESSAGE(DataOrder(3, order_config(2), 1, 0, 4), std::invalid_argument,
                            "DataOrder: a dataset of 3 records cannot be shared by 4 ranks");
  GRPO_EXPECT_THROW_MESSAGE(DataOrder(10, order_config(8, true, true), 1, 0, 2), std::invalid_argument,
                            "DataOrder: with drop_last, 5 records per rank make no batch of 8");
  DataOrder order(10, order_config(2), 1);
  DataOrderState s = order.state();
  s.dataset_size = 11;
  GRPO_EXPECT_THROW_MESSAGE(order.restore(s), std::invalid_argument,
                            "DataOrder::restore: the state is for a dataset of 11 records, this one has 10");
  s.dataset_size = 10;
  s.world_size = 2;
  GRPO_EXPECT_THROW_MESSAGE(order.restore(s), std::invalid_argument,
                            "DataOrder::restore: the state is for world_size 2, this run has 1");
  GRPO_EXPECT_THROW_MESSAGE(DataOrderState::from_json("{\"epoch\": 1}"), std::runtime_error,
                            "data order state: missing key 'offset'");
  GRPO_EXPECT_THROW_MESSAGE(
      DataOrderState::from_json("{\"epoch\":-1,\"offset\":0,\"seed\":1,\"dataset_size\":3,\"world_size\":1}"),
      std::runtime_error, "data order state: 'epoch' must be an integer >= 0, found -1");
  GRPO_EXPECT_THROW_MESSAGE(DataOrderState::from_json("[]"), std::runtime_error,
                            "data order state: expected a JSON object, found a list");
}

}  // namespace
