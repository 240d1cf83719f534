#include "grpo/model/decoder_layer.h"

namespace grpo::model {

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& cfg, bool moe_layer, double softmax_scale_factor,
                                   const torch::TensorOptions& options) {
  input_layernorm = register_module("input_layernorm", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, options));
  if (cfg.is_mla()) {
    mla = register_module("self_attn", MlaAttention(cfg, softmax_scale_factor, options));
  } else {
    gqa = register_module("self_attn", GqaAttention(cfg, options));
  }
  post_attention_layernorm = register_module("post_attention_layernorm",
                                             RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, options));
  if (moe_layer) {
    moe = register_module("mlp", Moe(cfg, options));
  } else {
    mlp = register_module("mlp",
                          Mlp(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, cfg.initializer_range, options));
  }
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const AttentionContext& ctx,
                                        const torch::Tensor& valid) {
  const auto normed = input_layernorm(x);
  const auto h = x + (mla ? mla(normed, ctx) : gqa(normed, ctx));
  const auto normed2 = post_attention_layernorm(h);
  return h + (moe ? moe(normed2, valid) : mlp(normed2));
}

}  // namespace grpo::model
