// Rewards that throw while scoring, for the combiner's error handling:
//   always_throws     score() throws std::runtime_error("boom")
//   throws_on_marker  throws std::runtime_error("THROW marker in completion") when a completion
//                     contains "THROW"; otherwise scores 1
#include <grpo/rewards/plugin.h>

#include <memory>
#include <stdexcept>

namespace {

using grpo::rewards::RewardBatch;
using grpo::rewards::Sample;

class AlwaysThrows : public grpo::rewards::RewardFunction {
 public:
  std::string name() const override { return "always_throws"; }
  RewardBatch score(const std::vector<Sample>&) const override { throw std::runtime_error("boom"); }
};

class ThrowsOnMarker : public grpo::rewards::RewardFunction {
 public:
  std::string name() const override { return "throws_on_marker"; }
  RewardBatch score(const std::vector<Sample>& batch) const override {
    RewardBatch out;
    for (const auto& s : batch) {
      if (s.completion.find("THROW") != std::string::npos) {
        throw std::runtime_error("THROW marker in completion");
      }
      out.scores.push_back(1.0);
    }
    return out;
  }
};

}  // namespace

GRPO_REWARD_PLUGIN("throwing", registry) {
  registry.add("always_throws", [](const grpo::config::Value&) { return std::make_unique<AlwaysThrows>(); });
  registry.add("throws_on_marker", [](const grpo::config::Value&) { return std::make_unique<ThrowsOnMarker>(); });
}
