#include "grpo/train/distill_loss.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <torch/autograd.h>

namespace grpo::train {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The divergence actually computed: jsd at beta 0 / 1 is forward / reverse KL (TRL's convention).
Divergence effective_divergence(const DistillLossConfig& cfg) {
  if (cfg.divergence == Divergence::jsd && cfg.beta == 0.0) return Divergence::forward_kl;
  if (cfg.divergence == Divergence::jsd && cfg.beta == 1.0) return Divergence::reverse_kl;
  return cfg.divergence;
}

void check_config(const char* fn, const DistillLossConfig& cfg, bool chunked) {
  TORCH_CHECK(cfg.temperature > 0.0 && std::isfinite(cfg.temperature), fn, ": expected temperature > 0, got ",
              cfg.temperature);
  TORCH_CHECK(cfg.beta >= 0.0 && cfg.beta <= 1.0, fn, ": expected beta in [0, 1], got ", cfg.beta);
  TORCH_CHECK(!chunked || cfg.chunk_size >= 1, fn, ": expected chunk_size >= 1, got ", cfg.chunk_size);
}

void check_floating(const char* fn, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), fn, ": ", name, " must be a defined tensor");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), fn, ": expected a floating ", name, ", got ", t.scalar_type());
}

// float64 when any input is float64, else float32 (bf16 / half inputs are upcast).
at::ScalarType compute_dtype(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    if (t->scalar_type() == at::kDouble) return at::kDouble;
  }
  return at::kFloat;
}

// log m = log(beta p_t + (1 - beta) p_s) from the logs, for beta in (0, 1): never log(0).
at::Tensor log_mixture(const at::Tensor& logp_s, const at::Tensor& logp_t, double beta) {
  return at::logaddexp(logp_s + std::log1p(-beta), logp_t + std::log(beta));
}

// Per-row running logsumexp over vocabulary chunks, [N] each in the compute dtype.
struct OnlineLogsumexp {
  at::Tensor max;  // max of the scaled logits seen so far
  at::Tensor sum;  // sum of exp(logit - max)

  // logits [N, Vc], already divided by the temperature.
  void add(const at::Tensor& logits) {
    const at::Tensor chunk_max = logits.amax(1);
    if (!max.defined()) {
      max = chunk_max;
      sum = (logits - max.unsqueeze(1)).exp_().sum(1);
      return;
    }
    const at::Tensor new_max = at::maximum(max, chunk_max);
    sum = sum * (max - new_max).exp_() + (logits - new_max.unsqueeze(1)).exp_().sum(1);
    max = new_max;
  }
  at::Tensor value() const { return max + sum.log(); }
};

// The teacher's side: plain tensors the autograd function only reads (kept out of its variable
// list, so they may be inference tensors and never get a gradient edge).
struct TeacherInputs {
  at::Tensor hidden;  // [N, Dt]
  at::Tensor head;    // [V, Dt]
};

// Scaled logits of one vocabulary chunk [N, Vc] = hidden @ head[start : start + width]^T / T.
at::Tensor chunk_logits(const at::Tensor& hidden_c, const at::Tensor& head, int64_t start, int64_t width,
                        at::ScalarType compute, double inv_temperature, at::Tensor* head_chunk_out = nullptr) {
  at::Tensor head_chunk = head.narrow(0, start, width).to(compute);  // [Vc, D]
  at::Tensor logits = at::mm(hidden_c, head_chunk.t());              // [N, Vc]
  if (inv_temperature != 1.0) logits.mul_(inv_temperature);
  if (head_chunk_out != nullptr) *head_chunk_out = std::move(head_chunk);
  return logits;
}

