// RewardFunction: scores a batch of completions; the registry creates them by name from YAML.
//
// A score is optional per completion: absent means "does not apply" (as TRL's None), so a weighted
// total can skip it instead of counting a zero. Functions must be safe to call from several
// threads at once (on different batches): rewards are computed in parallel across completions.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "grpo/config/value.h"

namespace grpo::rewards {

// One completion to score, with its record's reference fields.
struct Sample {
  std::string prompt;                        // the formatted prompt the model saw
  std::string completion;                    // the generated text
  std::vector<int64_t> completion_ids;       // its token ids
  std::string answer;                        // the record's reference answer ("" when none)
  std::map<std::string, std::string> extra;  // the record's other columns (test cases, ...)
  int64_t index = 0;                         // position in the step's batch (set by RewardSet), for messages
};

struct RewardBatch {
  std::vector<std::optional<double>> scores;  // one per sample; nullopt = does not apply
  std::vector<std::string> reasons;           // empty, or one per sample (why a score is what it is)
  std::map<std::string, double> metrics;      // per-function metrics for the step's log
};

class RewardFunction {
 public:
  virtual ~RewardFunction() = default;
  virtual std::string name() const = 0;
  virtual RewardBatch score(const std::vector<Sample>& batch) const = 0;
};

// Builds a function from its YAML `options` mapping (null when none was given). Option errors are
// config::ConfigError with the location of the offending key.
using RewardFactory = std::function<std::unique_ptr<RewardFunction>(const config::Value& options)>;

class RewardRegistry {
 public:
  // The process-wide registry, with the built-in rewards registered.
  static RewardRegistry& global();

  // Throws std::invalid_argument when `name` is taken.
  void add(const std::string& name, RewardFactory factory);
  // Throws std::invalid_argument naming the unknown function (with a "did you mean").
  std::unique_ptr<RewardFunction> create(const std::string& name, const config::Value& options = {}) const;
  std::vector<std::string> names() const;

 private:
  std::map<std::string, RewardFactory> factories_;
};

// Registers the built-ins into `registry` (global() does this once).
void register_builtin_rewards(RewardRegistry& registry);

}  // namespace grpo::rewards
