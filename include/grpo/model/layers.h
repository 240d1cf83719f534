// Small building blocks shared by every model: Linear, RMSNorm and the SwiGLU MLP.
//
// Parameters are created with the TensorOptions given (device, dtype), so a model can be built on
// the meta device without allocating; weights start normal(0, init_std), biases at zero, norm
// weights at one, as HF initialises them.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

namespace grpo::model {

// y = x W^T (+ b). weight [out, in], bias [out].
class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias, double init_std,
             const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x);  // [..., in] -> [..., out]

  torch::Tensor weight;
  torch::Tensor bias;  // undefined when there is none
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
};
TORCH_MODULE(RMSNorm);

// down(silu(gate(x)) * up(x)). gate, up: [F, D]; down: [D, F].
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t hidden, int64_t intermediate, bool bias, double init_std,
          const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x);  // [..., D] -> [..., D]

  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

}  // namespace grpo::model
