// axpy: out = alpha * x + y, elementwise. The smallest kernel in grpo: it exists to prove, on every
// GPU host, that the CUDA part builds, loads and runs from the same script as all GPU work
// (scripts/gpu.sh), and to show the layout every kernel follows (docs/kernels.md), one folder per op:
//   include/grpo/kernels/axpy.h    this header, the public API (installed)
//   kernels/axpy/axpy.cu           the CUDA kernel and its launcher (checks tensors and the launch)
//   kernels/axpy/axpy.cuh          the launcher's declaration, for axpy.cpp only
//   kernels/axpy/axpy.cpp          the plain-ATen reference and the dispatch between the two
//   kernels/axpy/test_axpy.cpp     the reference against hand-computed values, input checks
//   the axpy row of tests/kernels/test_kernel_ops.cpp: kernel against reference over shapes and dtypes
#pragma once

#include <ATen/core/Tensor.h>

namespace grpo::kernels {

// Defines the numbers: computed in float32 (float64 for double inputs), rounded once to the
// input dtype. x and y: same shape, dtype and device; any layout.
at::Tensor axpy_reference(double alpha, const at::Tensor& x, const at::Tensor& y);

// The CUDA kernel for CUDA tensors (when grpo was built with CUDA kernels), else the reference.
at::Tensor axpy(double alpha, const at::Tensor& x, const at::Tensor& y);

}  // namespace grpo::kernels
