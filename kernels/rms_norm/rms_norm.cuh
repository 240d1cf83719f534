// Launchers of kernels/rms_norm/rms_norm.cu; see include/grpo/kernels/rms_norm.h for what they
// compute.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

namespace grpo::kernels {

// x [..., H] CUDA float32/bfloat16/half/float64, weight [H] of x's dtype and device.
at::Tensor rms_norm_cuda(const at::Tensor& x, const at::Tensor& weight, double eps);
// grad_y like x -> {grad_x like x, grad_weight [H]}.
std::pair<at::Tensor, at::Tensor> rms_norm_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                         const at::Tensor& weight, double eps);

}  // namespace grpo::kernels
