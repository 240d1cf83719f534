// Registers a new name, then "math_accuracy", a built-in: refused, and neither is registered.
#include <grpo/rewards/plugin.h>

#include <memory>

namespace {

class Zero : public grpo::rewards::RewardFunction {
 public:
  std::string name() const override { return "zero"; }
  grpo::rewards::RewardBatch score(const std::vector<grpo::rewards::Sample>& batch) const override {
    grpo::rewards::RewardBatch out;
    out.scores.assign(batch.size(), 0.0);
    return out;
  }
};

}  // namespace

GRPO_REWARD_PLUGIN("clash", registry) {
  registry.add("clash_plugin_zero", [](const grpo::config::Value&) { return std::make_unique<Zero>(); });
  registry.add("math_accuracy", [](const grpo::config::Value&) { return std::make_unique<Zero>(); });
}
