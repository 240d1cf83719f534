// A RoutingTape (grpo/model/routing_tape.h) over the MoE layers of a model's decoder (l = the
// layer's place in CausalLM::moe_layers(); the MTP modules route for themselves): installed on
// every one of them while it lives.
//
//   RoutingRecord tape(model);
//   model->forward(...);                 // records
//   tape.last(l);                        // [N, K] int64: the experts layer l used in that forward
//   tape.set_replay({e_0, ..., e_M});    // [N, K] per layer, -1 rows route themselves
//   model->forward(...);                 // replays (and records what it used)
//   tape.clear_replay();
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "grpo/model/causal_lm.h"
#include "grpo/model/routing_tape.h"

namespace grpo::model {

class RoutingRecord : public RoutingTape {
 public:
  // Use make(): the layers hold the tape by shared_ptr (the tape holds them by plain pointer: the
  // model outlives it); uninstall() or Installed gives them back their own routing.
  static std::shared_ptr<RoutingRecord> make(CausalLM model);
  ~RoutingRecord() override = default;

  int64_t layers() const { return static_cast<int64_t>(layers_.size()); }
  int64_t top_k() const { return top_k_; }
  // Per layer [N, K] int64, the rows of the next forwards' x_flat; throws in replay() when a
  // forward's row count differs.
  void set_replay(std::vector<torch::Tensor> experts);
  void clear_replay() { replay_.clear(); }
  const torch::Tensor& last(int64_t layer) const { return last_.at(static_cast<size_t>(layer)); }
  void uninstall();  // the layers route for themselves again, and record nothing

  // make() for a scope: uninstalled when it ends.
  struct Installed {
    std::shared_ptr<RoutingRecord> tape;
    explicit Installed(CausalLM model) : tape(make(std::move(model))) {}
    ~Installed() { tape->uninstall(); }
    Installed(const Installed&) = delete;
    Installed& operator=(const Installed&) = delete;
  };

  torch::Tensor replay(const MoeImpl& layer, int64_t rows) override;
  void record(const MoeImpl& layer, const torch::Tensor& experts) override;

 private:
  RoutingRecord() = default;
  std::vector<MoeImpl*> layers_;
  std::unordered_map<const MoeImpl*, size_t> index_;
  std::vector<torch::Tensor> replay_, last_;
  int64_t top_k_ = 0;
};

}  // namespace grpo::model
