// A progress line for long loops, logged at most every `interval_seconds`:
//   [info] sft 120/1000 (12.0%) | 3.21 step/s | elapsed 37s | ETA 4m34s | loss 1.2345
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace grpo {

// Seconds from `t0` to now on the steady clock.
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

class Progress {
 public:
  // `label` starts each line; `total` steps are expected (>= 1).
  Progress(std::string label, std::int64_t total, double interval_seconds);

  // Records that `done` steps are finished. Logs a line on the first call, when
  // `interval_seconds` have passed since the last line, and when done == total. `extra` is
  // appended after the timing fields. Returns whether a line was logged.
  bool update(std::int64_t done, std::string_view extra = {});

  // Steps per second since the first update (the first step, often slow, is not counted).
  double rate() const;
  // Seconds left at the current rate; negative when unknown.
  double eta_seconds(std::int64_t done) const;
  // The line update() would log now.
  std::string line(std::int64_t done, std::string_view extra) const;

  // "12s", "4m05s", "2h03m".
  static std::string format_duration(double seconds);

 private:
  using Clock = std::chrono::steady_clock;
  std::string label_;
  std::int64_t total_;
  double interval_;
  Clock::time_point start_ = Clock::now();
  Clock::time_point first_update_{};
  std::int64_t first_done_ = -1;
  std::int64_t last_done_ = 0;
  Clock::time_point last_log_{};
  bool logged_ = false;
};

}  // namespace grpo
