// The trainers' AdamW under data parallelism, plain or ZeRO-1, and its checkpoint shards.
//
// Plain: every rank holds AdamW over every trainable parameter; the ranks' gradients are equal
// after GradSync, so their updates are too. ZeRO-1 (run.dist.sharding: optimizer): the parameters are
// partitioned among the ranks (whole tensors, largest first, each to the rank with the fewest
// elements so far, as torch's ZeroRedundancyOptimizer); each rank's AdamW holds and updates only
// its share's moments (about 1/N of the optimizer memory), then every rank's updated parameters
// are broadcast from it to the others (one flat buffer per rank: an all-gather of the parameters).
//
// Checkpoints (grpo/train/train_state.h): a multi-process run writes optimizer/rank_<r>.pt on
// every rank r: the AdamW state (step, exp_avg, exp_avg_sq) of the parameters of r's share, keyed
// by parameter name. Loading reads every shard there is, whatever the world size that wrote it, and
// takes the parameters this rank's AdamW holds, so a run resumes on another number of ranks, with
// or without ZeRO-1; a single-process optimizer.pt loads as well.
#pragma once

#include <torch/optim/adamw.h>
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "grpo/dist/world.h"
#include "grpo/train/optimizer.h"

namespace grpo::dist {

class ExpertParallel;
class FullyShard;

// One parameter's AdamW state, by name.
struct AdamState {
  int64_t step = 0;
  torch::Tensor exp_avg, exp_avg_sq;
};
using NamedAdamStates = std::map<std::string, AdamState>;

class ShardedOptimizer {
 public:
  // make_optimizer's AdamW (grpo/train/optimizer.h) over every trainable parameter of `model`, or
  // under ZeRO-1 (zero1 and a world of more than one) over this rank's share.
  ShardedOptimizer(torch::nn::Module& model, const train::OptimizerConfig& cfg, World& world, bool zero1);
  // Full sharding (grpo/dist/fully_shard.h): AdamW over the chunks in `groups` (split_parameters'
  // groups of the whole parameters, each tensor replaced by its chunk); their moments are saved
  // whole (gathered, so owned_states is collective) and loaded as this rank's chunk.
  ShardedOptimizer(const train::ParamGroups& groups, const train::OptimizerConfig& cfg, World& world, FullyShard& fsdp);

  torch::optim::AdamW& adamw() { return *adamw_; }
  bool zero1() const { return zero1_; }
  World& world() { return world_; }

  void set_learning_rate(double lr);
  void zero_grad();  // every parameter's gradient, held or not
  // AdamW on the parameters this rank holds; ZeRO-1: then every parameter from its owner.
  void step();

  // The trainable parameters (optimizer order: the decay group, then the others) and their names.
  const std::vector<torch::Tensor>& params() const { return params_; }
  const std::vector<std::string>& names() const { return names_; }
  int64_t owner(size_t i) const { return owner_[i]; }  // the rank whose checkpoint shard holds param i
  int64_t state_bytes() const;                         // bytes of AdamW moments this rank holds now

  // This rank's checkpoint shard: the states of the parameters it owns, by name.
  NamedAdamStates owned_states() const;
  // Replaces the state of every parameter this rank's AdamW holds with `states[name]`; throws
  // std::runtime_error naming `source` and the first parameter missing or of another shape (nothing
  // is changed then).
  void load_states(const NamedAdamStates& states, const std::string& source);

  // Expert parallelism (grpo/dist/expert_parallel.h; set by DataParallel): the expert tensors'
  // moments are saved whole (gathered over the expert group, so owned_states is collective) and
  // loaded as this rank's block, so that checkpoints do not depend on the layout.
  void set_expert_parallel(ExpertParallel* ep) { experts_ = ep; }
  ExpertParallel* expert_parallel() const { return experts_; }
  FullyShard* fully_shard() const { return fsdp_; }

 private:
  // params_, names_ (the decay group, then the others) and owner_ from `groups`.
  void take_parameters(const train::ParamGroups& groups);

  World& world_;
  train::OptimizerConfig cfg_;
  bool zero1_;
  std::vector<torch::Tensor> params_;
  std::vector<std::string> names_;
  std::vector<int64_t> owner_;
  std::unique_ptr<torch::optim::AdamW> adamw_;
  ExpertParallel* experts_ = nullptr;
  FullyShard* fsdp_ = nullptr;
};

// The partition: owner rank of each of `numels` (largest first, to the least-loaded rank, ties to
// the lower rank and the earlier parameter).
std::vector<int64_t> partition(const std::vector<int64_t>& numels, int64_t ranks);

// A shard file: write (atomically enough: the caller writes into a temporary folder) and read.
void save_adam_states(const NamedAdamStates& states, const std::string& path);
NamedAdamStates load_adam_states(const std::string& path);  // std::runtime_error naming the file

// The states in a single-process optimizer.pt (written by save_checkpoint for `model` with
// make_optimizer(model, cfg)), by name.
NamedAdamStates load_legacy_adam_states(const std::string& path, torch::nn::Module& model,
                                        const train::OptimizerConfig& cfg);

}  // namespace grpo::dist
