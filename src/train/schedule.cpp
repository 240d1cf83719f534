#include "grpo/train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>

namespace grpo::train {

std::string warmup_problem(const ScheduleConfig& cfg, int64_t total_steps, const std::string& what) {
  const int64_t warmup = warmup_steps_for(cfg, total_steps);
  if (warmup <= total_steps) return "";
  return "schedule: warmup of " + std::to_string(warmup) + " steps is longer than the run's " +
         std::to_string(total_steps) + " " + what;
}

std::string ScheduleConfig::validate() const {
  if (kind != "cosine" && kind != "linear" && kind != "constant") {
    return "kind: must be one of: cosine, linear, constant, found '" + kind + "'";
  }
  if (warmup_steps > 0 && warmup_ratio > 0) {
    return "warmup_steps (" + std::to_string(warmup_steps) + ") and warmup_ratio (" +
           config::double_to_text(warmup_ratio) + ") are alternatives: set one of them";
  }
  if (kind == "constant" && min_lr_ratio > 0) {
    return "min_lr_ratio applies to the cosine and linear schedules, not to constant";
  }
  return "";
}

int64_t warmup_steps_for(const ScheduleConfig& cfg, int64_t total_steps) {
  if (cfg.warmup_steps > 0) return cfg.warmup_steps;
  return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * cfg.warmup_ratio));
}

double lr_at(const ScheduleConfig& cfg, double peak_lr, int64_t step, int64_t total_steps) {
  if (const std::string problem = cfg.validate(); !problem.empty()) {
    throw std::invalid_argument("learning-rate schedule: " + problem);
  }
  if (total_steps < 1) {
    throw std::invalid_argument("learning-rate schedule: total_steps must be >= 1, found " +
                                std::to_string(total_steps));
  }
  if (step < 0) throw std::invalid_argument("learning-rate schedule: step must be >= 0, found " + std::to_string(step));
  const int64_t warmup = warmup_steps_for(cfg, total_steps);
  if (warmup > total_steps) {
    throw std::invalid_argument("learning-rate schedule: warmup of " + std::to_string(warmup) +
                                " steps is longer than the run's " + std::to_string(total_steps) + " steps");
  }
  // The same float operations, in the same order, as HF's lr lambdas (times the base lr, LambdaLR).
  if (step < warmup) return peak_lr * (static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup)));
  const double r = cfg.min_lr_ratio;
  const double span = static_cast<double>(std::max<int64_t>(1, total_steps - warmup));
  const int64_t s = std::min(step, total_steps);
  if (cfg.kind == "constant") return peak_lr * 1.0;
  if (cfg.kind == "linear") {
    double factor = std::max(0.0, static_cast<double>(total_steps - s) / span);
    if (r > 0) factor = factor * (1 - r) + r;
    return peak_lr * factor;
  }
  const double progress = static_cast<double>(s - warmup) / span;
  double factor = 0.5 * (1.0 + std::cos(std::numbers::pi * 0.5 * 2.0 * progress));
  factor = factor * (1 - r) + r;
  return peak_lr * std::max(0.0, factor);
}

}  // namespace grpo::train
