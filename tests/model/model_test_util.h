// Tiny configs and batches shared by the model tests.
#pragma once

#include <torch/torch.h>

#include "grpo/model/model_config.h"

namespace grpo::model::test {

inline ModelConfig tiny_dsv3() {
  ModelConfig c;
  c.arch = Arch::deepseek_v3;
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.max_position_embeddings = 64;
  c.q_lora_rank = 12;
  c.kv_lora_rank = 16;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 8;
  c.moe_intermediate_size = 16;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.n_group = 4;
  c.topk_group = 2;
  c.first_k_dense_replace = 1;
  c.routed_scaling_factor = 2.5;
  c.num_nextn_predict_layers = 1;
  c.initializer_range = 0.2;
  return c;
}

inline ModelConfig tiny_qwen2() {
  ModelConfig c;
  c.arch = Arch::qwen2;
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  c.qkv_bias = true;
  c.initializer_range = 0.2;
  return c;
}

struct Batch {
  torch::Tensor ids, positions, mask;  // [B, T]; left padding, row r has r * 2 pads
};

inline Batch ragged_batch(int64_t vocab, int64_t b, int64_t t) {
  Batch out;
  out.ids = torch::randint(1, vocab, {b, t}, torch::kLong);
  out.mask = torch::ones({b, t}, torch::kLong);
  for (int64_t r = 0; r < b; ++r) {
    const int64_t pads = std::min<int64_t>(2 * r, t - 1);
    if (pads > 0) {
      out.mask[r].narrow(0, 0, pads).zero_();
      out.ids[r].narrow(0, 0, pads).zero_();
    }
  }
  out.positions = (out.mask.cumsum(1) - 1).clamp_min(0);
  return out;
}

// max |a - b| / max |b| over positions where mask [B, T] is 1 (a, b: [B, T, ...]).
inline double max_rel_error(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& mask) {
  auto keep = mask.to(torch::kBool);
  const auto diff = (a - b).abs().index({keep});
  const auto scale = b.abs().index({keep}).max().item<double>();
  return diff.max().item<double>() / std::max(scale, 1e-30);
}

}  // namespace grpo::model::test
