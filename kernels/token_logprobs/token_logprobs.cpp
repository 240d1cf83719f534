#include "grpo/kernels/token_logprobs.h"

#include <algorithm>
#include <limits>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "grpo/version.h"

#if GRPO_WITH_CUDA_KERNELS
#include "token_logprobs.cuh"
#endif

namespace grpo::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// chunked: also check options.chunk_size (the reference ignores it).
void check_inputs(const char* fn, const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                  const TokenLogprobsOptions& options, bool chunked) {
  TORCH_CHECK(hidden.defined() && weight.defined() && targets.defined(), fn,
              ": hidden, weight and targets must all be defined tensors");
  TORCH_CHECK(hidden.dim() == 2, fn, ": expected hidden [N, D], got shape ", hidden.sizes());
  TORCH_CHECK(weight.dim() == 2, fn, ": expected weight [V, D], got shape ", weight.sizes());
  TORCH_CHECK(targets.dim() == 1, fn, ": expected targets [N], got shape ", targets.sizes());
  TORCH_CHECK(hidden.size(1) == weight.size(1), fn, ": hidden [N, D] and weight [V, D] must agree on D, got ",
              hidden.sizes(), " and ", weight.sizes());
  TORCH_CHECK(targets.size(0) == hidden.size(0), fn, ": expected targets of length N = ", hidden.size(0),
              " (rows of hidden), got ", targets.size(0));
  TORCH_CHECK(weight.size(0) >= 1, fn, ": expected a vocabulary of at least one row, got weight ", weight.sizes());
  TORCH_CHECK(at::isFloatingType(hidden.scalar_type()) && at::isFloatingType(weight.scalar_type()), fn,
              ": expected floating hidden and weight, got ", hidden.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(targets.scalar_type() == at::kLong, fn, ": expected int64 targets, got ", targets.scalar_type());
  TORCH_CHECK(hidden.device() == weight.device() && hidden.device() == targets.device(), fn,
              ": hidden, weight and targets must be on one device, got ", hidden.device(), ", ", weight.device(),
              " and ", targets.device());
  TORCH_CHECK(options.temperature > 0.0, fn, ": expected temperature > 0, got ", options.temperature);
  TORCH_CHECK(!chunked || options.chunk_size >= 1, fn, ": expected chunk_size >= 1, got ", options.chunk_size);
  if (targets.numel() > 0) {
    const auto [low, high] = at::aminmax(targets);
    const int64_t lo = low.item<int64_t>();
    const int64_t hi = high.item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < weight.size(0), fn, ": targets must lie in [0, V = ", weight.size(0),
                "), found values from ", lo, " to ", hi);
  }
}

