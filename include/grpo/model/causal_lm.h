// CausalLM: the full decoder-only language model for DeepSeek-V3 (MLA, MoE, MTP) and for the dense
// students (Llama, Qwen2), with one interface: a forward over a padded batch with an attention
// mask and position ids, returning logits (and hidden states / MTP logits when asked), optionally
// reading and extending a KVCache for generation.
//
// Parameter names (named_parameters) are ours; grpo/model/checkpoint.h maps them to HF's.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <vector>

#include "grpo/model/block_hooks.h"
#include "grpo/model/decoder_layer.h"
#include "grpo/model/forward_rounds.h"
#include "grpo/model/kv_cache.h"
#include "grpo/model/layers.h"
#include "grpo/model/model_config.h"
#include "grpo/model/rope.h"

namespace grpo::model {

// One multi-token-prediction module (DeepSeek-V3 MTP depth k): combines the previous depth's
// hidden state and the embedding of the token k ahead, runs one block, and predicts one further
// token through the shared output head.
class MtpModuleImpl : public torch::nn::Module {
 public:
  MtpModuleImpl(const ModelConfig& cfg, int64_t layer_index, double softmax_scale_factor,
                const torch::TensorOptions& options);
  // h_prev, emb [B, T, D] -> the block's output [B, T, D] (before shared_head_norm)
  torch::Tensor forward(const torch::Tensor& h_prev, const torch::Tensor& emb, const AttentionContext& ctx,
                        const torch::Tensor& valid);

  RMSNorm enorm{nullptr}, hnorm{nullptr}, shared_head_norm{nullptr};
  Linear eh_proj{nullptr};  // [D, 2D]: embedding half first, then hidden half
  DecoderLayer block{nullptr};
};
TORCH_MODULE(MtpModule);

struct ForwardOptions {
  bool return_hidden = false;  // fill ForwardOutput::hidden
  bool mtp = false;            // run the MTP modules and fill mtp_logits
  bool logits = true;          // compute the output head (off: hidden states only)
  bool return_trunk = false;   // fill ForwardOutput::trunk (the input of the MTP modules)
};

struct ForwardOutput {
  torch::Tensor logits;                   // [B, T, V]
  torch::Tensor hidden;                   // [B, T, D] after the final norm
  torch::Tensor trunk;                    // [B, T, D] the last layer's output before the final norm
  std::vector<torch::Tensor> mtp_logits;  // D tensors [B, T, V]; entry k-1 at position i predicts token i+k+1
  torch::Tensor balance_loss;             // sum of the MoE sequence-wise balance losses (scalar), or undefined
};

class CausalLMImpl : public torch::nn::Module {
 public:
  explicit CausalLMImpl(const ModelConfig& cfg, const torch::TensorOptions& options = {});

  // input_ids [B, T] int64. position_ids [B, T] (undefined: past + 0..T-1). attention_mask
  // [B, past + T] with 1 for real tokens and 0 for padding (undefined: all real); packed rows
  // number their documents 1, 2, ... instead (and restart position_ids per document), and no token
  // attends across documents. With a cache, the new tokens'
  // keys and values are appended and the cache advances by T.
  ForwardOutput forward(const torch::Tensor& input_ids, const torch::Tensor& position_ids = {},
                        const torch::Tensor& attention_mask = {}, KVCache* cache = nullptr,
                        const ForwardOptions& options = {});

  // The output head applied to final-norm hidden states [.., D] -> [.., V].
  torch::Tensor head(const torch::Tensor& hidden);

  // A cache for `batch` rows of up to `max_length` tokens of the main model's layers.
  std::unique_ptr<KVCache> make_cache(int64_t batch, int64_t max_length) const;
  // A cache for the first MTP module alone (speculative decoding), one layer.
  std::unique_ptr<KVCache> make_mtp_cache(int64_t batch, int64_t max_length) const;

  // The first MTP module over new positions, reading and extending `mtp_cache` (from
  // make_mtp_cache): trunk [B, T, D] is the main model's ForwardOutput::trunk at these positions,
  // next_ids [B, T] the token that follows each position; position_ids [B, T] and attention_mask
  // [B, past + T] as in forward. Returns the logits [B, T, V] of the token after next (position i
  // predicts token i + 2): the draft of speculative decoding.
  torch::Tensor mtp_draft_logits(const torch::Tensor& trunk, const torch::Tensor& next_ids,
                                 const torch::Tensor& position_ids, const torch::Tensor& attention_mask,
                                 KVCache& mtp_cache);

  // Switches every MLA layer between the naive and the absorbed form.
  void set_attention_impl(AttentionImpl impl);

  // MoE layers in order (empty for dense models), for bias updates and load statistics.
  std::vector<Moe> moe_layers() const;
  // Aux-loss-free update of every MoE layer; returns each layer's load imbalance (max / mean).
  std::vector<double> update_router_biases(double gamma);

  const ModelConfig& config() const { return cfg_; }
  const RotaryEmbedding& rope() const { return rope_; }

  torch::Tensor embed_tokens;  // [V, D]
  torch::Tensor lm_head;       // [V, D]; the same tensor as embed_tokens when tied
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  torch::nn::ModuleList mtp{nullptr};  // MtpModule per depth

  // Recompute each decoder block in the backward pass instead of keeping its activations
  // (model/activation_checkpoint.h); applies to training-mode forwards with gradients and no KV
  // cache. The MTP modules are not checkpointed.
  bool activation_checkpointing = false;
  // Called around every block run (grpo/model/block_hooks.h); null = none. Installed from outside
  // (parameter sharding).
  std::shared_ptr<BlockHooks> block_hooks;
  // Set while this model's forwards are collective (grpo/model/forward_rounds.h): generation then
  // pairs every forward with the other ranks'. Null = each rank runs alone.
  std::shared_ptr<ForwardRounds> forward_rounds;

 private:
  ModelConfig cfg_;
  RotaryEmbedding rope_;
};
TORCH_MODULE(CausalLM);

// DeepSeek-V3's MTP loss: lambda / D * sum over depths k of the mean cross-entropy of
// mtp_logits[k-1] at position i against input_ids[i + k + 1], over positions where `loss_mask`
// [B, T] (1 = a real token that may be predicted) holds at both ends.
torch::Tensor mtp_loss(const ForwardOutput& out, const torch::Tensor& input_ids, const torch::Tensor& loss_mask,
                       double lambda);

}  // namespace grpo::model
