// The GRPO objective, exactly as TRL's GRPOTrainer computes it (trl 1.16.0, pinned in
// scripts/requirements.txt; tests/train/trl_oracle.py drives TRL's own trainer and
// tests/train/test_trl_parity.cpp checks loss and every gradient against it).
//
//   auto adv = compute_advantages(rewards, G, RewardScaling::group);                  // [N]
//   auto logps = completion_logprobs(model, ids, mask, {}, L, temperature);            // [N, L], with grad
//   auto out = grpo_loss({.logps = logps, .old_logps = old, .ref_logps = ref,
//                         .advantages = adv, .completion_mask = cmask}, cfg);
//   out.loss.backward();
//
// Dimensions: N completions (prompts x G, group-contiguous: rows g*G .. g*G+G-1 share a prompt),
// P prompt tokens (left padded), L completion tokens (right padded), V vocabulary.
//
// Per token t of completion i (mask m, advantage A_i):
//   log_ratio = logp - old_logp; token level: r = exp(log_ratio); sequence level (GSPO):
//   r_i = exp(sum_t m*log_ratio / max(sum_t m, 1)) for every token of the sequence;
//   loss_t = -min(min(r, delta) * A, clamp(r, 1 - epsilon, 1 + epsilon_high) * A)   (delta only if set)
//            (times the sampler correction's weight w, when on; SamplerCorrection above)
//            + beta * (exp(ref - logp) - (ref - logp) - 1) * r                      (k3 KL, if beta > 0)
//   where the KL's factor r (the ratio before the delta cap, with its gradient) is TRL's
//   use_bias_correction_kl (default on): it changes the KL's gradient even where r == 1.
// aggregated by loss_type, over the whole step batch of R rows and T completion tokens
// (GrpoLossInputs::rows_in_batch / tokens_in_batch; 0 = this call's own N and sum m):
//   grpo:    sum over sequences of (sum_t m*loss_t / max(sum_t m, 1)) / R
//   bnpo:    sum m*loss / max(T, 1)
//   dr_grpo: sum m*loss / (R * max_completion_length)
//   dapo:    sum m*loss / max(T, 1)
// So the loss of every micro-batch of a step, each given the step's R and T, adds up to the loss of
// the step's batch in one call, and its gradient is the same: the function owns the whole
// normaliser, the trainer only sums. With R and T left at 0, one call equals TRL's loss for one
// gradient-accumulation step (TRL's dapo normaliser num_items_in_batch is T here; bnpo differs from
// dapo in TRL only by how gradient accumulation is counted).
#pragma once

#include <torch/types.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "grpo/config/config.h"
#include "grpo/model/causal_lm.h"
#include "grpo/train/policy_forward.h"

