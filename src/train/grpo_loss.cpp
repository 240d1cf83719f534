// The GRPO objective as trl 1.16.0's GRPOTrainer computes it; see grpo/train/grpo_loss.h.
#include "grpo/train/grpo_loss.h"

#include <torch/torch.h>

#include <limits>

namespace grpo::train {

std::string GrpoLossConfig::validate() const {
  if (delta && *delta <= 1.0 + epsilon_upper()) {
    // TRL accepts it; the cap then binds inside the clip band, which is surely a mistake.
    return "delta must be > 1 + epsilon_high (" + std::to_string(1.0 + epsilon_upper()) + "), found " +
           std::to_string(*delta);
  }
  if (sampler_clip_min && sampler_clip_max && *sampler_clip_min >= *sampler_clip_max) {
    return "sampler_clip_min (" + std::to_string(*sampler_clip_min) + ") must be below sampler_clip_max (" +
           std::to_string(*sampler_clip_max) + ")";
  }
  return "";
}

namespace {

// TRL's nanstd without NaNs: mean of squared deviations times n / (n - 1); n == 1 gives 0 (TRL
// special-cases a single generation to a zero std).
torch::Tensor bessel_std(const torch::Tensor& x, int64_t dim) {
  const int64_t n = x.size(dim);
  if (n <= 1) return torch::zeros_like(x.select(dim, 0));
  const auto mean = x.mean(dim, /*keepdim=*/true);
  const auto var = (x - mean).pow(2).mean(dim) * (static_cast<double>(n) / static_cast<double>(n - 1));
  return var.sqrt();
}

void check_2d(const torch::Tensor& t, const char* name, const torch::Tensor& like) {
  TORCH_CHECK(t.dim() == 2 && t.sizes() == like.sizes(), "grpo_loss: expected ", name, " of shape ", like.sizes(),
              ", got ", t.sizes());
}

}  // namespace

torch::Tensor compute_advantages(const torch::Tensor& rewards, int64_t group_size, RewardScaling scaling) {
  TORCH_CHECK(rewards.dim() == 1, "compute_advantages: expected rewards [N], got ", rewards.sizes());
  TORCH_CHECK(group_size > 0 && rewards.size(0) % group_size == 0, "compute_advantages: ", rewards.size(0),
              " rewards do not split into groups of ", group_size);
  const auto grouped = rewards.view({-1, group_size});
  const auto mean = grouped.mean(1).repeat_interleave(group_size);
  const auto centred = rewards - mean;
  switch (scaling) {
    case RewardScaling::none: return centred;
    case RewardScaling::group:
      return centred / (bessel_std(grouped, 1).repeat_interleave(group_size) + kAdvantageEpsilon);
    case RewardScaling::batch: return centred / (bessel_std(rewards, 0) + kAdvantageEpsilon);
  }
  TORCH_CHECK(false, "compute_advantages: unknown scaling");
}

GrpoLossOutput grpo_loss(const GrpoLossInputs& in, const GrpoLossConfig& cfg) {
  const auto& logps = in.logps;
  TORCH_CHECK(logps.defined() && logps.dim() == 2, "grpo_loss: expected logps [N, L]");
  check_2d(in.completion_mask, "completion_mask", logps);
  const auto mask = in.completion_mask.to(logps.scalar_type());
  const auto old_logps = in.old_logps.defined() ? in.old_logps : logps.detach();
  check_2d(old_logps, "old_logps", logps);
  TORCH_CHECK(in.advantages.defined() && in.advantages.size(0) == logps.size(0), "grpo_loss: expected advantages [",
              logps.size(0), "], got ", in.advantages.defined() ? in.advantages.sizes() : torch::IntArrayRef{});
  const auto advantages = in.advantages.dim() == 1 ? in.advantages.unsqueeze(1) : in.advantages;
  const bool sequence_level = cfg.importance_sampling_level == ImportanceSamplingLevel::sequence;
  const double eps_low = cfg.epsilon_low(), eps_high = cfg.epsilon_upper();
  const auto tokens_per_row = mask.sum(-1);

  const auto log_ratio = logps - old_logps;
  // [N, L] at token level, [N, 1] at sequence level (broadcast over the sequence's tokens).
  const auto log_weights = sequence_level ? ((log_ratio * mask).sum(-1) / tokens_per_row.clamp_min(1.0)).unsqueeze(-1)
                                          : log_ratio;
  auto ratio = log_weights.exp();
  const auto uncapped_ratio = ratio;
  const auto clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high);
  if (cfg.delta) ratio = ratio.clamp_max(*cfg.delta);
  auto per_token_loss = -torch::min(ratio * advantages, clipped * advantages);

  // The sampler correction's weight [N, L] (token modes) or [N, 1] (sequence modes), no gradient.
  torch::Tensor weight, sampler_diff;
  if (cfg.sampler_correction != SamplerCorrection::none) {
    TORCH_CHECK(in.sampler_logps.defined(), "grpo_loss: sampler_correction needs sampler_logps");
    check_2d(in.sampler_logps, "sampler_logps", logps);
    torch::NoGradGuard no_grad;  // the weight only; the loss it multiplies keeps its gradient (below)
    sampler_diff = torch::nan_to_num((old_logps.detach() - in.sampler_logps.to(logps.scalar_type())) * mask, 0.0);
    const bool per_sequence = cfg.sampler_correction == SamplerCorrection::sequence_truncate ||
                              cfg.sampler_correction == SamplerCorrection::sequence_mask;
    weight = (per_sequence ? sampler_diff.sum(-1, /*keepdim=*/true) : sampler_diff).exp();
    if (cfg.sampler_correction == SamplerCorrection::token_truncate ||
        cfg.sampler_correction == SamplerCorrection::sequence_truncate) {
      if (cfg.sampler_clip_min) weight = weight.clamp_min(*cfg.sampler_clip_min);
      if (cfg.sampler_clip_max) weight = weight.clamp_max(*cfg.sampler_clip_max);
    } else {
      const double lo = cfg.sampler_clip_min.value_or(-std::numeric_limits<double>::infinity());
      const double hi = cfg.sampler_clip_max.value_or(std::numeric_limits<double>::infinity());
      weight = weight.masked_fill((weight < lo) | (weight > hi), 0.0);
    }
  }
  if (weight.defined()) per_token_loss = per_token_loss * weight;

