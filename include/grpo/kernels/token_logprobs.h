// token_logprobs: the log-probability of given tokens under the output head, without ever holding
// the [N, V] logits. For each row i of hidden [N, D] and its target token targets[i]:
//
//   logits[i, :]  = hidden[i, :] @ weight^T / temperature              [V]
//   logprobs[i]   = logits[i, targets[i]] - logsumexp(logits[i, :])
//   entropy[i]    = -sum_v p[i, v] * log p[i, v],  p = softmax(logits[i, :])   (optional)
//
// N counts tokens (B * T flattened), D is the model width, V the vocabulary, Vc a vocabulary chunk.
//
// Why: GRPO and SFT need log p(token) for every completion token. The plain path materialises the
// float32 logits [N, V] and autograd keeps them (and their gradient) alive: for N = 4096 tokens
// and V = 128k that is 2 GiB per copy, several copies at peak. token_logprobs walks the vocabulary
// in chunks of Vc rows of weight, keeping a running max and running sum of exponentials per row
// (an online logsumexp); it saves only its inputs and the logsumexp [N] for the backward pass,
// which recomputes each chunk's logits and turns them into gradients for hidden and weight.
// Peak extra memory is a few [N, Vc] float32 chunks plus the gradients themselves.
//
// Layout (see include/grpo/kernels/axpy.h for the pattern), one folder kernels/token_logprobs/:
//   token_logprobs.cpp         reference, chunked autograd function, dispatch
//   token_logprobs.cu(h)       fused per-chunk CUDA kernels (forward reduction, backward gradient
//                              of the logits) used by the chunked function
//   test_token_logprobs.cpp    and the token_logprobs rows of tests/kernels/test_kernel_ops.cpp
//   bench/bench_token_logprobs.cpp, bench/token_logprobs_memory.cpp (peak-memory comparison of the
//   two paths)
//
// How a trainer calls it (causal LM, next-token prediction). Run the model with the head off
// (ForwardOptions{.return_hidden = true, .logits = false}) to get the final-norm hidden states
// out.hidden [B, T, D], then shift: position t predicts token t + 1.
//
//   auto hidden  = out.hidden.narrow(1, 0, T - 1).reshape({-1, D});      // [B * (T-1), D]
//   auto targets = input_ids.narrow(1, 1, T - 1).reshape({-1});          // [B * (T-1)] int64
//   auto r = grpo::kernels::token_logprobs(hidden, model->lm_head, targets,
//                                          {.temperature = sampling_temperature});
//   auto logp = r.logprobs.view({B, T - 1});                              // float32
//
// then mask out prompt and padding positions in the loss as with logits. Pass the same temperature
// the rollout sampled with (GRPO ratios must use the sampling distribution). lm_head may be the
// tied embedding tensor: gradients from this call add to the embedding's gradient as usual.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace grpo::kernels {

struct TokenLogprobsOptions {
  // Softmax temperature: logits are divided by it before the softmax. > 0; e.g. 1.0, or 0.7 to
  // score tokens under the distribution a rollout sampled with temperature 0.7.
  double temperature = 1.0;
  // Vocabulary rows of weight per chunk (Vc). >= 1; values >= V mean one chunk. Peak temporary
  // memory is a few N * Vc float32 buffers: 4096 with N = 4096 is 64 MiB per buffer.
  int64_t chunk_size = 4096;
  // Also return the entropy of each row's distribution (no gradient flows through it).
  bool with_entropy = false;
  // Use the fused CUDA chunk kernels for CUDA tensors when grpo was built with them; false runs
  // the plain-ATen chunked path on every device (to bisect numerical differences).
  bool use_cuda_kernels = true;
};

struct TokenLogprobsResult {
  at::Tensor logprobs;  // [N] float32 (float64 when hidden or weight is float64); differentiable
  at::Tensor entropy;   // [N] same dtype as logprobs, no gradient; undefined unless with_entropy
};

// The plain formula: float32 (float64 for double inputs) logits [N, V], log_softmax, gather.
// Differentiable by ATen's autograd. Defines the numbers; memory grows with N * V.
//   hidden [N, D] any floating dtype, weight [V, D] any floating dtype on the same device,
//   targets [N] int64 with values in [0, V).
TokenLogprobsResult token_logprobs_reference(const at::Tensor& hidden, const at::Tensor& weight,
                                             const at::Tensor& targets, const TokenLogprobsOptions& options = {});

// Same numbers (to float32 rounding) by the chunked path; differentiable with respect to hidden
// and weight (gradients in their own dtypes). Fused CUDA kernels per chunk for CUDA tensors when
// built with them (and options.use_cuda_kernels), else plain ATen per chunk.
TokenLogprobsResult token_logprobs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                   const TokenLogprobsOptions& options = {});

}  // namespace grpo::kernels
