// distill_loss: per-token divergences between a student's and a teacher's next-token distributions
// for knowledge distillation (GKD, Agarwal et al. 2023; TRL's GKDTrainer), with a chunked path
// that never holds the [N, V] logits of either model.
//
// For each token row i, with logits z_s = student logits, z_t = teacher logits, temperature T:
//
//   p_s = softmax(z_s / T),  p_t = softmax(z_t / T)                               [V] each
//   forward_kl = KL(p_t || p_s) = sum_v p_t,v (log p_t,v - log p_s,v)   (mean-seeking; "SFT on the
//                                                                         teacher's distribution")
//   reverse_kl = KL(p_s || p_t) = sum_v p_s,v (log p_s,v - log p_t,v)   (mode-seeking)
//   jsd(beta)  = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m),  m = beta * p_t + (1 - beta) * p_s
//
// N counts tokens (the rows the caller selected, e.g. completion tokens of B sequences flattened),
// V the vocabulary (same for both models), Ds / Dt the student / teacher widths, Vc a chunk.
//
// The jsd convention is exactly that of trl 1.16.0's GKDTrainer.generalized_jsd_loss, including its
// end points, where it switches to plain KLs:
//   beta == 0: jsd = forward_kl = KL(p_t || p_s)      beta == 1: jsd = reverse_kl = KL(p_s || p_t)
// Note the discontinuity: the mixture formula itself tends to 0 as beta -> 0 or 1 (m tends to p_s or
// p_t); TRL (and so this code) special-cases the end points to the two KLs, which the GKD paper
// reaches as limits of jsd(beta) / beta and jsd(beta) / (1 - beta). log m is formed as a logaddexp of
// log(1 - beta) + log p_s and log(beta) + log p_t (as TRL does), so an underflowing probability never
// gives log(0). All three are >= 0 and are 0 when the logits are equal (up to a constant per row).
// tests/train/gkd_oracle.py calls TRL's own function on fixed inputs; the GkdOracle test of
// tests/train/test_distill_loss.cpp checks both functions below (values and gradients) against it.
//
// Gradient with respect to the student logits z_s (before the division by T), per row, always of
// the form (1/T) * (p_s * (g - sum_u p_s,u g_u)), g = d div / d log p_s taken as free variables:
//   forward_kl: (p_s - p_t) / T
//   reverse_kl: g = log p_s - log p_t               (and sum_u p_s,u g_u = reverse_kl itself)
//   jsd:        g = (1 - beta) (log p_s - log m)    (sum_u p_s,u g_u = (1 - beta) KL(p_s || m))
// The teacher gets no gradient (its inputs are detached).
//
// Two functions compute the same numbers:
//   token_divergence_reference(student_logits [N, V], teacher_logits [N, V], cfg) -> [N]
//       the plain formulas on log_softmax, differentiable by ATen's autograd; memory grows with N * V.
//   token_divergence(student_hidden [N, Ds], student_head [V, Ds],
//                    teacher_hidden [N, Dt], teacher_head [V, Dt], cfg) -> [N]
//       logits = hidden @ head^T computed cfg.chunk_size vocabulary rows at a time. Pass 1: an online
//       logsumexp per row of both models' logits; pass 2: each chunk's contribution to the per-row
//       divergence. A custom autograd function saves its inputs and three [N] scalars (the two
//       logsumexps and sum_u p_s,u g_u); backward recomputes each chunk's logits and accumulates the
//       gradients of student_hidden ([N, Ds]) and student_head ([V, Ds], e.g. a tied embedding).
//       Peak extra memory: a few [N, Vc] buffers in the compute dtype (float32 with Vc = 4096 and
//       N = 4096: 64 MiB each), plus the gradients themselves; the forward costs 4 matmuls of
//       [N, D] x [D, V] (two per model), the backward 4 more (recompute both, then two gradients).
// Both compute in float32 (float64 when any input is float64, for tests); bf16 / half inputs
// are cast per chunk. The teacher's tensors may be in another dtype and may be inference tensors
// (made under torch::InferenceMode): they are only read. All inputs must be on one device.
// Logits must be finite (a -inf teacher logit makes forward_kl's 0 * log 0 term NaN, as in TRL).
//
// How a trainer calls it (on-policy distillation: the student generated the completions, both
// models score them). Run both models with the head off to get final-norm hidden states, shift as
// for next-token prediction, and keep the completion tokens:
//
//   auto s = student->forward(ids, {.return_hidden = true, .logits = false}).hidden;  // [B, T, Ds]
//   torch::Tensor t;
//   { torch::InferenceMode guard; t = teacher->forward(ids, {...}).hidden; }            // [B, T, Dt]
//   auto keep = completion_mask.narrow(1, 1, T - 1).reshape({-1}).to(torch::kBool);     // [B*(T-1)]
//   auto hs = s.narrow(1, 0, T - 1).reshape({-1, Ds}).index({keep});                    // [N, Ds]
//   auto ht = t.narrow(1, 0, T - 1).reshape({-1, Dt}).index({keep});                    // [N, Dt]
//   auto div = grpo::train::token_divergence(hs, student->lm_head, ht, teacher->lm_head, cfg);  // [N]
//   auto loss = div.sum() / std::max<int64_t>(div.size(0), 1);   // TRL's "batchmean" with labels
//
// TRL's reductions over the selected tokens: batchmean = sum / count (what GKDTrainer uses),
// sum, mean (which also divides by V, as TRL's elementwise mean does), or sum / num_items_in_batch.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>

