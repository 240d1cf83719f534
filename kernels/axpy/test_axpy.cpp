// axpy: the reference against hand-computed values and its input checks. The CUDA kernel against
// the reference over shapes and dtypes (bit for bit) is the axpy row of tests/kernels/test_kernel_ops.cpp.
#include "grpo/kernels/axpy.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

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

}  // namespace
}  // namespace grpo::kernels
