// One transformer block: x + attn(norm(x)), then h + mlp(norm(h)). DeepSeek-V3 blocks use MLA
// and, from first_k_dense_replace on, MoE; student blocks use GQA and a dense MLP.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "grpo/model/attention.h"
#include "grpo/model/layers.h"
#include "grpo/model/mla.h"
#include "grpo/model/model_config.h"
#include "grpo/model/moe.h"

namespace grpo::model {

class DecoderLayerImpl : public torch::nn::Module {
 public:
  // `moe`: whether this block's MLP is a mixture of experts.
  DecoderLayerImpl(const ModelConfig& cfg, bool moe, double softmax_scale_factor, const torch::TensorOptions& options);
  // x [B, T, D]; valid [B, T] real-token mask for MoE statistics (may be undefined).
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx, const torch::Tensor& valid);

  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  MlaAttention mla{nullptr};  // deepseek_v3 ("self_attn")
  GqaAttention gqa{nullptr};  // qwen2, llama ("self_attn")
  Mlp mlp{nullptr};           // dense MLP ("mlp")
  Moe moe{nullptr};           // MoE ("mlp")
};
TORCH_MODULE(DecoderLayer);

}  // namespace grpo::model
