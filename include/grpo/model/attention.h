// Attention shared by both model families: the additive mask, eager softmax attention, and the
// dense grouped-query attention of the students (Llama, Qwen2).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "grpo/model/kv_cache.h"
#include "grpo/model/layers.h"
#include "grpo/model/model_config.h"

namespace grpo::model {

// What every attention layer of one forward call shares.
struct AttentionContext {
  torch::Tensor cos, sin;                            // [B, T, R] rotary tables for the new tokens
  torch::Tensor mask;                                // [B, 1, T, S] additive: 0 where a query may attend, else lowest
  KVCache* cache = nullptr;                          // null: attend over the new tokens only
  int64_t cache_layer = 0;                           // this layer's slot in the cache
  KernelBackend kernels = KernelBackend::reference;  // RoPE implementation (ModelConfig::kernels)
};

// Additive causal mask over S = past + T keys: query i (absolute past + i) sees key j when
// j <= past + i, attention_mask[b, j] != 0 and attention_mask[b, j] == attention_mask[b, past + i].
// attention_mask [B, S] (int or bool; undefined = all ones) holds 0 for padding and otherwise the
// document number of each token: 1 everywhere for one sequence per row, 1, 2, 3... for packed
// documents, which then never attend to each other. Masked entries hold the dtype's lowest finite value (as HF), so a fully masked row
// (a padding query) stays finite.
torch::Tensor causal_mask(const torch::Tensor& attention_mask, int64_t batch, int64_t q_len, int64_t past,
                          torch::ScalarType dtype, const torch::Device& device);

// softmax(q k^T * scale + mask) v with the softmax in float32. q [B, H, T, Dq], k [B, H, S, Dq],
// v [B, H, S, Dv] -> [B, H, T, Dv].
torch::Tensor eager_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& mask, double scale);

// Grouped-query attention with rotate-half RoPE (Llama, Qwen2). q_proj [H*Dh, D],
// k_proj/v_proj [Hkv*Dh, D], o_proj [D, H*Dh].
class GqaAttentionImpl : public torch::nn::Module {
 public:
  GqaAttentionImpl(const ModelConfig& cfg, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx);  // [B, T, D]

  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  int64_t heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(GqaAttention);

}  // namespace grpo::model
