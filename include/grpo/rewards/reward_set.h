// RewardSet: the reward functions of a run, built from the `rewards` section of a config, scoring a
// batch in parallel and combining the scores into one weighted total per completion.
//
//   rewards:
//     plugins: [build/examples/reward_plugin/libgrpo_example_reward_plugin.so]
//     on_error: fail            # or absent: a function that throws scores "absent" for that sample
//     threads: 0                # 0 = one per hardware thread
//     functions:
//       - {name: math_accuracy, weight: 1.0}
//       - {name: format, weight: 0.2, options: {mode: lenient}}
//       - {name: reasoning_steps, weight: 0.1}      # registered by the plugin
//
//   grpo::rewards::RewardSet set(cfg.rewards, "configs/x.yaml");
//   RewardScores r = set.score(samples);   // r.total[i], r.scores[f][i], r.metrics
//
// The total of a completion is the sum of weight * score over the functions that apply to it
// (absent scores are skipped, as TRL's nansum); 0 when none applies. Each function sees the batch in
// chunks of its `batch_size` samples; the chunks of all functions run on a thread pool. A function
// that throws is reported with its label and the sample index: with on_error fail, score() throws
// RewardError once the batch is done; with absent, the sample's score is absent, the error is logged
// and counted in the metrics. A function returning the wrong number of scores or a non-finite score
// is an error of the same kind.
#pragma once

#include <array>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/core/thread_pool.h"
#include "grpo/rewards/plugin.h"
#include "grpo/rewards/reward.h"

namespace grpo::rewards {

enum class OnError { fail, absent };
constexpr auto config_enum_names(OnError) {
  return std::array{std::pair{OnError::fail, "fail"}, std::pair{OnError::absent, "absent"}};
}

// One function of the set.
struct RewardSpec {
  std::string name;        // registry name: a built-in or one a plugin registered
  std::string label;       // name in metrics and output; default: the name (set it to use a function twice)
  double weight = 1.0;     // weight in the total
  int64_t batch_size = 1;  // samples per call; 0 = the whole batch in one call
  config::Value options;   // the function's own options (see its docs)

  const std::string& label_or_name() const { return label.empty() ? name : label; }

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("name", name, "registry name of the reward function", Check().required().nonempty());
    v("label", label, "name in metrics and output; default: the name");
    v("weight", weight, "weight in the total");
    v("batch_size", batch_size, "samples per call (0 = the whole batch in one call)", Check().ge(0));
    v("options", options, "the function's own options");
  }
};

struct RewardsConfig {
  std::vector<std::string> plugins;   // reward plugin libraries to load (relative: to the config file, else the cwd)
  std::vector<RewardSpec> functions;  // the functions and their weights
  OnError on_error = OnError::fail;   // a throwing function fails the run, or scores absent
  int64_t threads = 0;                // threads scoring in parallel; 0 = one per hardware thread

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("plugins", plugins, "reward plugin libraries (.so) to load before the functions are created");
    v("functions", functions, "reward functions with weights and options", Check().required().nonempty());
    v("on_error", on_error, "when a function throws: fail the run, or score absent for that sample");
    v("threads", threads, "threads scoring in parallel; 0 = one per hardware thread", Check().ge(0).le(1024));
  }
  // Labels must be unique.
  std::string validate() const;
};

// A reward function that failed on a sample (on_error: fail).
class RewardError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct RewardScores {
  std::vector<std::string> labels;                         // [F] the functions' labels
  std::vector<double> weights;                             // [F]
  std::vector<std::vector<std::optional<double>>> scores;  // [F][N]; nullopt = absent
  std::vector<std::vector<std::string>> reasons;           // [F][N]; "" when the function gave none
  std::vector<double> total;                               // [N] sum of weight * score over present scores
  std::vector<std::string> errors;                         // errors that became absent scores, one line each
  // "rewards/<label>/mean" (over present scores), ".../applied" (fraction present), ".../seconds"
  // (thread time in the function), ".../<metric>" (the function's own metrics, averaged over its
  // calls weighted by their sample counts), "rewards/<label>/errors", "rewards/total/mean",
  // "rewards/total/std", "rewards/seconds" (wall time of score()).
  std::map<std::string, double> metrics;
};

class RewardSet {
 public:
  // Loads the plugins, then creates each function from its options. `config_path` is the file the
  // section came from: relative plugin paths are looked up next to it first, and errors name it.
  // Throws config::ConfigError for an unknown function or bad options, std::runtime_error for a
  // plugin that cannot be loaded (naming the path and the reason).
  explicit RewardSet(const RewardsConfig& cfg, const std::string& config_path = "",
                     RewardRegistry& registry = RewardRegistry::global());
  ~RewardSet();

  // Scores every sample with every function. Sets Sample::index on a copy of each sample.
  RewardScores score(const std::vector<Sample>& samples) const;

  const std::vector<std::string>& labels() const { return labels_; }
  const std::vector<PluginInfo>& plugins() const { return plugins_; }

 private:
  RewardsConfig cfg_;
  std::vector<std::string> labels_;
  std::vector<std::unique_ptr<RewardFunction>> functions_;
  std::vector<PluginInfo> plugins_;
  std::unique_ptr<ThreadPool> pool_;
};

// Appends the rows of `more` (scored by the same set) to `into`: scores, reasons, totals and errors
// concatenated; the metrics become those of one call over all the rows: mean, applied and the
// total's mean and std recomputed from the rows, seconds and errors added, each function's own
// metrics averaged weighted by the two calls' sample counts. `into` may be empty (default-built).
void append_scores(RewardScores& into, RewardScores&& more);

// Resolves a plugin path as RewardSet does: absolute as is; relative, next to `config_path` when
// that file exists there, else relative to the working directory.
std::string resolve_plugin_path(const std::string& path, const std::string& config_path);

}  // namespace grpo::rewards
