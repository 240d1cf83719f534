// Size facts of a model config, computed on the meta device (nothing is allocated): what
// `grpo info` prints.
#pragma once

#include <cstdint>
#include <string>

#include "grpo/model/model_config.h"

namespace grpo::model {

struct ModelStats {
  int64_t total_parameters = 0;  // main model (embedding, blocks, norm, head; a tied head once)
  int64_t mtp_parameters = 0;    // MTP modules, unique (the shared embedding and head not counted)
  int64_t stored_with_mtp =
      0;  // as a DeepSeek checkpoint stores it: main + MTP + the MTP's copies of embedding and head
  // Per token in the main model: every parameter that multiplies the token's activations, i.e. all
  // but the unchosen routed experts and all but one row of the embedding table (a lookup).
  int64_t active_parameters = 0;
  int64_t embedding_parameters = 0;      // embed_tokens (+ lm_head when untied)
  int64_t moe_layers = 0;                // blocks with a mixture of experts
  int64_t dense_layers = 0;              // blocks with a dense MLP
  int64_t kv_cache_bytes_per_token = 0;  // across the main model's layers, bf16
};

ModelStats model_stats(const ModelConfig& cfg);

// A human-readable summary, one fact per line.
std::string describe(const ModelConfig& cfg, const ModelStats& stats);

}  // namespace grpo::model
