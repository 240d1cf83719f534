// Expert parallelism for the MoE layers (DeepSeek-V3's EP), applied from outside the model: the
// ranks are split into expert-parallel groups of `ep` consecutive ranks; within a group, rank i
// holds routed experts [i E/ep, (i+1) E/ep) of every MoE layer and the (token, expert) rows travel
// to their experts and back by all-to-all (grpo/model/expert_exchange.h says what the layer does).
// Everything else (attention, norms, the router and its bias, shared experts) stays replicated on
// every rank, data parallel over the whole world.
//
//   ranks 0..W-1, ep = 2, W = 4:  expert groups {0,1} {2,3}   (all-to-all of the tokens)
//                                 expert replicas {0,2} {1,3} (all-reduce of the experts' gradients)
//
// Gradients: the all-to-all's backward brings every token's gradient to its expert's rank, so an
// expert's gradient sums its group's tokens; the replicas then sum over the other groups (one
// GradSync each). The router's load statistics are counted over all E experts on every rank, so
// the router-bias update sums them over the world, as without expert parallelism.
//
// Checkpoints, evaluation and everything after training see the whole model: Gathered (below)
// all-gathers the experts for as long as it lives, and ExpertParallel's destructor puts them back.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "grpo/dist/world.h"
#include "grpo/model/causal_lm.h"

namespace grpo::dist {

class ExpertParallel {
 public:
  // Cuts every MoE layer of `model` (itself one, or MTP modules' too) to this rank's block of experts and
  // installs the exchange. `ep` must divide world.size() and every MoE layer's expert count
  // (std::invalid_argument naming run.dist.expert_parallel otherwise). ep == 1 does nothing.
  // Collective: every rank of `world` constructs it together.
  ExpertParallel(std::shared_ptr<torch::nn::Module> model, World& world, int64_t ep);
  // Gathers the experts back and removes the exchange (the model is whole again), unless an
  // exception is unwinding (then the other ranks may be gone, and the model stays cut).
  ~ExpertParallel();
  ExpertParallel(const ExpertParallel&) = delete;
  ExpertParallel& operator=(const ExpertParallel&) = delete;

  bool active() const { return ep_ > 1; }
  int64_t size() const { return ep_; }
  World& group() { return *group_; }        // the ranks sharing the experts: the all-to-all
  World& replicas() { return *replicas_; }  // the ranks holding the same experts: their gradients
  // Whether `p` is one of the cut expert tensors (held in part here).
  bool is_expert(const torch::Tensor& p) const;

  // Rows [i L, (i+1) L) of dim 0 of `full` (L = rows / ep, i = this rank in its group).
  torch::Tensor local_block(const torch::Tensor& full) const;
  // The whole tensor from every group member's block (collective over group()).
  torch::Tensor gather(const torch::Tensor& block);

  // While it lives, the model holds every expert (all-gathered, the exchange removed), so that it
  // can be saved, loaded into, checked or run on one rank alone; then each rank takes its block of
  // whatever the tensors hold by then (a checkpoint loaded meanwhile, say). Collective.
  // Hooks (grpo/model/block_hooks.h) that gather the experts of block i's MoE layer before it and
  // cut them again after: model::save_hf_checkpoint's BlockwiseSave, so that a checkpoint is
  // written with one layer's experts whole at a time. Collective over group() per MoE block.
  std::shared_ptr<model::BlockHooks> block_by_block(model::CausalLM& model);

  class Gathered {
   public:
    explicit Gathered(ExpertParallel* ep);  // null or inactive: does nothing
    ~Gathered();
    Gathered(const Gathered&) = delete;
    Gathered& operator=(const Gathered&) = delete;

   private:
    ExpertParallel* ep_;
  };

 private:
  void cut();
  void uncut();
  void cut_layer(model::MoeImpl* moe);
  void uncut_layer(model::MoeImpl* moe);

  std::shared_ptr<torch::nn::Module> model_;
  int64_t ep_;
  std::unique_ptr<World> group_, replicas_;
  std::vector<model::MoeImpl*> layers_;
  std::vector<torch::Tensor> experts_;  // the cut tensors (experts_gate, _up, _down of each layer)
  std::shared_ptr<model::ExpertExchange> exchange_;
  bool cut_ = false;
};

}  // namespace grpo::dist
