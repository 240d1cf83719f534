// Activation checkpointing: run a piece of the model without keeping its intermediate activations
// and run it again during the backward pass, trading one extra forward of that piece for its memory.
//
// checkpoint(fn, inputs) runs fn(inputs) with gradients off (only the inputs and the outputs are
// kept), and returns outputs whose backward re-runs fn on the saved inputs with gradients on and
// back-propagates through that copy ("reentrant" recomputation): the gradients of the parameters fn
// uses are accumulated into their .grad during that inner backward, the gradients of the inputs are
// passed on. fn must compute the same values both times (no dropout; MoE routing is a deterministic
// function of its input) and may capture only what stays alive until the backward (copy tensors
// into the closure). The parameters fn uses are passed as `params`: the backward returns their
// gradients to autograd like any other input's (so .backward() accumulates them and
// torch::autograd::grad can ask for them), and the outputs require grad whenever a parameter does,
// even if no input does. Side effects that must happen once per step (the MoE load statistics)
// check recomputing() and skip the second run.
#pragma once

#include <functional>
#include <vector>

#include <torch/types.h>

namespace grpo::model {

using CheckpointFn = std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&)>;

// inputs: tensors fn reads (those that require grad get gradients); params: the parameters fn
// uses; fn returns defined tensors. Without grad mode (evaluation, generation) it returns
// fn(inputs).
std::vector<torch::Tensor> checkpoint(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs,
                                      const std::vector<torch::Tensor>& params);

// True while checkpoint() re-runs a function in the backward pass (on this thread).
bool recomputing();

}  // namespace grpo::model
