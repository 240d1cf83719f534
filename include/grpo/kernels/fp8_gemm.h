// Block-scaled FP8 GEMM: out = dequant(a) dequant(b)^T, both operands quantised along the inner
// dimension K in tiles of 128 (grpo/kernels/fp8_quant.h), accumulated in float32.
//
//   a [M, K] with 1x128 tiles (activations, output gradients) or 128x128 blocks
//   b [N, K] with 128x128 blocks (weights) or 1x128 tiles (the wgrad GEMM: both operands tiled
//     along the token dimension)
//   out [M, N] in out_dtype
//
// The reference defines the numbers: dequantise both operands to float32 and multiply with
// at::matmul. The CUDA path calls cuBLASLt's blockwise-scaled FP8 GEMM through at::_scaled_mm_v2
// (recipes BlockWise1x128 / BlockWise128x128, sm90 only): the fp8 operands are padded with zero
// codes to multiples of 128 along K (and of 128 along a 128x128 operand's outer dimension, of 16
// along a 1x128 operand's), the scales handed over outer-dim-major with a 128x128 operand's scale
// padded to a multiple of 4 along K/128. It agrees with the reference up to accumulation order
// (tested on a GPU over odd K/128). Shapes or devices it cannot take go to the reference: logged
// once per reason with `automatic`, an error with `cuda`.
//
// Files: kernels/fp8_quant/fp8_gemm.cpp (beside the quantiser, whose launchers it uses; no CUDA
// file of its own), tested in kernels/fp8_quant/test_fp8_quant.cpp and by the fp8_gemm row of
// tests/kernels/test_kernel_ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "grpo/kernels/fp8_quant.h"

namespace grpo::kernels {

enum class Fp8GemmBackend {
  automatic,  // the CUDA path where it applies, else the reference (logged once)
  reference,  // always dequantise + at::matmul
  cuda,       // the CUDA path or an error
};

// Defines the numbers. a [M, K], b [N, K], both with block_cols == 128. -> [M, N] out_dtype.
at::Tensor fp8_gemm_reference(const Fp8Tensor& a, const Fp8Tensor& b, at::ScalarType out_dtype = at::kFloat);

// "" when the CUDA path can take these operands (CUDA tensors on an sm90 device, supported tiling
// pair, a grpo built with CUDA), else why not.
std::string fp8_gemm_cuda_unsupported_reason(const Fp8Tensor& a, const Fp8Tensor& b);

at::Tensor fp8_gemm(const Fp8Tensor& a, const Fp8Tensor& b, at::ScalarType out_dtype = at::kFloat,
                    Fp8GemmBackend backend = Fp8GemmBackend::automatic);

}  // namespace grpo::kernels
