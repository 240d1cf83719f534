// Launchers of kernels/swiglu/swiglu.cu; see include/grpo/kernels/swiglu.h for what they
// compute.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

namespace grpo::kernels {

// gate, up: CUDA tensors of one floating dtype and shape. Returns silu(gate) * up, contiguous.
at::Tensor swiglu_cuda(const at::Tensor& gate, const at::Tensor& up);
// grad_y like gate -> {grad_gate, grad_up}.
std::pair<at::Tensor, at::Tensor> swiglu_backward_cuda(const at::Tensor& grad_y, const at::Tensor& gate,
                                                       const at::Tensor& up);

}  // namespace grpo::kernels
