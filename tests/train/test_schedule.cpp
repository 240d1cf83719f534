// Learning-rate schedules against HF transformers' own values.
//
// The literals below were printed by transformers 5.23.0 (torch 2.11.0), with the learning rate an
// HF Trainer uses for optimizer step k (LambdaLR before its k-th scheduler.step()):
//
//   import torch; from transformers import optimization as o, TrainingArguments
//   def run(make, total):
//       p = torch.nn.Parameter(torch.zeros(1)); opt = torch.optim.SGD([p], lr=1e-4)
//       s = make(opt); out = []
//       for k in range(total):
//           out.append(s.get_last_lr()[0]); opt.step(); s.step()
//       return out
//   run(lambda opt: o.get_cosine_schedule_with_warmup(opt, 3, 10), 10)
//   run(lambda opt: o.get_cosine_schedule_with_warmup(opt, 0, 5), 5)
//   run(lambda opt: o.get_cosine_with_min_lr_schedule_with_warmup(opt, 2, 8, min_lr_rate=0.1), 8)
//   run(lambda opt: o.get_linear_schedule_with_warmup(opt, 3, 10), 10)
//   run(lambda opt: o.get_constant_schedule_with_warmup(opt, 4), 10)
//   TrainingArguments(output_dir="/tmp/x", warmup_steps=0.25).get_warmup_steps(10)  # 3
//   TrainingArguments(output_dir="/tmp/x", warmup_steps=0.25).get_warmup_steps(7)   # 2
#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/train/schedule.h"

