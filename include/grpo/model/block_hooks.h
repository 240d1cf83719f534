// The seam through which parameter sharding (grpo/dist/fully_shard.h) reaches the model's
// decoder blocks, as PyTorch's module forward hooks reach them for FSDP: CausalLM calls these
// around every block it runs (layers 0..L-1, then MTP modules as blocks L..L+D-1), also when
// activation checkpointing runs a block again in the backward pass. The model code knows nothing
// of what they do.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace grpo::model {

class BlockHooks {
 public:
  virtual ~BlockHooks() = default;
  // Before block `index` runs (its parameters must hold their values when this returns).
  virtual void before_block(int64_t index) = 0;
  // After block `index` made `outputs` (every tensor of it the caller goes on with).
  virtual void after_block(int64_t index, const std::vector<torch::Tensor>& outputs) = 0;
};

}  // namespace grpo::model
