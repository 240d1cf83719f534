// Links grpo::grpo from an installed package and calls into it: a config struct loaded with
// grpo's loader and a kernel call on CPU tensors.
#include <ATen/ATen.h>
#include <grpo/config/config.h>
#include <grpo/kernels/axpy.h>
#include <grpo/version.h>

#include <iostream>

struct ConsumerConfig {
  double alpha = 2.0;  // scale of x
  template <class V>
  void visit(V& v) {
    v("alpha", alpha, "scale of x", grpo::config::Check().gt(0));
  }
};

int main() {
  const auto cfg = grpo::config::load<ConsumerConfig>(std::nullopt, {"alpha=3"});
  const at::Tensor out = grpo::kernels::axpy(cfg.alpha, at::ones({4}), at::full({4}, 0.5));
  const double sum = out.sum().item<double>();
  std::cout << grpo::build_info() << "\n";
  if (sum != 14.0) {
    std::cerr << "consumer: expected 14, got " << sum << "\n";
    return 1;
  }
  std::cout << "consumer ok: sum " << sum << "\n";
  return 0;
}
