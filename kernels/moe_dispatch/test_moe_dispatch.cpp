// MoE dispatch: permute/unpermute and the grouped expert GEMM against hand-computed values (with
// empty experts and zero tokens), their explicit backwards (through the autograd functions) against
// float64 finite differences, the MoE layer and a DeepSeek-V3 model with kernels: cuda on CPU
// against the reference loop, and on a GPU the MoE layer with kernels against the reference loop.
// The CUDA kernels against the references over routings, shapes and dtypes are the moe_permute,
// moe_unpermute and grouped_linear rows of tests/kernels/test_kernel_ops.cpp.
#include "grpo/kernels/moe_dispatch.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "grpo/model/causal_lm.h"
#include "grpo/model/moe.h"
#include "grpo/version.h"
#include "kernels/kernel_test_util.h"
#include "model/model_test_util.h"

namespace grpo::kernels {
namespace {

using test::expect_close;
using test::finite_differences;
using test::sort_pairs;

// N = 3 tokens, K = 2: experts [[1, 0], [2, 1], [0, 2]] -> flat [1, 0, 2, 1, 0, 2]; sorted by
// expert: pairs 1, 4 (expert 0), 0, 3 (expert 1), 2, 5 (expert 2).
const torch::Tensor kExperts = torch::tensor({1, 0, 2, 1, 0, 2}, torch::kLong).view({3, 2});

TEST(MoeDispatch, PermuteAndUnpermuteMatchHandComputedValues) {
  const auto [order, offsets] = sort_pairs(kExperts, 3);
  EXPECT_TRUE(torch::equal(order, torch::tensor({1, 4, 0, 3, 2, 5}, torch::kLong)));
  EXPECT_TRUE(torch::equal(offsets, torch::tensor({0, 2, 4, 6}, torch::kLong)));
  const auto x = torch::tensor({1.0, 10.0, 2.0, 20.0, 3.0, 30.0}, torch::kDouble).view({3, 2});
  const auto xs = moe_permute_forward(x, order, 2);
  // Token of each sorted pair: [0, 2, 0, 1, 1, 2].
  const auto want_xs =
      torch::tensor({1.0, 10.0, 3.0, 30.0, 1.0, 10.0, 2.0, 20.0, 2.0, 20.0, 3.0, 30.0}, torch::kDouble).view({6, 2});
  EXPECT_TRUE(torch::equal(xs, want_xs));
  // Expert outputs: sorted row i scaled by i + 1. Token 0: 0.5 * 3 x0 + 0.25 * 1 x0 = 1.75 x0;
  // token 1: 1 * 5 x1 + 2 * 4 x1 = 13 x1; token 2: 3 * 2 x2 - 1 * 6 x2 = 0.
  const auto ys = xs * torch::arange(1, 7, torch::kDouble).unsqueeze(1);
  const auto weight = torch::tensor({0.5, 0.25, 1.0, 2.0, 3.0, -1.0}, torch::kDouble).view({3, 2});
  const auto want_y = torch::tensor({1.75, 17.5, 26.0, 260.0, 0.0, 0.0}, torch::kDouble).view({3, 2});
  expect_close(moe_unpermute_forward(ys, weight, order, 2), want_y, 1e-12, 1e-12, "unpermute");
  // Float32 combine weights with bf16 rows, as the model has them.
  expect_close(moe_unpermute_reference(ys.to(torch::kBFloat16), weight.to(torch::kFloat), order, 2), want_y, 1e-6, 1e-6,
               "unpermute bf16");
}

TEST(MoeDispatch, GroupedLinearMatchesPerRowProducts) {
  torch::manual_seed(1);
  // Experts 0 and 2 own rows 0..1 and 2; expert 1 is empty.
  const auto offsets = torch::tensor({0, 2, 2, 3}, torch::kLong);
  const auto xs = torch::randn({3, 4}, torch::kDouble);
  const auto w = torch::randn({3, 5, 4}, torch::kDouble);
  const auto y = grouped_linear_forward(xs, w, offsets);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{3, 5}));
  const int64_t expert_of_row[3] = {0, 0, 2};
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t o = 0; o < 5; ++o) {
      double sum = 0;
      for (int64_t k = 0; k < 4; ++k) sum += w[expert_of_row[i]][o][k].item<double>() * xs[i][k].item<double>();
      EXPECT_NEAR(y[i][o].item<double>(), sum, 1e-12) << "row " << i << " out " << o;
    }
  }
  const auto [grad_xs, grad_w] = grouped_linear_backward(torch::ones({3, 5}, torch::kDouble), xs, w, offsets);
  EXPECT_TRUE(torch::equal(grad_w[1], torch::zeros({5, 4}, torch::kDouble))) << "empty expert";
  expect_close(grad_xs[2], w[2].sum(0), 1e-12, 1e-12, "grad_xs row 2");
}

