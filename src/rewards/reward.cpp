#include "grpo/rewards/reward.h"

#include <stdexcept>

#include "grpo/config/config.h"
#include "grpo/rewards/code_reward.h"
#include "grpo/rewards/countdown_reward.h"
#include "grpo/rewards/format_reward.h"
#include "grpo/rewards/language_reward.h"
#include "grpo/rewards/length_reward.h"
#include "grpo/rewards/math_answer.h"

namespace grpo::rewards {

namespace {

// Options mapping -> config struct, through the same validation as every YAML file (no options:
// an empty mapping, so required keys and cross-field checks still apply).
template <class Config>
Config options_as(const config::Value& options) {
  return config::from_value<Config>(options.is_null() ? config::Value::make_map(options.loc) : options);
}

class MathAccuracyReward : public RewardFunction {
 public:
  explicit MathAccuracyReward(MathAnswerConfig cfg) : cfg_(std::move(cfg)) {}
  std::string name() const override { return "math_accuracy"; }
  RewardBatch score(const std::vector<Sample>& batch) const override {
    RewardBatch out;
    int64_t scored = 0, extracted = 0;
    for (const auto& s : batch) {
      if (s.answer.empty()) {  // no reference: the function does not apply
        out.scores.push_back(std::nullopt);
        continue;
      }
      ++scored;
      extracted += extract_answer(s.completion, cfg_).has_value();
      out.scores.push_back(math_accuracy(s.answer, s.completion, cfg_) ? 1.0 : 0.0);
    }
    if (scored > 0) out.metrics["extracted_fraction"] = static_cast<double>(extracted) / scored;
    return out;
  }

 private:
  MathAnswerConfig cfg_;
};

class FormatReward : public RewardFunction {
 public:
  explicit FormatReward(FormatRewardConfig cfg) : cfg_(std::move(cfg)) {}
  std::string name() const override { return "format"; }
  RewardBatch score(const std::vector<Sample>& batch) const override {
    RewardBatch out;
    for (const auto& s : batch) out.scores.push_back(format_score(s.completion, cfg_));
    return out;
  }

 private:
  FormatRewardConfig cfg_;
};

}  // namespace

RewardRegistry& RewardRegistry::global() {
  static RewardRegistry* registry = [] {
    auto* r = new RewardRegistry();
    register_builtin_rewards(*r);
    return r;
  }();
  return *registry;
}

void RewardRegistry::add(const std::string& name, RewardFactory factory) {
  if (name.empty()) throw std::invalid_argument("reward name must not be empty");
  if (!factories_.emplace(name, std::move(factory)).second) {
    throw std::invalid_argument("reward function '" + name + "' is already registered");
  }
}

std::unique_ptr<RewardFunction> RewardRegistry::create(const std::string& name, const config::Value& options) const {
  const auto it = factories_.find(name);
  if (it == factories_.end()) {
    const std::string hint = config::suggest(name, names());
    std::string known;
    for (const auto& n : names()) known += (known.empty() ? "" : ", ") + n;
    throw std::invalid_argument("unknown reward function '" + name + "'" +
                                (hint.empty() ? "" : " (did you mean '" + hint + "'?)") + "; known: " + known);
  }
  return it->second(options);
}

std::vector<std::string> RewardRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& [name, factory] : factories_) out.push_back(name);
  return out;
}

void register_builtin_rewards(RewardRegistry& registry) {
  registry.add("math_accuracy", [](const config::Value& options) {
    return std::make_unique<MathAccuracyReward>(options_as<MathAnswerConfig>(options));
  });
  registry.add("format", [](const config::Value& options) {
    return std::make_unique<FormatReward>(options_as<FormatRewardConfig>(options));
  });
  registry.add("code_execution",
               [](const config::Value& options) { return make_code_reward(options_as<CodeRewardConfig>(options)); });
  registry.add("countdown", [](const config::Value& options) {
    return make_countdown_reward(options_as<CountdownRewardConfig>(options));
  });
  registry.add("length", [](const config::Value& options) {
    return make_length_reward(options_as<LengthRewardConfig>(options));
  });
  registry.add("language", [](const config::Value& options) {
    return make_language_reward(options_as<LanguageRewardConfig>(options));
  });
}

}  // namespace grpo::rewards
