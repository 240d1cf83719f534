#include "grpo/core/progress.h"

#include <gtest/gtest.h>

#include <thread>

namespace grpo {
namespace {

TEST(Progress, FormatsDurations) {
  EXPECT_EQ(Progress::format_duration(0), "0s");
  EXPECT_EQ(Progress::format_duration(59.4), "59s");
  EXPECT_EQ(Progress::format_duration(245), "4m05s");
  EXPECT_EQ(Progress::format_duration(7380), "2h03m");
  EXPECT_EQ(Progress::format_duration(-1), "?");
}

TEST(Progress, LogsFirstDueAndLastSteps) {
  Progress p("sft", 4, /*interval_seconds=*/3600);
  EXPECT_TRUE(p.update(1, "loss 1.0"));  // first
  EXPECT_FALSE(p.update(2));             // not due
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(p.update(3));
  EXPECT_GT(p.rate(), 0.0);
  EXPECT_GT(p.eta_seconds(3), 0.0);
  const std::string line = p.line(3, "loss 0.5");
  EXPECT_EQ(line.rfind("sft 3/4 (75.0%) | ", 0), 0u) << line;
  EXPECT_NE(line.find(" step/s | elapsed "), std::string::npos) << line;
  EXPECT_NE(line.find(" | loss 0.5"), std::string::npos) << line;
  EXPECT_TRUE(p.update(4));  // last
}

TEST(Progress, RejectsEmptyTotal) { EXPECT_THROW(Progress("x", 0, 1.0), std::invalid_argument); }

}  // namespace
}  // namespace grpo