TEST(MoeDispatch, ZeroTokens) {
  const auto x = torch::zeros({0, 8});
  const auto order = torch::zeros({0}, torch::kLong);
  EXPECT_EQ(moe_permute(x, order, 2).sizes(), (std::vector<int64_t>{0, 8}));
  EXPECT_EQ(moe_unpermute(torch::zeros({0, 8}), torch::zeros({0, 2}), order, 2).sizes(), (std::vector<int64_t>{0, 8}));
  const auto offsets = torch::zeros({4}, torch::kLong);
  EXPECT_EQ(grouped_linear(x, torch::ones({3, 5, 8}), offsets).sizes(), (std::vector<int64_t>{0, 5}));
  const auto [gx, gw] = grouped_linear_backward(torch::zeros({0, 5}), x, torch::ones({3, 5, 8}), offsets);
  EXPECT_TRUE(torch::equal(gw, torch::zeros({3, 5, 8})));
}

TEST(MoeDispatch, RejectsBadInputs) {
  const auto order = torch::tensor({1, 0, 2, 3}, torch::kLong);
  EXPECT_THROW(moe_permute_forward(torch::ones({3, 2}), order, 3), c10::Error);  // 4 % 3 != 0
  EXPECT_THROW(moe_unpermute_forward(torch::ones({4, 2}), torch::ones({2, 3}), order, 2), c10::Error);
  // Offsets must end at M and never decrease.
  EXPECT_THROW(grouped_linear_forward(torch::ones({3, 4}), torch::ones({2, 5, 4}), torch::tensor({0, 1, 2})),
               c10::Error);
  EXPECT_THROW(grouped_linear_forward(torch::ones({3, 4}), torch::ones({2, 5, 4}), torch::tensor({0, 4, 3})),
               c10::Error);
  EXPECT_THROW(grouped_linear_forward(torch::ones({3, 4}), torch::ones({2, 5, 3}), torch::tensor({0, 1, 3})),
               c10::Error);
}

TEST(MoeDispatch, ExplicitBackwardsMatchFiniteDifferences) {
  torch::manual_seed(2);
  const auto [order, offsets] = sort_pairs(kExperts, 3);
  const auto x = torch::randn({3, 4}, torch::kDouble);
  const auto ys = torch::randn({6, 4}, torch::kDouble);
  const auto weight = torch::rand({3, 2}, torch::kDouble);
  const auto w = torch::randn({3, 5, 4}, torch::kDouble);
  const auto g4 = torch::randn({6, 4}, torch::kDouble), g3 = torch::randn({3, 4}, torch::kDouble);
  const auto g5 = torch::randn({6, 5}, torch::kDouble);

  const auto xv = x.clone().requires_grad_();
  (moe_permute(xv, order, 2) * g4).sum().backward();
  expect_close(
      xv.grad(),
      finite_differences(
          [&](const torch::Tensor& t) { return (moe_permute_reference(t, order, 2) * g4).sum().item<double>(); }, x),
      1e-7, 1e-7, "permute grad_x");

  const auto ysv = ys.clone().requires_grad_(), wv = weight.clone().requires_grad_();
  (moe_unpermute(ysv, wv, order, 2) * g3).sum().backward();
  expect_close(ysv.grad(),
               finite_differences(
                   [&](const torch::Tensor& t) {
                     return (moe_unpermute_reference(t, weight, order, 2) * g3).sum().item<double>();
                   },
                   ys),
               1e-7, 1e-7, "unpermute grad_ys");
  expect_close(
      wv.grad(),
      finite_differences(
          [&](const torch::Tensor& t) { return (moe_unpermute_reference(ys, t, order, 2) * g3).sum().item<double>(); },
          weight),
      1e-7, 1e-7, "unpermute grad_weight");

  const auto xsv = ys.clone().requires_grad_(), w3 = w.clone().requires_grad_();
  (grouped_linear(xsv, w3, offsets) * g5).sum().backward();
  expect_close(
      xsv.grad(),
      finite_differences(
          [&](const torch::Tensor& t) { return (grouped_linear_reference(t, w, offsets) * g5).sum().item<double>(); },
          ys),
      1e-7, 1e-7, "grouped grad_xs");
  expect_close(
      w3.grad(),
      finite_differences(
          [&](const torch::Tensor& t) { return (grouped_linear_reference(ys, t, offsets) * g5).sum().item<double>(); },
          w),
      1e-7, 1e-7, "grouped grad_weight");
}