// The chunked path. Saves the student's inputs (teacher's in saved_data), lse_s, lse_t [N] and,
// for reverse_kl and jsd, c = sum_u p_s,u g_u [N]; backward recomputes every chunk.
class TokenDivergenceFunction : public torch::autograd::Function<TokenDivergenceFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& student_hidden, const at::Tensor& student_head,
                            const TeacherInputs& teacher, int64_t divergence, double beta, double temperature,
                            int64_t chunk_size) {
    const auto kind = static_cast<Divergence>(divergence);
    const int64_t vocab = student_head.size(0);
    const auto compute = compute_dtype({&student_hidden, &student_head, &teacher.hidden, &teacher.head});
    const double inv_temperature = 1.0 / temperature;
    const at::Tensor hidden_s = student_hidden.to(compute);  // [N, Ds]
    const at::Tensor hidden_t = teacher.hidden.to(compute);  // [N, Dt]

    // Pass 1: the logsumexp of both models' logits per row.
    OnlineLogsumexp online_s, online_t;
    for (int64_t start = 0; start < vocab; start += chunk_size) {
      const int64_t width = std::min(chunk_size, vocab - start);
      online_s.add(chunk_logits(hidden_s, student_head, start, width, compute, inv_temperature));
      online_t.add(chunk_logits(hidden_t, teacher.head, start, width, compute, inv_temperature));
    }
    const at::Tensor lse_s = online_s.value();  // [N]
    const at::Tensor lse_t = online_t.value();  // [N]

    // Pass 2: each chunk's terms of the divergence; c = sum_u p_s,u g_u for the backward.
    at::Tensor value = at::zeros_like(lse_s);         // [N]
    at::Tensor student_part = at::zeros_like(lse_s);  // [N]; (1 - beta) KL(p_s || m) for jsd
    for (int64_t start = 0; start < vocab; start += chunk_size) {
      const int64_t width = std::min(chunk_size, vocab - start);
      const at::Tensor logp_s =
          chunk_logits(hidden_s, student_head, start, width, compute, inv_temperature).sub_(lse_s.unsqueeze(1));
      const at::Tensor logp_t =
          chunk_logits(hidden_t, teacher.head, start, width, compute, inv_temperature).sub_(lse_t.unsqueeze(1));
      switch (kind) {
        case Divergence::forward_kl: value.add_((logp_t.exp() * (logp_t - logp_s)).sum(1)); break;
        case Divergence::reverse_kl: value.add_((logp_s.exp() * (logp_s - logp_t)).sum(1)); break;
        case Divergence::jsd: {
          const at::Tensor logm = log_mixture(logp_s, logp_t, beta);
          const at::Tensor teacher_term = (logp_t.exp() * (logp_t - logm)).sum(1);  // KL(p_t || m) part
          const at::Tensor student_term = (logp_s.exp() * (logp_s - logm)).sum(1);  // KL(p_s || m) part
          value.add_(beta * teacher_term + (1.0 - beta) * student_term);
          student_part.add_((1.0 - beta) * student_term);
          break;
        }
      }
    }
    if (kind == Divergence::reverse_kl) student_part = value.clone();

    ctx->save_for_backward({student_hidden, student_head, lse_s, lse_t, student_part});
    ctx->saved_data["teacher_hidden"] = teacher.hidden;
    ctx->saved_data["teacher_head"] = teacher.head;
    ctx->saved_data["divergence"] = divergence;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["chunk_size"] = chunk_size;
    return value;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& student_hidden = saved[0];
    const at::Tensor& student_head = saved[1];
    const at::Tensor& lse_s = saved[2];
    const at::Tensor& lse_t = saved[3];
    const at::Tensor& student_part = saved[4];
    const at::Tensor teacher_hidden = ctx->saved_data["teacher_hidden"].toTensor();
    const at::Tensor teacher_head = ctx->saved_data["teacher_head"].toTensor();
    const auto kind = static_cast<Divergence>(ctx->saved_data["divergence"].toInt());
    const double beta = ctx->saved_data["beta"].toDouble();
    const double inv_temperature = 1.0 / ctx->saved_data["temperature"].toDouble();
    const int64_t chunk_size = ctx->saved_data["chunk_size"].toInt();
    const bool need_hidden = ctx->needs_input_grad(0);
    const bool need_head = ctx->needs_input_grad(1);
    const int64_t vocab = student_head.size(0);
    const auto compute = lse_s.scalar_type();

    at::Tensor grad_hidden;  // [N, Ds] compute dtype, accumulated over chunks
    at::Tensor grad_head;    // [V, Ds] head dtype, one slice per chunk
    if (need_hidden || need_head) {
      // d loss / d z = grad * (1/T) * p_s * (g - c): fold grad / T into one [N, 1] factor.
      const at::Tensor scale = (grad_outputs[0].to(compute) * inv_temperature).unsqueeze(1);  // [N, 1]
      const at::Tensor c = student_part.unsqueeze(1);                                         // [N, 1]
      const at::Tensor hidden_s = student_hidden.to(compute);
      const at::Tensor hidden_t = teacher_hidden.to(compute);
      if (need_hidden) grad_hidden = at::zeros(hidden_s.sizes(), hidden_s.options());
      if (need_head) {
        grad_head = at::empty(student_head.sizes(), student_head.options().memory_format(at::MemoryFormat::Contiguous));
      }
      for (int64_t start = 0; start < vocab; start += chunk_size) {
        const int64_t width = std::min(chunk_size, vocab - start);
        at::Tensor head_chunk;  // [Vc, Ds] compute dtype
        at::Tensor logp_s = chunk_logits(hidden_s, student_head, start, width, compute, inv_temperature, &head_chunk)
                                .sub_(lse_s.unsqueeze(1));
        const at::Tensor logp_t =
            chunk_logits(hidden_t, teacher_head, start, width, compute, inv_temperature).sub_(lse_t.unsqueeze(1));
        at::Tensor grad_logits;  // [N, Vc] d loss / d (hidden @ head_chunk^T)
        switch (kind) {
          case Divergence::forward_kl: grad_logits = logp_s.exp() - logp_t.exp(); break;
          case Divergence::reverse_kl: grad_logits = logp_s.exp() * (logp_s - logp_t - c); break;
          case Divergence::jsd: {
            const at::Tensor logm = log_mixture(logp_s, logp_t, beta);
            grad_logits = logp_s.exp() * ((1.0 - beta) * (logp_s - logm) - c);
            break;
          }
        }
        grad_logits.mul_(scale);
        if (need_hidden) grad_hidden.addmm_(grad_logits, head_chunk);
        if (need_head) {
          at::Tensor slice = grad_head.narrow(0, start, width);  // [Vc, Ds], contiguous
          if (student_head.scalar_type() == compute) {
            at::mm_out(slice, grad_logits.t(), hidden_s);
          } else {
            slice.copy_(at::mm(grad_logits.t(), hidden_s));
          }
        }
      }
    }
    if (need_hidden) grad_hidden = grad_hidden.to(student_hidden.scalar_type());
    return {grad_hidden, grad_head, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::string DistillLossConfig::validate() const {
  if (!(temperature > 0.0)) return "temperature must be > 0, found " + std::to_string(temperature);
  if (!(beta >= 0.0 && beta <= 1.0)) return "beta must be in [0, 1], found " + std::to_string(beta);
  if (chunk_size < 1) return "chunk_size must be >= 1, found " + std::to_string(chunk_size);
  return "";
}

at::Tensor token_divergence_reference(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                                      const DistillLossConfig& cfg) {
  constexpr const char* fn = "token_divergence_reference";
  check_config(fn, cfg, /*chunked=*/false);
  check_floating(fn, "student_logits", student_logits);
  check_floating(fn, "teacher_logits", teacher_logits);
  TORCH_CHECK(student_logits.dim() == 2, fn, ": expected student_logits [N, V], got shape ", student_logits.sizes());
  TORCH_CHECK(teacher_logits.sizes() == student_logits.sizes(), fn,
              ": expected teacher_logits of the student's shape [N, V] = ", student_logits.sizes(), ", got ",
              teacher_logits.sizes());
  TORCH_CHECK(student_logits.size(1) >= 1, fn, ": expected a vocabulary of at least one column, got ",
              student_logits.sizes());
  TORCH_CHECK(student_logits.device() == teacher_logits.device(), fn,
              ": student and teacher logits must be on one device, got ", student_logits.device(), " and ",
              teacher_logits.device());

  const auto compute = compute_dtype({&student_logits, &teacher_logits});
  const at::Tensor logp_s = at::log_softmax(student_logits.to(compute) / cfg.temperature, 1);           // [N, V]
  const at::Tensor logp_t = at::log_softmax(teacher_logits.detach().to(compute) / cfg.temperature, 1);  // [N, V]
  switch (effective_divergence(cfg)) {
    case Divergence::forward_kl: return (logp_t.exp() * (logp_t - logp_s)).sum(1);
    case Divergence::reverse_kl: return (logp_s.exp() * (logp_s - logp_t)).sum(1);
    case Divergence::jsd: {
      const at::Tensor logm = log_mixture(logp_s, logp_t, cfg.beta);
      return cfg.beta * (logp_t.exp() * (logp_t - logm)).sum(1) +
             (1.0 - cfg.beta) * (logp_s.exp() * (logp_s - logm)).sum(1);
    }
  }
  TORCH_CHECK(false, fn, ": unknown divergence ", static_cast<int>(cfg.divergence));
}

at::Tensor token_divergence(const at::Tensor& student_hidden, const at::Tensor& student_head,
                            const at::Tensor& teacher_hidden, const at::Tensor& teacher_head,
                            const DistillLossConfig& cfg) {
  constexpr const char* fn = "token_divergence";
  check_config(fn, cfg, /*chunked=*/true);
  check_floating(fn, "student_hidden", student_hidden);
  check_floating(fn, "student_head", student_head);
  check_floating(fn, "teacher_hidden", teacher_hidden);
  check_floating(fn, "teacher_head", teacher_head);
  TORCH_CHECK(student_hidden.dim() == 2, fn, ": expected student_hidden [N, Ds], got shape ", student_hidden.sizes());
  TORCH_CHECK(student_head.dim() == 2, fn, ": expected student_head [V, Ds], got shape ", student_head.sizes());
  TORCH_CHECK(teacher_hidden.dim() == 2, fn, ": expected teacher_hidden [N, Dt], got shape ", teacher_hidden.sizes());
  TORCH_CHECK(teacher_head.dim() == 2, fn, ": expected teacher_head [V, Dt], got shape ", teacher_head.sizes());
  TORCH_CHECK(student_hidden.size(1) == student_head.size(1), fn,
              ": student_hidden [N, Ds] and student_head [V, Ds] must agree on Ds, got ", student_hidden.sizes(),
              " and ", student_head.sizes());
  TORCH_CHECK(teacher_hidden.size(1) == teacher_head.size(1), fn,
              ": teacher_hidden [N, Dt] and teacher_head [V, Dt] must agree on Dt, got ", teacher_hidden.sizes(),
              " and ", teacher_head.sizes());
  TORCH_CHECK(teacher_hidden.size(0) == student_hidden.size(0), fn,
              ": expected teacher_hidden with N = ", student_hidden.size(0), " rows (those of student_hidden), got ",
              teacher_hidden.size(0));
  TORCH_CHECK(teacher_head.size(0) == student_head.size(0), fn,
              ": expected teacher_head with V = ", student_head.size(0), " rows (the student's vocabulary), got ",
              teacher_head.size(0));
  TORCH_CHECK(student_head.size(0) >= 1, fn, ": expected a vocabulary of at least one row, got student_head ",
              student_head.sizes());
  const auto device = student_hidden.device();
  TORCH_CHECK(student_head.device() == device && teacher_hidden.device() == device && teacher_head.device() == device,
              fn,
              ": teacher and student tensors must all be on one device (move the teacher's hidden states "
              "and head to the student's device), got student_hidden on ",
              device, ", student_head on ", student_head.device(), ", teacher_hidden on ", teacher_hidden.device(),
              ", teacher_head on ", teacher_head.device());

  const Divergence kind = effective_divergence(cfg);
  return TokenDivergenceFunction::apply(student_hidden, student_head,
                                        TeacherInputs{teacher_hidden.detach(), teacher_head.detach()},
                                        static_cast<int64_t>(kind), cfg.beta, cfg.temperature, cfg.chunk_size);
}

}  // namespace grpo::train
