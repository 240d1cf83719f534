// The seam through which expert parallelism reaches a MoE layer. The model code only calls it and
// knows nothing of ranks or process groups; grpo/dist/expert_parallel.h implements it over a
// process group and installs it from outside (as torchtitan applies its parallelisms).
//
// With an exchange of R ranks installed, a MoeImpl with E routed experts holds only its own block
// of L = E / R of them (rank r: experts [r L, (r + 1) L)), routes each token over all E as before,
// sends the (token, expert) rows to the ranks owning their experts, runs its local experts on what
// it receives, and sends the results back to be combined with their gate weights.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace grpo::model {

class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;

  virtual int64_t ranks() const = 0;  // R, the ranks sharing the experts
  virtual int64_t rank() const = 0;   // this rank's index among them

  // counts [R * L] int64 (CPU): this rank's rows for every expert. Returns [R, L] int64 (CPU):
  // row s = what rank s sends here, per local expert. Every rank of the group calls it together.
  virtual torch::Tensor exchange_counts(const torch::Tensor& counts) = 0;

  // rows [sum(send), D], grouped by destination rank (send[r] rows for rank r). Returns the rows
  // every rank sent here [sum(recv), D], grouped by source rank. Differentiable: the backward sends
  // the gradients back the way the rows came. Every rank of the group calls it together, also
  // with no rows.
  virtual torch::Tensor exchange(const torch::Tensor& rows, const std::vector<int64_t>& send,
                                 const std::vector<int64_t>& recv) = 0;
};

}  // namespace grpo::model
