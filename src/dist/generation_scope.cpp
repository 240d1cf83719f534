#include "grpo/dist/generation_scope.h"

#include <stdexcept>

#include "grpo/dist/data_parallel.h"

namespace grpo::dist {

PairedForwards::PairedForwards(World& world) {
  std::vector<int64_t> everyone;
  for (int64_t r = 0; r < world.size(); ++r) everyone.push_back(r);
  comm_ = world.new_group(everyone, "paired_forwards");
}

bool PairedForwards::round(bool mine) {
  auto flag = torch::tensor({mine ? 1.0 : 0.0},
                            torch::TensorOptions().dtype(torch::kFloat).device(comm_->comm_device()));
  comm_->all_reduce(flag);
  const bool any = flag.item<float>() > 0;
  if (any) {
    ++rounds_;
    if (!mine) ++stand_ins_;
  }
  return any;
}

GenerationLayout parse_generation_layout(const std::string& name) {
  if (name == "gathered") return GenerationLayout::gathered;
  if (name == "sharded") return GenerationLayout::sharded;
  throw std::invalid_argument("run.dist.generation: expected gathered or sharded, found '" + name + "'");
}

GenerationScope::GenerationScope(model::CausalLM model, ExpertParallel* experts, FullyShard* fsdp,
                                 GenerationLayout layout, std::shared_ptr<PairedForwards> paired)
    : model_(std::move(model)) {
  const bool split = (experts != nullptr && experts->active()) || fsdp != nullptr;
  if (!split) return;
  if (layout == GenerationLayout::gathered) {
    whole_.emplace(experts, fsdp);
    return;
  }
  if (fsdp != nullptr) root_.emplace(fsdp);
  if (paired && !model_->forward_rounds) {
    model_->forward_rounds = std::move(paired);
    installed_ = true;
  }
}

GenerationScope::GenerationScope(DataParallel& dp)
    : GenerationScope(dp.model(), dp.expert_parallel(), dp.fully_shard(), dp.generation_layout(), dp.paired()) {}

GenerationScope::~GenerationScope() {
  if (installed_) model_->forward_rounds = nullptr;
}

}  // namespace grpo::dist
