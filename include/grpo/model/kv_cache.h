// KVCache: preallocated per-layer key/value storage for KV-cached decoding.
//
// MLA layers store only what the absorbed form needs: the normalised latent c_kv [B, S, C] and the
// roped shared key [B, S, Dr] (kv_lora_rank + qk_rope_head_dim numbers per token and layer);
// dense GQA layers store K and V [B, Hkv, S, Dh]. Storage is sized once from max_length, so no
// step reallocates. All rows share one length; padding is expressed by the attention mask.
#pragma once

#include <torch/types.h>

#include <utility>
#include <vector>

#include "grpo/model/model_config.h"

namespace grpo::model {

class KVCache {
 public:
  // `layers` = num_hidden_layers plus any MTP blocks that decode with the cache.
  KVCache(const ModelConfig& cfg, int64_t batch, int64_t max_length, const torch::TensorOptions& options,
          int64_t layers = -1);

  int64_t length() const { return length_; }
  int64_t max_length() const { return max_length_; }
  int64_t batch() const { return first_.empty() ? 0 : first_[0].size(0); }

  // Stores `first` [B, T, ...] / [B, H, T, ...] and `second` for `layer` at positions
  // [length, length + T) (the sequence dim is 1 for MLA, 2 for GQA) and returns views of
  // everything stored for that layer, [.., length + T, ..]. Call advance(T) once all layers ran.
  std::pair<torch::Tensor, torch::Tensor> append(int64_t layer, const torch::Tensor& first,
                                                 const torch::Tensor& second);
  void advance(int64_t tokens);

  // Keeps rows `rows` [B'] (int64) in that order, e.g. one prompt's cache repeated G times.
  void select_rows(const torch::Tensor& rows);
  void reset() { length_ = 0; }

  // Bytes one token occupies across all layers.
  int64_t bytes_per_token() const;
  // The same, from a config alone (for `grpo info`), at `element_bytes` per number.
  static int64_t bytes_per_token(const ModelConfig& cfg, int64_t element_bytes);

 private:
  bool mla_;
  int64_t max_length_;
  int64_t length_ = 0;
  std::vector<torch::Tensor> first_, second_;
};

}  // namespace grpo::model
