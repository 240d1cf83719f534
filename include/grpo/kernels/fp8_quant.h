// FP8 (E4M3) block quantisation, the DeepSeek-V3 recipe: every tile of a 2-D tensor gets its own
// scale from its max-abs value, so one outlier only costs precision inside its tile.
//
//   activations, gradients   1x128 tiles: one scale per row per 128 columns (the GEMM's inner dim)
//   weights                  128x128 blocks
//
// Scale convention (as DeepSeek's `weight_scale_inv`): `scale` is the DEQUANT multiplier,
//   x ~= float(q) * scale,   scale = amax(tile) / 448,   q = e4m3(clamp(x / scale, -448, 448)).
// With ue8m0 the scale is rounded UP to a power of two (2^ceil(log2(amax / 448))), so |x / scale|
// stays <= 448 and the division is exact. A tile of zeros gets scale 1 (codes all 0). Edge tiles
// (R or C not a multiple of the block) cover only the real elements: their max-abs ignores the
// padding, and dequantisation simply drops it. Every step is float32 with IEEE division and one
// round-to-nearest-even cast to e4m3, so the CUDA kernel reproduces the reference bit for bit.
// The clamp comes before the cast because older CPU casts to e4m3 did not saturate. Non-finite
// inputs are not handled (a NaN or inf in a tile makes its scale and codes NaN).
//
// Layout: x [R, C] any floating dtype (float32, bfloat16, half, double) and any strides;
//   data  [R, C] at::kFloat8_e4m3fn, contiguous
//   scale [ceil(R / block_rows), ceil(C / block_cols)] float32, contiguous
//
// Files, in kernels/fp8_quant/: fp8_quant.cu(h) (CUDA kernel), fp8_quant.cpp (reference + dispatch),
// fp8_gemm.cpp (the GEMM, grpo/kernels/fp8_gemm.h, which consumes these), test_fp8_quant.cpp; and
// the fp8_quant and fp8_gemm rows of tests/kernels/test_kernel_ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace grpo::kernels {

constexpr double kFp8E4m3Max = 448.0;  // largest finite float8_e4m3fn
constexpr int64_t kFp8Block = 128;     // tile length along the GEMM's inner dimension

// A quantised 2-D tensor: x ~= data * scale expanded over (block_rows x block_cols) tiles.
struct Fp8Tensor {
  at::Tensor data;         // [R, C] float8_e4m3fn
  at::Tensor scale;        // [ceil(R / block_rows), ceil(C / block_cols)] float32 dequant multipliers
  int64_t block_rows = 1;  // 1 (activation tiles) or 128 (weight blocks)
  int64_t block_cols = kFp8Block;

  int64_t rows() const { return data.size(0); }
  int64_t cols() const { return data.size(1); }
};

// Defines the numbers (see the top of this file). x: [R, C] floating; block sizes >= 1.
Fp8Tensor fp8_quantize_reference(const at::Tensor& x, int64_t block_rows, int64_t block_cols, bool ue8m0);

// The CUDA kernel for CUDA tensors (when grpo was built with CUDA kernels), else the reference.
Fp8Tensor fp8_quantize(const at::Tensor& x, int64_t block_rows, int64_t block_cols, bool ue8m0);

// The two tilings of the recipe.
inline Fp8Tensor fp8_quantize_1x128(const at::Tensor& x, bool ue8m0 = false) {
  return fp8_quantize(x, 1, kFp8Block, ue8m0);
}
inline Fp8Tensor fp8_quantize_128x128(const at::Tensor& x, bool ue8m0 = false) {
  return fp8_quantize(x, kFp8Block, kFp8Block, ue8m0);
}

// scale [Rb, Cb] -> [rows, cols]: each scale repeated over its tile, edge tiles cut to size.
at::Tensor fp8_expand_scale(const at::Tensor& scale, int64_t block_rows, int64_t block_cols, int64_t rows,
                            int64_t cols);

// data * expanded scale, computed in float32, returned as `dtype`. [R, C].
at::Tensor fp8_dequantize(const Fp8Tensor& t, at::ScalarType dtype = at::kFloat);

// The same numbers transposed: data [C, R] (contiguous copy), scale [Cb, Rb], block sizes swapped.
// Reuses a weight's 128x128 quantisation for the GEMM that contracts over its other dimension.
Fp8Tensor fp8_transpose(const Fp8Tensor& t);

// Checks data/scale dtypes and that the scale shape matches the data and block sizes; `who` names
// the caller in the message.
void fp8_check(const Fp8Tensor& t, const char* who);

}  // namespace grpo::kernels
