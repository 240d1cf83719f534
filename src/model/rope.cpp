#include "grpo/model/rope.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "grpo/kernels/rope.h"
#include "grpo/model/invariant_ops.h"
#include "grpo/model/layers.h"

namespace grpo::model {
namespace {

double yarn_mscale(double scale, double mscale) { return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

// HF's find_correction_dim: the dimension whose wavelength makes `rotations` turns over the
// original context.
double correction_dim(double rotations, int64_t dim, double base, int64_t max_pos) {
  return (static_cast<double>(dim) * std::log(static_cast<double>(max_pos) / (rotations * 2 * M_PI))) /
         (2 * std::log(base));
}

torch::Tensor default_inv_freq(double base, int64_t dim) {
  const auto exponents = torch::arange(0, dim, 2, torch::kFloat) / static_cast<double>(dim);
  return 1.0 / torch::pow(base, exponents);
}

}  // namespace

RotaryEmbedding::RotaryEmbedding(const ModelConfig& cfg) {
  const int64_t dim = cfg.rope_dim();
  const RopeConfig& r = cfg.rope;
  switch (r.type) {
    case RopeType::standard: inv_freq = default_inv_freq(r.theta, dim); break;
    case RopeType::linear: inv_freq = default_inv_freq(r.theta, dim) / r.factor; break;
    case RopeType::llama3: {
      auto base = default_inv_freq(r.theta, dim);
      const double old_len = static_cast<double>(r.original_max_position_embeddings);
      const double low_wavelen = old_len / r.low_freq_factor;
      const double high_wavelen = old_len / r.high_freq_factor;
      const auto wavelen = 2 * M_PI / base;
      auto scaled = torch::where(wavelen > low_wavelen, base / r.factor, base);
      const auto smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
      const auto smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
      const auto medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
      inv_freq = torch::where(medium, smoothed, scaled);
      break;
    }
    case RopeType::yarn: {
      const double factor = r.factor;
      if (r.attention_factor) {
        attention_scaling = *r.attention_factor;
      } else if (r.mscale > 0 && r.mscale_all_dim > 0) {
        attention_scaling = yarn_mscale(factor, r.mscale) / yarn_mscale(factor, r.mscale_all_dim);
      } else {
        attention_scaling = yarn_mscale(factor, 1.0);
      }
      const auto pos_freqs = torch::pow(r.theta, torch::arange(0, dim, 2, torch::kFloat) / static_cast<double>(dim));
      const auto extrapolation = 1.0 / pos_freqs;
      const auto interpolation = 1.0 / (factor * pos_freqs);
      double low = correction_dim(r.beta_fast, dim, r.theta, r.original_max_position_embeddings);
      double high = correction_dim(r.beta_slow, dim, r.theta, r.original_max_position_embeddings);
      if (r.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;
      const auto ramp = ((torch::arange(dim / 2, torch::kFloat) - low) / (high - low)).clamp(0, 1);
      const auto extrapolation_factor = 1 - ramp;
      inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
      break;
    }
  }
  // DeepSeek's MLA multiplies its softmax scale by mscale(factor, mscale_all_dim)^2 under YaRN.
  if (r.type != RopeType::standard && r.mscale_all_dim > 0) {
    const double m = yarn_mscale(r.factor, r.mscale_all_dim);
    softmax_scale_factor = m * m;
  }
}

std::pair<torch::Tensor, torch::Tensor> RotaryEmbedding::cos_sin(const torch::Tensor& position_ids,
                                                                 torch::ScalarType dtype) const {
  const auto freqs = position_ids.unsqueeze(-1).to(torch::kFloat) * inv_freq.to(position_ids.device());  // [B, T, R/2]
  const auto emb = torch::cat({freqs, freqs}, -1);
  if (invariant::applies(emb)) {  // the same table entry for a position wherever it sits in the batch
    return {(invariant::cos(emb) * attention_scaling).to(dtype), (invariant::sin(emb) * attention_scaling).to(dtype)};
  }
  return {(emb.cos() * attention_scaling).to(dtype), (emb.sin() * attention_scaling).to(dtype)};
}

torch::Tensor apply_rope_rotate_half(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                     KernelBackend kernels) {
  using grpo::kernels::RopeLayout;
  if (use_fused_kernels(kernels, x)) return grpo::kernels::rope(x, cos, sin, RopeLayout::rotate_half);
  return grpo::kernels::rope_reference(x, cos, sin, RopeLayout::rotate_half);
}

torch::Tensor apply_rope_interleaved(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                     KernelBackend kernels) {
  using grpo::kernels::RopeLayout;
  if (use_fused_kernels(kernels, x)) return grpo::kernels::rope(x, cos, sin, RopeLayout::interleaved);
  return grpo::kernels::rope_reference(x, cos, sin, RopeLayout::interleaved);
}

}  // namespace grpo::model
