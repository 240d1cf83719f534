#include "grpo/model/layers.h"

#include <ATen/ATen.h>

#include "grpo/kernels/rms_norm.h"
#include "grpo/kernels/swiglu.h"
#include "grpo/model/fp8_linear.h"
#include "grpo/model/invariant_ops.h"
#include "grpo/version.h"

namespace grpo::model {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool with_bias, double init_std,
                       const torch::TensorOptions& options) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}, options));
  if (!weight.is_meta()) {
    torch::NoGradGuard no_grad;
    weight.normal_(0.0, init_std);
  }
  if (with_bias) bias = register_parameter("bias", torch::zeros({out_features}, options));
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  if (fp8 && fp8_weight) {
    // The FP8 weight is not a registered tensor, so module.to(device) does not move it: follow x.
    if (fp8_weight->data.device() != x.device()) {
      fp8_weight->data = fp8_weight->data.to(x.device());
      fp8_weight->scale = fp8_weight->scale.to(x.device());
    }
    return fp8_linear(x, *fp8_weight, bias, *fp8);
  }
  if (fp8) return fp8_linear(x, weight, bias, *fp8);
  if (invariant::applies(x)) return invariant::linear(x, weight, bias);
  return at::linear(x, weight, bias);
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_, const torch::TensorOptions& options) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}, options));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  if (invariant::applies(x)) return invariant::rms_norm(x, weight, eps);
  if (use_fused_kernels(kernel_backend, x)) return grpo::kernels::rms_norm(x, weight, eps);
  return grpo::kernels::rms_norm_reference(x, weight, eps);
}

MlpImpl::MlpImpl(int64_t hidden, int64_t intermediate, bool bias, double init_std,
                 const torch::TensorOptions& options) {
  gate_proj = register_module("gate_proj", Linear(hidden, intermediate, bias, init_std, options));
  up_proj = register_module("up_proj", Linear(hidden, intermediate, bias, init_std, options));
  down_proj = register_module("down_proj", Linear(intermediate, hidden, bias, init_std, options));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  if (invariant::applies(x)) return down_proj(invariant::silu_mul(gate_proj(x), up_proj(x)));
  if (use_fused_kernels(kernel_backend, x)) return down_proj(grpo::kernels::swiglu(gate_proj(x), up_proj(x)));
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
}

bool use_fused_kernels(KernelBackend backend, const torch::Tensor& x) {
  switch (backend) {
    case KernelBackend::reference: return false;
    case KernelBackend::cuda: return true;
    case KernelBackend::automatic: return x.is_cuda() && GRPO_WITH_CUDA_KERNELS;
  }
  return false;
}

}  // namespace grpo::model
