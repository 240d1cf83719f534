// Shared by the kernels' tests (rms_norm, rope, swiglu, moe_dispatch, token_logprobs).
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

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
  EXPECT_TRUE(torch::allclose(g, w, rtol, atol)) << what << ": max abs err " << max_abs << ", max rel err "
                                                 << max_rel;
}

// Every parameter's gradient of `fused` close to the same-named one of `reference` (two copies of
// one module run through different kernel paths).
inline void expect_same_grads(torch::nn::Module& fused, torch::nn::Module& reference, double atol, double rtol) {
  const auto fused_params = fused.named_parameters();
  for (const auto& item : reference.named_parameters()) {
    expect_close(fused_params[item.key()].grad(), item.value().grad(), atol, rtol, item.key());
  }
}

}  // namespace grpo::kernels::test