  torch::Tensor per_token_kl;
  if (cfg.beta != 0.0) {
    TORCH_CHECK(in.ref_logps.defined(), "grpo_loss: beta = ", cfg.beta, " needs ref_logps");
    check_2d(in.ref_logps, "ref_logps", logps);
    const auto diff = in.ref_logps - logps;
    per_token_kl = diff.exp() - diff - 1.0;
    if (cfg.use_bias_correction_kl) per_token_kl = per_token_kl * uncapped_ratio;
    per_token_loss = per_token_loss + cfg.beta * per_token_kl;
  }

  const auto masked_sum = (per_token_loss * mask).sum();
  const double rows = in.rows_in_batch > 0 ? in.rows_in_batch : static_cast<double>(logps.size(0));
  const auto tokens = in.tokens_in_batch > 0 ? torch::full({}, in.tokens_in_batch, mask.options()) : mask.sum();
  GrpoLossOutput out;
  switch (cfg.loss_type) {
    case LossType::grpo:
      out.loss = ((per_token_loss * mask).sum(-1) / tokens_per_row.clamp_min(1.0)).sum() / rows;
      break;
    case LossType::bnpo:
    case LossType::dapo: out.loss = masked_sum / tokens.clamp_min(1.0); break;
    case LossType::dr_grpo:
      TORCH_CHECK(cfg.max_completion_length > 0, "grpo_loss: dr_grpo needs max_completion_length > 0");
      out.loss = masked_sum / (rows * static_cast<double>(cfg.max_completion_length));
      break;
  }

  // Metrics, as TRL logs them (single process), as 0-dim tensors of the mask's dtype: no device sync here.
  torch::NoGradGuard no_grad;
  const auto global_masked_mean = [&](const torch::Tensor& x) {
    if (x.size(1) == 1) return x.sum() / static_cast<double>(x.size(0));
    return (x * mask).sum() / mask.sum().clamp_min(1.0);
  };
  // Per-sequence means (rows of a sequence-level ratio are one value each).
  const auto seq_means = [&](const torch::Tensor& x) {
    if (x.size(1) == 1) return x.squeeze(1);
    return (x * mask).sum(-1) / tokens_per_row.clamp_min(1.0);
  };
  out.kl = per_token_kl.defined() ? global_masked_mean(per_token_kl) : torch::zeros({}, mask.options());
  const auto low = ((ratio < 1.0 - eps_low) & (advantages < 0)).to(mask.scalar_type());
  const auto high = ((ratio > 1.0 + eps_high) & (advantages > 0)).to(mask.scalar_type());
  const auto region = ((low + high) > 0).to(mask.scalar_type());
  out.clip_ratio_low_mean = global_masked_mean(low);
  out.clip_ratio_high_mean = global_masked_mean(high);
  out.clip_ratio_region_mean = global_masked_mean(region);
  // The min / max skip sequences without tokens at token level (TRL's NaN rows, skipped by
  // nanmin / nanmax); with no sequence left they are 0.
  const double inf = std::numeric_limits<double>::infinity();
  const auto counted = low.size(1) == 1 ? torch::ones_like(tokens_per_row, torch::kBool) : tokens_per_row > 0;
  const auto none = counted.any().logical_not();
  out.clip_ratio_low_min = seq_means(low).masked_fill(counted.logical_not(), inf).min().masked_fill(none, 0.0);
  out.clip_ratio_high_max = seq_means(high).masked_fill(counted.logical_not(), -inf).max().masked_fill(none, 0.0);
  out.ratio_mean = global_masked_mean(ratio);
  if (weight.defined()) {
    const auto on = mask > 0;
    const auto diff = (old_logps.detach() - in.sampler_logps.to(logps.scalar_type())).abs();
    const auto any = on.any();
    const auto zero = torch::zeros({}, mask.options());
    out.sampler_logp_diff_mean = torch::where(any, (diff * mask).sum() / mask.sum().clamp_min(1.0), zero);
    out.sampler_logp_diff_max = torch::where(any, diff.masked_fill(on.logical_not(), -inf).max(), zero);
    // Token modes: over completion tokens; sequence modes: every sequence.
    const auto counted_w = weight.size(1) == 1 ? torch::ones_like(weight, torch::kBool) : on;
    const auto n = counted_w.sum();
    out.sampler_weight_count = n.to(mask.scalar_type());
    const auto some = n > 0;
    out.sampler_weight_mean = torch::where(some, (weight * counted_w).sum() / n.clamp_min(1).to(mask.scalar_type()),
                                           zero);
    out.sampler_weight_min = torch::where(some, weight.masked_fill(counted_w.logical_not(), inf).min(), zero);
    out.sampler_weight_max = torch::where(some, weight.masked_fill(counted_w.logical_not(), -inf).max(), zero);
  }
  return out;
}

}  // namespace grpo::train
