// axpy: the reference against hand-computed values on CPU, and the CUDA kernel against the
// reference over shapes and dtypes when a GPU is present (bit-exact: both round once).
#include "grpo/kernels/axpy.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "grpo/version.h"

namespace grpo::kernels {
namespace {

TEST(Axpy, ReferenceMatchesHandComputedValues) {
  const auto x = torch::tensor({1.0f, -2.0f, 0.5f});
  const auto y = torch::tensor({10.0f, 20.0f, 30.0f});
  const auto out = axpy(2.0, x, y);
  EXPECT_TRUE(torch::equal(out, torch::tensor({12.0f, 16.0f, 31.0f})));
}

TEST(Axpy, ReferenceRoundsOnceForLowPrecision) {
  // 3 * -0.43359375 + 0.55078125 = -0.75 exactly. Rounding 3 * x to bf16 first (-1.3046875) and
  // then adding gives -0.74609375; computing in float32 and rounding once gives -0.75.
  const auto x = torch::full({4}, -0.43359375, torch::kBFloat16);
  const auto y = torch::full({4}, 0.55078125, torch::kBFloat16);
  EXPECT_TRUE(torch::equal(axpy_reference(3.0, x, y), torch::full({4}, -0.75, torch::kBFloat16)));
  EXPECT_TRUE(torch::equal(x * 3.0 + y, torch::full({4}, -0.74609375, torch::kBFloat16)));
}

TEST(Axpy, RejectsMismatchedInputs) {
  const auto x = torch::ones({3});
  EXPECT_THROW(axpy(1.0, x, torch::ones({4})), c10::Error);
  EXPECT_THROW(axpy(1.0, x, torch::ones({3}, torch::kDouble)), c10::Error);
  EXPECT_THROW(axpy(1.0, torch::ones({3}, torch::kInt), torch::ones({3}, torch::kInt)), c10::Error);
}

TEST(AxpyCuda, MatchesReferenceOverShapesAndDtypes) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  if (!GRPO_WITH_CUDA_KERNELS) GTEST_SKIP() << "built without CUDA kernels";
  torch::manual_seed(0);
  for (auto dtype : {torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16}) {
    for (std::vector<int64_t> shape : {std::vector<int64_t>{0}, {1}, {7}, {1000, 3}, {3, 1 << 20}}) {
      const auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA);
      const auto x = torch::randn(shape, opts);
      const auto y = torch::randn(shape, opts);
      const auto got = axpy(-1.5, x, y);
      const auto want = axpy_reference(-1.5, x, y);
      EXPECT_TRUE(torch::equal(got, want)) << "dtype " << dtype << " shape " << x.sizes();
    }
  }
  // Non-contiguous input.
  const auto x = torch::randn({64, 64}, torch::kCUDA).t();
  const auto y = torch::randn({64, 64}, torch::kCUDA);
  EXPECT_TRUE(torch::equal(axpy(3.0, x, y), axpy_reference(3.0, x, y)));
}

}  // namespace
}  // namespace grpo::kernels
