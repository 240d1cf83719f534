#include "grpo/kernels/rms_norm.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "grpo/version.h"
#include "use_kernel.h"

#if GRPO_WITH_CUDA_KERNELS
#include "rms_norm.cuh"
#endif

namespace grpo::kernels {
namespace {

using detail::use_kernel;

void check_inputs(const char* fn, const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() >= 1, fn, ": x must have at least one dimension, got ", x.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), fn, ": weight must be [", x.size(-1),
              "] (x's last dimension), got ", weight.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) && at::isFloatingType(weight.scalar_type()), fn,
              ": expected floating dtypes, got x ", x.scalar_type(), " and weight ", weight.scalar_type());
  TORCH_CHECK(x.device() == weight.device(), fn, ": x and weight must be on one device, got ", x.device(), " and ",
              weight.device());
}

class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            double eps) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["eps"] = eps;
    return rms_norm_forward(x, weight, eps);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [grad_x, grad_weight] = rms_norm_backward(grads[0], saved[0], saved[1], ctx->saved_data["eps"].toDouble());
    return {grad_x, grad_weight, at::Tensor()};
  }
};

}  // namespace

at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_inputs("rms_norm_reference", x, weight);
  const auto x32 = x.to(at::kFloat);
  const auto normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> rms_norm_backward_reference(const at::Tensor& grad_y, const at::Tensor& x,
                                                              const at::Tensor& weight, double eps) {
  check_inputs("rms_norm_backward_reference", x, weight);
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "rms_norm_backward_reference: grad_y must match x ", x.sizes(), ", got ",
              grad_y.sizes());
  const int64_t h = x.size(-1);
  const auto x32 = x.to(at::kFloat).reshape({-1, h});         // [N, H]
  const auto g32 = grad_y.to(at::kFloat).reshape({-1, h});    // [N, H]
  const auto r = at::rsqrt(x32.pow(2).mean(-1, true) + eps);  // [N, 1]
  const auto n = x32 * r;                                     // [N, H]
  const auto gn = g32 * weight.to(at::kFloat);                // [N, H]
  const auto grad_x = r * (gn - n * (gn * n).mean(-1, true));
  const auto grad_weight = (g32 * n.to(x.scalar_type()).to(at::kFloat)).sum(0);
  return {grad_x.to(x.scalar_type()).view(x.sizes()), grad_weight.to(weight.scalar_type())};
}

at::Tensor rms_norm_forward(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_inputs("rms_norm_forward", x, weight);
  if (use_kernel("rms_norm_forward", x)) {
#if GRPO_WITH_CUDA_KERNELS
    return rms_norm_cuda(x, weight, eps);
#endif
  }
  return rms_norm_reference(x, weight, eps);
}

std::pair<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                    const at::Tensor& weight, double eps) {
  check_inputs("rms_norm_backward", x, weight);
  if (use_kernel("rms_norm_backward", x)) {
#if GRPO_WITH_CUDA_KERNELS
    return rms_norm_backward_cuda(grad_y, x, weight, eps);
#endif
  }
  return rms_norm_backward_reference(grad_y, x, weight, eps);
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return RmsNormFunction::apply(x, weight, eps);
}

}  // namespace grpo::kernels
