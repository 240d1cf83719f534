// Shared by the kernels' tests: the ops' own tests in kernels/<op>/test_<op>.cpp and the
// table-driven harness tests/kernels/test_kernel_ops.cpp.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>

namespace grpo::kernels::test {

// got vs want within atol + rtol * |want| (torch::allclose in float64); a failure names `what` and
// carries the max abs and max rel errors.
inline void expect_close(const torch::Tensor& got, const torch::Tensor& want, double atol, double rtol,
                         const std::string& what) {
  ASSERT_TRUE(got.defined()) << what << ": undefined";
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  if (got.numel() == 0) return;
  const auto g = got.detach().to(torch::kCPU, torch::kDouble);
  const auto w = want.detach().to(torch::kCPU, torch::kDouble);
  const auto diff = (g - w).abs();
  const double max_abs = diff.max().item<double>();
  const double max_rel = (diff / w.abs().clamp_min(1e-12)).max().item<double>();
  EXPECT_TRUE(torch::allclose(g, w, rtol, atol)) << what << ": max abs err " << max_abs << ", max rel err " << max_rel;
}

// Every parameter's gradient of `fused` close to the same-named one of `reference` (two copies of
// one module run through different kernel paths).
inline void expect_same_grads(torch::nn::Module& fused, torch::nn::Module& reference, double atol, double rtol) {
  const auto fused_params = fused.named_parameters();
  for (const auto& item : reference.named_parameters()) {
    expect_close(fused_params[item.key()].grad(), item.value().grad(), atol, rtol, item.key());
  }
}

// Central differences of f (a scalar function of one tensor) at x, element by element, with step h.
// The result is contiguous and has x's shape and dtype.
inline torch::Tensor finite_differences(const std::function<double(const torch::Tensor&)>& f, const torch::Tensor& x,
                                        double h = 1e-6) {
  torch::NoGradGuard no_grad;
  const auto x0 = x.detach().contiguous();
  auto out = torch::zeros_like(x0);
  for (int64_t i = 0; i < x0.numel(); ++i) {
    auto xp = x0.clone(), xm = x0.clone();
    xp.view({-1})[i] += h;
    xm.view({-1})[i] -= h;
    out.view({-1})[i] = (f(xp) - f(xm)) / (2 * h);
  }
  return out;
}

// MoE routing: the stable argsort `order` [M] of the flat expert indices (expert_index [N, K]) and
// the offsets [E+1] (CPU int64) of each expert's rows in sorted order.
inline std::pair<torch::Tensor, torch::Tensor> sort_pairs(const torch::Tensor& expert_index, int64_t experts) {
  const auto flat = expert_index.reshape({-1});
  const auto order = std::get<1>(flat.sort(/*stable=*/true, 0, false));
  const auto counts = torch::bincount(flat.cpu(), {}, experts);
  return {order, torch::cat({torch::zeros({1}, torch::kLong), counts.cumsum(0)})};
}

// RoPE cos/sin tables as RotaryEmbedding builds them, [batch, seq, width]: angle[b, t, j] =
// position * freq[j] with both halves equal; batch b's positions start at 3b. Computed in float64,
// returned as `dtype`.
inline std::pair<torch::Tensor, torch::Tensor> rope_tables(int64_t batch, int64_t seq, int64_t width,
                                                           torch::ScalarType dtype = torch::kDouble) {
  const auto freq = 1.0 / torch::pow(100.0, torch::arange(0, width, 2, torch::kDouble) / width);  // [R/2]
  const auto pos = torch::arange(seq, torch::kDouble).unsqueeze(0).expand({batch, seq}) +
                   torch::arange(batch, torch::kDouble).unsqueeze(1) * 3;  // [B, T]
  const auto angle = pos.unsqueeze(-1) * freq;                             // [B, T, R/2]
  const auto emb = torch::cat({angle, angle}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

}  // namespace grpo::kernels::test
