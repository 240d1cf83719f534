// Fully sharded data parallelism (FSDP / ZeRO-3, as torch's fully_shard), applied from outside
// the model through its block hooks (grpo/model/block_hooks.h): every parameter is flattened and
// split into N equal chunks (the last padded), rank r keeping chunk r; AdamW steps the chunks, so
// parameters, gradients and optimizer moments are each about 1/N per rank.
//
// Units: each decoder block (layers 0..L-1), each MTP module (L..L+D-1), and the root (the rest:
// embeddings, final norm, output head). A unit's parameters are all-gathered (one collective of
// the unit's chunks) just before it runs and resharded after it (reshard_after_forward), gathered
// again when the backward reaches it (a hook on its outputs), and its gradients reduce-scattered
// into the chunks' gradients as soon as its backward is done; the next unit's gather is started
// ahead (prefetch: the following block in the forward, the previous one in the backward). The root
// is gathered for the whole step. Reduce-scatters go in a fixed unit order (MTP modules, then the
// blocks from last to first, then the root) whatever order backward finishes them in, so every
// rank issues the same collectives.
//
//   FullyShard fsdp(model, world, {});   // shards (rank 0's weights), installs the hooks
//   fsdp.begin_step();                   // the root gathered, chunk gradients cleared
//   fsdp.arm(loss); loss.backward();     // per micro-batch: units reduce-scatter as they finish
//   fsdp.finish_backward();              // after each backward: whatever did not finish
//   fsdp.end_step();                     // the root resharded
//   norm = fsdp.clip(max_norm);          // over every rank's chunks
//
// Eval-mode forwards without gradients (generation) free each block after it runs, whatever
// reshard_after_forward says: no backward will need it.
//
// Gathered gives the whole model back on every rank for a while (generation, evaluation,
// checkpoints); RootGathered only the root, for generation block by block; the destructor gives
// the model back whole for good.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "grpo/dist/world.h"
#include "grpo/model/causal_lm.h"

namespace grpo::dist {

struct FullyShardConfig {
  bool reshard_after_forward = true;  // free a block's gathered parameters after its forward
  bool prefetch = true;               // start the next unit's all-gather before it is needed
};

class FullyShard {
 public:
  // Every rank constructs it together, on the same model (rank 0's values are kept).
  FullyShard(model::CausalLM model, World& world, const FullyShardConfig& cfg);
  ~FullyShard();
  FullyShard(const FullyShard&) = delete;
  FullyShard& operator=(const FullyShard&) = delete;

  // The chunk AdamW steps for `param` (a parameter of the model), by identity; undefined when it is
  // not one.
  torch::Tensor shard_of(const torch::Tensor& param) const;
  // The full shape of the parameter whose chunk `shard` is.
  std::vector<int64_t> full_shape(const torch::Tensor& shard) const;
  bool is_shard(const torch::Tensor& t) const;
  // A tensor shaped like a chunk (a moment of it), gathered into the whole parameter's shape
  // (collective) / the chunk of a whole one.
  torch::Tensor gather_full(const torch::Tensor& chunk, const torch::Tensor& shard);
  torch::Tensor local_chunk(const torch::Tensor& full, const torch::Tensor& shard) const;

  void begin_step();
  // false (torch FSDP2's set_requires_gradient_sync(False)): the backwards that follow keep each
  // unit's whole gradients and accumulate them locally; the next backward with sync on
  // reduce-scatters the sum. More memory (whole gradients between micro-batches), and the
  // summation order of plain data parallelism. Every rank sets it alike.
  void set_gradient_sync(bool sync);
  void arm(const torch::Tensor& loss);
  void finish_backward();
  void end_step();
  double clip(double max_norm);

  // Bytes this rank holds at rest: its chunks, their gradients.
  int64_t parameter_bytes() const;
  int64_t gradient_bytes() const;
  int64_t whole_bytes() const;  // the unsharded model's parameters

  class Gathered {
   public:
    explicit Gathered(FullyShard* fsdp);  // null: does nothing
    ~Gathered();
    Gathered(const Gathered&) = delete;
    Gathered& operator=(const Gathered&) = delete;

   private:
    FullyShard* fsdp_;
    std::vector<char> was_gathered_;  // units gathered before: they stay so
  };

  // The root unit (embeddings, final norm, head) gathered while it lives, the blocks left to the
  // hooks: generation in the sharded layout (grpo/dist/generation_scope.h), where each block is
  // gathered for its forward and freed after it. Collective.
  class RootGathered {
   public:
    explicit RootGathered(FullyShard* fsdp);
    ~RootGathered();
    RootGathered(const RootGathered&) = delete;
    RootGathered& operator=(const RootGathered&) = delete;

   private:
    FullyShard* fsdp_;
    bool was_gathered_ = false;
  };

  // All-gathers of block parameters issued so far (a unit's chunks, one collective each).
  int64_t block_gathers() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace grpo::dist
