// Multi-head latent attention (DeepSeek-V2/V3).
//
//   q:  x -> q_a_proj [Cq, D] -> q_a_layernorm -> q_b_proj [H*(Dn+Dr), Cq]   (or q_proj [H*(Dn+Dr), D])
//   kv: x -> kv_a_proj_with_mqa [C+Dr, D] -> (c_kv [C] -> kv_a_layernorm, k_rope [Dr] shared by heads)
//       c_kv -> kv_b_proj [H*(Dn+Dv), C] -> k_nope [Dn], v [Dv] per head
//   out: o_proj [D, H*Dv];  scale (Dn+Dr)^-0.5 times the YaRN mscale^2
//
// Both forms cache only the normalised c_kv and the roped k_rope. `naive` expands K and V per head
// from the cache (the training path); `absorbed` folds kv_b_proj's key half into the query and its
// value half into the output, so attention runs over the C-wide latent (the decoding path).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "grpo/model/attention.h"
#include "grpo/model/layers.h"
#include "grpo/model/model_config.h"

namespace grpo::model {

class MlaAttentionImpl : public torch::nn::Module {
 public:
  MlaAttentionImpl(const ModelConfig& cfg, double softmax_scale_factor, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx);  // [B, T, D] -> [B, T, D]

  AttentionImpl impl;  // naive | absorbed; may be switched at any time
  Linear q_proj{nullptr}, q_a_proj{nullptr}, q_b_proj{nullptr};
  RMSNorm q_a_layernorm{nullptr};
  Linear kv_a_proj_with_mqa{nullptr}, kv_b_proj{nullptr}, o_proj{nullptr};
  RMSNorm kv_a_layernorm{nullptr};

 private:
  int64_t heads_, nope_, rope_, v_dim_, latent_;
  bool interleave_;
  double scale_;
};
TORCH_MODULE(MlaAttention);

}  // namespace grpo::model