namespace grpo::train {
namespace {

constexpr double kPeak = 1e-4;

void expect_schedule(const ScheduleConfig& cfg, int64_t total, const std::vector<double>& hf) {
  ASSERT_EQ(static_cast<int64_t>(hf.size()), total);
  for (int64_t step = 0; step < total; ++step) {
    EXPECT_DOUBLE_EQ(lr_at(cfg, kPeak, step, total), hf[step]) << cfg.kind << " step " << step;
  }
}

TEST(Schedule, CosineWithWarmupMatchesHf) {
  ScheduleConfig cfg;
  cfg.warmup_steps = 3;
  expect_schedule(cfg, 10,
                  {0.0, 3.3333333333333335e-05, 6.666666666666667e-05, 0.0001, 9.504844339512095e-05,
                   8.117449009293668e-05, 6.112604669781572e-05, 3.887395330218429e-05, 1.8825509907063327e-05,
                   4.951556604879048e-06});
}

TEST(Schedule, CosineWithoutWarmupMatchesHf) {
  ScheduleConfig cfg;
  expect_schedule(
      cfg, 5, {0.0001, 9.045084971874738e-05, 6.545084971874738e-05, 3.4549150281252636e-05, 9.549150281252633e-06});
}

TEST(Schedule, CosineWithMinLrMatchesHf) {
  ScheduleConfig cfg;
  cfg.warmup_steps = 2;
  cfg.min_lr_ratio = 0.1;
  expect_schedule(cfg, 8,
                  {0.0, 5e-05, 0.0001, 9.397114317029975e-05, 7.75e-05, 5.500000000000001e-05, 3.250000000000001e-05,
                   1.602885682970026e-05});
  // Past the last step the schedule stays at its end value, min_lr_ratio * peak.
  EXPECT_DOUBLE_EQ(lr_at(cfg, kPeak, 8, 8), 1e-5);
  EXPECT_DOUBLE_EQ(lr_at(cfg, kPeak, 20, 8), 1e-5);
}

TEST(Schedule, LinearWithWarmupMatchesHf) {
  ScheduleConfig cfg;
  cfg.kind = "linear";
  cfg.warmup_steps = 3;
  expect_schedule(cfg, 10,
                  {0.0, 3.3333333333333335e-05, 6.666666666666667e-05, 0.0001, 8.571428571428571e-05,
                   7.142857142857143e-05, 5.714285714285714e-05, 4.2857142857142856e-05, 2.857142857142857e-05,
                   1.4285714285714285e-05});
  EXPECT_DOUBLE_EQ(lr_at(cfg, kPeak, 10, 10), 0.0);
}

TEST(Schedule, LinearWithMinLrEndsAtTheFloor) {
  ScheduleConfig cfg;
  cfg.kind = "linear";
  cfg.min_lr_ratio = 0.5;
  EXPECT_DOUBLE_EQ(lr_at(cfg, kPeak, 0, 4), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(cfg, kPeak, 2, 4), 1e-4 * (0.5 * 0.5 + 0.5));
  EXPECT_DOUBLE_EQ(lr_at(cfg, kPeak, 4, 4), 0.5e-4);
}

TEST(Schedule, ConstantWithWarmupMatchesHf) {
  ScheduleConfig cfg;
  cfg.kind = "constant";
  cfg.warmup_steps = 4;
  expect_schedule(cfg, 10,
                  {0.0, 2.5e-05, 5e-05, 7.500000000000001e-05, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001});
}

TEST(Schedule, WarmupRatioRoundsUpAsHf) {
  ScheduleConfig cfg;
  cfg.warmup_ratio = 0.25;
  EXPECT_EQ(warmup_steps_for(cfg, 10), 3);
  EXPECT_EQ(warmup_steps_for(cfg, 7), 2);
  // warmup_ratio 0.25 of 10 steps is the cosine schedule with 3 warmup steps above.
  expect_schedule(cfg, 10,
                  {0.0, 3.3333333333333335e-05, 6.666666666666667e-05, 0.0001, 9.504844339512095e-05,
                   8.117449009293668e-05, 6.112604669781572e-05, 3.887395330218429e-05, 1.8825509907063327e-05,
                   4.951556604879048e-06});
}

TEST(Schedule, WarmupAsLongAsTheRunIsAllWarmup) {
  ScheduleConfig cfg;
  cfg.warmup_steps = 4;
  EXPECT_DOUBLE_EQ(lr_at(cfg, kPeak, 3, 4), 0.75e-4);
}

TEST(Schedule, RejectsImpossibleRuns) {
  ScheduleConfig cfg;
  cfg.warmup_steps = 11;
  try {
    lr_at(cfg, kPeak, 0, 10);
    ADD_FAILURE() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "learning-rate schedule: warmup of 11 steps is longer than the run's 10 steps");
  }
  EXPECT_THROW(lr_at(ScheduleConfig{}, kPeak, 0, 0), std::invalid_argument);
  EXPECT_THROW(lr_at(ScheduleConfig{}, kPeak, -1, 10), std::invalid_argument);
  ScheduleConfig unknown;
  unknown.kind = "cosin";
  EXPECT_THROW(lr_at(unknown, kPeak, 0, 10), std::invalid_argument);
}

TEST(Schedule, ConfigErrors) {
  using config::ConfigError;
  try {
    config::load<ScheduleConfig>(std::nullopt, {"kind=cosin"});
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("kind: expected one of cosine, linear, constant, found 'cosin' (did you mean "
                                         "'cosine'?)"),
              std::string::npos)
        << e.what();
  }
  try {
    config::load<ScheduleConfig>(std::nullopt, {"warmup_steps=10", "warmup_ratio=0.1"});
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("warmup_steps (10) and warmup_ratio (0.1) are alternatives"),
              std::string::npos)
        << e.what();
  }
  try {
    config::load<ScheduleConfig>(std::nullopt, {"kind=constant", "min_lr_ratio=0.1"});
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("min_lr_ratio applies to the cosine and linear schedules"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(config::load<ScheduleConfig>(std::nullopt, {"warmup_ratio=1.5"}), ConfigError);
  const auto ok = config::load<ScheduleConfig>(std::nullopt, {"kind=linear", "warmup_steps=5"});
  EXPECT_EQ(ok.kind, "linear");
  EXPECT_EQ(ok.warmup_steps, 5);
}

}  // namespace
}  // namespace grpo::train
