// MoE token dispatch: permute token rows into expert-sorted order, run the experts as grouped GEMMs
// (one launch over all experts), and unpermute with the combine weights. The references are the
// steps of MoeImpl::forward (src/model/moe.cpp).
//
// Vocabulary: N tokens, K experts per token, M = N*K (token, expert) pairs, E experts, D hidden,
// F expert width. Pair p = n*K + k is token n's k-th choice. `order` [M] int64 is the stable
// argsort of the flat expert indices [M]: sorted position i holds pair order[i], of token
// order[i] / K. offsets [E+1] int64 on the CPU: expert e owns sorted rows offsets[e]..offsets[e+1]
// (offsets[0] = 0, offsets[E] = M, non-decreasing; empty experts allowed).
//
// Layout (docs/kernels.md), one folder kernels/moe_dispatch/: moe_dispatch.cu(h) (CUDA kernels,
// launchers), moe_dispatch.cpp (references, dispatch, autograd functions), test_moe_dispatch.cpp;
// and the moe_permute, moe_unpermute and grouped_linear rows of tests/kernels/test_kernel_ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <utility>

namespace grpo::kernels {

// ---- permute: xs[i] = x[order[i] / K].  x [N, D], order [M] -> xs [M, D].
at::Tensor moe_permute_reference(const at::Tensor& x, const at::Tensor& order, int64_t top_k);
// Explicit backward: grad_x[n] = sum over k of grad_xs[inverse[n*K + k]]  (float32, rounded once).
at::Tensor moe_permute_backward_reference(const at::Tensor& grad_xs, const at::Tensor& order, int64_t top_k,
                                          int64_t tokens);

// ---- unpermute: y[n] = sum over k of weight[n, k] * ys[inverse[n*K + k]].
// ys [M, D] (expert outputs in sorted order), weight [N, K] (float32 combine weights) -> y [N, D]
// in ys's dtype. The reference is the model's: ys * weight(sorted, cast to ys's dtype), then
// index_add per token in sorted order.
at::Tensor moe_unpermute_reference(const at::Tensor& ys, const at::Tensor& weight, const at::Tensor& order,
                                   int64_t top_k);
// Explicit backward: grad_ys[i] = grad_y[n] * weight[p], grad_weight[p] = <grad_y[n], ys[i]>
// with p = order[i], n = p / K (float32, rounded once) -> {grad_ys [M, D], grad_weight [N, K]}.
std::pair<at::Tensor, at::Tensor> moe_unpermute_backward_reference(const at::Tensor& grad_y, const at::Tensor& ys,
                                                                   const at::Tensor& weight, const at::Tensor& order,
                                                                   int64_t top_k);

// ---- grouped linear: y[i] = xs[i] W[e]^T for the rows i of expert e.
// xs [M, Din], weight [E, Dout, Din], offsets [E+1] (CPU int64) -> y [M, Dout]. The reference
// loops over the non-empty experts with at::linear, as the model does.
at::Tensor grouped_linear_reference(const at::Tensor& xs, const at::Tensor& weight, const at::Tensor& offsets);
// Explicit backward: grad_xs rows of e = grad_y W[e]; grad_weight[e] = grad_y_e^T xs_e (zero for
// empty experts) -> {grad_xs [M, Din], grad_weight [E, Dout, Din]}.
std::pair<at::Tensor, at::Tensor> grouped_linear_backward_reference(const at::Tensor& grad_y, const at::Tensor& xs,
                                                                    const at::Tensor& weight,
                                                                    const at::Tensor& offsets);

// ---- No autograd: the CUDA kernels for CUDA tensors, else the references above.
at::Tensor moe_permute_forward(const at::Tensor& x, const at::Tensor& order, int64_t top_k);
at::Tensor moe_permute_backward(const at::Tensor& grad_xs, const at::Tensor& order, int64_t top_k, int64_t tokens);
at::Tensor moe_unpermute_forward(const at::Tensor& ys, const at::Tensor& weight, const at::Tensor& order,
                                 int64_t top_k);
std::pair<at::Tensor, at::Tensor> moe_unpermute_backward(const at::Tensor& grad_y, const at::Tensor& ys,
                                                         const at::Tensor& weight, const at::Tensor& order,
                                                         int64_t top_k);
at::Tensor grouped_linear_forward(const at::Tensor& xs, const at::Tensor& weight, const at::Tensor& offsets);
std::pair<at::Tensor, at::Tensor> grouped_linear_backward(const at::Tensor& grad_y, const at::Tensor& xs,
                                                          const at::Tensor& weight, const at::Tensor& offsets);

// ---- Differentiable (custom autograd functions over the pairs above).
at::Tensor moe_permute(const at::Tensor& x, const at::Tensor& order, int64_t top_k);
at::Tensor moe_unpermute(const at::Tensor& ys, const at::Tensor& weight, const at::Tensor& order, int64_t top_k);
at::Tensor grouped_linear(const at::Tensor& xs, const at::Tensor& weight, const at::Tensor& offsets);

}  // namespace grpo::kernels
