#include "grpo/kernels/fp8_quant.h"

#include <ATen/ATen.h>

#include "grpo/version.h"

#if GRPO_WITH_CUDA_KERNELS
#include "fp8_quant.cuh"
#endif

namespace grpo::kernels {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_input(const at::Tensor& x, int64_t block_rows, int64_t block_cols, const char* who) {
  TORCH_CHECK(x.dim() == 2, who, ": expected a 2-D tensor [R, C], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), who, ": expected a floating dtype, got ", x.scalar_type());
  TORCH_CHECK(block_rows >= 1 && block_cols >= 1, who, ": block sizes must be >= 1, got ", block_rows, "x", block_cols);
}

// amax [Rb, Cb] float32 -> dequant multipliers (see the header): amax / 448 with IEEE division (a
// tensor divisor: ATen turns division by a scalar into a multiplication by its reciprocal), 1 for
// an all-zero tile, rounded up to a power of two for ue8m0.
at::Tensor scale_from_amax(const at::Tensor& amax, bool ue8m0) {
  auto scale = amax / at::full_like(amax, kFp8E4m3Max);
  scale = at::where(amax > 0, scale, at::ones_like(scale));
  if (ue8m0) {
    // scale = m * 2^e with m in [0.5, 1): a power of two when m == 0.5 (2^(e-1)), else round up to 2^e.
    const auto [mantissa, exponent] = at::frexp(scale);
    const auto e = at::where(mantissa == 0.5, exponent - 1, exponent);
    scale = at::ldexp(at::ones_like(scale), e);
  }
  return scale;
}

}  // namespace

void fp8_check(const Fp8Tensor& t, const char* who) {
  TORCH_CHECK(t.data.defined() && t.scale.defined(), who, ": FP8 tensor without data or scale");
  TORCH_CHECK(t.data.dim() == 2 && t.data.scalar_type() == at::kFloat8_e4m3fn, who,
              ": expected data [R, C] float8_e4m3fn, got ", t.data.sizes(), " ", t.data.scalar_type());
  TORCH_CHECK(t.block_rows >= 1 && t.block_cols >= 1, who, ": block sizes must be >= 1, got ", t.block_rows, "x",
              t.block_cols);
  const std::vector<int64_t> want{ceil_div(t.rows(), t.block_rows), ceil_div(t.cols(), t.block_cols)};
  TORCH_CHECK(t.scale.scalar_type() == at::kFloat && t.scale.sizes() == at::IntArrayRef(want), who, ": expected scale ",
              at::IntArrayRef(want), " float32 for data ", t.data.sizes(), " in ", t.block_rows, "x", t.block_cols,
              " tiles, got ", t.scale.sizes(), " ", t.scale.scalar_type());
  TORCH_CHECK(t.scale.device() == t.data.device(), who, ": data on ", t.data.device(), " but scale on ",
              t.scale.device());
}

Fp8Tensor fp8_quantize_reference(const at::Tensor& x, int64_t block_rows, int64_t block_cols, bool ue8m0) {
  check_input(x, block_rows, block_cols, "fp8_quantize_reference");
  const int64_t rows = x.size(0), cols = x.size(1);
  const int64_t rb = ceil_div(rows, block_rows), cb = ceil_div(cols, block_cols);
  const auto xf = x.to(at::kFloat);
  // Zero padding never raises a max-abs, so the edge tiles' scales come from their real elements.
  const auto padded = at::constant_pad_nd(xf, {0, cb * block_cols - cols, 0, rb * block_rows - rows}, 0.0);
  const auto amax = padded.reshape({rb, block_rows, cb, block_cols}).abs().amax({1, 3});
  Fp8Tensor out;
  out.block_rows = block_rows;
  out.block_cols = block_cols;
  out.scale = scale_from_amax(amax, ue8m0).contiguous();
  const auto expanded = fp8_expand_scale(out.scale, block_rows, block_cols, rows, cols);
  out.data = (xf / expanded).clamp(-kFp8E4m3Max, kFp8E4m3Max).to(at::kFloat8_e4m3fn).contiguous();
  return out;
}

Fp8Tensor fp8_quantize(const at::Tensor& x, int64_t block_rows, int64_t block_cols, bool ue8m0) {
  check_input(x, block_rows, block_cols, "fp8_quantize");
  if (x.is_cuda()) {
#if GRPO_WITH_CUDA_KERNELS
    Fp8Tensor out;
    out.block_rows = block_rows;
    out.block_cols = block_cols;
    std::tie(out.data, out.scale) = fp8_quantize_cuda(x, block_rows, block_cols, ue8m0);
    return out;
#else
    TORCH_CHECK(false, "fp8_quantize: grpo was built without CUDA kernels (GRPO_WITH_CUDA=OFF); ",
                "rebuild with nvcc available or call fp8_quantize_reference");
#endif
  }
  return fp8_quantize_reference(x, block_rows, block_cols, ue8m0);
}

at::Tensor fp8_expand_scale(const at::Tensor& scale, int64_t block_rows, int64_t block_cols, int64_t rows,
                            int64_t cols) {
  TORCH_CHECK(scale.dim() == 2, "fp8_expand_scale: expected scale [Rb, Cb], got ", scale.sizes());
  return scale.repeat_interleave(block_rows, 0).repeat_interleave(block_cols, 1).narrow(0, 0, rows).narrow(1, 0, cols);
}

at::Tensor fp8_dequantize(const Fp8Tensor& t, at::ScalarType dtype) {
  fp8_check(t, "fp8_dequantize");
  const auto expanded = fp8_expand_scale(t.scale, t.block_rows, t.block_cols, t.rows(), t.cols());
  return (t.data.to(at::kFloat) * expanded).to(dtype);
}

Fp8Tensor fp8_transpose(const Fp8Tensor& t) {
  fp8_check(t, "fp8_transpose");
  Fp8Tensor out;
  // A copy through uint8: the bytes are the codes, and byte copies work on every device.
  out.data = t.data.view(at::kByte).t().contiguous().view(at::kFloat8_e4m3fn);
  out.scale = t.scale.t().contiguous();
  out.block_rows = t.block_cols;
  out.block_cols = t.block_rows;
  return out;
}

}  // namespace grpo::kernels
