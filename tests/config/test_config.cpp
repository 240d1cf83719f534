// Config loading: every error path with its exact one-line message, overrides through the same
// validation, and the printed effective config loading back to the same values.
#include "grpo/config/config.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>

#include "grpo/core/run.h"
#include "test_util.h"

namespace grpo::config {
namespace {

enum class Schedule { cosine, linear, constant };
constexpr auto config_enum_names(Schedule) {
  return std::array{std::pair{Schedule::cosine, "cosine"}, std::pair{Schedule::linear, "linear"},
                    std::pair{Schedule::constant, "constant"}};
}

struct OptimConfig {
  double lr = 3e-4;
  double weight_decay = 0.1;
  Schedule schedule = Schedule::cosine;
  std::string name = "adamw";
  template <class V>
  void visit(V& v) {
    v("lr", lr, "peak learning rate", Check().gt(0));
    v("weight_decay", weight_decay, "decoupled weight decay", Check().ge(0));
    v("schedule", schedule, "learning-rate schedule");
    v("name", name, "optimizer", Check().one_of({"adamw", "sgd"}));
  }
};

struct ModelConfig {
  std::string preset;
  std::optional<std::int64_t> q_lora_rank;
  std::vector<int> layers = {1, 2};
  template <class V>
  void visit(V& v) {
    v("preset", preset, "model preset", Check().required().nonempty());
    v("q_lora_rank", q_lora_rank, "query compression rank (null = none)", Check().gt(0));
    v("layers", layers, "layer ids", Check().ge(0));
  }
};

struct TrainConfig {
  int steps = 100;
  int warmup_steps = 10;
  bool shuffle = true;
  template <class V>
  void visit(V& v) {
    v("steps", steps, "optimizer steps", Check().ge(1));
    v("warmup_steps", warmup_steps, "linear warmup steps", Check().ge(0));
    v("shuffle", shuffle, "shuffle the data each epoch");
  }
  std::string validate() const {
    if (warmup_steps >= steps) {
      return "warmup_steps (" + std::to_string(warmup_steps) + ") must be less than steps (" + std::to_string(steps) +
             ")";
    }
    return "";
  }
};

struct RewardEntry {
  std::string name;
  double weight = 1.0;
  Value options;
  template <class V>
  void visit(V& v) {
    v("name", name, "reward function", Check().required());
    v("weight", weight, "weight in the total");
    v("options", options, "passed to the function as written");
  }
};

struct JobConfig {
  RunConfig run;
  ModelConfig model;
  OptimConfig optim;
  TrainConfig train;
  std::vector<RewardEntry> rewards;
  template <class V>
  void visit(V& v) {
    v("run", run, "run folder and seed");
    v("model", model, "model");
    v("optim", optim, "optimizer");
    v("train", train, "training loop");
    v("rewards", rewards, "reward functions");
  }
};

class ConfigTest : public ::testing::Test {
 protected:
  test::TempDir dir;
  std::string write(const std::string& text) { return dir.write("job.yaml", text); }
};

TEST_F(ConfigTest, LoadsEveryFieldType) {
  const std::string path = write(
      "model:\n"
      "  preset: tiny\n"
      "  q_lora_rank: 16\n"
      "  layers: [0, 3, 5]\n"
      "optim:\n"
      "  lr: 1e-5\n"
      "  schedule: linear\n"
      "train:\n"
      "  steps: 1e3\n"
      "  shuffle: false\n"
      "rewards:\n"
      "  - name: accuracy\n"
      "    weight: 2\n"
      "  - name: plugin\n"
      "    options: {path: lib.so, k: [1, 2]}\n");
  const auto cfg = load<JobConfig>(path);
  EXPECT_EQ(cfg.model.preset, "tiny");
  ASSERT_TRUE(cfg.model.q_lora_rank.has_value());
  EXPECT_EQ(*cfg.model.q_lora_rank, 16);
  EXPECT_EQ(cfg.model.layers, (std::vector<int>{0, 3, 5}));
  EXPECT_DOUBLE_EQ(cfg.optim.lr, 1e-5);
  EXPECT_DOUBLE_EQ(cfg.optim.weight_decay, 0.1);  // default kept
  EXPECT_EQ(cfg.optim.schedule, Schedule::linear);
  EXPECT_EQ(cfg.train.steps, 1000);
  EXPECT_FALSE(cfg.train.shuffle);
  ASSERT_EQ(cfg.rewards.size(), 2u);
  EXPECT_EQ(cfg.rewards[0].name, "accuracy");
  EXPECT_DOUBLE_EQ(cfg.rewards[0].weight, 2.0);
  EXPECT_DOUBLE_EQ(cfg.rewards[1].weight, 1.0);
  ASSERT_TRUE(cfg.rewards[1].options.is_map());
  ASSERT_NE(cfg.rewards[1].options.find("path"), nullptr);
  EXPECT_EQ(cfg.rewards[1].options.find("path")->text, "lib.so");
  EXPECT_EQ(cfg.run.output_dir, "runs/default");
}

TEST_F(ConfigTest, NullClearsAnOptional) {
  const auto cfg = load<JobConfig>(write("model:\n  preset: x\n  q_lora_rank: null\n"));
  EXPECT_FALSE(cfg.model.q_lora_rank.has_value());
}

TEST_F(ConfigTest, UnknownKeySuggestsTheNearestKey) {
  const std::string path = write("model:\n  preset: tiny\noptim:\n  lrr: 0.1\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":4:3: unknown key 'optim.lrr' (did you mean 'optim.lr'?)");
}

TEST_F(ConfigTest, UnknownSectionSuggestsTheNearestSection) {
  const std::string path = write("model:\n  preset: tiny\noptimizer:\n  lr: 0.1\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":3:1: unknown key 'optimizer' (did you mean 'optim'?)");
}

TEST_F(ConfigTest, UnknownKeyFarFromAllKeysHasNoSuggestion) {
  const std::string path = write("model:\n  preset: tiny\n  completely_different: 1\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":3:3: unknown key 'model.completely_different'");
}

TEST_F(ConfigTest, WrongTypeNamesKeyExpectedAndFound) {
  const std::string path = write("model:\n  preset: tiny\noptim:\n  lr: fast\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":4:7: optim.lr: expected a number, found 'fast'");
}

TEST_F(ConfigTest, QuotedNumberIsAStringNotANumber) {
  const std::string path = write("model:\n  preset: tiny\noptim:\n  lr: \"0.1\"\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":4:7: optim.lr: expected a number, found the string \"0.1\"");
}

TEST_F(ConfigTest, FractionForAnInteger) {
  const std::string path = write("model:\n  preset: tiny\ntrain:\n  steps: 1.5\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":4:10: train.steps: expected an integer, found '1.5'");
}

TEST_F(ConfigTest, IntegerTooLargeForTheField) {
  const std::string path = write("model:\n  preset: tiny\ntrain:\n  steps: 3000000000\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":4:10: train.steps: 3000000000 does not fit in this field's 32-bit integer");
}

// Regression: a scalar of about 30,000 digits overflowed the stack in std::regex_match (every
// program segfaulted). Now a one-line error naming the key, the length and the limit; a long
// non-number is named by its start and length.
TEST_F(ConfigTest, HugeScalarsGetAShortErrorNotACrash) {
  const std::string digits(30000, '7');
  std::string path = write("model:\n  preset: tiny\ntrain:\n  steps: " + digits + "\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":4:10: train.steps: a number of 30000 characters (at most 400), starting '" +
                                std::string(20, '7') + "...'");
  path = write("model:\n  preset: tiny\noptim:\n  lr: 0." + digits + "\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":4:7: optim.lr: a number of 30002 characters (at most 400), starting '0." +
                                std::string(18, '7') + "...'");
  path = write("model:\n  preset: tiny\n");
  try {
    load<JobConfig>(path, {"train.steps=" + digits});
    ADD_FAILURE() << "expected an error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("train.steps: a number of 30000 characters"), std::string::npos);
    EXPECT_LT(std::string(e.what()).size(), 300u) << "the override is named by its start";
  }
  path = write("model:\n  preset: tiny\noptim:\n  name: " + std::string(30000, 'x') + "\n");
  try {
    load<JobConfig>(path);
    ADD_FAILURE() << "expected an error";
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'" + std::string(40, 'x') + "... (30000 characters)'"), std::string::npos) << what.size();
    EXPECT_LT(what.size(), 400u);
  }
}

// The scanners that replaced the regular expressions accept and refuse what they did.
TEST_F(ConfigTest, NumberSyntaxIsYamlsPlainDecimal) {
  for (const auto& [text, value] : std::vector<std::pair<std::string, double>>{{"12", 12},
                                                                               {"+7", 7},
                                                                               {"3.5", 3.5},
                                                                               {".5", 0.5},
                                                                               {"5.", 5},
                                                                               {"1e-3", 1e-3},
                                                                               {"2.E+4", 2e4},
                                                                               {"+0.25e1", 2.5}}) {
    const std::string path = write("model:\n  preset: tiny\noptim:\n  weight_decay: " + text + "\n");
    EXPECT_EQ(load<JobConfig>(path).optim.weight_decay, value) << text;
  }
  for (const std::string text : {"1e", ".", "e5", "1.2.3", "--1", "+", "1e+", "0x10", "1_000", "1 2"}) {
    const std::string path = write("model:\n  preset: tiny\noptim:\n  weight_decay: " + text + "\n");
    EXPECT_THROW(load<JobConfig>(path), ConfigError) << text;
  }
  for (const auto& [text, value] : std::vector<std::pair<std::string, int>>{{"12", 12}, {"+30", 30}, {"1e3", 1000}}) {
    const std::string path = write("model:\n  preset: tiny\ntrain:\n  steps: " + text + "\n");
    EXPECT_EQ(load<JobConfig>(path).train.steps, value) << text;
  }
}

TEST_F(ConfigTest, WrongBoolean) {
  const std::string path = write("model:\n  preset: tiny\ntrain:\n  shuffle: maybe\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":4:12: train.shuffle: expected true or false, found 'maybe'");
}

TEST_F(ConfigTest, ScalarWhereASectionBelongs) {
  const std::string path = write("model:\n  preset: tiny\noptim: 5\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":3:8: optim: expected a mapping of keys, found '5'");
}

TEST_F(ConfigTest, ScalarWhereAListBelongs) {
  const std::string path = write("model:\n  preset: tiny\n  layers: 3\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":3:11: model.layers: expected a list, found '3'");
}

TEST_F(ConfigTest, BadListElementIsNamedByIndex) {
  const std::string path = write("model:\n  preset: tiny\n  layers: [1, x]\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":3:15: model.layers[1]: expected an integer, found 'x'");
}

TEST_F(ConfigTest, ValueOutOfRange) {
  const std::string path = write("model:\n  preset: tiny\noptim:\n  lr: -1\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError, path + ":4:7: optim.lr: must be > 0, found -1");
}

TEST_F(ConfigTest, ListElementOutOfRange) {
  const std::string path = write("model:\n  preset: tiny\n  layers: [1, -2]\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":3:15: model.layers[1]: must be >= 0, found -2");
}

TEST_F(ConfigTest, StringNotAmongChoicesSuggestsOne) {
  const std::string path = write("model:\n  preset: tiny\noptim:\n  name: adamww\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path +
                                ":4:9: optim.name: expected one of adamw, sgd, found 'adamww' (did you mean 'adamw'?)");
}

TEST_F(ConfigTest, UnknownEnumName) {
  const std::string path = write("model:\n  preset: tiny\noptim:\n  schedule: cosin\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path +
                                ":4:13: optim.schedule: expected one of cosine, linear, constant, "
                                "found 'cosin' (did you mean 'cosine'?)");
}

TEST_F(ConfigTest, MissingRequiredKeyInAnAbsentSection) {
  const std::string path = write("optim:\n  lr: 0.1\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError, path + ":1:1: missing required key 'model.preset'");
}

TEST_F(ConfigTest, MissingRequiredKeyPointsAtItsSection) {
  const std::string path = write("optim:\n  lr: 0.1\nmodel:\n  q_lora_rank: 4\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError, path + ":3:1: missing required key 'model.preset'");
}

TEST_F(ConfigTest, MissingRequiredKeyInAListItem) {
  const std::string path = write("model:\n  preset: tiny\nrewards:\n  - name: a\n  - weight: 2\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError, path + ":5:5: missing required key 'rewards[1].name'");
}

TEST_F(ConfigTest, EmptyRequiredString) {
  const std::string path = write("model:\n  preset: \"\"\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError, path + ":2:11: model.preset: must not be empty");
}

TEST_F(ConfigTest, MissingFile) {
  const std::string path = dir.path("nope.yaml");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError, "config file '" + path + "' does not exist");
}

TEST_F(ConfigTest, DirectoryInsteadOfFile) {
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(dir.path()), ConfigError,
                            "config file '" + dir.path() + "' is a directory, expected a YAML file");
}

TEST_F(ConfigTest, InvalidYamlGivesItsPosition) {
  const std::string path = write("model:\n  preset: tiny\n  layers: [1, 2\n");
  try {
    load<JobConfig>(path);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path + ":", 0), 0u) << msg;
    EXPECT_NE(msg.find(": invalid YAML: "), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line expected: " << msg;
  }
}

TEST_F(ConfigTest, DuplicateKey) {
  const std::string path = write("model:\n  preset: tiny\nmodel:\n  preset: small\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError, path + ":3:1: duplicate key 'model'");
}

TEST_F(ConfigTest, TopLevelMustBeAMapping) {
  const std::string path = write("- a\n- b\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":1:1: expected a mapping of keys at the top level, found a list");
}

TEST_F(ConfigTest, CrossFieldValidationNamesTheSection) {
  const std::string path = write("model:\n  preset: tiny\ntrain:\n  steps: 100\n  warmup_steps: 200\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path), ConfigError,
                            path + ":4:3: train: warmup_steps (200) must be less than steps (100)");
}

TEST_F(ConfigTest, OverridesReplaceAndAddKeys) {
  const std::string path = write("model:\n  preset: tiny\noptim:\n  lr: 0.1\n");
  const auto cfg = load<JobConfig>(
      path, {"optim.lr=3e-6", "train.steps=70", "model.layers=[4, 5]", "run.output_dir=out/x=y"});
  EXPECT_DOUBLE_EQ(cfg.optim.lr, 3e-6);
  EXPECT_EQ(cfg.train.steps, 70);
  EXPECT_EQ(cfg.model.layers, (std::vector<int>{4, 5}));
  EXPECT_EQ(cfg.run.output_dir, "out/x=y");  // only the first '=' splits
}

TEST_F(ConfigTest, OverrideIntoAListItem) {
  const std::string path = write("model:\n  preset: tiny\nrewards:\n  - name: a\n  - name: b\n");
  const auto cfg = load<JobConfig>(path, {"rewards.1.weight=0.5"});
  EXPECT_DOUBLE_EQ(cfg.rewards[1].weight, 0.5);
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path, {"rewards.2.weight=0.5"}), ConfigError,
                            "--set rewards.2.weight=0.5: index 2 is out of range for 'rewards', which has 2 item(s)");
}

TEST_F(ConfigTest, OverrideWithoutAFileUsesDefaults) {
  const auto cfg = load<JobConfig>(std::nullopt, {"model.preset=tiny"});
  EXPECT_EQ(cfg.model.preset, "tiny");
  EXPECT_EQ(cfg.train.steps, 100);
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(std::nullopt), ConfigError,
                            "<defaults>: missing required key 'model.preset'");
}

TEST_F(ConfigTest, OverridesGoThroughTheSameValidation) {
  const std::string path = write("model:\n  preset: tiny\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path, {"optim.lrr=1"}), ConfigError,
                            "--set optim.lrr=1: unknown key 'optim.lrr' (did you mean 'optim.lr'?)");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path, {"optim.lr=abc"}), ConfigError,
                            "--set optim.lr=abc: optim.lr: expected a number, found 'abc'");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path, {"optim.lr=0"}), ConfigError,
                            "--set optim.lr=0: optim.lr: must be > 0, found 0");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path, {"train.warmup_steps=500"}), ConfigError,
                            "--set train.warmup_steps=500: train: warmup_steps (500) must be less "
                            "than steps (100)");
}

TEST_F(ConfigTest, MalformedOverrides) {
  const std::string path = write("model:\n  preset: tiny\noptim:\n  lr: 0.1\n");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path, {"optim.lr"}), ConfigError,
                            "--set optim.lr: expected key=value, such as trainer.lr=3e-6");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path, {"optim..lr=1"}), ConfigError,
                            "--set optim..lr=1: empty key segment in 'optim..lr'");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path, {"optim.lr.x=1"}), ConfigError,
                            "--set optim.lr.x=1: 'optim.lr' is a single value ('0.1'), so it has "
                            "no key 'x'");
  GRPO_EXPECT_THROW_MESSAGE(load<JobConfig>(path, {"optim.lr=[1"}), ConfigError,
                            "--set optim.lr=[1: invalid YAML: end of sequence flow not found");
}

TEST_F(ConfigTest, EffectiveConfigRoundTrips) {
  const std::string path = write(
      "model:\n  preset: \"tiny: v2 # not a comment\"\n  layers: []\n"
      "optim:\n  lr: 1.0e-7\n  schedule: constant\n"
      "rewards:\n  - name: a\n    options: {x: [1, \"two\"], y: null}\n");
  const auto cfg = load<JobConfig>(path, {"train.steps=33"});
  const std::string yaml = to_yaml(cfg);
  EXPECT_NE(yaml.find("# peak learning rate (> 0)\n  lr: 1e-07\n"), std::string::npos) << yaml;
  const auto again = load<JobConfig>(dir.write("effective.yaml", yaml));
  EXPECT_EQ(to_yaml(again), yaml);
  EXPECT_EQ(again.model.preset, "tiny: v2 # not a comment");
  EXPECT_TRUE(again.model.layers.empty());
  EXPECT_EQ(again.optim.lr, 1e-7);
  EXPECT_EQ(again.optim.schedule, Schedule::constant);
  EXPECT_EQ(again.train.steps, 33);
  ASSERT_EQ(again.rewards.size(), 1u);
  EXPECT_EQ(again.rewards[0].options.find("x")->items[1].text, "two");
  EXPECT_TRUE(again.rewards[0].options.find("y")->is_null());
}

TEST(ConfigDoubles, ShortestTextRoundTrips) {
  for (double x : {0.1, 3e-4, 1.0 / 3.0, 1e300, -2.5e-308, 123456789.0, 0.0}) {
    const std::string t = double_to_text(x);
    EXPECT_EQ(std::strtod(t.c_str(), nullptr), x) << t;
  }
  EXPECT_EQ(double_to_text(3e-4), "0.0003");
  EXPECT_EQ(double_to_text(0.1), "0.1");
}

TEST(ConfigSuggest, PicksNearKeysOnly) {
  const std::vector<std::string> keys{"lr", "weight_decay", "warmup_steps", "steps"};
  EXPECT_EQ(suggest("lrr", keys), "lr");
  EXPECT_EQ(suggest("weight_decai", keys), "weight_decay");
  EXPECT_EQ(suggest("warmup_step", keys), "warmup_steps");
  EXPECT_EQ(suggest("Steps", keys), "steps");
  EXPECT_EQ(suggest("temperature", keys), "");
}

TEST(ConfigDocs, DescribesEveryLeafKeyWithDefaultAndHelp) {
  const auto rows = describe_keys<JobConfig>();
  bool found_lr = false, found_seed = false;
  for (const auto& r : rows) {
    if (r.path == "optim.lr") {
      found_lr = true;
      EXPECT_EQ(r.default_value, "0.0003");
      EXPECT_EQ(r.help, "peak learning rate (> 0)");
    }
    if (r.path == "run.seed") {
      found_seed = true;
      EXPECT_EQ(r.default_value, "1234");
    }
  }
  EXPECT_TRUE(found_lr);
  EXPECT_TRUE(found_seed);
}

}  // namespace
}  // namespace grpo::config
