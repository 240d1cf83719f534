// Launchers of kernels/moe_dispatch/moe_dispatch.cu; see include/grpo/kernels/moe_dispatch.h for
// what they compute and for the vocabulary (N, K, M, E, order, offsets).
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

namespace grpo::kernels {

// x [N, D] CUDA, order [M = N*K] int64 on x's device -> xs [M, D].
at::Tensor moe_permute_cuda(const at::Tensor& x, const at::Tensor& order, int64_t top_k);
// grad_xs [M, D] -> grad_x [tokens, D] (sum of each token's K rows, float32 accumulation).
at::Tensor moe_permute_backward_cuda(const at::Tensor& grad_xs, const at::Tensor& order, int64_t top_k, int64_t tokens);
// ys [M, D], weight [N, K] float32 -> y [N, D].
at::Tensor moe_unpermute_cuda(const at::Tensor& ys, const at::Tensor& weight, const at::Tensor& order, int64_t top_k);
// grad_y [N, D] -> {grad_ys [M, D], grad_weight [N, K] float32}.
std::pair<at::Tensor, at::Tensor> moe_unpermute_backward_cuda(const at::Tensor& grad_y, const at::Tensor& ys,
                                                              const at::Tensor& weight, const at::Tensor& order,
                                                              int64_t top_k);
// xs [M, Din], weight [E, Dout, Din] CUDA of one dtype, offsets [E+1] int64 CPU -> y [M, Dout].
at::Tensor grouped_linear_cuda(const at::Tensor& xs, const at::Tensor& weight, const at::Tensor& offsets);
// grad_y [M, Dout] -> {grad_xs [M, Din], grad_weight [E, Dout, Din]}.
std::pair<at::Tensor, at::Tensor> grouped_linear_backward_cuda(const at::Tensor& grad_y, const at::Tensor& xs,
                                                               const at::Tensor& weight, const at::Tensor& offsets);

}  // namespace grpo::kernels
