#include "grpo/model/mla.h"

#include <ATen/ATen.h>

#include <cmath>

#include "grpo/model/invariant_ops.h"
#include "grpo/model/rope.h"

namespace grpo::model {

MlaAttentionImpl::MlaAttentionImpl(const ModelConfig& cfg, double softmax_scale_factor,
                                   const torch::TensorOptions& options)
    : impl(cfg.attention_impl),
      heads_(cfg.num_attention_heads),
      nope_(cfg.qk_nope_head_dim),
      rope_(cfg.qk_rope_head_dim),
      v_dim_(cfg.v_head_dim),
      latent_(cfg.kv_lora_rank),
      interleave_(cfg.rope_interleave),
      scale_(softmax_scale_factor / std::sqrt(static_cast<double>(cfg.qk_head_dim()))) {
  const double std = cfg.initializer_range;
  const int64_t d = cfg.hidden_size;
  const int64_t q_out = heads_ * (nope_ + rope_);
  if (cfg.q_lora_rank) {
    q_a_proj = register_module("q_a_proj", Linear(d, *cfg.q_lora_rank, cfg.attention_bias, std, options));
    q_a_layernorm = register_module("q_a_layernorm", RMSNorm(*cfg.q_lora_rank, 1e-6, options));
    q_b_proj = register_module("q_b_proj", Linear(*cfg.q_lora_rank, q_out, false, std, options));
  } else {
    q_proj = register_module("q_proj", Linear(d, q_out, false, std, options));
  }
  kv_a_proj_with_mqa = register_module("kv_a_proj_with_mqa",
                                       Linear(d, latent_ + rope_, cfg.attention_bias, std, options));
  kv_a_layernorm = register_module("kv_a_layernorm", RMSNorm(latent_, 1e-6, options));
  kv_b_proj = register_module("kv_b_proj", Linear(latent_, heads_ * (nope_ + v_dim_), false, std, options));
  o_proj = register_module("o_proj", Linear(heads_ * v_dim_, d, cfg.attention_bias, std, options));
}

torch::Tensor MlaAttentionImpl::forward(const torch::Tensor& x, const AttentionContext& ctx) {
  const int64_t b = x.size(0), t = x.size(1);
  const auto q_flat = q_proj ? q_proj(x) : q_b_proj(q_a_layernorm(q_a_proj(x)));
  const auto q = q_flat.view({b, t, heads_, nope_ + rope_}).transpose(1, 2);  // [B, H, T, Dn+Dr]
  const auto q_nope = q.narrow(-1, 0, nope_);
  auto q_rope = q.narrow(-1, nope_, rope_);

  const auto compressed = kv_a_proj_with_mqa(x);                     // [B, T, C+Dr]
  auto latent = kv_a_layernorm(compressed.narrow(-1, 0, latent_));   // [B, T, C]
  auto k_rope = compressed.narrow(-1, latent_, rope_).unsqueeze(1);  // [B, 1, T, Dr]
  if (interleave_) {
    q_rope = apply_rope_interleaved(q_rope, ctx.cos, ctx.sin, ctx.kernels);
    k_rope = apply_rope_interleaved(k_rope, ctx.cos, ctx.sin, ctx.kernels);
  } else {
    q_rope = apply_rope_rotate_half(q_rope, ctx.cos, ctx.sin, ctx.kernels);
    k_rope = apply_rope_rotate_half(k_rope, ctx.cos, ctx.sin, ctx.kernels);
  }
  auto k_rope_flat = k_rope.squeeze(1);  // [B, T, Dr]
  if (ctx.cache != nullptr) std::tie(latent, k_rope_flat) = ctx.cache->append(ctx.cache_layer, latent, k_rope_flat);
  const int64_t s = latent.size(1);

  torch::Tensor out;  // [B, H, T, Dv]
  if (impl == AttentionImpl::naive) {
    const auto kv = kv_b_proj(latent).view({b, s, heads_, nope_ + v_dim_}).transpose(1, 2);  // [B, H, S, Dn+Dv]
    const auto k_nope = kv.narrow(-1, 0, nope_);
    const auto v = kv.narrow(-1, nope_, v_dim_);
    const auto k = torch::cat({k_nope, k_rope_flat.unsqueeze(1).expand({b, heads_, s, rope_})}, -1);
    const auto q_full = torch::cat({q_nope, q_rope}, -1);
    out = eager_attention(q_full, k, v, ctx.mask, scale_);
  } else {
    const auto w = kv_b_proj->weight.view({heads_, nope_ + v_dim_, latent_});
    const auto w_key = w.narrow(1, 0, nope_);                     // [H, Dn, C]
    const auto w_value = w.narrow(1, nope_, v_dim_);              // [H, Dv, C]
    if (invariant::applies(x)) {                                  // the same products through the batch-invariant ops
      const auto q_latent = invariant::matmul_nn(q_nope, w_key);  // [B, H, T, C]
      auto scores = invariant::matmul_nt(q_latent, latent.unsqueeze(1));  // [B, H, T, S]
      scores = (scores + invariant::matmul_nt(q_rope, k_rope_flat.unsqueeze(1))) * scale_;
      if (ctx.mask.defined()) scores = scores + ctx.mask;
      const auto out_latent = invariant::matmul_nn(invariant::softmax(scores), latent.unsqueeze(1));  // [B, H, T, C]
      out = invariant::matmul_nt(out_latent, w_value);                                                // [B, H, T, Dv]
    } else {
      const auto q_latent = torch::matmul(q_nope, w_key);                            // [B, H, T, C]
      auto scores = torch::matmul(q_latent, latent.unsqueeze(1).transpose(-2, -1));  // [B, H, T, S]
      scores = scores + torch::matmul(q_rope, k_rope_flat.unsqueeze(1).transpose(-2, -1));
      scores = scores * scale_;
      if (ctx.mask.defined()) scores = scores + ctx.mask;
      const auto probs = torch::softmax(scores, -1, torch::kFloat).to(x.scalar_type());
      const auto out_latent = torch::matmul(probs, latent.unsqueeze(1));  // [B, H, T, C]
      out = torch::matmul(out_latent, w_value.transpose(-2, -1));         // [B, H, T, Dv]
    }
  }
  return o_proj(out.transpose(1, 2).reshape({b, t, heads_ * v_dim_}));
}

}  // namespace grpo::model
