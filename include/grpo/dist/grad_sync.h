// Data-parallel gradients: the sum over ranks of every parameter's gradient, all-reduced in
// buckets while the backward pass still runs (as PyTorch's DDP). A hook on each parameter's
// gradient accumulator marks it ready; when every parameter of a bucket is ready, in the last
// micro-batch of the step, the bucket is flattened and its all-reduce starts, in bucket order
// (every rank issues the same collectives in the same order). finish() starts what is left (the
// buckets of parameters that got no gradient in the last micro-batch), waits, and writes the sums
// back.
//
//   GradSync sync(params, world, /*bucket_mb=*/25);
//   for (micro-batch m) { sync.arm(m == last, loss_m); loss_m.backward(); }
//   sync.finish();   // p.grad() = sum over ranks
//
// Summed, not averaged: the trainers divide each rank's loss by the whole step's normaliser (rows
// or tokens of the global batch), so the sum is the gradient of one process holding every rank's
// share, whatever the shares' sizes. A parameter that has no gradient on any rank keeps none (as
// in one process); one that has a gradient on some ranks gets the sum of those.
// On a world of one nothing is hooked and finish() does nothing.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "grpo/dist/world.h"

namespace grpo::dist {

class GradSync {
 public:
  // `params`: the trainable parameters, each tensor once, in the order they are created (buckets
  // take them in reverse, roughly the order backward produces their gradients).
  GradSync(std::vector<torch::Tensor> params, World& world, double bucket_mb);
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  // Before a micro-batch's backward: `last` = it is the step's last, so its backward starts the
  // buckets' all-reduces as they fill (earlier micro-batches only accumulate). With `loss`, the
  // parameters its graph does not reach (an MTP module not run, experts no token chose) count as
  // ready from the start, as DDP's find_unused_parameters, so the buckets holding them still start
  // during backward; without it they wait for finish().
  void arm(bool last, const torch::Tensor& loss = {});
  // After the step's backward passes (also when this rank had none): all-reduces whatever was not
  // started, waits for every bucket, and writes the summed gradients into the parameters.
  void finish();

  int64_t buckets() const;
  int64_t overlapped() const;  // buckets started during the last step's backward (the rest at finish)

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace grpo::dist
