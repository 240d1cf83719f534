#include "grpo/model/routing_record.h"

#include <stdexcept>
#include <string>

namespace grpo::model {

std::shared_ptr<RoutingRecord> RoutingRecord::make(CausalLM model) {
  std::shared_ptr<RoutingRecord> tape(new RoutingRecord());
  for (auto& moe : model->moe_layers()) tape->layers_.push_back(moe.get());
  tape->top_k_ = model->config().num_experts_per_tok;
  for (size_t l = 0; l < tape->layers_.size(); ++l) {
    auto* moe = tape->layers_[l];
    if (moe->routing) throw std::invalid_argument("RoutingRecord: a MoE layer has a routing tape already");
    tape->index_[moe] = l;
    moe->routing = tape;
  }
  tape->last_.resize(tape->layers_.size());
  return tape;
}

void RoutingRecord::uninstall() {
  for (auto* moe : layers_) {
    if (moe->routing.get() == this) moe->routing = nullptr;
  }
}

void RoutingRecord::set_replay(std::vector<torch::Tensor> experts) {
  if (experts.size() != layers_.size()) {
    throw std::invalid_argument("RoutingRecord: " + std::to_string(experts.size()) + " replayed layers for " +
                                std::to_string(layers_.size()) + " MoE layers");
  }
  replay_ = std::move(experts);
}

torch::Tensor RoutingRecord::replay(const MoeImpl& layer, int64_t rows) {
  if (replay_.empty()) return {};
  const auto& e = replay_.at(index_.at(&layer));
  if (e.size(0) != rows) {
    throw std::invalid_argument("router replay: the forward has " + std::to_string(rows) + " token rows, the record " +
                                std::to_string(e.size(0)));
  }
  return e;
}

void RoutingRecord::record(const MoeImpl& layer, const torch::Tensor& experts) {
  last_.at(index_.at(&layer)) = experts.detach();
}

}  // namespace grpo::model
