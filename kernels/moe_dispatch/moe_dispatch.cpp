#include "grpo/kernels/moe_dispatch.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <vector>

#include "grpo/version.h"
#include "use_kernel.h"

#if GRPO_WITH_CUDA_KERNELS
#include "moe_dispatch.cuh"
#endif

namespace grpo::kernels {
namespace {

using detail::use_kernel;

at::ScalarType compute_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_order(const char* fn, const at::Tensor& order, int64_t top_k, const at::Tensor& rows) {
  TORCH_CHECK(top_k >= 1, fn, ": top_k must be >= 1, got ", top_k);
  TORCH_CHECK(order.dim() == 1 && order.scalar_type() == at::kLong, fn, ": order must be a 1-D int64 tensor, got ",
              order.sizes(), " ", order.scalar_type());
  TORCH_CHECK(order.device() == rows.device(), fn, ": order must be on ", rows.device(), ", got ", order.device());
  TORCH_CHECK(order.size(0) % top_k == 0, fn, ": order's length (", order.size(0), ") must be a multiple of top_k (",
              top_k, ")");
  TORCH_CHECK(at::isFloatingType(rows.scalar_type()) && rows.dim() == 2, fn,
              ": expected a floating [rows, D] tensor, got ", rows.sizes(), " ", rows.scalar_type());
}

void check_unpermute(const char* fn, const at::Tensor& ys, const at::Tensor& weight, const at::Tensor& order,
                     int64_t top_k) {
  check_order(fn, order, top_k, ys);
  TORCH_CHECK(ys.size(0) == order.size(0), fn, ": ys must have one row per pair (", order.size(0), "), got ",
              ys.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == top_k && weight.numel() == order.size(0), fn,
              ": weight must be [N, K] = [", order.size(0) / top_k, ", ", top_k, "], got ", weight.sizes());
  TORCH_CHECK(weight.device() == ys.device() && at::isFloatingType(weight.scalar_type()), fn,
              ": weight must be floating and on ", ys.device(), ", got ", weight.scalar_type(), " on ",
              weight.device());
}

// offsets: CPU int64 [E+1], 0 = offsets[0] <= ... <= offsets[E] = rows.
void check_grouped(const char* fn, const at::Tensor& xs, const at::Tensor& weight, const at::Tensor& offsets) {
  TORCH_CHECK(xs.dim() == 2 && weight.dim() == 3, fn, ": expected xs [M, Din] and weight [E, Dout, Din], got ",
              xs.sizes(), " and ", weight.sizes());
  TORCH_CHECK(weight.size(2) == xs.size(1), fn, ": weight's Din (", weight.size(2), ") must match xs's (", xs.size(1),
              ")");
  TORCH_CHECK(xs.scalar_type() == weight.scalar_type() && at::isFloatingType(xs.scalar_type()), fn,
              ": xs and weight must share a floating dtype, got ", xs.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(xs.device() == weight.device(), fn, ": xs and weight must be on one device, got ", xs.device(), " and ",
              weight.device());
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) == weight.size(0) + 1 && offsets.scalar_type() == at::kLong &&
                  offsets.device().is_cpu(),
              fn, ": offsets must be a CPU int64 [E+1] = [", weight.size(0) + 1, "] tensor, got ", offsets.sizes(), " ",
              offsets.scalar_type(), " on ", offsets.device());
  const auto o = offsets.contiguous();
  const auto* p = o.data_ptr<int64_t>();
  TORCH_CHECK(p[0] == 0 && p[weight.size(0)] == xs.size(0), fn, ": offsets must run from 0 to M = ", xs.size(0),
              ", got ", p[0], " .. ", p[weight.size(0)]);
  for (int64_t e = 0; e < weight.size(0); ++e) {
    TORCH_CHECK(p[e] <= p[e + 1], fn, ": offsets must be non-decreasing, got ", p[e], " then ", p[e + 1], " at expert ",
                e);
  }
}

// inverse[order[i]] = i: the sorted position of each pair.
at::Tensor inverse_order(const at::Tensor& order) {
  return at::empty_like(order).scatter_(0, order, at::arange(order.size(0), order.options()));
}

class PermuteFunction : public torch::autograd::Function<PermuteFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& order,
                            int64_t top_k) {
    ctx->save_for_backward({order});
    ctx->saved_data["top_k"] = top_k;
    ctx->saved_data["tokens"] = x.size(0);
    return moe_permute_forward(x, order, top_k);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto order = ctx->get_saved_variables()[0];
    const auto grad_x = moe_permute_backward(grads[0], order, ctx->saved_data["top_k"].toInt(),
                                             ctx->saved_data["tokens"].toInt());
    return {grad_x, at::Tensor(), at::Tensor()};
  }
};

