// Data parallelism for the trainers, applied from outside the model (the model code knows nothing
// of ranks): the same replica on every rank, each rank's share of the step's batch, gradients
// summed over ranks while backward runs (grpo/dist/grad_sync.h), AdamW plain or ZeRO-1
// (grpo/dist/sharded_optimizer.h), and the MoE router-bias update from loads summed over ranks.
//
//   dist::DataParallel dp(model, cfg.optim);           // broadcasts rank 0's weights and buffers
//   dp.begin_step(lr);                                 // learning rate, gradients cleared
//   for (m : my micro-batches) dp.backward(loss_m, m == last);   // the last one starts the all-reduce
//   const double norm = dp.reduce_gradients(cfg.optim.max_grad_norm);   // summed, then clipped
//   dp.step(norm);                                     // AdamW when the norm is finite
//   dp.update_router_biases(gamma);                    // identical on every rank
//
// Full sharding (run.dist.sharding: full, grpo/dist/fully_shard.h): parameters, gradients and
// AdamW's moments are 1/N per rank; blocks are gathered as the passes reach them, gradients
// reduce-scattered as their backward ends; the model is whole again when DataParallel ends.
//
// Expert parallelism (run.dist.expert_parallel > 1, grpo/dist/expert_parallel.h): the constructor
// splits the MoE experts over the expert groups and the destructor gathers them back, so the model
// is whole before and after the trainer's loop; the experts' gradients are summed over their
// replicas and the clipping norm is that of the whole model. whole_model() gathers the experts for
// a while (checkpoints, and generation and evaluation with run.dist.generation: gathered, see a
// whole model on every rank); generation() is what rollouts and evaluation open.
//
// On a world of one each call is what the trainers did before (clip_gradients, AdamW step,
// update_router_biases), in the same order, so single-process runs are unchanged.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "grpo/dist/expert_parallel.h"
#include "grpo/dist/fully_shard.h"
#include "grpo/dist/generation_scope.h"
#include "grpo/dist/grad_sync.h"
#include "grpo/dist/sharded_optimizer.h"
#include "grpo/dist/whole_model.h"
#include "grpo/dist/world.h"
#include "grpo/model/causal_lm.h"
#include "grpo/train/optimizer.h"

namespace grpo::dist {

class DataParallel {
 public:
  // The world is dist::world() for the model's device; run.dist (config()) says bucket size and
  // ZeRO-1.
  DataParallel(model::CausalLM& model, const train::OptimizerConfig& cfg);
  // Over `world` (a group of the job's ranks, e.g. the trainers of disaggregated rollouts) instead
  // of the process's world.
  DataParallel(model::CausalLM& model, const train::OptimizerConfig& cfg, World& world);
  ~DataParallel();

  World& world() { return world_; }
  ExpertParallel* expert_parallel() { return experts_.get(); }
  FullyShard* fully_shard() { return fsdp_.get(); }
  // The whole model on every rank while the result lives (nothing to do without expert
  // parallelism or full sharding). Collective.
  WholeModel whole_model() { return WholeModel(experts_.get(), fsdp_.get()); }
  // How generation sees the model for a while (run.dist.generation, grpo/dist/generation_scope.h):
  // a whole copy, or the training layout with paired forwards. Collective.
  GenerationScope generation() { return GenerationScope(*this); }
  PairedForwards* paired_forwards() { return paired_.get(); }
  const std::shared_ptr<PairedForwards>& paired() const { return paired_; }
  GenerationLayout generation_layout() const { return layout_; }
  model::CausalLM& model() { return model_; }
  ShardedOptimizer& optimizer() { return *optimizer_; }

  void begin_step(double lr);
  // loss.backward(), the step's last micro-batch's starting the gradient all-reduce as buckets fill.
  void backward(const torch::Tensor& loss, bool last_micro_batch);
  // Gradients summed over ranks, then clip_gradients (grpo/train/optimizer.h): returns the norm.
  double reduce_gradients(double max_grad_norm);
  // The optimizer step when `grad_norm` is finite (the same on every rank); false when skipped.
  bool step(double grad_norm);
  // Each MoE layer's expert loads summed over ranks, then its aux-loss-free bias update.
  std::vector<double> update_router_biases(double gamma);

  // Expert parallelism pairs every rank's all-to-alls: every rank runs every micro-batch's forward
  // and backward, through the same layers (a rank without rows: a stand-in row, loss 0).
  bool lockstep() const { return (experts_ && experts_->active()) || fsdp_ != nullptr; }
  // 0 times every output the forward made (logits or hidden states, MTP logits, balance loss; a
  // scalar on their device): added to a loss, it leaves the gradients as they are and makes the
  // backward reach every layer, as on every rank.
  static torch::Tensor graph_anchor(const model::ForwardOutput& out);
  // A lockstep rank's pass without rows: `zero_loss` runs a forward on a stand-in sequence and
  // returns 0 times its outputs (graph_anchor); its router loads are not counted; then backward.
  void stand_in(const std::function<torch::Tensor()>& zero_loss, bool last_micro_batch);

 private:
  model::CausalLM model_;
  World& world_;
  std::unique_ptr<ExpertParallel> experts_;  // first made, last gone: the model is whole again after
  std::unique_ptr<FullyShard> fsdp_;         // sharding full (then no GradSync: reduce-scatters)
  std::unique_ptr<ShardedOptimizer> optimizer_;
  std::unique_ptr<GradSync> sync_;         // the replicated parameters, over the world
  std::unique_ptr<GradSync> expert_sync_;  // the experts, over their replicas (expert parallel)
  GenerationLayout layout_ = GenerationLayout::gathered;
  std::shared_ptr<PairedForwards> paired_;  // sharded generation's rounds (lockstep only)
  bool logged_memory_ = false;

  void log_memory(const char* when) const;
  void plan_generation();
};

// Checks that every rank holds the same parameters and buffers (each tensor's sum and sum of
// squares in float64, compared over ranks): throws std::runtime_error naming the first tensor whose
// fingerprint differs between ranks. save_checkpoint runs it before every multi-process checkpoint.
// `skip`: tensors left out (expert parallelism's experts, which differ between the ranks of a group).
void check_replicas(torch::nn::Module& model, World& world,
                    const std::function<bool(const torch::Tensor&)>& skip = nullptr);

// Copies rank 0's parameters and buffers to every rank (a new model's random initialisation, or a
// checkpoint only rank 0 read). Identity on a world of one.
void broadcast_model(torch::nn::Module& model, World& world);

}  // namespace grpo::dist
