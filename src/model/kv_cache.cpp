#include "grpo/model/kv_cache.h"

#include <ATen/ATen.h>

namespace grpo::model {

KVCache::KVCache(const ModelConfig& cfg, int64_t batch, int64_t max_length, const torch::TensorOptions& options,
                 int64_t layers)
    : mla_(cfg.is_mla()), max_length_(max_length) {
  const int64_t n = layers >= 0 ? layers : cfg.num_hidden_layers;
  for (int64_t l = 0; l < n; ++l) {
    if (mla_) {
      first_.push_back(torch::zeros({batch, max_length, cfg.kv_lora_rank}, options));
      second_.push_back(torch::zeros({batch, max_length, cfg.qk_rope_head_dim}, options));
    } else {
      first_.push_back(torch::zeros({batch, cfg.kv_heads(), max_length, cfg.dense_head_dim()}, options));
      second_.push_back(torch::zeros({batch, cfg.kv_heads(), max_length, cfg.dense_head_dim()}, options));
    }
  }
}

std::pair<torch::Tensor, torch::Tensor> KVCache::append(int64_t layer, const torch::Tensor& first,
                                                        const torch::Tensor& second) {
  TORCH_CHECK(layer >= 0 && layer < static_cast<int64_t>(first_.size()), "KVCache: layer ", layer, " out of range [0, ",
              first_.size(), ")");
  const int64_t dim = mla_ ? 1 : 2;
  const int64_t t = first.size(dim);
  TORCH_CHECK(length_ + t <= max_length_, "KVCache: ", length_, " + ", t, " tokens exceed the cache's max_length ",
              max_length_);
  TORCH_CHECK(first.size(0) == first_[layer].size(0), "KVCache: batch ", first.size(0), " does not match the cache's ",
              first_[layer].size(0));
  first_[layer].narrow(dim, length_, t).copy_(first);
  second_[layer].narrow(dim, length_, t).copy_(second);
  return {first_[layer].narrow(dim, 0, length_ + t), second_[layer].narrow(dim, 0, length_ + t)};
}

void KVCache::advance(int64_t tokens) {
  TORCH_CHECK(length_ + tokens <= max_length_, "KVCache: advance past max_length");
  length_ += tokens;
}

void KVCache::select_rows(const torch::Tensor& rows) {
  for (auto& t : first_) t = t.index_select(0, rows.to(t.device()));
  for (auto& t : second_) t = t.index_select(0, rows.to(t.device()));
}

int64_t KVCache::bytes_per_token() const {
  int64_t bytes = 0;
  const int64_t dim = mla_ ? 1 : 2;
  for (size_t l = 0; l < first_.size(); ++l) {
    bytes += (first_[l].numel() / first_[l].size(dim)) / first_[l].size(0) * first_[l].element_size();
    bytes += (second_[l].numel() / second_[l].size(dim)) / second_[l].size(0) * second_[l].element_size();
  }
  return bytes;
}

int64_t KVCache::bytes_per_token(const ModelConfig& cfg, int64_t element_bytes) {
  const int64_t per_layer = cfg.is_mla() ? cfg.kv_lora_rank + cfg.qk_rope_head_dim
                                         : 2 * cfg.kv_heads() * cfg.dense_head_dim();
  return per_layer * cfg.num_hidden_layers * element_bytes;
}

}  // namespace grpo::model
