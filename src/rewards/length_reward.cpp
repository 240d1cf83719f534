#include "grpo/rewards/length_reward.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>

namespace grpo::rewards {
namespace {

class LengthReward : public RewardFunction {
 public:
  explicit LengthReward(LengthRewardConfig cfg) : cfg_(std::move(cfg)) {}
  std::string name() const override { return "length"; }

  RewardBatch score(const std::vector<Sample>& batch) const override {
    RewardBatch out;
    const bool cosine = cfg_.mode == "cosine";
    int64_t scored = 0, total_length = 0, over = 0, correct_count = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      const Sample& s = batch[i];
      if (s.completion_ids.empty() && !s.completion.empty()) {
        throw std::invalid_argument("length reward needs the completion's token ids (Sample::completion_ids); sample " +
                                    std::to_string(i) + " has " + std::to_string(s.completion.size()) +
                                    " bytes of text and no ids");
      }
      const auto length = static_cast<int64_t>(s.completion_ids.size());
      const std::string tokens = std::to_string(length) + " tokens";
      if (cosine) {
        if (s.answer.empty()) {
          out.scores.push_back(std::nullopt);
          out.reasons.push_back("no reference answer");
          continue;
        }
        const bool correct = math_accuracy(s.answer, s.completion, cfg_.math);
        correct_count += correct;
        out.scores.push_back(cosine_length_reward(length, correct, cfg_));
        out.reasons.push_back((correct ? "correct, " : "wrong, ") + tokens);
      } else {
        out.scores.push_back(dapo_overlong_penalty(length, cfg_));
        const int64_t soft = cfg_.max_length - cfg_.cache_length;
        out.reasons.push_back(tokens + (length > cfg_.max_length ? " > max_length " + std::to_string(cfg_.max_length)
                                        : length > soft          ? " in the overlong band above " + std::to_string(soft)
                                                                 : ""));
      }
      ++scored;
      total_length += length;
      over += length > cfg_.max_length;
    }
    if (scored > 0) {
      const double n = static_cast<double>(scored);
      out.metrics["mean_length"] = total_length / n;
      out.metrics["over_length_fraction"] = over / n;
      if (cosine) out.metrics["correct_fraction"] = correct_count / n;
    }
    return out;
  }

 private:
  LengthRewardConfig cfg_;
};

}  // namespace

std::string LengthRewardConfig::validate() const {
  if (cache_length >= max_length) {
    return "cache_length (" + std::to_string(cache_length) + ") must be < max_length (" + std::to_string(max_length) +
           ")";
  }
  return "";
}

double dapo_overlong_penalty(int64_t length, const LengthRewardConfig& cfg) {
  const int64_t soft = cfg.max_length - cfg.cache_length;
  if (length <= soft) return 0.0;
  if (length > cfg.max_length) return -1.0 * cfg.penalty_factor;
  // soft < length <= max_length implies cache_length > 0.
  return static_cast<double>(soft - length) / static_cast<double>(cfg.cache_length) * cfg.penalty_factor;
}

double cosine_length_reward(int64_t length, bool correct, const LengthRewardConfig& cfg) {
  const double progress = static_cast<double>(std::clamp<int64_t>(length, 0, cfg.max_length)) /
                          static_cast<double>(cfg.max_length);
  const double cosine = std::cos(progress * std::numbers::pi);
  const double from = correct ? cfg.min_value_correct : cfg.max_value_wrong;  // value at max_length
  const double to = correct ? cfg.max_value_correct : cfg.min_value_wrong;    // value at length 0
  return from + 0.5 * (to - from) * (1.0 + cosine);
}

std::unique_ptr<RewardFunction> make_length_reward(const LengthRewardConfig& cfg) {
  if (cfg.mode != "dapo_overlong" && cfg.mode != "cosine") {
    throw std::invalid_argument("length reward: mode must be dapo_overlong or cosine, found '" + cfg.mode + "'");
  }
  if (cfg.max_length <= 0) {
    throw std::invalid_argument("length reward: max_length must be > 0 (completion tokens), found " +
                                std::to_string(cfg.max_length));
  }
  if (cfg.cache_length < 0) {
    throw std::invalid_argument("length reward: cache_length must be >= 0, found " + std::to_string(cfg.cache_length));
  }
  if (const std::string problem = cfg.validate(); !problem.empty()) {
    throw std::invalid_argument("length reward: " + problem);
  }
  return std::make_unique<LengthReward>(cfg);
}

}  // namespace grpo::rewards
