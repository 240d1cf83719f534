#include "grpo/kernels/axpy.h"

#include <ATen/ATen.h>

#include "grpo/version.h"

#if GRPO_WITH_CUDA_KERNELS
#include "axpy.cuh"
#endif

namespace grpo::kernels {
namespace {

void check_inputs(const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK(x.sizes() == y.sizes(), "axpy: x and y must have the same shape, got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "axpy: x and y must have the same dtype, got ", x.scalar_type(),
              " and ", y.scalar_type());
  TORCH_CHECK(x.device() == y.device(), "axpy: x and y must be on the same device, got ", x.device(), " and ",
              y.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "axpy: expected a floating dtype, got ", x.scalar_type());
}

}  // namespace

at::Tensor axpy_reference(double alpha, const at::Tensor& x, const at::Tensor& y) {
  check_inputs(x, y);
  const auto compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return (x.to(compute) * alpha + y.to(compute)).to(x.scalar_type());
}

at::Tensor axpy(double alpha, const at::Tensor& x, const at::Tensor& y) {
  check_inputs(x, y);
  if (x.is_cuda()) {
#if GRPO_WITH_CUDA_KERNELS
    return axpy_cuda(alpha, x, y);
#else
    TORCH_CHECK(false, "axpy: grpo was built without CUDA kernels (GRPO_WITH_CUDA=OFF); ",
                "rebuild with nvcc available or call axpy_reference");
#endif
  }
  return axpy_reference(alpha, x, y);
}

}  // namespace grpo::kernels
