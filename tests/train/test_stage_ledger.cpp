// The stage ledger of the multi-stage programs: a recorded stage is found again with its numbers,
// a stage recorded with other inputs is an error naming the key, a stage after one that ran again
// in this process is not skipped, and a damaged summary is an error naming the file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "grpo/core/files.h"
#include "grpo/core/run.h"
#include "grpo/rewards/reward_set.h"
#include "grpo/train/optimizer.h"
#include "grpo/train/stage_ledger.h"
#include "test_util.h"

namespace grpo::train {
namespace {

std::unique_ptr<Run> make_run(const grpo::test::TempDir& dir) {
  RunConfig rc;
  rc.output_dir = dir.path("run");
  rc.log_level = "warn";
  return std::make_unique<Run>(rc, "test: true\n");
}

TEST(StageLedger, SectionTextListsEveryKeyWithItsValueSorted) {
  OptimizerConfig o;
  o.lr = 0.003;
  const std::string text = StageLedger::section_text(o);
  EXPECT_NE(text.find("lr=0.003\n"), std::string::npos) << text;
  EXPECT_NE(text.find("beta2=0.95\n"), std::string::npos) << text;
  EXPECT_LT(text.find("beta1="), text.find("lr="));  // sorted by key
  EXPECT_EQ(text.find('#'), std::string::npos);      // no comments: help texts do not matter
  // Lists of mappings leaf by leaf, so a changed reward function is seen.
  const auto rewards = config::from_value<rewards::RewardsConfig>(config::parse_yaml_string(
      "functions: [{name: math_accuracy, weight: 1.0}, {name: format, weight: 0.1}]\n", "rewards.yaml"));
  const std::string r = StageLedger::section_text(rewards);
  EXPECT_NE(r.find("functions.1.name=\"format\"\nfunctions.1.options=null\nfunctions.1.weight=0.1\n"),
            std::string::npos)
      << r;
}

TEST(StageLedger, RecordedStageIsSkippedWithItsNumbersByTheNextProcess) {
  grpo::test::TempDir dir;
  auto run = make_run(dir);
  const std::map<std::string, std::string> inputs = {{"sft", "steps=10\nlr=0.1\n"}};
  {
    StageLedger ledger(*run);
    EXPECT_FALSE(ledger.finished("sft", inputs));
    StageSummary s;
    s.stage = "sft";
    s.inputs = inputs;
    s.numbers["after.accuracy"] = 0.625;
    s.texts["output"] = run->path("sft_model");
    ledger.record(s);
    EXPECT_TRUE(ledger.ran());
    EXPECT_TRUE(std::filesystem::exists(ledger.path("sft")));
  }
  StageLedger again(*run);  // a new process
  const auto s = again.finished("sft", inputs);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->numbers.at("after.accuracy"), 0.625);
  EXPECT_EQ(s->texts.at("output"), run->path("sft_model"));
  EXPECT_FALSE(s->finished.empty());
  EXPECT_FALSE(again.ran());
}

TEST(StageLedger, OtherInputsAreAnErrorNamingTheKey) {
  grpo::test::TempDir dir;
  auto run = make_run(dir);
  StageLedger(*run).record({"grpo", "", {{"grpo", "steps=10\nlr=0.1\n"}}, {}, {}});
  StageLedger again(*run);
  try {
    again.finished("grpo", {{"grpo", "steps=20\nlr=0.1\n"}});
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("grpo.steps (was '10', now '20')"), std::string::npos) << what;
    EXPECT_NE(what.find("stages/grpo.json"), std::string::npos) << what;
  }
  // A section it did not have before.
  EXPECT_THROW(again.finished("grpo", {{"grpo", "steps=10\nlr=0.1\n"}, {"rl_data", "x=1\n"}}), std::runtime_error);
}

TEST(StageLedger, StagesAfterOneThatRanAgainRunToo) {
  grpo::test::TempDir dir;
  auto run = make_run(dir);
  {
    StageLedger ledger(*run);
    ledger.record({"a", "", {{"a", "x=1\n"}}, {}, {}});
    ledger.record({"b", "", {{"b", "y=1\n"}}, {}, {}});
  }
  std::filesystem::remove(StageLedger(*run).path("a"));  // stage a is to be redone
  StageLedger ledger(*run);
  EXPECT_FALSE(ledger.finished("a", {{"a", "x=1\n"}}));
  ledger.record({"a", "", {{"a", "x=1\n"}}, {}, {}});
  EXPECT_FALSE(ledger.finished("b", {{"b", "y=1\n"}}));  // b's file is there, but its input model changed
}

TEST(StageLedger, DamagedSummaryIsAnErrorNamingTheFile) {
  grpo::test::TempDir dir;
  auto run = make_run(dir);
  StageLedger ledger(*run);
  write_file_atomic(ledger.path("sft"), "{\"stage\": \"sft\", \"inpu");
  try {
    ledger.finished("sft", {});
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(ledger.path("sft") + ": not a stage summary"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace grpo::train