// The MoE layer with kernels: cuda on CPU (fused ops running their references) against the
// reference loop: the same output, gradients equal up to float32 rounding.
TEST(MoeDispatch, MoeLayerWithFusedKernelsMatchesReferenceLoop) {
  auto cfg = model::test::tiny_dsv3();
  cfg.kernels = model::KernelBackend::reference;
  torch::manual_seed(5);
  model::Moe reference(cfg);
  cfg.kernels = model::KernelBackend::cuda;
  torch::manual_seed(5);
  model::Moe fused(cfg);
  const auto x = torch::randn({2, 7, cfg.hidden_size});
  const auto yr = reference(x), yf = fused(x);
  // The same ATen ops on the same numbers, but the GEMMs see slices of one buffer instead of
  // separate tensors: the BLAS may block them differently, so equal up to float32 rounding.
  expect_close(yf, yr, 1e-6, 1e-5, "forward");
  yr.pow(2).sum().backward();
  yf.pow(2).sum().backward();
  test::expect_same_grads(*fused, *reference, 1e-5, 1e-4);
}

// DeepSeek-V3 (MLA with interleaved RoPE, MoE, MTP) end to end with kernels: cuda on CPU.
TEST(MoeDispatch, DeepSeekModelWithFusedKernelsMatchesReference) {
  auto cfg = model::test::tiny_dsv3();
  cfg.kernels = model::KernelBackend::reference;
  torch::manual_seed(6);
  model::CausalLM reference(cfg);
  cfg.kernels = model::KernelBackend::cuda;
  torch::manual_seed(6);
  model::CausalLM fused(cfg);
  const auto batch = model::test::ragged_batch(cfg.vocab_size, 2, 6);
  const auto lr = reference->forward(batch.ids, batch.positions, batch.mask).logits;
  const auto lf = fused->forward(batch.ids, batch.positions, batch.mask).logits;
  expect_close(lf, lr, 1e-5, 1e-5, "logits");
  lr.pow(2).mean().backward();
  lf.pow(2).mean().backward();
  const auto fused_params = fused->named_parameters();
  for (const auto& item : reference->named_parameters()) {
    const auto& name = item.key();
    const auto& p = item.value();
    if (!p.grad().defined()) continue;  // MTP modules get no gradient from the main logits
    expect_close(fused_params[name].grad(), p.grad(), 1e-5, 1e-4, name);
  }
}

TEST(MoeDispatchCuda, MoeLayerMatchesReferenceLoop) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  if (!GRPO_WITH_CUDA_KERNELS) GTEST_SKIP() << "built without CUDA kernels";
  auto cfg = model::test::tiny_dsv3();
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA);
    cfg.kernels = model::KernelBackend::reference;
    torch::manual_seed(7);
    model::Moe reference(cfg, opts);
    cfg.kernels = model::KernelBackend::cuda;
    torch::manual_seed(7);
    model::Moe fused(cfg, opts);
    const auto x = torch::randn({3, 11, cfg.hidden_size}, opts);
    const auto yr = reference(x), yf = fused(x);
    const double tol = dtype == torch::kFloat ? 1e-4 : 3e-2;
    expect_close(yf, yr, tol, tol, "forward");
    yr.to(torch::kFloat).pow(2).sum().backward();
    yf.to(torch::kFloat).pow(2).sum().backward();
    const auto fused_params = fused->named_parameters();
    for (const auto& item : reference->named_parameters()) {
      expect_close(fused_params[item.key()].grad(), item.value().grad(), tol * 10, tol * 3, item.key());
    }
  }
}

}  // namespace
}  // namespace grpo::kernels
