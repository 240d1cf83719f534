#include "grpo/kernels/swiglu.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "grpo/version.h"
#include "use_kernel.h"

#if GRPO_WITH_CUDA_KERNELS
#include "swiglu.cuh"
#endif

namespace grpo::kernels {
namespace {

using detail::use_kernel;

void check_inputs(const char* fn, const at::Tensor& gate, const at::Tensor& up) {
  TORCH_CHECK(gate.sizes() == up.sizes(), fn, ": gate and up must have one shape, got ", gate.sizes(), " and ",
              up.sizes());
  TORCH_CHECK(gate.scalar_type() == up.scalar_type(), fn, ": gate and up must have one dtype, got ", gate.scalar_type(),
              " and ", up.scalar_type());
  TORCH_CHECK(gate.device() == up.device(), fn, ": gate and up must be on one device, got ", gate.device(), " and ",
              up.device());
  TORCH_CHECK(at::isFloatingType(gate.scalar_type()), fn, ": expected a floating dtype, got ", gate.scalar_type());
}

class SwigluFunction : public torch::autograd::Function<SwigluFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    ctx->save_for_backward({gate, up});
    return swiglu_forward(gate, up);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [grad_gate, grad_up] = swiglu_backward(grads[0], saved[0], saved[1]);
    return {grad_gate, grad_up};
  }
};

}  // namespace

at::Tensor swiglu_reference(const at::Tensor& gate, const at::Tensor& up) {
  check_inputs("swiglu_reference", gate, up);
  return at::silu(gate) * up;
}

std::pair<at::Tensor, at::Tensor> swiglu_backward_reference(const at::Tensor& grad_y, const at::Tensor& gate,
                                                            const at::Tensor& up) {
  check_inputs("swiglu_backward_reference", gate, up);
  TORCH_CHECK(grad_y.sizes() == gate.sizes(), "swiglu_backward_reference: grad_y must match gate ", gate.sizes(),
              ", got ", grad_y.sizes());
  const auto compute = gate.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto g = gate.to(compute);
  const auto u = up.to(compute);
  const auto dy = grad_y.to(compute);
  const auto s = at::sigmoid(g);
  const auto grad_gate = dy * u * s * (1 + g * (1 - s));
  const auto grad_up = dy * g * s;
  return {grad_gate.to(gate.scalar_type()), grad_up.to(up.scalar_type())};
}

at::Tensor swiglu_forward(const at::Tensor& gate, const at::Tensor& up) {
  check_inputs("swiglu_forward", gate, up);
  if (use_kernel("swiglu_forward", gate)) {
#if GRPO_WITH_CUDA_KERNELS
    return swiglu_cuda(gate, up);
#endif
  }
  return swiglu_reference(gate, up);
}

std::pair<at::Tensor, at::Tensor> swiglu_backward(const at::Tensor& grad_y, const at::Tensor& gate,
                                                  const at::Tensor& up) {
  check_inputs("swiglu_backward", gate, up);
  if (use_kernel("swiglu_backward", gate)) {
#if GRPO_WITH_CUDA_KERNELS
    return swiglu_backward_cuda(grad_y, gate, up);
#endif
  }
  return swiglu_backward_reference(grad_y, gate, up);
}

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up) { return SwigluFunction::apply(gate, up); }

}  // namespace grpo::kernels
