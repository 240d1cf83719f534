// Reward plugins: the example plugin loaded and used through the registry, and every way a plugin
// is refused, each with its one-line message.
#include "grpo/rewards/plugin.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "grpo/config/config.h"
#include "grpo/rewards/reward_set.h"
#include "test_util.h"

namespace grpo::rewards {
namespace {

RewardRegistry builtin_registry() {
  RewardRegistry registry;
  register_builtin_rewards(registry);
  return registry;
}

std::vector<std::string> builtin_names() { return builtin_registry().names(); }

Sample sample(std::string completion) {
  Sample s;
  s.completion = std::move(completion);
  return s;
}

// The message of the runtime_error that loading `path` throws ("" when it loads).
std::string load_error(const std::string& path, RewardRegistry& registry) {
  try {
    load_reward_plugin(path, registry);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(RewardPlugin, ExamplePluginRegistersItsRewardsWithYamlOptions) {
#ifndef GRPO_EXAMPLE_PLUGIN
  GTEST_SKIP() << "examples are not built (GRPO_BUILD_EXAMPLES=OFF)";
#else
  RewardRegistry registry = builtin_registry();
  const PluginInfo info = load_reward_plugin(GRPO_EXAMPLE_PLUGIN, registry);
  EXPECT_EQ(info.path, GRPO_EXAMPLE_PLUGIN);
  EXPECT_EQ(info.name, "example");
  EXPECT_EQ(info.grpo_version, GRPO_VERSION_STRING);
  EXPECT_EQ(info.functions, (std::vector<std::string>{"keyword", "reasoning_steps"}));
  std::vector<std::string> expected = builtin_names();
  expected.insert(expected.end(), {"keyword", "reasoning_steps"});
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(registry.names(), expected);

  const auto steps = registry.create("reasoning_steps", config::parse_yaml_string("target_steps: 2\n", "rewards.yaml"));
  EXPECT_EQ(steps->name(), "reasoning_steps");
  const auto out = steps->score({
      sample("Step 1: add.\nStep 2: multiply.\nFinally, done."),  // 3 markers
      sample("1. a\n12. b"),                                      // 2 numbered lines
      sample("  * indented bullet\nno marker"),                   // 1
      sample("Step A: x; 3.5 apples - and no list"),              // 0: not markers
  });
  ASSERT_EQ(out.scores.size(), 4u);
  EXPECT_EQ(out.scores[0], 1.0);
  EXPECT_EQ(out.scores[1], 1.0);
  EXPECT_EQ(out.scores[2], 0.5);
  EXPECT_EQ(out.scores[3], 0.0);
  ASSERT_EQ(out.reasons.size(), 4u);
  EXPECT_EQ(out.reasons[0], "3 step markers (2 for full score)");
  EXPECT_DOUBLE_EQ(out.metrics.at("mean_steps"), 1.5);

  // Default options: 3 markers for the full score.
  const auto default_steps = registry.create("reasoning_steps");
  EXPECT_DOUBLE_EQ(*default_steps->score({sample("First, a\nSecond, b")}).scores[0], 2.0 / 3.0);

  const auto keyword = registry.create(
      "keyword", config::parse_yaml_string("keyword: QED\ncase_sensitive: false\n", "rewards.yaml"));
  const auto kw = keyword->score({sample("thus qed."), sample("no proof")});
  EXPECT_EQ(kw.scores, (std::vector<std::optional<double>>{1.0, 0.0}));
  EXPECT_EQ(kw.reasons, (std::vector<std::string>{"contains 'qed'", "does not contain 'qed'"}));

  // Options go through the same validation as every config file.
  GRPO_EXPECT_THROW_MESSAGE(
      registry.create("reasoning_steps", config::parse_yaml_string("target_step: 2\n", "rewards.yaml")),
      config::ConfigError, "rewards.yaml:1:1: unknown key 'target_step' (did you mean 'target_steps'?)");
  GRPO_EXPECT_THROW_MESSAGE(
      registry.create("reasoning_steps", config::parse_yaml_string("target_steps: 0\n", "rewards.yaml")),
      config::ConfigError, "rewards.yaml:1:15: target_steps: must be >= 1, found 0");
  GRPO_EXPECT_THROW_MESSAGE(registry.create("keyword"), config::ConfigError,
                            "<defaults>: missing required key 'keyword'");
#endif
}

TEST(RewardPlugin, LoadingTheSameFileTwiceRegistersOnce) {
  RewardRegistry registry = builtin_registry();
  test::TempDir dir;
  const std::string link = dir.path("link_to_plugin.so");
  std::filesystem::create_symlink(GRPO_TEST_PLUGIN_THROWING, link);
  const PluginInfo first = load_reward_plugin(GRPO_TEST_PLUGIN_THROWING, registry);
  const PluginInfo again = load_reward_plugin(GRPO_TEST_PLUGIN_THROWING, registry);
  const PluginInfo via_link = load_reward_plugin(link, registry);  // same file, other path
  EXPECT_EQ(first.functions, (std::vector<std::string>{"always_throws", "throws_on_marker"}));
  EXPECT_EQ(again.path, first.path);
  EXPECT_EQ(via_link.path, first.path);
  EXPECT_EQ(registry.names().size(), builtin_names().size() + 2);

  // Another registry gets its own registration.
  RewardRegistry other = builtin_registry();
  EXPECT_EQ(load_reward_plugin(link, other).path, link);
  EXPECT_EQ(other.names(), registry.names());
}

TEST(RewardPlugin, LoadsIntoTheGlobalRegistryByDefault) {
  const PluginInfo info = load_reward_plugin(GRPO_TEST_PLUGIN_THROWING);
  EXPECT_EQ(RewardRegistry::global().create("always_throws")->name(), "always_throws");
  EXPECT_EQ(load_reward_plugin(GRPO_TEST_PLUGIN_THROWING).functions, info.functions);
}

TEST(RewardPlugin, ThrowingRewardsThrowWhenScoring) {
  RewardRegistry registry = builtin_registry();
  load_reward_plugin(GRPO_TEST_PLUGIN_THROWING, registry);
  GRPO_EXPECT_THROW_MESSAGE(registry.create("always_throws")->score({sample("x")}), std::runtime_error, "boom");
  const auto on_marker = registry.create("throws_on_marker");
  EXPECT_EQ(on_marker->score({sample("fine"), sample("also fine")}).scores,
            (std::vector<std::optional<double>>{1.0, 1.0}));
  GRPO_EXPECT_THROW_MESSAGE(on_marker->score({sample("fine"), sample("please THROW")}), std::runtime_error,
                            "THROW marker in completion");
}

TEST(RewardPlugin, RefusesAMissingFile) {
  RewardRegistry registry = builtin_registry();
  test::TempDir dir;
  const std::string path = dir.path("libmissing.so");
  EXPECT_EQ(load_error(path, registry), "cannot load reward plugin '" + path + "': No such file or directory");
  EXPECT_EQ(load_error(dir.path(), registry), "cannot load reward plugin '" + dir.path() + "': not a regular file");
}

TEST(RewardPlugin, RefusesAFileThatIsNotALibrary) {
  RewardRegistry registry = builtin_registry();
  test::TempDir dir;
  const std::string path = dir.write(
      "libtext.so", "plugins:\n  - this is a YAML file, not a shared library, long enough for a header\n");
  // dlerror's text, without the path it repeats.
  EXPECT_EQ(load_error(path, registry), "cannot load reward plugin '" + path + "': invalid ELF header");
}

TEST(RewardPlugin, RefusesALibraryWithoutTheEntryPoint) {
  RewardRegistry registry = builtin_registry();
  EXPECT_EQ(load_error(GRPO_TEST_PLUGIN_NO_ENTRY, registry),
            std::string("reward plugin '") + GRPO_TEST_PLUGIN_NO_ENTRY +
                "' is not a grpo reward plugin: it does not export grpo_reward_plugin_entry");
  EXPECT_EQ(load_error(GRPO_TEST_PLUGIN_NULL_ENTRY, registry),
            std::string("reward plugin '") + GRPO_TEST_PLUGIN_NULL_ENTRY + "': grpo_reward_plugin_entry returned null");
}

TEST(RewardPlugin, RefusesAPluginBuiltForAnotherAbi) {
  RewardRegistry registry = builtin_registry();
  EXPECT_EQ(load_error(GRPO_TEST_PLUGIN_OTHER_ABI, registry),
            std::string("reward plugin '") + GRPO_TEST_PLUGIN_OTHER_ABI + "' was built for grpo reward plugin ABI " +
                std::to_string(GRPO_REWARD_PLUGIN_ABI_VERSION + 1) + ", this grpo has ABI " +
                std::to_string(GRPO_REWARD_PLUGIN_ABI_VERSION) + ": rebuild it against grpo " GRPO_VERSION_STRING);
  EXPECT_EQ(load_error(GRPO_TEST_PLUGIN_OTHER_SAMPLE, registry),
            std::string("reward plugin '") + GRPO_TEST_PLUGIN_OTHER_SAMPLE +
                "' (built with grpo 9.9.9) has sizeof(grpo::rewards::Sample) = " + std::to_string(sizeof(Sample) + 8) +
                ", this grpo has " + std::to_string(sizeof(Sample)) + ": rebuild it against grpo " GRPO_VERSION_STRING);
  EXPECT_EQ(registry.names(), builtin_names());
}

TEST(RewardPlugin, FailedRegistrationLeavesNothingRegistered) {
  RewardRegistry registry = builtin_registry();
  EXPECT_EQ(load_error(GRPO_TEST_PLUGIN_FAILING_REGISTER, registry),
            std::string("reward plugin '") + GRPO_TEST_PLUGIN_FAILING_REGISTER +
                "' (failing_register) failed to register its rewards: cannot read the word list this reward needs");
  EXPECT_EQ(registry.names(), builtin_names());
}

TEST(RewardPlugin, RefusesANameThatIsAlreadyRegistered) {
  RewardRegistry registry = builtin_registry();
  const std::string expected = std::string("reward plugin '") + GRPO_TEST_PLUGIN_CLASH +
                               "' (clash) registers reward function 'math_accuracy', which is already registered: "
                               "rename it in the plugin";
  EXPECT_EQ(load_error(GRPO_TEST_PLUGIN_CLASH, registry), expected);
  EXPECT_EQ(registry.names(), builtin_names());                       // nor its other function
  EXPECT_EQ(load_error(GRPO_TEST_PLUGIN_CLASH, registry), expected);  // a failed load is not remembered

  // Into a registry without the built-ins it loads.
  RewardRegistry empty;
  EXPECT_EQ(load_reward_plugin(GRPO_TEST_PLUGIN_CLASH, empty).functions,
            (std::vector<std::string>{"clash_plugin_zero", "math_accuracy"}));
}

// The whole path a user takes: a YAML file names the plugin, RewardSet loads it and its scores
// reach the total with their weight.
RewardsConfig rewards_section(const std::string& yaml_path) {
  const auto root = config::parse_yaml_file(yaml_path);
  RewardsConfig cfg;
  config::read_value(*root.find("rewards"), cfg, "rewards", config::Check{});
  return cfg;
}

TEST(RewardPluginFromYaml, ExamplePluginScoresReachTheTotalWithTheirWeight) {
#ifndef GRPO_EXAMPLE_PLUGIN
  GTEST_SKIP() << "examples are not built";
#else
  test::TempDir dir;
  // The plugin beside the config, named by a relative path (resolved next to the config file).
  std::filesystem::create_directories(dir.path("plugins"));
  std::filesystem::create_symlink(GRPO_EXAMPLE_PLUGIN, dir.path("plugins/libexample.so"));
  const std::string config_path = dir.write("job.yaml",
                                            "rewards:\n"
                                            "  plugins: [plugins/libexample.so]\n"
                                            "  functions:\n"
                                            "    - {name: math_accuracy, weight: 1.0}\n"
                                            "    - {name: reasoning_steps, weight: 0.5, options: {target_steps: 2}}\n"
                                            "    - {name: keyword, weight: -0.25, options: {keyword: sorry}}\n");
  RewardRegistry registry;
  register_builtin_rewards(registry);
  RewardSet set(rewards_section(config_path), config_path, registry);
  ASSERT_EQ(set.plugins().size(), 1u);
  EXPECT_EQ(set.plugins()[0].name, "example");
  auto s = [](std::string completion, std::string answer) {
    Sample x;
    x.completion = std::move(completion);
    x.answer = std::move(answer);
    return x;
  };
  const auto r = set.score({
      s("Step 1: add.\nStep 2: check.\nSo \\boxed{4}", "4"),  // 1 + 0.5 * 1
      s("First, I add. \\boxed{5}", "4"),                     // 0 + 0.5 * 0.5
      s("sorry, no idea", "4"),                               // 0 + 0 - 0.25
  });
  EXPECT_EQ(r.labels, (std::vector<std::string>{"math_accuracy", "reasoning_steps", "keyword"}));
  EXPECT_EQ(r.total, (std::vector<double>{1.5, 0.25, -0.25}));
  EXPECT_EQ(r.reasons[1][1], "1 step markers (2 for full score)");
  EXPECT_DOUBLE_EQ(r.metrics.at("rewards/reasoning_steps/mean_steps"), 1.0);

  // A typo in the plugin's own options is reported with the file, line and key.
  const std::string bad = dir.write("bad.yaml",
                                    "rewards:\n"
                                    "  plugins: [plugins/libexample.so]\n"
                                    "  functions:\n"
                                    "    - {name: reasoning_steps, options: {target_step: 2}}\n");
  GRPO_EXPECT_THROW_MESSAGE(RewardSet(rewards_section(bad), bad, registry), config::ConfigError,
                            bad + ":4:41: unknown key 'target_step' (did you mean 'target_steps'?)");
#endif
}

TEST(RewardPluginFromYaml, PluginOfAnotherAbiIsRefusedAtStart) {
  test::TempDir dir;
  const std::string config_path = dir.write("job.yaml", std::string("rewards:\n  plugins: [") +
                                                            GRPO_TEST_PLUGIN_OTHER_ABI +
                                                            "]\n  functions: [{name: format}]\n");
  RewardRegistry registry;
  register_builtin_rewards(registry);
  try {
    RewardSet set(rewards_section(config_path), config_path, registry);
    FAIL() << "loaded";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()),
              std::string("reward plugin '") + GRPO_TEST_PLUGIN_OTHER_ABI + "' was built for grpo reward plugin ABI " +
                  std::to_string(GRPO_REWARD_PLUGIN_ABI_VERSION + 1) + ", this grpo has ABI " +
                  std::to_string(GRPO_REWARD_PLUGIN_ABI_VERSION) + ": rebuild it against grpo " + GRPO_VERSION_STRING);
  }
}

TEST(RewardPluginFromYaml, ThrowingPluginIsReportedWithItsNameAndTheSample) {
  RewardRegistry registry;
  register_builtin_rewards(registry);
  const auto root = config::parse_yaml_string(std::string("rewards:\n  plugins: [") + GRPO_TEST_PLUGIN_THROWING +
                                                  "]\n  functions: [{name: throws_on_marker}, {name: format}]\n",
                                              "job.yaml");
  RewardsConfig cfg;
  config::read_value(*root.find("rewards"), cfg, "rewards", config::Check{});
  Sample ok, bad;
  ok.completion = "fine";
  bad.completion = "THROW";
  {
    RewardSet set(cfg, "", registry);
    GRPO_EXPECT_THROW_MESSAGE(set.score({ok, ok, bad}), RewardError,
                              "reward 'throws_on_marker' threw on sample 2: THROW marker in completion; set "
                              "rewards.on_error: absent to score such samples absent instead");
  }
  cfg.on_error = OnError::absent;
  RewardSet set(cfg, "", registry);
  const auto r = set.score({ok, bad, ok});
  EXPECT_EQ(r.scores[0][0], 1.0);
  EXPECT_FALSE(r.scores[0][1].has_value());
  EXPECT_EQ(r.total, (std::vector<double>{1.0, 0.0, 1.0}));
  EXPECT_EQ(r.errors,
            std::vector<std::string>{"reward 'throws_on_marker' threw on sample 1: THROW marker in completion"});
}

}  // namespace
}  // namespace grpo::rewards
