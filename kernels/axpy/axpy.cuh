// Launcher of kernels/axpy/axpy.cu; see include/grpo/kernels/axpy.h for what it computes.
#pragma once

#include <ATen/core/Tensor.h>

namespace grpo::kernels {

// x, y: CUDA tensors of one floating dtype, same shape and device. Returns a new contiguous tensor.
at::Tensor axpy_cuda(double alpha, const at::Tensor& x, const at::Tensor& y);

}  // namespace grpo::kernels
