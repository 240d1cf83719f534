// Fused RMSNorm: the reference against hand-computed values (HF rounding of the normalised value),
// the explicit backward against float64 finite differences and against ATen's autograd of the
// reference, the model's RMSNorm routed through the fused op on CPU. The CUDA kernels against the
// references over shapes and dtypes are the rms_norm row of tests/kernels/test_kernel_ops.cpp.
#include "grpo/kernels/rms_norm.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "grpo/model/layers.h"
#include "grpo/model/model_config.h"
#include "kernels/kernel_test_util.h"

namespace grpo::kernels {
namespace {

using test::expect_close;

TEST(RmsNorm, ReferenceMatchesHandComputedValues) {
  const auto x = torch::tensor({{1.0f, 2.0f, 3.0f, 4.0f}, {-2.0f, 0.0f, 0.0f, 2.0f}});
  const auto w = torch::tensor({1.0f, 0.5f, 2.0f, -1.0f});
  const double eps = 0.01;
  // Row 0: mean of squares 7.5; row 1: 2.
  const double r0 = 1.0 / std::sqrt(7.5 + eps), r1 = 1.0 / std::sqrt(2.0 + eps);
  const auto want = torch::tensor({{1.0 * r0, 0.5 * 2 * r0, 2.0 * 3 * r0, -4.0 * r0}, {-2.0 * r1, 0.0, 0.0, -2.0 * r1}},
                                  torch::kDouble);
  expect_close(rms_norm_reference(x, w, eps), want, 1e-6, 1e-6, "float32");
}

TEST(RmsNorm, ReferenceRoundsTheNormalisedValueBeforeTheWeight) {
  // HF casts x * r to the input dtype before the weight multiplies: two roundings in bf16.
  // x = [1, 2, 3, 5]: mean of squares 9.75, n0 = 1 / sqrt(9.75) = 0.320256 -> bf16 0.3203125;
  // 7 * 0.3203125 = 2.2421875 -> bf16 2.25 (tie to even). Rounding once, 7 * 0.320256 = 2.24179
  // would give 2.234375.
  const auto x = torch::tensor({{1.0f, 2.0f, 3.0f, 5.0f}}).to(torch::kBFloat16);
  const auto w = torch::full({4}, 7.0, torch::kBFloat16);
  const auto got = rms_norm_reference(x, w, 1e-6);
  EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(got[0][0].item<float>(), 2.25f);
}

TEST(RmsNorm, ExplicitBackwardMatchesFiniteDifferences) {
  torch::manual_seed(1);
  const double eps = 1e-5;
  const auto x = torch::randn({3, 5}, torch::kDouble).requires_grad_();
  const auto w = (torch::rand({5}, torch::kDouble) + 0.5).requires_grad_();
  const auto g = torch::randn({3, 5}, torch::kDouble);
  (rms_norm(x, w, eps) * g).sum().backward();  // the custom Function: explicit backward on CPU
  // The reference computes in float32 (HF), so finite differences resolve about 1e-4.
  const double h = 1e-3;
  auto loss = [&](const torch::Tensor& xv, const torch::Tensor& wv) {
    return (rms_norm_reference(xv, wv, eps) * g).sum().item<double>();
  };
  torch::NoGradGuard no_grad;
  const auto x0 = x.detach().clone(), w0 = w.detach().clone();
  for (int64_t i = 0; i < x0.numel(); ++i) {
    auto xp = x0.clone(), xm = x0.clone();
    xp.view({-1})[i] += h;
    xm.view({-1})[i] -= h;
    const double fd = (loss(xp, w0) - loss(xm, w0)) / (2 * h);
    EXPECT_NEAR(x.grad().view({-1})[i].item<double>(), fd, 2e-3) << "grad_x element " << i;
  }
  for (int64_t i = 0; i < w0.numel(); ++i) {
    auto wp = w0.clone(), wm = w0.clone();
    wp[i] += h;
    wm[i] -= h;
    const double fd = (loss(x0, wp) - loss(x0, wm)) / (2 * h);
    EXPECT_NEAR(w.grad()[i].item<double>(), fd, 2e-3) << "grad_weight element " << i;
  }
}

TEST(RmsNorm, ExplicitBackwardMatchesAutogradOfTheReference) {
  torch::manual_seed(2);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const auto x = torch::randn({2, 3, 33}).to(dtype).requires_grad_();
    const auto w = torch::randn({33}).to(dtype).requires_grad_();
    const auto g = torch::randn({2, 3, 33}).to(dtype);
    const auto [gx, gw] = rms_norm_backward_reference(g, x.detach(), w.detach(), 1e-6);
    (rms_norm_reference(x, w, 1e-6) * g).sum().backward();
    const double tol = dtype == torch::kFloat ? 1e-5 : 3e-2;
    expect_close(gx, x.grad(), tol, tol, "grad_x");
    expect_close(gw, w.grad(), tol * 4, tol, "grad_weight");
  }
}

TEST(RmsNorm, RejectsMismatchedInputs) {
  EXPECT_THROW(rms_norm_reference(torch::ones({2, 4}), torch::ones({3}), 1e-6), c10::Error);
  EXPECT_THROW(rms_norm_reference(torch::ones({2, 4}, torch::kInt), torch::ones({4}), 1e-6), c10::Error);
  EXPECT_THROW(rms_norm_backward_reference(torch::ones({2, 3}), torch::ones({2, 4}), torch::ones({4}), 1e-6),
               c10::Error);
}

TEST(RmsNorm, ModelNormRoutesThroughTheFusedOp) {
  torch::manual_seed(3);
  model::RMSNorm reference(16, 1e-6, torch::TensorOptions());
  model::RMSNorm fused(16, 1e-6, torch::TensorOptions());
  reference->kernel_backend = model::KernelBackend::reference;
  fused->kernel_backend = model::KernelBackend::cuda;  // CPU tensors: the explicit references
  {
    torch::NoGradGuard no_grad;
    reference->weight.copy_(torch::randn({16}));
    fused->weight.copy_(reference->weight);
  }
  const auto x = torch::randn({4, 16});
  const auto xr = x.clone().requires_grad_(), xf = x.clone().requires_grad_();
  const auto yr = reference(xr), yf = fused(xf);
  EXPECT_TRUE(torch::equal(yr, yf));  // the same forward
  EXPECT_FALSE(yf.grad_fn()->name().find("RmsNormFunction") == std::string::npos) << yf.grad_fn()->name();
  yr.pow(2).sum().backward();
  yf.pow(2).sum().backward();
  expect_close(xf.grad(), xr.grad(), 1e-5, 1e-5, "grad_x");
  expect_close(fused->weight.grad(), reference->weight.grad(), 1e-5, 1e-5, "grad_weight");
}

// The `kernels` key of a model preset selects the implementation; unknown names are rejected.
TEST(RmsNorm, ModelConfigKernelsKeyIsReadAndValidated) {
  const auto dir = std::filesystem::temp_directory_path() / ("grpo_kernels_key_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string preset = std::string(GRPO_SOURCE_DIR) + "/configs/models/tiny_dsv3.yaml";
  auto write = [&](const std::string& name, const std::string& line) {
    std::ifstream in(preset);
    std::stringstream text;
    text << in.rdbuf() << "\n" << line << "\n";
    const auto path = (dir / name).string();
    std::ofstream(path) << text.str();
    return path;
  };
  EXPECT_EQ(model::load_model_config(preset).kernels, model::KernelBackend::automatic);  // default
  EXPECT_EQ(model::load_model_config(write("ref.yaml", "kernels: reference")).kernels, model::KernelBackend::reference);
  EXPECT_EQ(model::load_model_config(write("cuda.yaml", "kernels: cuda")).kernels, model::KernelBackend::cuda);
  EXPECT_ANY_THROW(model::load_model_config(write("bad.yaml", "kernels: fast")));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace grpo::kernels
