// The training forward of an RL or distillation step over prompt + completion rows: one pass of
// the model that returns the completion tokens' log-probs together with what the same pass also
// gives, the MTP modules' logits and the MoE sequence-wise balance loss, so that no trainer runs
// the trunk twice.
//
//   auto f = completion_forward(model, ids, mask, positions, L, {.temperature = 1.0, .mtp = true});
//   auto loss = grpo_loss(...).loss + model::mtp_loss(f.model, ids, mtp_mask, w) + f.balance_loss();
//
// Dimensions: N rows, P prompt tokens (left padded), L completion tokens (right padded), V vocabulary.
#pragma once

#include <cstdint>

#include <torch/types.h>

#include "grpo/model/causal_lm.h"

namespace grpo::train {

struct CompletionForwardOptions {
  double temperature = 1.0;  // logits / temperature before log_softmax (the sampling temperature)
  int64_t chunk_size = 0;    // > 0: log-probs through kernels::token_logprobs, this many vocabulary rows at a time
  bool mtp = false;          // also run the MTP modules (ForwardOutput::mtp_logits)
};

struct CompletionForward {
  torch::Tensor logps;         // [N, L] float32 (float64 for a float64 model), 0 where the completion is padding
  model::ForwardOutput model;  // the pass itself: hidden [N, P + L, D], mtp_logits, balance_loss
  // The MoE balance loss of the pass (a scalar), zero when the model has none in training mode.
  torch::Tensor balance_loss() const;
};

// input_ids [N, P + L] = prompt then completion, attention_mask [N, P + L] (0 at padding),
// position_ids [N, P + L] or undefined (0 .. P+L-1 for every row, which is what TRL's forward gets;
// pass cumsum(mask) - 1 to number the tokens as generation did). Position i - 1 predicts token i.
// chunk_size > 0: the [N, L, V] logits are never materialised (forward or backward); 0: the head's
// logits, then selective_logprobs (TRL's way).
CompletionForward completion_forward(model::CausalLM& model, const torch::Tensor& input_ids,
                                     const torch::Tensor& attention_mask, const torch::Tensor& position_ids,
                                     int64_t completion_length, const CompletionForwardOptions& options);

// The log-probs alone: completion_forward(...).logps.
torch::Tensor completion_logprobs(model::CausalLM& model, const torch::Tensor& input_ids,
                                  const torch::Tensor& attention_mask, const torch::Tensor& position_ids,
                                  int64_t completion_length, double temperature = 1.0, int64_t chunk_size = 0);

// log_softmax(logits)[ids] row by row, without materialising a second [N, L, V] tensor:
// logits [N, L, V], ids [N, L] -> [N, L] float32 (float64 for float64 logits).
torch::Tensor selective_logprobs(const torch::Tensor& logits, const torch::Tensor& ids);

}  // namespace grpo::train
