// Learning-rate schedules, step for step equal to HF transformers' (what TRL's trainers use):
//   cosine:   get_cosine_schedule_with_warmup, or get_cosine_with_min_lr_schedule_with_warmup
//             (min_lr_rate = min_lr_ratio) when min_lr_ratio > 0
//   linear:   get_linear_schedule_with_warmup (decays to min_lr_ratio * peak; 0 = HF's)
//   constant: get_constant_schedule_with_warmup
// Warmup is linear from 0: optimizer step s (0-based) uses peak * s / warmup, so the first step
// has learning rate 0 when there is a warmup, as in HF. After warmup, with progress
// p = (s - warmup) / max(1, total - warmup): cosine gives peak * (r + (1 - r) * (1 + cos(pi p)) / 2),
// linear peak * (r + (1 - r) * (total - s) / max(1, total - warmup)) with r = min_lr_ratio.
#pragma once

#include <cstdint>
#include <string>

#include "grpo/config/config.h"

namespace grpo::train {

struct ScheduleConfig {
  std::string kind = "cosine";  // cosine | linear | constant
  int64_t warmup_steps = 0;     // optimizer steps of linear warmup from 0, e.g. 100
  double warmup_ratio = 0;      // or warmup as a fraction of all steps: ceil(total * ratio), e.g. 0.03
  double min_lr_ratio = 0.0;    // cosine/linear end at min_lr_ratio * peak, e.g. 0.1

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("kind", kind, "learning-rate schedule after warmup", Check().one_of({"cosine", "linear", "constant"}));
    v("warmup_steps", warmup_steps, "optimizer steps of linear warmup from 0", Check().ge(0));
    v("warmup_ratio", warmup_ratio, "warmup as a fraction of all optimizer steps (instead of warmup_steps)",
      Check().ge(0).lt(1));
    v("min_lr_ratio", min_lr_ratio, "final learning rate as a fraction of the peak (cosine, linear)", Check().in(0, 1));
  }
  // "" when fine: warmup_steps and warmup_ratio are exclusive; min_lr_ratio needs cosine or linear.
  std::string validate() const;
};

// Warmup steps for a run of `total_steps`: warmup_steps, else ceil(total_steps * warmup_ratio)
// (HF TrainingArguments.get_warmup_steps).
int64_t warmup_steps_for(const ScheduleConfig& cfg, int64_t total_steps);

// "" when the warmup fits in a run of `total_steps`, else the problem, for a trainer's validate():
// "schedule: warmup of 50 steps is longer than the run's 20 steps" (with `what` for "steps").
std::string warmup_problem(const ScheduleConfig& cfg, int64_t total_steps, const std::string& what = "steps");

// The learning rate of optimizer step `step` (0-based) of `total_steps`. Throws
// std::invalid_argument when total_steps < 1, the warmup is longer than total_steps, or step is
// negative; steps at or past total_steps keep the end value.
double lr_at(const ScheduleConfig& cfg, double peak_lr, int64_t step, int64_t total_steps);

}  // namespace grpo::train
