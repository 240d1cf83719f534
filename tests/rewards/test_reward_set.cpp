// RewardSet: the `rewards` section bound from YAML, weighted totals computed by hand, absent scores,
// parallel scoring, per-function timing and metrics, and what happens when a function misbehaves.
#include "grpo/rewards/reward_set.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <set>
#include <thread>

#include "grpo/core/log.h"
#include "test_util.h"

namespace grpo::rewards {
namespace {

Sample sample(std::string completion, std::string answer = "") {
  Sample s;
  s.completion = std::move(completion);
  s.answer = std::move(answer);
  return s;
}

RewardsConfig rewards_from_yaml(const std::string& text) {
  const auto root = config::parse_yaml_string(text, "rewards.yaml");
  RewardsConfig cfg;
  config::read_value(*root.find("rewards"), cfg, "rewards", config::Check{});
  return cfg;
}

// Test functions, each registered in a local registry.
// "marker": 1 when the completion contains `marker`; throws when it contains "THROW"; returns NaN
// for "NAN"; absent for "SKIP". Records the largest number of calls in flight at once.
struct Probe {
  std::atomic<int> active{0}, max_active{0}, calls{0};
};

class MarkerReward : public RewardFunction {
 public:
  MarkerReward(std::string marker, Probe* probe, int wait_for)
      : marker_(std::move(marker)), probe_(probe), wait_(wait_for) {}
  std::string name() const override { return "marker"; }
  RewardBatch score(const std::vector<Sample>& batch) const override {
    const int now = ++probe_->active;
    ++probe_->calls;
    int seen = probe_->max_active.load();
    while (now > seen && !probe_->max_active.compare_exchange_weak(seen, now)) {
    }
    // Give other threads the chance to enter (bounded, so a serial run still ends).
    const auto t0 = std::chrono::steady_clock::now();
    while (probe_->max_active.load() < wait_ && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    RewardBatch out;
    for (const auto& s : batch) {
      if (s.completion.find("THROW") != std::string::npos) {
        --probe_->active;
        throw std::runtime_error("cannot score '" + s.completion + "'");
      }
      if (s.completion.find("NAN") != std::string::npos) {
        out.scores.push_back(std::nan(""));
      } else if (s.completion.find("SKIP") != std::string::npos) {
        out.scores.push_back(std::nullopt);
      } else {
        out.scores.push_back(s.completion.find(marker_) != std::string::npos ? 1.0 : 0.0);
      }
      out.reasons.push_back("index " + std::to_string(s.index));
    }
    out.metrics["batch_size"] = static_cast<double>(batch.size());
    --probe_->active;
    return out;
  }

 private:
  std::string marker_;
  Probe* probe_;
  int wait_;
};

class WrongCountReward : public RewardFunction {
 public:
  std::string name() const override { return "wrong_count"; }
  RewardBatch score(const std::vector<Sample>& batch) const override {
    RewardBatch out;
    out.scores.assign(batch.size() + 1, 1.0);
    return out;
  }
};

struct LocalRegistry {
  RewardRegistry registry;
  Probe probe;
  explicit LocalRegistry(int wait_for = 0) {
    register_builtin_rewards(registry);
    registry.add("marker", [this, wait_for](const config::Value& options) {
      const config::Value* m = options.is_null() ? nullptr : options.find("marker");
      return std::make_unique<MarkerReward>(m ? m->text : "yes", &probe, wait_for);
    });
    registry.add("wrong_count", [](const config::Value&) { return std::make_unique<WrongCountReward>(); });
  }
};

TEST(RewardSet, WeightedTotalSkipsAbsentScores) {
  const auto cfg = rewards_from_yaml(
      "rewards:\n"
      "  functions:\n"
      "    - {name: math_accuracy, weight: 1.0}\n"
      "    - {name: format, weight: 0.5}\n");
  RewardSet set(cfg);
  const auto r = set.score({
      sample("<think>ok</think> <answer>4</answer>", "4"),  // right, formatted: 1 + 0.5
      sample("<think>ok</think> <answer>5</answer>", "4"),  // wrong, formatted: 0 + 0.5
      sample("the answer is 4", "4"),                       // right (last number), unformatted: 1
      sample("<think>x</think><answer>1</answer>"),         // no reference: math absent; 0.5
  });
  ASSERT_EQ(r.labels, (std::vector<std::string>{"math_accuracy", "format"}));
  EXPECT_EQ(r.total, (std::vector<double>{1.5, 0.5, 1.0, 0.5}));
  EXPECT_FALSE(r.scores[0][3].has_value());
  EXPECT_EQ(*r.scores[1][2], 0.0);
  EXPECT_DOUBLE_EQ(r.metrics.at("rewards/math_accuracy/mean"), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(r.metrics.at("rewards/math_accuracy/applied"), 0.75);
  EXPECT_DOUBLE_EQ(r.metrics.at("rewards/format/mean"), 0.75);
  EXPECT_DOUBLE_EQ(r.metrics.at("rewards/total/mean"), 3.5 / 4);
  const double var = (0.625 * 0.625 + 0.375 * 0.375 + 0.125 * 0.125 + 0.375 * 0.375) / 4;
  EXPECT_NEAR(r.metrics.at("rewards/total/std"), std::sqrt(var), 1e-12);
  EXPECT_DOUBLE_EQ(r.metrics.at("rewards/math_accuracy/extracted_fraction"), 1.0);
  EXPECT_GE(r.metrics.at("rewards/format/seconds"), 0.0);
  EXPECT_GE(r.metrics.at("rewards/seconds"), 0.0);
  EXPECT_TRUE(r.errors.empty());
}

TEST(RewardSet, SameFunctionTwiceNeedsLabelsAndTakesItsOwnOptions) {
  LocalRegistry local;
  const auto cfg = rewards_from_yaml(
      "rewards:\n"
      "  functions:\n"
      "    - {name: marker, label: has_a, weight: 2, options: {marker: a}}\n"
      "    - {name: marker, label: has_b, weight: -1, options: {marker: b}}\n");
  RewardSet set(cfg, "", local.registry);
  const auto r = set.score({sample("a"), sample("b"), sample("ab"), sample("c")});
  EXPECT_EQ(r.total, (std::vector<double>{2, -1, 1, 0}));
  EXPECT_EQ(r.reasons[0][2], "index 2");  // Sample::index is the position in the batch

  GRPO_EXPECT_THROW_MESSAGE(rewards_from_yaml("rewards:\n  functions:\n    - {name: format}\n    - {name: format}\n"),
                            config::ConfigError,
                            "rewards.yaml:2:3: rewards: label 'format' appears twice in functions; give one of "
                            "them another `label` to use a function twice");
}

TEST(RewardSet, UnknownFunctionAndBadOptionsNameTheEntry) {
  GRPO_EXPECT_THROW_MESSAGE(RewardSet(rewards_from_yaml("rewards:\n  functions:\n    - {name: formatt}\n"), "job.yaml"),
                            config::ConfigError,
                            "job.yaml: rewards.functions[0].name: unknown reward function 'formatt' (did you mean "
                            "'format'?); known: code_execution, countdown, format, language, length, math_accuracy");
  GRPO_EXPECT_THROW_MESSAGE(
      RewardSet(rewards_from_yaml("rewards:\n  functions:\n    - name: format\n      options: {mode: loose}\n")),
      config::ConfigError, "rewards.yaml:4:23: mode: expected one of strict, lenient, found 'loose'");
  GRPO_EXPECT_THROW_MESSAGE(rewards_from_yaml("rewards:\n  functions:\n    - {name: format, wieght: 2}\n"),
                            config::ConfigError,
                            "rewards.yaml:3:22: unknown key 'rewards.functions[0].wieght' (did you mean "
                            "'rewards.functions[0].weight'?)");
  GRPO_EXPECT_THROW_MESSAGE(rewards_from_yaml("rewards:\n  on_error: ignore\n  functions: [{name: format}]\n"),
                            config::ConfigError,
                            "rewards.yaml:2:13: rewards.on_error: expected one of fail, absent, found 'ignore'");
}

TEST(RewardSet, ScoresChunksInParallelWithTheSameResultAsSerial) {
  std::vector<Sample> batch;
  for (int i = 0; i < 64; ++i) batch.push_back(sample(i % 3 == 0 ? "yes" : "no"));
  std::vector<double> expected;
  for (int i = 0; i < 64; ++i) expected.push_back(i % 3 == 0 ? 1.0 : 0.0);

  LocalRegistry serial_reg;
  RewardSet serial(rewards_from_yaml("rewards:\n  threads: 1\n  functions: [{name: marker}]\n"), "",
                   serial_reg.registry);
  EXPECT_EQ(serial.score(batch).total, expected);
  EXPECT_EQ(serial_reg.probe.max_active.load(), 1);
  EXPECT_EQ(serial_reg.probe.calls.load(), 64);  // batch_size 1: one call per sample

  LocalRegistry parallel_reg(/*wait_for=*/4);
  RewardSet parallel(rewards_from_yaml("rewards:\n  threads: 4\n  functions: [{name: marker, batch_size: 8}]\n"), "",
                     parallel_reg.registry);
  const auto r = parallel.score(batch);
  EXPECT_EQ(r.total, expected);
  EXPECT_EQ(parallel_reg.probe.calls.load(), 8);
  EXPECT_EQ(parallel_reg.probe.max_active.load(), 4) << "calls did not overlap";
  EXPECT_DOUBLE_EQ(r.metrics.at("rewards/marker/batch_size"), 8.0);  // the function's own metric

  // batch_size 0: the whole batch in one call; a ragged last chunk is weighted by its size.
  LocalRegistry whole_reg;
  RewardSet whole(rewards_from_yaml("rewards:\n  functions: [{name: marker, batch_size: 0}]\n"), "",
                  whole_reg.registry);
  EXPECT_EQ(whole.score(batch).total, expected);
  EXPECT_EQ(whole_reg.probe.calls.load(), 1);
  LocalRegistry ragged_reg;
  RewardSet ragged(rewards_from_yaml("rewards:\n  functions: [{name: marker, batch_size: 48}]\n"), "",
                   ragged_reg.registry);
  EXPECT_DOUBLE_EQ(ragged.score(batch).metrics.at("rewards/marker/batch_size"), (48.0 * 48 + 16.0 * 16) / 64);
}

TEST(RewardSet, ThrowingFunctionFailsTheBatchNamingItAndTheSample) {
  LocalRegistry local;
  RewardSet set(rewards_from_yaml("rewards:\n  functions: [{name: marker, label: probe}]\n"), "", local.registry);
  GRPO_EXPECT_THROW_MESSAGE(set.score({sample("yes"), sample("no"), sample("THROW 1"), sample("THROW 2")}), RewardError,
                            "reward 'probe' threw on sample 2: cannot score 'THROW 1' (and 1 more errors); set "
                            "rewards.on_error: absent to score such samples absent instead");
}

TEST(RewardSet, ThrowingFunctionScoresAbsentWhenAskedAndTheRestStands) {
  test::TempDir dir;
  const std::string log_path = dir.path("run.log");
  log::add_file(log_path);
  LocalRegistry local;
  // batch_size 4: the chunk holding the throwing sample is rescored sample by sample.
  RewardSet set(rewards_from_yaml("rewards:\n  on_error: absent\n  functions:\n"
                                  "    - {name: marker, batch_size: 4}\n    - {name: format, weight: 0.5}\n"),
                "", local.registry);
  const auto r = set.score({sample("yes"), sample("no"), sample("THROW"), sample("yes"), sample("yes")});
  log::close_files();
  EXPECT_EQ(r.scores[0][0], 1.0);
  EXPECT_EQ(r.scores[0][1], 0.0);
  EXPECT_FALSE(r.scores[0][2].has_value());
  EXPECT_EQ(r.scores[0][3], 1.0);
  EXPECT_EQ(r.scores[0][4], 1.0);
  EXPECT_EQ(r.total, (std::vector<double>{1, 0, 0, 1, 1}));  // format scores 0 on all of them
  EXPECT_EQ(r.reasons[0][2], "error: reward 'marker' threw on sample 2: cannot score 'THROW'");
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.metrics.at("rewards/marker/errors"), 1.0);
  EXPECT_EQ(r.metrics.at("rewards/format/errors"), 0.0);
  EXPECT_NE(test::read_text(log_path).find("reward 'marker' threw on sample 2: cannot score 'THROW' (scored absent)"),
            std::string::npos);
}

TEST(RewardSet, WrongScoreCountAndNonFiniteScoresAreErrors) {
  LocalRegistry local;
  RewardSet wrong(rewards_from_yaml("rewards:\n  functions: [{name: wrong_count}]\n"), "", local.registry);
  GRPO_EXPECT_THROW_MESSAGE(wrong.score({sample("a")}), RewardError,
                            "reward 'wrong_count' returned 2 scores for 1 samples (sample 0); set rewards.on_error: "
                            "absent to score such samples absent instead");
  RewardSet nan(rewards_from_yaml("rewards:\n  functions: [{name: marker}]\n"), "", local.registry);
  GRPO_EXPECT_THROW_MESSAGE(nan.score({sample("yes"), sample("NAN")}), RewardError,
                            "reward 'marker' returned a non-finite score (nan) for sample 1; set rewards.on_error: "
                            "absent to score such samples absent instead");
  // An absent score is not an error, and a sample no function applies to totals 0.
  const auto r = nan.score({sample("SKIP")});
  EXPECT_FALSE(r.scores[0][0].has_value());
  EXPECT_EQ(r.total, std::vector<double>{0.0});
  EXPECT_EQ(r.metrics.count("rewards/marker/mean"), 0u);
  EXPECT_EQ(r.metrics.at("rewards/marker/applied"), 0.0);
}

TEST(RewardSet, MissingPluginFailsAtStartNamingThePath) {
  try {
    RewardSet set(rewards_from_yaml("rewards:\n  plugins: [no/such/libplugin.so]\n  functions: [{name: format}]\n"),
                  "configs/job.yaml");
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("no/such/libplugin.so"), std::string::npos) << e.what();
  }
}

TEST(RewardSet, PluginPathsResolveNextToTheConfigFirst) {
  test::TempDir dir;
  const std::string config = dir.write("configs/job.yaml", "rewards: {}\n");
  dir.write("configs/plugins/libx.so", "");
  EXPECT_EQ(resolve_plugin_path("plugins/libx.so", config), dir.path("configs/plugins/libx.so"));
  EXPECT_EQ(resolve_plugin_path("plugins/liby.so", config), "plugins/liby.so");  // not there: the cwd
  EXPECT_EQ(resolve_plugin_path("/abs/libz.so", config), "/abs/libz.so");
  EXPECT_EQ(resolve_plugin_path("libx.so", ""), "libx.so");
}

}  // namespace
}  // namespace grpo::rewards
