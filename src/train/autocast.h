// bf16 autocast for a scope on one device type (fp32 master weights stay as they are): CUDA by
// default; the CPU when a trainer's bf16_cpu asks for it (ATen's CPU autocast runs linear and
// matmul in bf16, through oneDNN's AVX-512 BF16 / AMX kernels where the CPU has them).
// The state is the thread's: a scope restores what it found, so scopes nest.
#pragma once

#include <ATen/autocast_mode.h>

namespace grpo::train {

class AutocastScope {
 public:
  explicit AutocastScope(bool enable, at::DeviceType type = at::kCUDA) : on_(enable), type_(type) {
    if (!on_) return;
    was_enabled_ = at::autocast::is_autocast_enabled(type_);
    was_dtype_ = at::autocast::get_autocast_dtype(type_);
    at::autocast::set_autocast_dtype(type_, at::kBFloat16);
    at::autocast::set_autocast_enabled(type_, true);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!on_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(type_, was_enabled_);
    at::autocast::set_autocast_dtype(type_, was_dtype_);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool on_;
  at::DeviceType type_;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kBFloat16;
};

}  // namespace grpo::train
