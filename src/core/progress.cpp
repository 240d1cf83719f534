#include "grpo/core/progress.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "grpo/core/log.h"

namespace grpo {

Progress::Progress(std::string label, std::int64_t total, double interval_seconds)
    : label_(std::move(label)), total_(total), interval_(interval_seconds) {
  if (total < 1) throw std::invalid_argument("Progress: total must be >= 1, got " + std::to_string(total));
}

double Progress::rate() const {
  if (first_done_ < 0 || last_done_ <= first_done_) return 0.0;
  const double seconds = std::chrono::duration<double>(Clock::now() - first_update_).count();
  return seconds > 0 ? static_cast<double>(last_done_ - first_done_) / seconds : 0.0;
}

double Progress::eta_seconds(std::int64_t done) const {
  const double r = rate();
  if (r <= 0) return -1.0;
  return static_cast<double>(total_ - done) / r;
}

std::string Progress::format_duration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "?";
  const auto s = static_cast<long long>(std::llround(seconds));
  char buf[32];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llds", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, (s % 3600) / 60);
  }
  return buf;
}

std::string Progress::line(std::int64_t done, std::string_view extra) const {
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  std::string s = grpo::format("{} {}/{} ({:.1f}%) | {:.2f} step/s | elapsed {} | ETA {}", label_, done, total_,
                               100.0 * static_cast<double>(done) / total_, rate(), format_duration(elapsed),
                               format_duration(eta_seconds(done)));
  if (!extra.empty()) s += " | " + std::string(extra);
  return s;
}

bool Progress::update(std::int64_t done, std::string_view extra) {
  const auto now = Clock::now();
  if (first_done_ < 0) {
    first_done_ = done;
    first_update_ = now;
  }
  last_done_ = done;
  const bool due = !logged_ || done >= total_ || std::chrono::duration<double>(now - last_log_).count() >= interval_;
  if (!due) return false;
  log::info("{}", line(done, extra));
  last_log_ = now;
  logged_ = true;
  return true;
}

}  // namespace grpo
