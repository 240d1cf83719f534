// Batch-invariant forward ops: the consistent mode (docs/rollouts.md "Consistent mode").
//
// The sampler and the trainer see the same token in different company: the sampler runs a prompt
// batch left-padded to its chunk's longest prompt, then one token per row against a KV cache whose
// rows shrink as completions finish; the trainer runs whole prompt + completion rows in its own
// micro-batches and padding. ATen's CPU kernels (MKL's GEMM, the vectorised reductions, Sleef's
// exp) pick their blocking, their lane assignment and their scalar tails from the shapes and from
// where an element sits in the tensor, so the same token's numbers round differently in the two.
//
// While a Scope is active on a thread, every op of the forward that reduces or evaluates a
// transcendental function on CPU float32 goes through these instead, and each of them computes an
// output element from the same inputs in one fixed order, whatever else is in the batch:
//   - matmul_nt (A B^T, the reduction over a feature dim: projections, q.k, the lm head): eight
//     lanes by feature index, one fixed tree at the end, the tail after;
//   - matmul_nn (A B, the reduction over keys: probs.V): strictly in key order, so padded or
//     masked keys (probability exactly 0) add exact zeros wherever the padding sits;
//   - softmax, rms_norm, token_logprobs: row by row, sums in index order; exp, log, cos, sin,
//     sigmoid, silu by the scalar libm function for every element.
// Additions and products of equal float32 operands are equal (IEEE; this file's kernels are built
// with -ffp-contract=off), so the sampler's log-prob of a token equals the trainer's bitwise.
//
// bf16 (Scope(true, true)): the same ops, with each matmul's operands and result rounded to
// bfloat16 (float32 accumulation in the same fixed order) as bf16 autocast computes a linear or a
// matmul, and everything else in float32: the consistent mode of a bf16 run (grpo.bf16_cpu).
//
// Only the forward values are invariant: each op is an autograd function whose backward is the
// usual ATen formula. Off CPU float32 the ops are not used (applies() is false); the kernels run
// at a fraction of MKL's speed (bench/bench_consistent.sh).
#pragma once

#include <torch/types.h>

namespace grpo::model::invariant {

// Whether a Scope is active on this thread.
bool enabled();

// Whether the active Scope rounds matmuls to bf16.
bool bf16();

// Turns the ops on (or off) for this thread until destroyed, with bf16 matmuls or not; nests.
class Scope {
 public:
  explicit Scope(bool on = true, bool bf16 = false);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  bool saved_;
  bool saved_bf16_;
};

// enabled() and x is a CPU float32 tensor: the layers take the invariant op for x.
bool applies(const torch::Tensor& x);

// x [..., K] W^T (+ b): w [N, K], b [N] or undefined -> [..., N].
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b);
// a [..., M, K], b [..., N, K] (batch dims broadcast) -> a b^T [..., M, N].
torch::Tensor matmul_nt(const torch::Tensor& a, const torch::Tensor& b);
// a [..., M, K], b [..., K, N] (batch dims broadcast) -> a b [..., M, N], summed in k order.
torch::Tensor matmul_nn(const torch::Tensor& a, const torch::Tensor& b);
// softmax over the last dim.
torch::Tensor softmax(const torch::Tensor& x);
// weight * (x / sqrt(mean(x^2) + eps)), as kernels::rms_norm_reference.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
// silu(gate) * up.
torch::Tensor silu_mul(const torch::Tensor& gate, const torch::Tensor& up);
torch::Tensor sigmoid(const torch::Tensor& x);
// The sum over the last dim, kept: [..., K] -> [..., 1].
torch::Tensor sum_last(const torch::Tensor& x);
// Elementwise cos and sin (no gradient: rotary tables).
torch::Tensor cos(const torch::Tensor& x);
torch::Tensor sin(const torch::Tensor& x);
// log_softmax(logits / temperature) at ids: logits [N, V], ids [N] -> [N] float32.
torch::Tensor token_logprobs(const torch::Tensor& logits, const torch::Tensor& ids, double temperature);

}  // namespace grpo::model::invariant