#include <ATen/core/Tensor.h>

#include "grpo/config/config.h"

namespace grpo::train {

// Which divergence between teacher and student distributions (see the formulas above).
enum class Divergence {
  forward_kl,  // KL(p_t || p_s): the student covers the teacher's mass (TRL's jsd at beta = 0)
  reverse_kl,  // KL(p_s || p_t): the student seeks the teacher's modes (TRL's jsd at beta = 1)
  jsd,         // generalized Jensen-Shannon with mixture weight beta (TRL's GKD loss)
};
constexpr auto config_enum_names(Divergence) {
  return std::array{std::pair{Divergence::forward_kl, "forward_kl"}, std::pair{Divergence::reverse_kl, "reverse_kl"},
                    std::pair{Divergence::jsd, "jsd"}};
}

// Defaults follow TRL's GKDConfig (beta 0.5, temperature 1.0).
struct DistillLossConfig {
  Divergence divergence = Divergence::forward_kl;  // forward_kl | reverse_kl | jsd
  double beta = 0.5;          // jsd only: teacher weight of the mixture m, in [0, 1]; 0 = forward_kl,
                              // 1 = reverse_kl (TRL's GKDConfig.beta, default 0.5)
  double temperature = 1.0;   // both models' logits are divided by it before the softmax; > 0
  int64_t chunk_size = 4096;  // vocabulary rows per chunk of token_divergence (Vc); >= 1, >= V = one chunk

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("divergence", divergence,
      "forward_kl: KL(teacher || student) | reverse_kl: KL(student || teacher) | "
      "jsd: generalized Jensen-Shannon with weight beta (TRL's GKD)");
    v("beta", beta, "jsd only: teacher weight of the mixture, e.g. 0.5; 0 = forward_kl, 1 = reverse_kl",
      Check().in(0, 1));
    v("temperature", temperature, "softmax temperature of both models' logits, e.g. 1.0", Check().gt(0));
    v("chunk_size", chunk_size,
      "vocabulary rows per chunk of the chunked path, e.g. 4096 "
      "(peak memory a few N x chunk_size float32 buffers)",
      Check().ge(1));
  }
  std::string validate() const;  // "" when fine, else the problem (out-of-range values)
};

// The plain formulas: per-token divergence [N] of student_logits [N, V] against teacher_logits
// [N, V] (any floating dtypes, one device). float32, or float64 when either is float64.
// Differentiable with respect to student_logits; teacher_logits are detached.
at::Tensor token_divergence_reference(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                                      const DistillLossConfig& cfg = {});

// The same numbers (to rounding) from hidden states and output heads, cfg.chunk_size vocabulary
// rows at a time: student_hidden [N, Ds], student_head [V, Ds], teacher_hidden [N, Dt],
// teacher_head [V, Dt], all floating and on one device. Returns [N] in float32 (float64 when any
// input is float64), differentiable with respect to student_hidden and student_head
// (gradients in their own dtypes); the teacher's tensors get no gradient.
at::Tensor token_divergence(const at::Tensor& student_hidden, const at::Tensor& student_head,
                            const at::Tensor& teacher_hidden, const at::Tensor& teacher_head,
                            const DistillLossConfig& cfg = {});

}  // namespace grpo::train
