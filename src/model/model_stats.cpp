#include "grpo/model/model_stats.h"

#include <sstream>

#include "grpo/core/format.h"
#include "grpo/model/causal_lm.h"
#include "grpo/model/kv_cache.h"

namespace grpo::model {

ModelStats model_stats(const ModelConfig& cfg) {
  CausalLM model(cfg, torch::TensorOptions().device(torch::kMeta).dtype(torch::kBFloat16));
  ModelStats s;
  for (const auto& p : model->named_parameters()) {
    const int64_t n = p.value().numel();
    if (p.key().rfind("mtp.", 0) == 0) {
      s.mtp_parameters += n;
    } else {
      s.total_parameters += n;
    }
    if (p.key() == "embed_tokens" || p.key() == "lm_head") s.embedding_parameters += n;
  }
  const int64_t per_expert = 3 * cfg.moe_intermediate_size * cfg.hidden_size;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) (cfg.is_moe_layer(l) ? s.moe_layers : s.dense_layers) += 1;
  s.active_parameters = s.total_parameters -
                        s.moe_layers * (cfg.n_routed_experts - cfg.num_experts_per_tok) * per_expert -
                        (cfg.vocab_size - 1) * cfg.hidden_size;
  if (cfg.tie_word_embeddings) s.active_parameters += (cfg.vocab_size - 1) * cfg.hidden_size;  // the head uses it all
  const int64_t head_and_embedding = 2 * cfg.vocab_size * cfg.hidden_size;
  s.stored_with_mtp = s.total_parameters + s.mtp_parameters + cfg.num_nextn_predict_layers * head_and_embedding;
  s.kv_cache_bytes_per_token = KVCache::bytes_per_token(cfg, 2);
  return s;
}

std::string describe(const ModelConfig& cfg, const ModelStats& s) {
  auto billions = [](int64_t n) { return grpo::format("{:.3f}B ({})", static_cast<double>(n) / 1e9, n); };
  std::ostringstream out;
  out << "architecture:            " << config::enum_name(cfg.arch) << "\n";
  out << "parameters (main model): " << billions(s.total_parameters) << "\n";
  if (cfg.num_nextn_predict_layers > 0) {
    out << "MTP modules (unique):    " << billions(s.mtp_parameters) << "\n";
    out << "stored with MTP:         " << billions(s.stored_with_mtp)
        << " (DeepSeek checkpoints repeat the embedding and head per MTP module)\n";
  }
  out << "active per token:        " << billions(s.active_parameters)
      << " (chosen and shared experts, attention, dense MLPs, head, one embedding row)\n";
  out << "embedding + head:        " << billions(s.embedding_parameters) << "\n";
  out << "layers:                  " << cfg.num_hidden_layers << " (" << s.dense_layers << " dense, " << s.moe_layers
      << " MoE) + " << cfg.num_nextn_predict_layers << " MTP\n";
  if (cfg.n_routed_experts > 0) {
    out << "experts:                 " << cfg.n_routed_experts << " routed (" << cfg.num_experts_per_tok
        << " per token, " << cfg.n_group << " groups, " << cfg.topk_group << " kept) + " << cfg.n_shared_experts
        << " shared\n";
  }
  out << "attention:               "
      << (cfg.is_mla() ? grpo::format("MLA, {} heads, latent {} + rope {}", cfg.num_attention_heads, cfg.kv_lora_rank,
                                      cfg.qk_rope_head_dim)
                       : grpo::format("GQA, {} heads, {} kv heads, head dim {}", cfg.num_attention_heads,
                                      cfg.kv_heads(), cfg.dense_head_dim()))
      << "\n";
  out << "KV cache per token:      " << s.kv_cache_bytes_per_token << " bytes (bf16, all layers)\n";
  return out.str();
}

}  // namespace grpo::model
