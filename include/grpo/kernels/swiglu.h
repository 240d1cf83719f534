// Fused SwiGLU activation, forward and backward: y = silu(gate) * up, silu(g) = g * sigmoid(g).
// Shapes: gate, up [..., F] of one dtype and device; y like gate. Used between the gate/up and the
// down projections of MlpImpl and of the routed experts.
//
// Backward, with s = sigmoid(g):  grad_gate = grad_y * up * s * (1 + g * (1 - s)),
//                                 grad_up   = grad_y * g * s.
// Kernels and explicit references compute in float32 (float64 for double) and round once.
//
// Layout (docs/kernels.md), one folder kernels/swiglu/: swiglu.cu(h) (CUDA kernels, launchers),
// swiglu.cpp (references, dispatch, autograd function), test_swiglu.cpp; and the swiglu row of
// tests/kernels/test_kernel_ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

namespace grpo::kernels {

// The model's reference forward, the exact ATen ops of MlpImpl: silu(gate) * up (differentiable).
at::Tensor swiglu_reference(const at::Tensor& gate, const at::Tensor& up);

// Explicit backward: grad_y [..., F] -> {grad_gate, grad_up} [..., F].
std::pair<at::Tensor, at::Tensor> swiglu_backward_reference(const at::Tensor& grad_y, const at::Tensor& gate,
                                                            const at::Tensor& up);

// No autograd: the CUDA kernels for CUDA tensors, else the references above.
at::Tensor swiglu_forward(const at::Tensor& gate, const at::Tensor& up);
std::pair<at::Tensor, at::Tensor> swiglu_backward(const at::Tensor& grad_y, const at::Tensor& gate,
                                                  const at::Tensor& up);

// Differentiable fused SwiGLU (custom autograd function over swiglu_forward / swiglu_backward).
at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up);

}  // namespace grpo::kernels