class UnpermuteFunction : public torch::autograd::Function<UnpermuteFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& ys, const at::Tensor& weight,
                            const at::Tensor& order, int64_t top_k) {
    ctx->save_for_backward({ys, weight, order});
    ctx->saved_data["top_k"] = top_k;
    return moe_unpermute_forward(ys, weight, order, top_k);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    auto [grad_ys, grad_weight] = moe_unpermute_backward(grads[0], s[0], s[1], s[2], ctx->saved_data["top_k"].toInt());
    return {grad_ys, grad_weight, at::Tensor(), at::Tensor()};
  }
};

class GroupedLinearFunction : public torch::autograd::Function<GroupedLinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& xs, const at::Tensor& weight,
                            const at::Tensor& offsets) {
    ctx->save_for_backward({xs, weight, offsets});
    return grouped_linear_forward(xs, weight, offsets);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    auto [grad_xs, grad_weight] = grouped_linear_backward(grads[0], s[0], s[1], s[2]);
    return {grad_xs, grad_weight, at::Tensor()};
  }
};

}  // namespace

// ---- references ----

at::Tensor moe_permute_reference(const at::Tensor& x, const at::Tensor& order, int64_t top_k) {
  check_order("moe_permute_reference", order, top_k, x);
  return x.index_select(0, order.div(top_k, "floor"));
}

at::Tensor moe_permute_backward_reference(const at::Tensor& grad_xs, const at::Tensor& order, int64_t top_k,
                                          int64_t tokens) {
  check_order("moe_permute_backward_reference", order, top_k, grad_xs);
  TORCH_CHECK(order.size(0) == tokens * top_k && grad_xs.size(0) == order.size(0),
              "moe_permute_backward_reference: expected ", tokens, " * ", top_k, " pairs, got order ", order.sizes(),
              " and grad_xs ", grad_xs.sizes());
  const int64_t d = grad_xs.size(1);
  const auto per_pair = grad_xs.to(compute_type(grad_xs)).index_select(0, inverse_order(order));  // [M, D]
  return per_pair.view({tokens, top_k, d}).sum(1).to(grad_xs.scalar_type());
}

at::Tensor moe_unpermute_reference(const at::Tensor& ys, const at::Tensor& weight, const at::Tensor& order,
                                   int64_t top_k) {
  check_unpermute("moe_unpermute_reference", ys, weight, order, top_k);
  const auto token = order.div(top_k, "floor");
  const auto pair_weight = weight.reshape({-1}).index_select(0, order);  // [M]
  const auto weighted = ys * pair_weight.unsqueeze(1).to(ys.scalar_type());
  return at::zeros({weight.size(0), ys.size(1)}, ys.options()).index_add_(0, token, weighted);
}

std::pair<at::Tensor, at::Tensor> moe_unpermute_backward_reference(const at::Tensor& grad_y, const at::Tensor& ys,
                                                                   const at::Tensor& weight, const at::Tensor& order,
                                                                   int64_t top_k) {
  check_unpermute("moe_unpermute_backward_reference", ys, weight, order, top_k);
  TORCH_CHECK(grad_y.dim() == 2 && grad_y.size(0) == weight.size(0) && grad_y.size(1) == ys.size(1),
              "moe_unpermute_backward_reference: grad_y must be [", weight.size(0), ", ", ys.size(1), "], got ",
              grad_y.sizes());
  const auto compute = compute_type(ys);
  const auto g = grad_y.to(compute).index_select(0, order.div(top_k, "floor"));  // [M, D]
  const auto w = weight.reshape({-1}).index_select(0, order).to(compute);        // [M]
  const auto grad_ys = (g * w.unsqueeze(1)).to(ys.scalar_type());
  const auto grad_w_sorted = (g * ys.to(compute)).sum(1);  // [M]
  const auto grad_weight = at::zeros({order.size(0)}, grad_w_sorted.options()).index_copy_(0, order, grad_w_sorted);
  return {grad_ys, grad_weight.view(weight.sizes()).to(weight.scalar_type())};
}

at::Tensor grouped_linear_reference(const at::Tensor& xs, const at::Tensor& weight, const at::Tensor& offsets) {
  check_grouped("grouped_linear_reference", xs, weight, offsets);
  const auto* o = offsets.contiguous().data_ptr<int64_t>();
  std::vector<at::Tensor> outputs;
  for (int64_t e = 0; e < weight.size(0); ++e) {
    if (o[e + 1] == o[e]) continue;
    outputs.push_back(at::linear(xs.narrow(0, o[e], o[e + 1] - o[e]), weight[e]));
  }
  if (outputs.empty()) return at::empty({0, weight.size(1)}, xs.options());
  return at::cat(outputs, 0);
}

