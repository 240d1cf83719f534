// Small building blocks shared by every model: Linear, RMSNorm and the SwiGLU MLP.
//
// Parameters are created with the TensorOptions given (device, dtype), so a model can be built on
// the meta device without allocating; weights start normal(0, init_std), biases at zero, norm
// weights at one, as HF initialises them.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <optional>

#include "grpo/kernels/fp8_quant.h"
#include "grpo/model/model_config.h"

namespace grpo::model {

// y = x W^T (+ b). weight [out, in], bias [out].
class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias, double init_std,
             const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x);  // [..., in] -> [..., out]

  torch::Tensor weight;
  torch::Tensor bias;  // undefined when there is none
  // FP8 mode (grpo/model/fp8_linear.h; set by fp8_enable): forward runs fp8_linear with this config.
  std::optional<Fp8Config> fp8;
  // A weight kept in FP8 (codes [out, in] + 128x128 scales, e.g. from an FP8 checkpoint): with fp8
  // set, forward uses it instead of `weight`, which then receives no gradient.
  std::optional<kernels::Fp8Tensor> fp8_weight;
};
TORCH_MODULE(Linear);

// HF/DeepSeek RMSNorm: weight * (x / sqrt(mean(x^2) + eps)), computed in float32 and cast back to
// x's dtype before the weight multiplies.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x);  // [..., dim] -> [..., dim]

  torch::Tensor weight;  // [dim]
  double eps;
  // Implementation (ModelConfig::kernels; set by CausalLM): the fused kernels::rms_norm or the
  // plain-ATen reference.
  KernelBackend kernel_backend = KernelBackend::automatic;
};
TORCH_MODULE(RMSNorm);

// down(silu(gate(x)) * up(x)). gate, up: [F, D]; down: [D, F].
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t hidden, int64_t intermediate, bool bias, double init_std, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x);  // [..., D] -> [..., D]

  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  // Implementation of silu(gate) * up (ModelConfig::kernels; set by CausalLM and Moe): the fused
  // kernels::swiglu or the plain-ATen reference.
  KernelBackend kernel_backend = KernelBackend::automatic;
};
TORCH_MODULE(Mlp);

// Whether the fused ops of grpo/kernels/ run for activations `x` under `backend` (see
// KernelBackend): never for reference, always for cuda, for CUDA tensors in a build with CUDA
// kernels for automatic.
bool use_fused_kernels(KernelBackend backend, const torch::Tensor& x);

}  // namespace grpo::model
