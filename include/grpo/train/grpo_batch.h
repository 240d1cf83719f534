// The GRPO training batch of one step: the groups' prompts (left padded) and completions (right
// padded) as tensors, with the sampler's log-probs, the completion mask and the rewards. Rows are
// group-contiguous (rows g*G .. g*G+G-1 share a prompt), as compute_advantages expects.
//
//   GrpoBatch batch = build_grpo_batch(rollouts.groups, cfg.mask_truncated_completions);
//   auto mb = batch.rows(b, m);   // rows [b, b + m) for one micro-batch
//
// Dimensions: N completions, P = longest prompt, L = longest completion (both at least 1).
#pragma once

#include <cstdint>
#include <vector>

#include <torch/types.h>

#include "grpo/train/scored_rollouts.h"

namespace grpo::train {

struct GrpoBatch {
  torch::Tensor input_ids;        // [N, P + L] int64: prompt left padded, then the completion right padded
  torch::Tensor attention_mask;   // [N, P + L] int64: 1 = real token
  torch::Tensor position_ids;     // [N, P + L] int64: real tokens counted from the first prompt token
  torch::Tensor completion_mask;  // [N, L] float32: 1 = a completion token that gets loss
  torch::Tensor sampler_logps;    // [N, L] float32: log-probs the engine recorded (0 at padding)
  torch::Tensor rewards;          // [N] float32: weighted totals
  torch::Tensor ref_logps;        // [N, L] the reference policy's, when beta > 0 (set by the trainer)
  // [N, P + L, M, K] int64 when the completions carry Completion::routing: the experts each of the M
  // decoder MoE layers chose for that position when sampling; -1 where nothing ran (padding, the
  // completion's last token).
  torch::Tensor routing;
  std::vector<double> lengths;  // [N] completion tokens
  int64_t truncated = 0;        // completions that ended at max_new_tokens
  int64_t group_size = 0;       // G
  int64_t staleness = 0;        // optimizer steps between the weights that sampled and the trainer's (async)

  int64_t size() const { return input_ids.size(0); }                     // N
  int64_t completion_length() const { return completion_mask.size(1); }  // L
  double completion_tokens() const;                                      // sum of completion_mask

  // Rows [begin, begin + count) of every tensor (views; lengths and counts left empty).
  GrpoBatch rows(int64_t begin, int64_t count) const;
};

// Packs the groups (each of the same G) into one batch; with mask_truncated, completions that ended
// at max_new_tokens get no loss (completion_mask 0). Throws std::invalid_argument for no groups or
// groups of different sizes.
GrpoBatch build_grpo_batch(const std::vector<RolloutGroup>& groups, bool mask_truncated);

}  // namespace grpo::train
