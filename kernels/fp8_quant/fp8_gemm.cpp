#include "grpo/kernels/fp8_gemm.h"

#include <ATen/ATen.h>
#include <ATen/BlasBackend.h>

#include <mutex>
#include <set>

#include "grpo/core/log.h"
#include "grpo/version.h"

#if GRPO_WITH_CUDA_KERNELS
#include "fp8_quant.cuh"
#endif

namespace grpo::kernels {
namespace {

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

void check_operands(const Fp8Tensor& a, const Fp8Tensor& b, const char* who) {
  fp8_check(a, who);
  fp8_check(b, who);
  TORCH_CHECK(a.cols() == b.cols(), who, ": a [M, K] and b [N, K] must share K, got ", a.data.sizes(), " and ",
              b.data.sizes());
  TORCH_CHECK(a.block_cols == kFp8Block && b.block_cols == kFp8Block, who,
              ": both operands must be tiled by 128 along K, got ", a.block_rows, "x", a.block_cols, " and ",
              b.block_rows, "x", b.block_cols);
  TORCH_CHECK(a.data.device() == b.data.device(), who, ": operands on ", a.data.device(), " and ", b.data.device());
}

// Logs `reason` the first time it is seen: the fallback to the reference is explicit, not silent.
void log_fallback_once(const std::string& reason) {
  static std::mutex mutex;
  static std::set<std::string> seen;
  const std::lock_guard<std::mutex> lock(mutex);
  if (seen.insert(reason).second) log::info("fp8_gemm: using the reference GEMM: {}", reason);
}

#if GRPO_WITH_CUDA_KERNELS
// Codes [R, C] -> [rows, cols] with zero codes appended (zero contributes nothing to the product).
at::Tensor pad_codes(const at::Tensor& data, int64_t rows, int64_t cols) {
  if (data.size(0) == rows && data.size(1) == cols) return data;
  return at::constant_pad_nd(data.view(at::kByte), {0, cols - data.size(1), 0, rows - data.size(0)}, 0)
      .view(at::kFloat8_e4m3fn);
}

// The scale as cuBLASLt wants it (see the header): outer-dim-major; a 128x128 operand's padded to
// a multiple of 4 along K/128. Padding scales are 1 (they multiply zero codes).
at::Tensor scale_for_cublas(const Fp8Tensor& t, int64_t padded_rows) {
  if (t.block_rows == 1) {
    const auto s = at::constant_pad_nd(t.scale, {0, 0, 0, padded_rows - t.rows()}, 1.0);
    return s.t().contiguous().t();  // [Rp, K/128], strides [1, Rp]
  }
  const int64_t kb = t.scale.size(1);
  const auto s = at::constant_pad_nd(t.scale, {0, round_up(kb, 4) - kb}, 1.0).contiguous();
  return s.t();  // [L4, Rp/128], strides [1, L4]
}

at::Tensor fp8_gemm_cuda(const Fp8Tensor& a, const Fp8Tensor& b, at::ScalarType out_dtype) {
  const int64_t m = a.rows(), n = b.rows(), k = a.cols();
  const int64_t kp = round_up(k, kFp8Block);
  const int64_t mp = round_up(m, a.block_rows == 1 ? 16 : kFp8Block);
  const int64_t np = round_up(n, b.block_rows == 1 ? 16 : kFp8Block);
  const auto ad = pad_codes(a.data, mp, kp);
  const auto bd = pad_codes(b.data, np, kp);
  const int64_t recipe_a = static_cast<int64_t>(a.block_rows == 1 ? at::blas::ScalingType::BlockWise1x128
                                                                  : at::blas::ScalingType::BlockWise128x128);
  const int64_t recipe_b = static_cast<int64_t>(b.block_rows == 1 ? at::blas::ScalingType::BlockWise1x128
                                                                  : at::blas::ScalingType::BlockWise128x128);
  const int64_t no_swizzle = static_cast<int64_t>(at::blas::SwizzleType::NO_SWIZZLE);
  const auto out = at::_scaled_mm_v2(ad, bd.t(), {scale_for_cublas(a, mp)}, {recipe_a}, {no_swizzle},
                                     {scale_for_cublas(b, np)}, {recipe_b}, {no_swizzle}, std::nullopt, out_dtype, {},
                                     /*use_fast_accum=*/false);
  return out.narrow(0, 0, m).narrow(1, 0, n);
}
#endif

}  // namespace

at::Tensor fp8_gemm_reference(const Fp8Tensor& a, const Fp8Tensor& b, at::ScalarType out_dtype) {
  check_operands(a, b, "fp8_gemm_reference");
  return at::matmul(fp8_dequantize(a), fp8_dequantize(b).t()).to(out_dtype);
}

std::string fp8_gemm_cuda_unsupported_reason(const Fp8Tensor& a, const Fp8Tensor& b) {
  if (!a.data.is_cuda()) return "operands are on " + a.data.device().str() + ", not CUDA";
#if GRPO_WITH_CUDA_KERNELS
  if (a.block_rows == kFp8Block && b.block_rows == kFp8Block) {
    return "cuBLASLt has no 128x128 x 128x128 blockwise recipe";
  }
  if ((a.block_rows != 1 && a.block_rows != kFp8Block) || (b.block_rows != 1 && b.block_rows != kFp8Block)) {
    return "only 1x128 and 128x128 tilings are supported";
  }
  const int major = cuda_device_major(a.data.device().index());
  if (major != 9)
    return "blockwise FP8 GEMM needs an sm90 device, found compute capability " + std::to_string(major) + ".x";
  return "";
#else
  (void)b;
  return "grpo was built without CUDA kernels";
#endif
}

at::Tensor fp8_gemm(const Fp8Tensor& a, const Fp8Tensor& b, at::ScalarType out_dtype, Fp8GemmBackend backend) {
  check_operands(a, b, "fp8_gemm");
  if (backend == Fp8GemmBackend::reference) return fp8_gemm_reference(a, b, out_dtype);
  const std::string reason = fp8_gemm_cuda_unsupported_reason(a, b);
  if (!reason.empty()) {
    TORCH_CHECK(backend != Fp8GemmBackend::cuda, "fp8_gemm: backend cuda requested but ", reason);
    // CPU tensors take the reference without comment: it is the CPU path, not a fallback.
    if (a.data.is_cuda()) log_fallback_once(reason);
    return fp8_gemm_reference(a, b, out_dtype);
  }
#if GRPO_WITH_CUDA_KERNELS
  if (backend == Fp8GemmBackend::cuda) return fp8_gemm_cuda(a, b, out_dtype);
  try {
    return fp8_gemm_cuda(a, b, out_dtype);
  } catch (const c10::Error& e) {
    log_fallback_once(std::string("at::_scaled_mm_v2 failed: ") + e.what_without_backtrace());
    return fp8_gemm_reference(a, b, out_dtype);
  }
#else
  return fp8_gemm_reference(a, b, out_dtype);
#endif
}

}  // namespace grpo::kernels
