// Launcher of kernels/rope/rope.cu; see include/grpo/kernels/rope.h for what it computes.
#pragma once

#include <ATen/core/Tensor.h>

namespace grpo::kernels {

// x [B, H, T, R] CUDA, cos/sin [B or 1, T, R] of x's dtype and device, R even. interleaved: the
// DeepSeek layout, else rotate-half. inverse: apply the transposed rotation (the backward, x is then
// the gradient of the output). Returns a new contiguous [B, H, T, R] tensor.
at::Tensor rope_cuda(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool interleaved, bool inverse);

}  // namespace grpo::kernels
