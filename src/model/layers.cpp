#include "grpo/model/layers.h"

#include <ATen/ATen.h>

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

torch::Tensor LinearImpl::forward(const torch::Tensor& x) { return at::linear(x, weight, bias); }

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_, const torch::TensorOptions& options) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}, options));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  const auto x32 = x.to(torch::kFloat);
  const auto normed = x32 * torch::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

MlpImpl::MlpImpl(int64_t hidden, int64_t intermediate, bool bias, double init_std,
                 const torch::TensorOptions& options) {
  gate_proj = register_module("gate_proj", Linear(hidden, intermediate, bias, init_std, options));
  up_proj = register_module("up_proj", Linear(hidden, intermediate, bias, init_std, options));
  down_proj = register_module("down_proj", Linear(intermediate, hidden, bias, init_std, options));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
}

}  // namespace grpo::model
