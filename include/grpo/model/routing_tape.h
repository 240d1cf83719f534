// The seam through which a MoE layer's expert choices are recorded and replayed (router replay,
// "R3"): generation records the experts every MoE layer chose for every token it ran, and the
// training forward can take those experts instead of choosing again, so that both run the same
// experts even where the router has moved or rounds differently. The layer still computes its
// gate weights from its current router scores at the given experts, so gradients reach the router.
//
// A tape is installed on a MoE layer (MoeImpl::routing) from outside; the model code only calls it.
#pragma once

#include <torch/torch.h>

namespace grpo::model {

class MoeImpl;

class RoutingTape {
 public:
  virtual ~RoutingTape() = default;
  // Experts to use for the rows of this forward's x_flat [N, D]: [N, K] int64, -1 in a row = that
  // row routes itself (no record for it); undefined = the whole forward routes itself.
  virtual torch::Tensor replay(const MoeImpl& layer, int64_t rows) = 0;
  // The experts the layer used for the rows of this forward, [N, K] int64 (after any replay).
  virtual void record(const MoeImpl& layer, const torch::Tensor& experts) = 0;
};

}  // namespace grpo::model
