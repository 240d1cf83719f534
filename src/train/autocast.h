// bf16 autocast on CUDA for a scope (fp32 master weights stay as they are). No-op elsewhere.
#pragma once

#include <ATen/autocast_mode.h>

namespace grpo::train {

class AutocastScope {
 public:
  explicit AutocastScope(bool enable) : on_(enable) {
    if (!on_) return;
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!on_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(at::kCUDA, false);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool on_;
};

}  // namespace grpo::train