namespace grpo::train {

// How token losses are reduced to one number (TRL's GRPOConfig.loss_type).
enum class LossType { grpo, bnpo, dr_grpo, dapo };
constexpr auto config_enum_names(LossType) {
  return std::array{std::pair{LossType::grpo, "grpo"}, std::pair{LossType::bnpo, "bnpo"},
                    std::pair{LossType::dr_grpo, "dr_grpo"}, std::pair{LossType::dapo, "dapo"}};
}

// What the centred rewards are divided by (TRL's GRPOConfig.scale_rewards).
enum class RewardScaling { group, batch, none };
constexpr auto config_enum_names(RewardScaling) {
  return std::array{std::pair{RewardScaling::group, "group"}, std::pair{RewardScaling::batch, "batch"},
                    std::pair{RewardScaling::none, "none"}};
}

// Importance ratio per token, or one per sequence (GSPO) (TRL's importance_sampling_level).
enum class ImportanceSamplingLevel { token, sequence };
constexpr auto config_enum_names(ImportanceSamplingLevel) {
  return std::array{std::pair{ImportanceSamplingLevel::token, "token"},
                    std::pair{ImportanceSamplingLevel::sequence, "sequence"}};
}

// Importance-sampling correction for the difference between the sampler's log-probs and the
// trainer's (TRL's vllm_importance_sampling_correction with vllm_importance_sampling_mode; verl's
// TIS / MIS): a weight w = exp(old_logp - sampler_logp) per token, or exp of its sum per sequence,
// truncated to [clip_min, clip_max] or set to 0 outside it (mask), multiplies each token's policy
// loss (not the KL). old_logp is the trainer's log-prob under the policy that sampled.
enum class SamplerCorrection { none, token_truncate, token_mask, sequence_truncate, sequence_mask };
constexpr auto config_enum_names(SamplerCorrection) {
  return std::array{std::pair{SamplerCorrection::none, "none"},
                    std::pair{SamplerCorrection::token_truncate, "token_truncate"},
                    std::pair{SamplerCorrection::token_mask, "token_mask"},
                    std::pair{SamplerCorrection::sequence_truncate, "sequence_truncate"},
                    std::pair{SamplerCorrection::sequence_mask, "sequence_mask"}};
}

// The added constant of TRL's advantage denominator: (r - mean) / (std + kAdvantageEpsilon).
inline constexpr double kAdvantageEpsilon = 1e-4;

// Defaults are those of trl 1.16.0's GRPOConfig.
struct GrpoLossConfig {
  LossType loss_type = LossType::dapo;  // TRL default dapo; grpo = per-sequence mean (DeepSeekMath)
  double epsilon = 0.2;                 // lower clip: ratio >= 1 - epsilon (TRL default 0.2)
  std::optional<double> epsilon_high;   // upper clip: ratio <= 1 + epsilon_high; unset = epsilon (DAPO: 0.28)
  std::optional<double> delta;          // two-sided clipping (INTELLECT-2): the unclipped ratio is capped at
                                        // delta, e.g. 4; unset = off (TRL default None)
  ImportanceSamplingLevel importance_sampling_level = ImportanceSamplingLevel::token;  // TRL default token
  double beta = 0.0;                   // weight of the k3 KL to the reference policy (TRL default 0; R1: 0.001)
  bool use_bias_correction_kl = true;  // multiply the KL by the importance ratio (DeepSeek-V3.2; TRL default true)
  RewardScaling scale_rewards = RewardScaling::group;  // TRL default group
  int64_t max_completion_length = 512;                 // tokens; dr_grpo's constant normaliser (TRL default 512)
  // Sampler/trainer correction (TRL's default with vLLM: sequence_mask, clip_max 3). grpo's sampler
  // is its own model, so the default is none; see docs/training.md.
  SamplerCorrection sampler_correction = SamplerCorrection::none;
  std::optional<double> sampler_clip_min;        // lower bound of the weight; unset = none (TRL default)
  std::optional<double> sampler_clip_max = 3.0;  // upper bound; unset = none (TRL default 3.0)
  // The log-probs' temperature is the sampling temperature (grpo.generation.sampling.temperature):
  // the ratio compares log-probs of the distribution that sampled.

  double epsilon_low() const { return epsilon; }
  double epsilon_upper() const { return epsilon_high.value_or(epsilon); }

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("loss_type", loss_type, "aggregation: grpo | bnpo | dr_grpo | dapo");
    v("epsilon", epsilon, "lower clip range: ratio >= 1 - epsilon, e.g. 0.2", Check().ge(0).lt(1));
    v("epsilon_high", epsilon_high, "upper clip range: ratio <= 1 + epsilon_high; unset = epsilon (DAPO: 0.28)",
      Check().ge(0));
    v("delta", delta, "two-sided clipping: cap of the unclipped ratio, e.g. 4; unset = off", Check().gt(1));
    v("importance_sampling_level", importance_sampling_level, "token | sequence (GSPO)");
    v("beta", beta, "weight of the k3 KL to the reference model, e.g. 0.001; 0 = no reference", Check().ge(0));
    v("use_bias_correction_kl", use_bias_correction_kl,
      "multiply the per-token KL by the importance ratio (unbiased reverse-KL gradient off-policy)");
    v("scale_rewards", scale_rewards, "advantage denominator: group std | batch std | none (Dr. GRPO)");
    v("max_completion_length", max_completion_length, "tokens; dr_grpo's normaliser", Check().gt(0));
    v("sampler_correction", sampler_correction,
      "importance weight between the sampler's and the trainer's log-probs: none | token_truncate | token_mask | "
      "sequence_truncate | sequence_mask (TRL's vllm_importance_sampling_mode)");
    v("sampler_clip_min", sampler_clip_min, "sampler_correction: lower bound of the weight; unset = none",
      Check().ge(0));
    v("sampler_clip_max", sampler_clip_max, "sampler_correction: upper bound of the weight; unset = none",
      Check().gt(0));
  }
  // Keys that were removed, with what replaced them (the unknown-key error shows the hint).
  static constexpr std::array<config::RemovedKey, 1> removed_keys{
      {{"temperature", "the log-probs use the sampling temperature, generation.sampling.temperature"}}};
  std::string validate() const;  // "" when fine
};

