// Registers one function, then fails: the loader must leave nothing registered.
#include <grpo/rewards/plugin.h>

#include <memory>
#include <stdexcept>

namespace {

class Constant : public grpo::rewards::RewardFunction {
 public:
  std::string name() const override { return "registered_before_failure"; }
  grpo::rewards::RewardBatch score(const std::vector<grpo::rewards::Sample>& batch) const override {
    grpo::rewards::RewardBatch out;
    out.scores.assign(batch.size(), 1.0);
    return out;
  }
};

}  // namespace

GRPO_REWARD_PLUGIN("failing_register", registry) {
  registry.add("registered_before_failure", [](const grpo::config::Value&) { return std::make_unique<Constant>(); });
  throw std::runtime_error("cannot read the word list this reward needs");
}
