// Launcher of kernels/fp8_quant/fp8_quant.cu; see include/grpo/kernels/fp8_quant.h for what it
// computes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

namespace grpo::kernels {

// x: CUDA [R, C] float32, bfloat16, half or float64 (any strides). Returns (data [R, C]
// float8_e4m3fn, scale [ceil(R / block_rows), ceil(C / block_cols)] float32), both contiguous,
// bit-identical to fp8_quantize_reference.
std::pair<at::Tensor, at::Tensor> fp8_quantize_cuda(const at::Tensor& x, int64_t block_rows, int64_t block_cols,
                                                    bool ue8m0);

}  // namespace grpo::kernels

namespace grpo::kernels {

// Major compute capability of CUDA device `index` (9 for Hopper); for the FP8 GEMM's path choice.
int cuda_device_major(int index);

}  // namespace grpo::kernels