std::pair<at::Tensor, at::Tensor> grouped_linear_backward_reference(const at::Tensor& grad_y, const at::Tensor& xs,
                                                                    const at::Tensor& weight,
                                                                    const at::Tensor& offsets) {
  check_grouped("grouped_linear_backward_reference", xs, weight, offsets);
  TORCH_CHECK(grad_y.dim() == 2 && grad_y.size(0) == xs.size(0) && grad_y.size(1) == weight.size(1),
              "grouped_linear_backward_reference: grad_y must be [", xs.size(0), ", ", weight.size(1), "], got ",
              grad_y.sizes());
  const auto compute = compute_type(xs);
  const auto* o = offsets.contiguous().data_ptr<int64_t>();
  const auto g = grad_y.to(compute), x = xs.to(compute), w = weight.to(compute);
  auto grad_xs = at::zeros(xs.sizes(), x.options());
  auto grad_weight = at::zeros(weight.sizes(), w.options());
  for (int64_t e = 0; e < weight.size(0); ++e) {
    const int64_t rows = o[e + 1] - o[e];
    if (rows == 0) continue;
    const auto g_e = g.narrow(0, o[e], rows);                        // [rows, Dout]
    grad_xs.narrow(0, o[e], rows).copy_(at::mm(g_e, w[e]));          // [rows, Din]
    grad_weight[e].copy_(at::mm(g_e.t(), x.narrow(0, o[e], rows)));  // [Dout, Din]
  }
  return {grad_xs.to(xs.scalar_type()), grad_weight.to(weight.scalar_type())};
}

// ---- dispatch ----

at::Tensor moe_permute_forward(const at::Tensor& x, const at::Tensor& order, int64_t top_k) {
  check_order("moe_permute_forward", order, top_k, x);
  if (use_kernel("moe_permute_forward", x)) {
#if GRPO_WITH_CUDA_KERNELS
    return moe_permute_cuda(x, order, top_k);
#endif
  }
  return moe_permute_reference(x, order, top_k);
}

at::Tensor moe_permute_backward(const at::Tensor& grad_xs, const at::Tensor& order, int64_t top_k, int64_t tokens) {
  check_order("moe_permute_backward", order, top_k, grad_xs);
  if (use_kernel("moe_permute_backward", grad_xs)) {
#if GRPO_WITH_CUDA_KERNELS
    return moe_permute_backward_cuda(grad_xs, order, top_k, tokens);
#endif
  }
  return moe_permute_backward_reference(grad_xs, order, top_k, tokens);
}

at::Tensor moe_unpermute_forward(const at::Tensor& ys, const at::Tensor& weight, const at::Tensor& order,
                                 int64_t top_k) {
  check_unpermute("moe_unpermute_forward", ys, weight, order, top_k);
  if (use_kernel("moe_unpermute_forward", ys)) {
#if GRPO_WITH_CUDA_KERNELS
    return moe_unpermute_cuda(ys, weight, order, top_k);
#endif
  }
  return moe_unpermute_reference(ys, weight, order, top_k);
}

std::pair<at::Tensor, at::Tensor> moe_unpermute_backward(const at::Tensor& grad_y, const at::Tensor& ys,
                                                         const at::Tensor& weight, const at::Tensor& order,
                                                         int64_t top_k) {
  check_unpermute("moe_unpermute_backward", ys, weight, order, top_k);
  if (use_kernel("moe_unpermute_backward", ys)) {
#if GRPO_WITH_CUDA_KERNELS
    return moe_unpermute_backward_cuda(grad_y, ys, weight, order, top_k);
#endif
  }
  return moe_unpermute_backward_reference(grad_y, ys, weight, order, top_k);
}

at::Tensor grouped_linear_forward(const at::Tensor& xs, const at::Tensor& weight, const at::Tensor& offsets) {
  check_grouped("grouped_linear_forward", xs, weight, offsets);
  if (use_kernel("grouped_linear_forward", xs)) {
#if GRPO_WITH_CUDA_KERNELS
    return grouped_linear_cuda(xs, weight, offsets);
#endif
  }
  return grouped_linear_reference(xs, weight, offsets);
}

std::pair<at::Tensor, at::Tensor> grouped_linear_backward(const at::Tensor& grad_y, const at::Tensor& xs,
                                                          const at::Tensor& weight, const at::Tensor& offsets) {
  check_grouped("grouped_linear_backward", xs, weight, offsets);
  if (use_kernel("grouped_linear_backward", xs)) {
#if GRPO_WITH_CUDA_KERNELS
    return grouped_linear_backward_cuda(grad_y, xs, weight, offsets);
#endif
  }
  return grouped_linear_backward_reference(grad_y, xs, weight, offsets);
}

// ---- autograd ----

at::Tensor moe_permute(const at::Tensor& x, const at::Tensor& order, int64_t top_k) {
  return PermuteFunction::apply(x, order, top_k);
}

at::Tensor moe_unpermute(const at::Tensor& ys, const at::Tensor& weight, const at::Tensor& order, int64_t top_k) {
  return UnpermuteFunction::apply(ys, weight, order, top_k);
}

at::Tensor grouped_linear(const at::Tensor& xs, const at::Tensor& weight, const at::Tensor& offsets) {
  return GroupedLinearFunction::apply(xs, weight, offsets);
}

}  // namespace grpo::kernels
