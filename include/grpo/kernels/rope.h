// Fused rotary position embedding, both layouts, forward and backward. The cos/sin tables are those
// of grpo::model::RotaryEmbedding::cos_sin: [B, T, R] (or [1, T, R], broadcast over B), the first
// and second halves repeating the R/2 frequencies. x [B, H, T, R]; the result is [B, H, T, R].
//
// Rotate-half (NeoX, Llama, Qwen2), with h = R/2 and i < h:
//   y[i] = x[i] c[i] - x[i+h] s[i],     y[i+h] = x[i+h] c[i+h] + x[i] s[i+h]
// Interleaved (DeepSeek-V3), pairs (x[2j], x[2j+1]) rotated and written de-interleaved, j < h:
//   y[j] = x[2j] c[j] - x[2j+1] s[j],   y[h+j] = x[2j+1] c[j] + x[2j] s[j]
// The backward of a rotation is the inverse (transposed) rotation of the gradient; the tables get
// no gradient (they are functions of the positions). Kernels and the explicit backward compute in
// float32 (float64 for double) and round once; the reference forwards are the model's ATen ops.
//
// Layout (docs/kernels.md), one folder kernels/rope/: rope.cu(h) (CUDA kernels, launchers),
// rope.cpp (references, dispatch, autograd function), test_rope.cpp; and the rope row of
// tests/kernels/test_kernel_ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>

namespace grpo::kernels {

enum class RopeLayout { rotate_half, interleaved };

// The model's reference forward (the exact ATen ops of src/model/rope.cpp; differentiable).
at::Tensor rope_reference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, RopeLayout layout);

// Explicit backward: grad_y [B, H, T, R] -> grad_x [B, H, T, R].
at::Tensor rope_backward_reference(const at::Tensor& grad_y, const at::Tensor& cos, const at::Tensor& sin,
                                   RopeLayout layout);

// No autograd: the CUDA kernels for CUDA tensors, else the references above. Kernels need x and
// the tables of one dtype.
at::Tensor rope_forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, RopeLayout layout);
at::Tensor rope_backward(const at::Tensor& grad_y, const at::Tensor& cos, const at::Tensor& sin, RopeLayout layout);

// Differentiable fused RoPE (custom autograd function; gradient for x only).
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, RopeLayout layout);

}  // namespace grpo::kernels
