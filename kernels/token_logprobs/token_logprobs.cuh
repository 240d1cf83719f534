// Launchers of kernels/token_logprobs/token_logprobs.cu; see include/grpo/kernels/token_logprobs.h
// for what the whole function computes. These work on one vocabulary chunk at a time: the caller computes
// logits = hidden @ weight[start : start + Vc]^T with cuBLAS and hands the chunk over.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace grpo::kernels {

// Folds one logits chunk into each row's running softmax state, reading the chunk once.
//   logits          [N, Vc] float32 CUDA, contiguous; NOT yet divided by the temperature
//   targets         [N] int64, same device, contiguous
//   running_max     [N] float32, contiguous: max over the chunks seen of logits * inv_temperature
//                   (start at -inf)
//   running_sum     [N] float32: sum of exp(z - running_max) over the chunks seen (start at 0)
//   running_plogp   [N] float32 or undefined: sum of exp(z - running_max) * (z - running_max),
//                   for the entropy (start at 0)
//   target_logit    [N] float32: set to z[row, targets[row] - chunk_start] when the target lies in
//                   this chunk, left alone otherwise
// where z = logits * inv_temperature. All state tensors are updated in place.
void token_logprobs_chunk_forward_cuda(const at::Tensor& logits, double inv_temperature, const at::Tensor& targets,
                                       int64_t chunk_start, const at::Tensor& running_max,
                                       const at::Tensor& running_sum, const at::Tensor& running_plogp,
                                       const at::Tensor& target_logit);

// Turns one logits chunk into the gradient of the loss with respect to those logits, in place:
//   logits[row, j] <- grad[row] * (onehot(targets[row] - chunk_start == j) - p) * inv_temperature,
//   p = exp(logits[row, j] * inv_temperature - logsumexp[row]).
//   logits [N, Vc] float32 CUDA contiguous; targets [N] int64; logsumexp, grad [N] float32.
void token_logprobs_chunk_backward_cuda(const at::Tensor& logits, double inv_temperature, const at::Tensor& targets,
                                        int64_t chunk_start, const at::Tensor& logsumexp, const at::Tensor& grad);

}  // namespace grpo::kernels
