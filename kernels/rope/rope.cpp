#include "grpo/kernels/rope.h"

#include <ATen/ATen.h>
#include <ATen/TensorIndexing.h>
#include <torch/autograd.h>

#include "grpo/version.h"
#include "use_kernel.h"

#if GRPO_WITH_CUDA_KERNELS
#include "rope.cuh"
#endif

namespace grpo::kernels {
namespace {

using detail::use_kernel;

void check_inputs(const char* fn, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 4, fn, ": x must be [B, H, T, R], got ", x.sizes());
  TORCH_CHECK(x.size(-1) % 2 == 0, fn, ": the rope width R must be even, got ", x.size(-1));
  TORCH_CHECK(cos.sizes() == sin.sizes(), fn, ": cos and sin must have one shape, got ", cos.sizes(), " and ",
              sin.sizes());
  TORCH_CHECK(cos.dim() == 3 && (cos.size(0) == x.size(0) || cos.size(0) == 1) && cos.size(1) == x.size(2) &&
                  cos.size(2) == x.size(3),
              fn, ": cos/sin must be [B or 1, T, R] = [", x.size(0), " or 1, ", x.size(2), ", ", x.size(3), "], got ",
              cos.sizes());
  TORCH_CHECK(x.device() == cos.device() && x.device() == sin.device(), fn,
              ": x, cos and sin must be on one device, got ", x.device(), ", ", cos.device(), " and ", sin.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), fn, ": expected a floating dtype, got ", x.scalar_type());
}

class RopeFunction : public torch::autograd::Function<RopeFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin, int64_t layout) {
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["layout"] = layout;
    return rope_forward(x, cos, sin, static_cast<RopeLayout>(layout));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto layout = static_cast<RopeLayout>(ctx->saved_data["layout"].toInt());
    return {rope_backward(grads[0], saved[0], saved[1], layout), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor rope_reference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, RopeLayout layout) {
  check_inputs("rope_reference", x, cos, sin);
  const int64_t half = x.size(-1) / 2;
  if (layout == RopeLayout::rotate_half) {
    const auto c = cos.unsqueeze(1);  // [B, 1, T, R]
    const auto s = sin.unsqueeze(1);
    const auto rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
    return x * c + rotated * s;
  }
  const auto c = cos.narrow(-1, 0, half).unsqueeze(1);  // [B, 1, T, R/2]
  const auto s = sin.narrow(-1, 0, half).unsqueeze(1);
  using at::indexing::Slice;
  const auto even = x.index({"...", Slice(0, at::indexing::None, 2)});
  const auto odd = x.index({"...", Slice(1, at::indexing::None, 2)});
  return at::cat({even * c - odd * s, odd * c + even * s}, -1);
}

at::Tensor rope_backward_reference(const at::Tensor& grad_y, const at::Tensor& cos, const at::Tensor& sin,
                                   RopeLayout layout) {
  check_inputs("rope_backward_reference", grad_y, cos, sin);
  const auto compute = grad_y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t half = grad_y.size(-1) / 2;
  const auto g = grad_y.to(compute);
  const auto c = cos.to(compute).unsqueeze(1);  // [B, 1, T, R]
  const auto s = sin.to(compute).unsqueeze(1);
  const auto g1 = g.narrow(-1, 0, half), g2 = g.narrow(-1, half, half);
  at::Tensor grad_x;
  if (layout == RopeLayout::rotate_half) {
    // y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2  =>  gx1 = g1 c1 + g2 s2, gx2 = g2 c2 - g1 s1.
    const auto c1 = c.narrow(-1, 0, half), c2 = c.narrow(-1, half, half);
    const auto s1 = s.narrow(-1, 0, half), s2 = s.narrow(-1, half, half);
    grad_x = at::cat({g1 * c1 + g2 * s2, g2 * c2 - g1 * s1}, -1);
  } else {
    // y[j] = x[2j] c - x[2j+1] s, y[h+j] = x[2j+1] c + x[2j] s  =>
    // gx[2j] = g[j] c + g[h+j] s, gx[2j+1] = g[h+j] c - g[j] s (re-interleaved).
    const auto ch = c.narrow(-1, 0, half), sh = s.narrow(-1, 0, half);
    const auto even = g1 * ch + g2 * sh;
    const auto odd = g2 * ch - g1 * sh;
    grad_x = at::stack({even, odd}, -1).flatten(-2);
  }
  return grad_x.to(grad_y.scalar_type());
}

at::Tensor rope_forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, RopeLayout layout) {
  check_inputs("rope_forward", x, cos, sin);
  if (use_kernel("rope_forward", x)) {
#if GRPO_WITH_CUDA_KERNELS
    return rope_cuda(x, cos, sin, layout == RopeLayout::interleaved, /*inverse=*/false);
#endif
  }
  return rope_reference(x, cos, sin, layout);
}

at::Tensor rope_backward(const at::Tensor& grad_y, const at::Tensor& cos, const at::Tensor& sin, RopeLayout layout) {
  check_inputs("rope_backward", grad_y, cos, sin);
  if (use_kernel("rope_backward", grad_y)) {
#if GRPO_WITH_CUDA_KERNELS
    return rope_cuda(grad_y, cos, sin, layout == RopeLayout::interleaved, /*inverse=*/true);
#endif
  }
  return rope_backward_reference(grad_y, cos, sin, layout);
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, RopeLayout layout) {
  return RopeFunction::apply(x, cos, sin, static_cast<int64_t>(layout));
}

}  // namespace grpo::kernels
