#include "grpo/model/attention.h"

#include <ATen/ATen.h>

#include <cmath>

#include "grpo/model/invariant_ops.h"
#include "grpo/model/rope.h"

namespace grpo::model {

torch::Tensor causal_mask(const torch::Tensor& attention_mask, int64_t batch, int64_t q_len, int64_t past,
                          torch::ScalarType dtype, const torch::Device& device) {
  const int64_t keys = past + q_len;
  const auto opts = torch::TensorOptions().device(device);
  const auto q_pos = torch::arange(past, keys, opts.dtype(torch::kLong)).unsqueeze(1);        // [T, 1]
  const auto k_pos = torch::arange(0, keys, opts.dtype(torch::kLong)).unsqueeze(0);           // [1, S]
  auto allowed = (k_pos <= q_pos).unsqueeze(0).unsqueeze(0).expand({batch, 1, q_len, keys});  // [B,1,T,S]
  if (attention_mask.defined()) {
    TORCH_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == batch && attention_mask.size(1) == keys,
                "attention_mask: expected [", batch, ", ", keys, "] (batch, past + new tokens), got ",
                attention_mask.sizes());
    // Values are document numbers (0 = padding): a query sees earlier keys of its own document, so
    // packed sequences do not attend across documents; a 0/1 mask is the one-document case.
    const auto seg = attention_mask.to(device).to(torch::kLong);
    const auto seg_k = seg.view({batch, 1, 1, keys});
    const auto seg_q = seg.narrow(1, past, q_len).view({batch, 1, q_len, 1});
    allowed = allowed.logical_and(seg_k.ne(0)).logical_and(seg_k.eq(seg_q));
  }
  const double lowest = dtype == torch::kDouble     ? std::numeric_limits<double>::lowest()
                        : dtype == torch::kBFloat16 ? -3.3895313892515355e38
                        : dtype == torch::kHalf     ? -65504.0
                                                    : static_cast<double>(std::numeric_limits<float>::lowest());
  return torch::zeros({batch, 1, q_len, keys}, opts.dtype(dtype)).masked_fill(allowed.logical_not(), lowest);
}

torch::Tensor eager_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& mask, double scale) {
  if (invariant::applies(q)) {
    auto scores = invariant::matmul_nt(q, k) * scale;
    if (mask.defined()) scores = scores + mask;
    return invariant::matmul_nn(invariant::softmax(scores), v);
  }
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale;
  if (mask.defined()) scores = scores + mask;
  const auto probs = torch::softmax(scores, -1, torch::kFloat).to(q.scalar_type());
  return torch::matmul(probs, v);
}

GqaAttentionImpl::GqaAttentionImpl(const ModelConfig& cfg, const torch::TensorOptions& options)
    : heads_(cfg.num_attention_heads), kv_heads_(cfg.kv_heads()), head_dim_(cfg.dense_head_dim()) {
  const bool qkv_bias = cfg.qkv_bias || cfg.attention_bias;
  const double std = cfg.initializer_range;
  const int64_t d = cfg.hidden_size;
  q_proj = register_module("q_proj", Linear(d, heads_ * head_dim_, qkv_bias, std, options));
  k_proj = register_module("k_proj", Linear(d, kv_heads_ * head_dim_, qkv_bias, std, options));
  v_proj = register_module("v_proj", Linear(d, kv_heads_ * head_dim_, qkv_bias, std, options));
  o_proj = register_module("o_proj", Linear(heads_ * head_dim_, d, cfg.attention_bias, std, options));
}

torch::Tensor GqaAttentionImpl::forward(const torch::Tensor& x, const AttentionContext& ctx) {
  const int64_t b = x.size(0), t = x.size(1);
  auto q = q_proj(x).view({b, t, heads_, head_dim_}).transpose(1, 2);     // [B, H, T, Dh]
  auto k = k_proj(x).view({b, t, kv_heads_, head_dim_}).transpose(1, 2);  // [B, Hkv, T, Dh]
  auto v = v_proj(x).view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
  q = apply_rope_rotate_half(q, ctx.cos, ctx.sin, ctx.kernels);
  k = apply_rope_rotate_half(k, ctx.cos, ctx.sin, ctx.kernels);
  if (ctx.cache != nullptr) std::tie(k, v) = ctx.cache->append(ctx.cache_layer, k, v);
  const int64_t groups = heads_ / kv_heads_;
  if (groups > 1) {
    const int64_t s = k.size(2);
    k = k.unsqueeze(2).expand({b, kv_heads_, groups, s, head_dim_}).reshape({b, heads_, s, head_dim_});
    v = v.unsqueeze(2).expand({b, kv_heads_, groups, s, head_dim_}).reshape({b, heads_, s, head_dim_});
  }
  const auto out = eager_attention(q, k, v, ctx.mask, 1.0 / std::sqrt(static_cast<double>(head_dim_)));
  return o_proj(out.transpose(1, 2).reshape({b, t, heads_ * head_dim_}));
}

}  // namespace grpo::model