// Advantages of group-contiguous rewards [N] (N = groups x group_size): (r - group mean), divided
// by (std + 1e-4) where std is the Bessel-corrected std of the group (group) or of the whole
// batch (batch), or not divided (none). A group of identical rewards gets 0. Same dtype as rewards.
torch::Tensor compute_advantages(const torch::Tensor& rewards, int64_t group_size, RewardScaling scaling);

struct GrpoLossInputs {
  torch::Tensor logps{};            // [N, L] current policy, with grad
  torch::Tensor old_logps{};        // [N, L] policy that sampled; undefined = logps.detach() (ratio 1)
  torch::Tensor ref_logps{};        // [N, L] reference policy; needed when beta > 0
  torch::Tensor advantages{};       // [N] (or [N, L] per token)
  torch::Tensor completion_mask{};  // [N, L] 1 = a completion token that counts
  double rows_in_batch = 0;         // R: sequences of the step's batch (all micro-batches, ranks); 0 = N
  double tokens_in_batch = 0;       // T: completion tokens of the step's batch; 0 = this call's sum of the mask
  torch::Tensor sampler_logps{};    // [N, L] what the sampler recorded; needed when sampler_correction != none
};

// The metrics are 0-dim tensors without grad (the logps' dtype), so that a trainer can add them up over
// micro-batches and read them back once per step.
struct GrpoLossOutput {
  torch::Tensor loss;  // scalar, with grad
  torch::Tensor kl;    // mean KL term per completion token (after the ratio factor; 0 when beta == 0), TRL's "kl"
  torch::Tensor clip_ratio_low_mean;     // fraction with ratio < 1 - epsilon and A < 0 ("clip_ratio/low_mean")
  torch::Tensor clip_ratio_high_mean;    // fraction with ratio > 1 + epsilon_high and A > 0 ("clip_ratio/high_mean")
  torch::Tensor clip_ratio_region_mean;  // either ("clip_ratio/region_mean")
  torch::Tensor clip_ratio_low_min;      // smallest per-sequence low fraction ("clip_ratio/low_min")
  torch::Tensor clip_ratio_high_max;     // largest per-sequence high fraction ("clip_ratio/high_max")
  torch::Tensor ratio_mean;              // mean importance ratio (after the delta cap) over completion tokens
  // Sampler correction (defined when on), as TRL logs them: |old - sampler| over completion tokens
  // ("sampling/sampling_logp_difference/mean|max"), and the weight w over completion tokens (token
  // modes) or sequences ("sampling/importance_sampling_ratio/min|mean|max").
  torch::Tensor sampler_logp_diff_mean, sampler_logp_diff_max;
  torch::Tensor sampler_weight_min, sampler_weight_mean, sampler_weight_max;
  torch::Tensor sampler_weight_count;  // the tokens or sequences those are over
};
// Fractions are over completion tokens at token level and over sequences at sequence level, as TRL.

GrpoLossOutput grpo_loss(const GrpoLossInputs& inputs, const GrpoLossConfig& config);

}  // namespace grpo::train
