// Fused RMSNorm, forward and backward. HF/DeepSeek numerics: with x32 = float32(x),
//   n = x32 / sqrt(mean(x32^2) + eps)       (per row of the last dimension, in float32)
//   y = weight * dtype(x)(n)                (n rounded to x's dtype, then multiplied by the weight)
// Shapes: x [..., H], weight [H], y like x. Rows are the product of the leading dimensions (N).
//
// Layout (as every kernel; see docs/kernels.md), one folder kernels/rms_norm/:
//   rms_norm.cu(h)          CUDA kernels and launchers (check tensors and the launch)
//   rms_norm.cpp            the plain-ATen references, the dispatch, the autograd function
//   test_rms_norm.cpp       references against formulas and finite differences, the model's norm
// and the rms_norm row of tests/kernels/test_kernel_ops.cpp (kernels against references, the
// autograd function against ATen autograd).
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

namespace grpo::kernels {

// The model's reference forward, the exact ATen ops of RMSNormImpl (differentiable through ATen's
// autograd). x [..., H] floating, weight [H].
at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps);

// Explicit backward of rms_norm_reference, computed in float32 and rounded once:
//   grad_x = r * (gn - n * mean(gn * n)),  gn = grad_y * weight,  r = 1 / sqrt(mean(x^2) + eps)
//   grad_weight = sum over rows of grad_y * dtype(x)(n)
// grad_y [..., H] -> {grad_x [..., H] (x's dtype), grad_weight [H] (weight's dtype)}.
std::pair<at::Tensor, at::Tensor> rms_norm_backward_reference(const at::Tensor& grad_y, const at::Tensor& x,
                                                              const at::Tensor& weight, double eps);

// No autograd: the CUDA kernels for CUDA tensors (when grpo was built with CUDA kernels; an error
// otherwise), else the references above. Kernels need x and weight of one dtype.
at::Tensor rms_norm_forward(const at::Tensor& x, const at::Tensor& weight, double eps);
std::pair<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                    const at::Tensor& weight, double eps);

// Differentiable fused RMSNorm: a custom autograd function whose forward is rms_norm_forward and
// whose backward is rms_norm_backward (kernels on CUDA, the explicit reference on CPU). First-order
// gradients only.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace grpo::kernels
