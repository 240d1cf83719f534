// The GRPO objective, exactly as TRL's GRPOTrainer computes it (trl 1.16.0, pinned in
// scripts/requirements.txt; tests/train/trl_oracle.py drives TRL's own trainer and
// tests/train/test_trl_parity.cpp checks loss and every gradient against it).
//
//   auto adv = compute_advantages(rewards, G, RewardScaling::group);                  // [N]
//   auto logps = completion_logprobs(model, ids, mask, {}, L, cfg.temperature);       // [N, L], with grad
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
//            + beta * (exp(ref - logp) - (ref - logp) - 1) * r                      (k3 KL, if beta > 0)
//   where the KL's factor r (the ratio before the delta cap, with its gradient) is TRL's
//   use_bias_correction_kl (default on): it changes the KL's gradient even where r == 1.
// aggregated by loss_type:
//   grpo:    mean over sequences of (sum_t m*loss_t / max(sum_t m, 1))
//   bnpo:    sum m*loss / max(sum m, 1)
//   dr_grpo: sum m*loss / (N * max_completion_length)
//   dapo:    sum m*loss / max(num_items_in_batch, 1)   (num_items_in_batch 0: this batch's sum m)
// TRL further divides grpo/bnpo/dr_grpo by the gradient-accumulation steps and scales dapo's
// normaliser by GA steps / steps_per_generation / processes; that scaling is the trainer's job
// (pass num_items_in_batch accordingly), not this function's.
#pragma once

#include <torch/types.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "grpo/config/config.h"
#include "grpo/model/causal_lm.h"

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
  double beta = 0.0;                    // weight of the k3 KL to the reference policy (TRL default 0; R1: 0.001)
  bool use_bias_correction_kl = true;   // multiply the KL by the importance ratio (DeepSeek-V3.2; TRL default true)
  RewardScaling scale_rewards = RewardScaling::group;  // TRL default group
  int64_t max_completion_length = 512;  // tokens; dr_grpo's constant normaliser (TRL default 512)
  double temperature = 1.0;             // logits are divided by it before log_softmax (TRL default 1.0)

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
    v("temperature", temperature, "logits / temperature before log_softmax (the sampling temperature)",
      Check().gt(0));
  }
  std::string validate() const;  // "" when fine
};

// Advantages of group-contiguous rewards [N] (N = groups x group_size): (r - group mean), divided
// by (std + 1e-4) where std is the Bessel-corrected std of the group (group) or of the whole
// batch (batch), or not divided (none). A group of identical rewards gets 0. Same dtype as rewards.
torch::Tensor compute_advantages(const torch::Tensor& rewards, int64_t group_size, RewardScaling scaling);

// log_softmax(logits)[ids] row by row, without materialising a second [N, L, V] tensor:
// logits [N, L, V], ids [N, L] -> [N, L] float32 (float64 for float64 logits).
torch::Tensor selective_logprobs(const torch::Tensor& logits, const torch::Tensor& ids);

// Log-probs of the completion tokens: input_ids [N, P + L] = prompt (left padded) then completion
// (right padded), attention_mask [N, P + L] (0 at padding). Position i - 1 predicts token i; the
// logits are divided by `temperature`. Returns [N, L] (float32), 0 where the completion is padding
// (as TRL's fused head returns), with grad when the model has it.
// position_ids undefined = 0 .. P+L-1 for every row, regardless of the left padding: that is what
// TRL's forward gets (it passes no position_ids, and HF then uses arange(T)), although generation
// numbered the tokens from the first real one. Pass cumsum(mask) - 1 to use the generation's.
// chunk_size > 0: the log-probs come from the hidden states through kernels::token_logprobs, a
// vocabulary chunk of that many rows at a time, so the [N, L, V] logits are never materialised
// (forward or backward); 0: the head's logits, then selective_logprobs (TRL's way).
torch::Tensor completion_logprobs(model::CausalLM& model, const torch::Tensor& input_ids,
                                  const torch::Tensor& attention_mask, const torch::Tensor& position_ids,
                                  int64_t completion_length, double temperature = 1.0,
                                  int64_t chunk_size = 0);

struct GrpoLossInputs {
  torch::Tensor logps{};            // [N, L] current policy, with grad
  torch::Tensor old_logps{};        // [N, L] policy that sampled; undefined = logps.detach() (ratio 1)
  torch::Tensor ref_logps{};        // [N, L] reference policy; needed when beta > 0
  torch::Tensor advantages{};       // [N] (or [N, L] per token)
  torch::Tensor completion_mask{};  // [N, L] 1 = a completion token that counts
  double num_items_in_batch = 0;  // dapo: completion tokens of the accumulated batch (and ranks); 0 = this batch's
};

struct GrpoLossOutput {
  torch::Tensor loss;                  // scalar, with grad
  double kl = 0;                       // mean KL term per completion token (after the ratio factor; 0 when beta == 0), TRL's "kl"
  double clip_ratio_low_mean = 0;      // fraction with ratio < 1 - epsilon and A < 0 ("clip_ratio/low_mean")
  double clip_ratio_high_mean = 0;     // fraction with ratio > 1 + epsilon_high and A > 0 ("clip_ratio/high_mean")
  double clip_ratio_region_mean = 0;   // either ("clip_ratio/region_mean")
  double clip_ratio_low_min = 0;       // smallest per-sequence low fraction ("clip_ratio/low_min")
  double clip_ratio_high_max = 0;      // largest per-sequence high fraction ("clip_ratio/high_max")
  double ratio_mean = 0;               // mean importance ratio (after the delta cap) over completion tokens
};
// Fractions are over completion tokens at token level and over sequences at sequence level, as TRL.

GrpoLossOutput grpo_loss(const GrpoLossInputs& inputs, const GrpoLossConfig& config);

}  // namespace grpo::train
