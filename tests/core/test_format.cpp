#include "grpo/core/format.h"

#include <gtest/gtest.h>

#include <stdexcept>

namespace grpo {
namespace {

TEST(Format, SubstitutesInOrder) {
  EXPECT_EQ(format("step {} of {}: {}", 3, 10, "ok"), "step 3 of 10: ok");
  EXPECT_EQ(format("no fields"), "no fields");
  EXPECT_EQ(format("{}", true), "true");
  EXPECT_EQ(format("{{}} {}", 1), "{} 1");
}

TEST(Format, Precision) {
  EXPECT_EQ(format("{:.4f}", 0.5), "0.5000");
  EXPECT_EQ(format("{:.2e}", 12345.0), "1.23e+04");
  EXPECT_EQ(format("{:.3g}", 3.14159), "3.14");
}

TEST(Format, Width) {
  EXPECT_EQ(format("[{:5}]", 42), "[   42]");
  EXPECT_EQ(format("[{:<5}]", 42), "[42   ]");
  EXPECT_EQ(format("[{:8.2f}]", 3.14159), "[    3.14]");
}

TEST(Format, MismatchesThrow) {
  EXPECT_THROW(format("{} {}", 1), std::invalid_argument);
  EXPECT_THROW(format("{}", 1, 2), std::invalid_argument);
  EXPECT_THROW(format("{", 1), std::invalid_argument);
  EXPECT_THROW(format("}"), std::invalid_argument);
  EXPECT_THROW(format("{:x}", 1), std::invalid_argument);
}

}  // namespace
}  // namespace grpo