// float64 when either input is float64, else float32 (bf16 / half inputs are upcast).
at::ScalarType compute_dtype(const at::Tensor& hidden, const at::Tensor& weight) {
  return hidden.scalar_type() == at::kDouble || weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Per-row running softmax state over the chunks seen so far, all [N] in the compute dtype.
struct RunningState {
  at::Tensor max;           // max of the scaled logits z
  at::Tensor sum;           // sum of exp(z - max)
  at::Tensor plogp;         // sum of exp(z - max) * (z - max); undefined without entropy
  at::Tensor target_logit;  // z at the target column
};

// Plain-ATen version of token_logprobs_chunk_forward_cuda. logits [N, Vc] is the raw chunk
// hidden @ weight_chunk^T; it is overwritten.
void chunk_forward_aten(at::Tensor& logits, double inv_temperature, const at::Tensor& targets, int64_t chunk_start,
                        bool first_chunk, RunningState& state) {
  const int64_t width = logits.size(1);
  if (inv_temperature != 1.0) logits.mul_(inv_temperature);
  const at::Tensor local = targets - chunk_start;
  const at::Tensor in_chunk = local.ge(0).logical_and(local.lt(width));
  const at::Tensor picked = logits.gather(1, local.clamp(0, width - 1).unsqueeze(1)).squeeze(1);
  state.target_logit = at::where(in_chunk, picked, state.target_logit);

  const at::Tensor chunk_max = logits.amax(1);
  const at::Tensor new_max = first_chunk ? chunk_max : at::maximum(state.max, chunk_max);
  logits.sub_(new_max.unsqueeze(1));  // z - new_max <= 0
  at::Tensor exps = logits.exp();
  const at::Tensor chunk_sum = exps.sum(1);
  at::Tensor chunk_plogp;
  if (state.plogp.defined()) chunk_plogp = exps.mul_(logits).sum(1);
  if (first_chunk) {
    state.sum = chunk_sum;
    if (state.plogp.defined()) state.plogp = chunk_plogp;
  } else {
    const at::Tensor shift = state.max - new_max;  // <= 0
    const at::Tensor scale = shift.exp();
    if (state.plogp.defined()) state.plogp = scale * (state.plogp + shift * state.sum) + chunk_plogp;
    state.sum = scale * state.sum + chunk_sum;
  }
  state.max = new_max;
}

// Plain-ATen version of token_logprobs_chunk_backward_cuda: logits [N, Vc] (raw chunk) becomes
// d loss / d (hidden @ weight_chunk^T) = grad * (onehot - p) / T, in place.
void chunk_backward_aten(at::Tensor& logits, double inv_temperature, const at::Tensor& targets, int64_t chunk_start,
                         const at::Tensor& logsumexp, const at::Tensor& grad) {
  const int64_t width = logits.size(1);
  if (inv_temperature != 1.0) logits.mul_(inv_temperature);
  logits.sub_(logsumexp.unsqueeze(1)).exp_().mul_(grad.neg().unsqueeze(1));  // -grad * p
  const at::Tensor local = targets - chunk_start;
  const at::Tensor in_chunk = local.ge(0).logical_and(local.lt(width));
  logits.scatter_add_(1, local.clamp(0, width - 1).unsqueeze(1), (grad * in_chunk.to(grad.scalar_type())).unsqueeze(1));
  if (inv_temperature != 1.0) logits.mul_(inv_temperature);
}

bool use_kernels(const at::Tensor& hidden, at::ScalarType compute, bool requested) {
#if GRPO_WITH_CUDA_KERNELS
  return requested && hidden.is_cuda() && compute == at::kFloat;
#else
  (void)hidden;
  (void)compute;
  (void)requested;
  return false;
#endif
}

// The chunked path. Forward saves hidden, weight, targets and the logsumexp [N]; backward
// recomputes each chunk's logits.
class TokenLogprobsFunction : public torch::autograd::Function<TokenLogprobsFunction> {
 public:
  // Returns {logprobs [N], entropy [N] (or [0] when not asked)}.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                               const at::Tensor& targets, double temperature, int64_t chunk_size, bool with_entropy,
                               bool kernels_requested) {
    const int64_t rows = hidden.size(0);
    const int64_t vocab = weight.size(0);
    const auto compute = compute_dtype(hidden, weight);
    const bool kernels = use_kernels(hidden, compute, kernels_requested);
    const double inv_temperature = 1.0 / temperature;
    const auto options = hidden.options().dtype(compute);
    const at::Tensor hidden_c = hidden.to(compute);
    const at::Tensor targets_c = targets.contiguous();

    RunningState state;
    state.max = at::full({rows}, -std::numeric_limits<double>::infinity(), options);
    state.sum = at::zeros({rows}, options);
    state.target_logit = at::zeros({rows}, options);
    if (with_entropy) state.plogp = at::zeros({rows}, options);
    for (int64_t start = 0; start < vocab; start += chunk_size) {
      const int64_t width = std::min(chunk_size, vocab - start);
      const at::Tensor weight_chunk = weight.narrow(0, start, width).to(compute);  // [Vc, D]
      at::Tensor logits = at::mm(hidden_c, weight_chunk.t());                      // [N, Vc]
      if (kernels) {
#if GRPO_WITH_CUDA_KERNELS
        token_logprobs_chunk_forward_cuda(logits, inv_temperature, targets_c, start, state.max, state.sum, state.plogp,
                                          state.target_logit);
#endif
      } else {
        chunk_forward_aten(logits, inv_temperature, targets_c, start, start == 0, state);
      }
    }
    const at::Tensor log_sum = state.sum.log();
    const at::Tensor logsumexp = state.max + log_sum;
    const at::Tensor logprobs = state.target_logit - logsumexp;
    const at::Tensor entropy = with_entropy ? log_sum - state.plogp / state.sum : at::empty({0}, options);

    ctx->save_for_backward({hidden, weight, targets_c, logsumexp});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["chunk_size"] = chunk_size;
    ctx->saved_data["kernels"] = kernels;
    ctx->mark_non_differentiable({entropy});
    return {logprobs, entropy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& hidden = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& targets = saved[2];
    const at::Tensor& logsumexp = saved[3];
    const double inv_temperature = 1.0 / ctx->saved_data["temperature"].toDouble();
    const int64_t chunk_size = ctx->saved_data["chunk_size"].toInt();
    const bool kernels = ctx->saved_data["kernels"].toBool();
    const bool need_hidden = ctx->needs_input_grad(0);
    const bool need_weight = ctx->needs_input_grad(1);
    const int64_t vocab = weight.size(0);
    const auto compute = logsumexp.scalar_type();
    const at::Tensor grad = grad_outputs[0].to(compute).contiguous();  // [N]
    const at::Tensor hidden_c = hidden.to(compute);

    at::Tensor grad_hidden;  // [N, D] compute dtype, accumulated over chunks
    at::Tensor grad_weight;  // [V, D] weight dtype, one slice per chunk
    if (need_hidden) grad_hidden = at::zeros(hidden.sizes(), hidden_c.options());
    if (need_weight)
      grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
    if (need_hidden || need_weight) {
      for (int64_t start = 0; start < vocab; start += chunk_size) {
        const int64_t width = std::min(chunk_size, vocab - start);
        const at::Tensor weight_chunk = weight.narrow(0, start, width).to(compute);  // [Vc, D]
        at::Tensor logits = at::mm(hidden_c, weight_chunk.t());                      // [N, Vc]
        if (kernels) {
#if GRPO_WITH_CUDA_KERNELS
          token_logprobs_chunk_backward_cuda(logits, inv_temperature, targets, start, logsumexp, grad);
#endif
        } else {
          chunk_backward_aten(logits, inv_temperature, targets, start, logsumexp, grad);
        }
        // logits now holds d loss / d logits [N, Vc].
        if (need_hidden) grad_hidden.addmm_(logits, weight_chunk);
        if (need_weight) {
          at::Tensor slice = grad_weight.narrow(0, start, width);  // [Vc, D], contiguous
          if (weight.scalar_type() == compute) {
            at::mm_out(slice, logits.t(), hidden_c);
          } else {
            slice.copy_(at::mm(logits.t(), hidden_c));
          }
        }
      }
    }
    if (need_hidden) grad_hidden = grad_hidden.to(hidden.scalar_type());
    return {grad_hidden, grad_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

TokenLogprobsResult token_logprobs_reference(const at::Tensor& hidden, const at::Tensor& weight,
                                             const at::Tensor& targets, const TokenLogprobsOptions& options) {
  check_inputs("token_logprobs_reference", hidden, weight, targets, options, /*chunked=*/false);
  const auto compute = compute_dtype(hidden, weight);
  at::Tensor logits = at::mm(hidden.to(compute), weight.to(compute).t());  // [N, V]
  if (options.temperature != 1.0) logits = logits / options.temperature;
  const at::Tensor log_probs = at::log_softmax(logits, 1);  // [N, V]
  TokenLogprobsResult result;
  result.logprobs = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1);
  if (options.with_entropy) {
    const at::NoGradGuard no_grad;
    const at::Tensor lp = log_probs.detach();
    result.entropy = -(lp.exp() * lp).sum(1);
  }
  return result;
}

TokenLogprobsResult token_logprobs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                   const TokenLogprobsOptions& options) {
  check_inputs("token_logprobs", hidden, weight, targets, options, /*chunked=*/true);
  const auto outputs = TokenLogprobsFunction::apply(hidden, weight, targets, options.temperature, options.chunk_size,
                                                    options.with_entropy, options.use_cuda_kernels);
  TokenLogprobsResult result;
  result.logprobs = outputs[0];
  if (options.with_entropy) result.entropy = outputs[1];
  return result;
}

}  // namespace grpo::kernels
