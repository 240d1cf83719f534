// Fused SwiGLU: the reference and the explicit backward against hand-computed values, the explicit
// backward (through the autograd function) against float64 finite differences, the model's Mlp
// routed through the fused op on CPU. The CUDA kernels against the references over shapes and
// dtypes are the swiglu row of tests/kernels/test_kernel_ops.cpp.
#include "grpo/kernels/swiglu.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "grpo/model/layers.h"
#include "kernels/kernel_test_util.h"

namespace grpo::kernels {
namespace {

using test::expect_close;

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

TEST(Swiglu, ReferenceMatchesHandComputedValues) {
  const auto gate = torch::tensor({0.0, 1.0, -2.0}, torch::kDouble);
  const auto up = torch::tensor({3.0, 4.0, 5.0}, torch::kDouble);
  // silu(0) = 0, silu(1) = 0.7310585786, silu(-2) = -2 / (1 + e^2) = -0.2384058440.
  const auto want = torch::tensor({0.0, 4 * 0.7310585786300049, 5 * -0.23840584404423515}, torch::kDouble);
  expect_close(swiglu_reference(gate, up), want, 1e-12, 1e-12, "forward");
}

TEST(Swiglu, ExplicitBackwardMatchesHandComputedValues) {
  const auto gate = torch::tensor({1.0, -0.5}, torch::kDouble);
  const auto up = torch::tensor({4.0, 2.0}, torch::kDouble);
  const auto dy = torch::tensor({1.0, -3.0}, torch::kDouble);
  const auto [grad_gate, grad_up] = swiglu_backward_reference(dy, gate, up);
  for (int64_t i = 0; i < 2; ++i) {
    const double g = gate[i].item<double>(), u = up[i].item<double>(), d = dy[i].item<double>();
    const double s = sigmoid(g);
    EXPECT_NEAR(grad_gate[i].item<double>(), d * u * (s + g * s * (1 - s)), 1e-12);  // d/dg of g*s(g)
    EXPECT_NEAR(grad_up[i].item<double>(), d * g * s, 1e-12);
  }
}

TEST(Swiglu, ExplicitBackwardMatchesFiniteDifferences) {
  torch::manual_seed(1);
  const auto gate = (torch::randn({4, 7}, torch::kDouble) * 2).requires_grad_();
  const auto up = torch::randn({4, 7}, torch::kDouble).requires_grad_();
  const auto w = torch::randn({4, 7}, torch::kDouble);
  (swiglu(gate, up) * w).sum().backward();  // the custom Function: explicit backward on CPU
  torch::NoGradGuard no_grad;
  const double h = 1e-6;
  auto loss = [&](const torch::Tensor& g, const torch::Tensor& u) {
    return (swiglu_reference(g, u) * w).sum().item<double>();
  };
  const auto g0 = gate.detach().clone(), u0 = up.detach().clone();
  for (int64_t i = 0; i < g0.numel(); ++i) {
    auto gp = g0.clone(), gm = g0.clone(), up_p = u0.clone(), up_m = u0.clone();
    gp.view({-1})[i] += h;
    gm.view({-1})[i] -= h;
    up_p.view({-1})[i] += h;
    up_m.view({-1})[i] -= h;
    EXPECT_NEAR(gate.grad().view({-1})[i].item<double>(), (loss(gp, u0) - loss(gm, u0)) / (2 * h), 1e-7);
    EXPECT_NEAR(up.grad().view({-1})[i].item<double>(), (loss(g0, up_p) - loss(g0, up_m)) / (2 * h), 1e-7);
  }
}

TEST(Swiglu, RejectsMismatchedInputs) {
  EXPECT_THROW(swiglu_reference(torch::ones({2, 3}), torch::ones({3, 2})), c10::Error);
  EXPECT_THROW(swiglu_forward(torch::ones({3}), torch::ones({3}, torch::kDouble)), c10::Error);
  EXPECT_THROW(swiglu_backward(torch::ones({4}), torch::ones({3}), torch::ones({3})), c10::Error);
}

TEST(Swiglu, ModelMlpRoutesThroughTheFusedOp) {
  torch::manual_seed(3);
  model::Mlp reference(8, 12, false, 0.3, torch::TensorOptions());
  model::Mlp fused(8, 12, false, 0.3, torch::TensorOptions());
  reference->kernel_backend = model::KernelBackend::reference;
  fused->kernel_backend = model::KernelBackend::cuda;  // CPU tensors: the explicit references
  {
    torch::NoGradGuard no_grad;
    for (const auto& item : reference->named_parameters()) {
      fused->named_parameters()[item.key()].copy_(item.value());
    }
  }
  const auto x = torch::randn({3, 5, 8});
  const auto yr = reference(x), yf = fused(x);
  EXPECT_TRUE(torch::equal(yr, yf));
  yr.pow(2).sum().backward();
  yf.pow(2).sum().backward();
  for (const auto& item : reference->named_parameters()) {
    const auto& name = item.key();
    const auto& p = item.value();
    expect_close(fused->named_parameters()[name].grad(), p.grad(), 1e-5, 1e-5, name);
  }
}

}  // namespace
}  // namespace grpo::kernels
