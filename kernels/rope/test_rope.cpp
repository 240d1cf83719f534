// Fused RoPE, both layouts: the reference against hand-computed rotations, norm preservation, the
// explicit backward as the inverse rotation and against float64 finite differences (through the
// autograd function), the model's application with kernels: cuda on CPU. The CUDA kernels against
// the reference over shapes and dtypes are the rope row of tests/kernels/test_kernel_ops.cpp.
#include "grpo/kernels/rope.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "grpo/model/causal_lm.h"
#include "grpo/model/rope.h"
#include "kernels/kernel_test_util.h"
#include "model/model_test_util.h"

namespace grpo::kernels {
namespace {

using test::expect_close;
using test::rope_tables;

TEST(Rope, ReferenceMatchesHandComputedRotations) {
  const double a0 = 0.3, a1 = 1.1;
  const double c0 = std::cos(a0), s0 = std::sin(a0), c1 = std::cos(a1), s1 = std::sin(a1);
  const auto cos = torch::tensor({c0, c1, c0, c1}, torch::kDouble).view({1, 1, 4});
  const auto sin = torch::tensor({s0, s1, s0, s1}, torch::kDouble).view({1, 1, 4});
  const auto x = torch::tensor({1.0, 2.0, 3.0, 4.0}, torch::kDouble).view({1, 1, 1, 4});
  // Rotate-half: pairs (x0, x2) by a0 and (x1, x3) by a1.
  const auto half = torch::tensor({1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1}, torch::kDouble);
  expect_close(rope_reference(x, cos, sin, RopeLayout::rotate_half).view({4}), half, 1e-12, 1e-12, "rotate_half");
  // Interleaved: pairs (x0, x1) by a0 and (x2, x3) by a1, written as (rotated evens, rotated odds).
  const auto inter = torch::tensor({1 * c0 - 2 * s0, 3 * c1 - 4 * s1, 2 * c0 + 1 * s0, 4 * c1 + 3 * s1},
                                   torch::kDouble);
  expect_close(rope_reference(x, cos, sin, RopeLayout::interleaved).view({4}), inter, 1e-12, 1e-12, "interleaved");
}

TEST(Rope, RotationPreservesTheNormAndBackwardInvertsIt) {
  torch::manual_seed(1);
  const auto [cos, sin] = rope_tables(2, 5, 8);
  const auto x = torch::randn({2, 3, 5, 8}, torch::kDouble);
  for (auto layout : {RopeLayout::rotate_half, RopeLayout::interleaved}) {
    const auto y = rope_forward(x, cos, sin, layout);
    expect_close(y.pow(2).sum(-1), x.pow(2).sum(-1), 1e-12, 1e-12, "norm");
    // The backward of an orthogonal map is its inverse.
    expect_close(rope_backward(y, cos, sin, layout), x, 1e-12, 1e-12, "inverse");
  }
}

TEST(Rope, ExplicitBackwardMatchesFiniteDifferences) {
  torch::manual_seed(2);
  // Scaled tables (YaRN's attention_scaling) and a batch-1 table broadcast over B.
  auto [cos, sin] = rope_tables(1, 3, 6);
  cos = cos * 1.3;
  sin = sin * 1.3;
  for (auto layout : {RopeLayout::rotate_half, RopeLayout::interleaved}) {
    const auto x = torch::randn({2, 2, 3, 6}, torch::kDouble).requires_grad_();
    const auto w = torch::randn({2, 2, 3, 6}, torch::kDouble);
    (rope(x, cos, sin, layout) * w).sum().backward();  // the custom Function: explicit backward
    torch::NoGradGuard no_grad;
    const auto x0 = x.detach().clone();
    const double h = 1e-6;
    for (int64_t i = 0; i < x0.numel(); ++i) {
      auto xp = x0.clone(), xm = x0.clone();
      xp.view({-1})[i] += h;
      xm.view({-1})[i] -= h;
      const double fd =
          ((rope_reference(xp, cos, sin, layout) - rope_reference(xm, cos, sin, layout)) * w).sum().item<double>() /
          (2 * h);
      EXPECT_NEAR(x.grad().view({-1})[i].item<double>(), fd, 1e-7) << "element " << i;
    }
  }
}

TEST(Rope, RejectsBadShapes) {
  const auto [cos, sin] = rope_tables(1, 3, 6);
  EXPECT_THROW(rope_reference(torch::ones({1, 2, 3, 5}, torch::kDouble), cos, sin, RopeLayout::rotate_half),
               c10::Error);
  EXPECT_THROW(rope_forward(torch::ones({1, 2, 4, 6}, torch::kDouble), cos, sin, RopeLayout::interleaved), c10::Error);
  EXPECT_THROW(rope_forward(torch::ones({2, 3, 6}, torch::kDouble), cos, sin, RopeLayout::interleaved), c10::Error);
}

TEST(Rope, ModelApplicationRoutesThroughTheFusedOp) {
  torch::manual_seed(3);
  const auto [cos, sin] = rope_tables(2, 4, 8, torch::kFloat);
  const auto x = torch::randn({2, 3, 4, 8});
  const auto xr = x.clone().requires_grad_(), xf = x.clone().requires_grad_();
  const auto yr = model::apply_rope_interleaved(xr, cos, sin, model::KernelBackend::reference);
  const auto yf = model::apply_rope_interleaved(xf, cos, sin, model::KernelBackend::cuda);
  EXPECT_TRUE(torch::equal(yr, yf));
  EXPECT_NE(yf.grad_fn()->name().find("RopeFunction"), std::string::npos) << yf.grad_fn()->name();
  EXPECT_TRUE(torch::equal(model::apply_rope_rotate_half(x, cos, sin, model::KernelBackend::cuda),
                           model::apply_rope_rotate_half(x, cos, sin)));
  yr.pow(2).sum().backward();
  yf.pow(2).sum().backward();
  expect_close(xf.grad(), xr.grad(), 1e-5, 1e-5, "grad_x");
}

// A dense rotate-half model (Qwen2) with kernels: cuda on CPU: the same logits (the fused forwards
// are the references) and the same gradients up to float32 rounding.
TEST(Rope, Qwen2ModelWithFusedKernelsMatchesReference) {
  auto cfg = model::test::tiny_qwen2();
  cfg.kernels = model::KernelBackend::reference;
  torch::manual_seed(4);
  model::CausalLM reference(cfg);
  cfg.kernels = model::KernelBackend::cuda;
  torch::manual_seed(4);
  model::CausalLM fused(cfg);
  const auto batch = model::test::ragged_batch(cfg.vocab_size, 2, 6);
  const auto lr = reference->forward(batch.ids, batch.positions, batch.mask).logits;
  const auto lf = fused->forward(batch.ids, batch.positions, batch.mask).logits;
  EXPECT_TRUE(torch::equal(lr, lf));
  lr.pow(2).mean().backward();
  lf.pow(2).mean().backward();
  test::expect_same_grads(*fused, *reference, 1e-5, 1e-4);
}

}  // namespace
}  // namespace grpo::kernels
