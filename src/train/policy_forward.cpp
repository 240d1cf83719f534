#include "grpo/train/policy_forward.h"

#include <torch/torch.h>

#include <vector>

#include "grpo/kernels/token_logprobs.h"
#include "grpo/model/invariant_ops.h"

namespace grpo::train {

torch::Tensor CompletionForward::balance_loss() const {
  if (model.balance_loss.defined()) return model.balance_loss;
  return torch::zeros({}, logps.options());
}

torch::Tensor selective_logprobs(const torch::Tensor& logits, const torch::Tensor& ids) {
  TORCH_CHECK(logits.dim() == 3 && ids.dim() == 2 && logits.size(0) == ids.size(0) && logits.size(1) == ids.size(1),
              "selective_logprobs: expected logits [N, L, V] and ids [N, L], got ", logits.sizes(), " and ",
              ids.sizes());
  const auto dtype = logits.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  std::vector<torch::Tensor> rows;
  rows.reserve(logits.size(0));
  // One row at a time: the float32 log_softmax of a row is the only [L, V] temporary.
  for (int64_t i = 0; i < logits.size(0); ++i) {
    const auto row = logits[i].to(dtype);
    const auto picked = row.gather(-1, ids[i].unsqueeze(-1)).squeeze(-1);
    rows.push_back(picked - row.logsumexp(-1));
  }
  return torch::stack(rows);
}

CompletionForward completion_forward(model::CausalLM& model, const torch::Tensor& input_ids,
                                     const torch::Tensor& attention_mask, const torch::Tensor& position_ids,
                                     int64_t completion_length, const CompletionForwardOptions& options) {
  TORCH_CHECK(input_ids.dim() == 2 && completion_length > 0 && completion_length < input_ids.size(1),
              "completion_forward: expected input_ids [N, P + L] with 0 < L = ", completion_length, " < P + L, got ",
              input_ids.sizes());
  TORCH_CHECK(options.temperature > 0, "completion_forward: temperature must be > 0, got ", options.temperature);
  const int64_t total = input_ids.size(1);
  const int64_t prompt = total - completion_length;
  model::ForwardOptions fo;
  fo.logits = false;
  fo.return_hidden = true;
  fo.mtp = options.mtp;
  CompletionForward out;
  out.model = model->forward(input_ids, position_ids, attention_mask, nullptr, fo);
  // Hidden state at position i predicts token i + 1: positions P - 1 .. P + L - 2.
  const auto hidden = out.model.hidden.slice(1, prompt - 1, total - 1);  // [N, L, D]
  const auto completion_ids = input_ids.slice(1, prompt, total).to(hidden.device());
  if (model::invariant::applies(hidden)) {    // consistent mode: the sampler's own op (rollout/sampling.h)
    const auto logits = model->head(hidden);  // [N, L, V]
    out.logps = model::invariant::token_logprobs(logits.reshape({-1, logits.size(2)}), completion_ids.reshape({-1}),
                                                 options.temperature)
                    .view({hidden.size(0), hidden.size(1)});
  } else if (options.chunk_size > 0) {  // the head's logits never exist whole: kernels/token_logprobs.h
    kernels::TokenLogprobsOptions o;
    o.temperature = options.temperature;
    o.chunk_size = options.chunk_size;
    const int64_t n = hidden.size(0), l = hidden.size(1);
    out.logps = kernels::token_logprobs(hidden.reshape({n * l, hidden.size(2)}), model->lm_head,
                                        completion_ids.reshape({-1}), o)
                    .logprobs.view({n, l});
  } else {
    auto logits = model->head(hidden);
    if (options.temperature != 1.0) logits = logits / options.temperature;
    out.logps = selective_logprobs(logits, completion_ids);
  }
  if (attention_mask.defined()) {
    const auto pad = attention_mask.slice(1, prompt, total).to(out.logps.device()) == 0;
    out.logps = out.logps.masked_fill(pad, 0.0);
  }
  return out;
}

torch::Tensor completion_logprobs(model::CausalLM& model, const torch::Tensor& input_ids,
                                  const torch::Tensor& attention_mask, const torch::Tensor& position_ids,
                                  int64_t completion_length, double temperature, int64_t chunk_size) {
  return completion_forward(model, input_ids, attention_mask, position_ids, completion_length,
                            {.temperature = temperature, .chunk_size = chunk_size})
      .logps;
}

}  // namespace grpo::train
