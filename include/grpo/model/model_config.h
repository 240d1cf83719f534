// ModelConfig: the shape and numerics of a causal LM, read from an HF config.json (DeepseekV3,
// Qwen2, Llama) or a YAML preset in configs/models/.
//
// One struct covers the three architectures; fields that an architecture does not use keep their
// defaults. Names follow HF's config.json keys so that a reader can map them one to one.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "grpo/config/config.h"

namespace grpo::model {

enum class Arch { deepseek_v3, qwen2, llama };
constexpr auto config_enum_names(Arch) {
  return std::array{std::pair{Arch::deepseek_v3, "deepseek_v3"}, std::pair{Arch::qwen2, "qwen2"},
                    std::pair{Arch::llama, "llama"}};
}

enum class RopeType { standard, yarn, llama3, linear };
constexpr auto config_enum_names(RopeType) {
  return std::array{std::pair{RopeType::standard, "default"}, std::pair{RopeType::yarn, "yarn"},
                    std::pair{RopeType::llama3, "llama3"}, std::pair{RopeType::linear, "linear"}};
}

// How MLA computes attention: expand K/V per head (training) or fold kv_b_proj into the query and
// output and attend over the compressed latent (decoding; caches kv_lora_rank + rope numbers).
enum class AttentionImpl { naive, absorbed };
constexpr auto config_enum_names(AttentionImpl) {
  return std::array{std::pair{AttentionImpl::naive, "naive"}, std::pair{AttentionImpl::absorbed, "absorbed"}};
}

// Which implementation runs the memory-bound hot paths (RMSNorm, RoPE, SwiGLU, MoE dispatch and
// expert GEMMs; see docs/kernels.md "Fused kernels"), so that numerical drift can be bisected end to
// end. reference: the plain-ATen code with ATen autograd (the numbers every test pins). cuda: the
// fused ops (custom autograd functions with explicit backwards); on CUDA tensors they run grpo's
// kernels (an error when the build has none), on CPU tensors their explicit CPU references.
// auto: cuda for CUDA tensors when grpo was built with CUDA kernels, else reference.
enum class KernelBackend { automatic, reference, cuda };
constexpr auto config_enum_names(KernelBackend) {
  return std::array{std::pair{KernelBackend::automatic, "auto"}, std::pair{KernelBackend::reference, "reference"},
                    std::pair{KernelBackend::cuda, "cuda"}};
}

struct RopeConfig {
  RopeType type = RopeType::standard;               // default | yarn | llama3 | linear
  double theta = 10000.0;                           // base of the inverse frequencies
  double factor = 1.0;                              // context extension factor (yarn, llama3, linear)
  int64_t original_max_position_embeddings = 4096;  // pre-extension context (yarn, llama3)
  double beta_fast = 32.0;                          // yarn: rotations where extrapolation ends
  double beta_slow = 1.0;                           // yarn: rotations where interpolation starts
  double mscale = 0.0;                              // yarn: cos/sin scale numerator (0 = unset)
  double mscale_all_dim = 0.0;                      // yarn: also scales softmax by mscale(factor, this)^2
  std::optional<double> attention_factor;           // yarn: explicit cos/sin scale, overrides mscale
  bool truncate = true;                             // yarn: floor/ceil the correction range
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("type", type, "default | yarn | llama3 | linear");
    v("theta", theta, "RoPE base", Check().gt(0));
    v("factor", factor, "context extension factor", Check().gt(0));
    v("original_max_position_embeddings", original_max_position_embeddings, "context length before extension",
      Check().ge(1));
    v("beta_fast", beta_fast, "yarn: high rotation bound", Check().gt(0));
    v("beta_slow", beta_slow, "yarn: low rotation bound", Check().gt(0));
    v("mscale", mscale, "yarn: cos/sin scale numerator, 0 = unset", Check().ge(0));
    v("mscale_all_dim", mscale_all_dim, "yarn: softmax scale mscale^2, 0 = unset", Check().ge(0));
    v("attention_factor", attention_factor, "yarn: explicit cos/sin scale", Check().gt(0));
    v("truncate", truncate, "yarn: round the correction range");
    v("low_freq_factor", low_freq_factor, "llama3", Check().gt(0));
    v("high_freq_factor", high_freq_factor, "llama3", Check().gt(0));
  }
};

// FP8 training of the Linear layers, DeepSeek-V3's recipe (docs/fp8.md): E4M3 operands with
// max-abs scales per 1x128 activation tile and 128x128 weight block, float32 accumulation, FP8 in
// the forward (Fprop), input-gradient (Dgrad) and weight-gradient (Wgrad) GEMMs; master weights and
// gradients stay in the model's dtype. The embedding, output head, MoE router, norms, MTP eh_proj
// and the attention core always stay in high precision.
struct Fp8Config {
  bool enabled = false;        // master switch; false = every layer in the model's dtype
  bool attention = true;       // attention projections (MLA q_a/q_b/q_proj, kv_a/kv_b, o_proj; q/k/v/o)
  bool dense_mlp = true;       // MLPs of dense layers (first_k_dense_replace layers, dense models)
  bool experts = true;         // routed experts of MoE layers
  bool shared_experts = true;  // shared experts of MoE layers
  bool ue8m0 = false;          // round scales up to powers of two (UE8M0, as DeepSeek-V3.1)
  bool fprop = true;           // y = x W^T in FP8 (false: in high precision, for ablations)
  bool dgrad = true;           // dx = dy W in FP8 (false: high precision)
  bool wgrad = true;           // dW = dy^T x in FP8 (false: high precision)
  KernelBackend backend = KernelBackend::automatic;  // GEMM: auto | reference (dequant + fp32) | cuda

  template <class V>
  void visit(V& v) {
    v("enabled", enabled, "run the selected Linear layers in FP8");
    v("attention", attention, "FP8 attention projections");
    v("dense_mlp", dense_mlp, "FP8 dense-layer MLPs");
    v("experts", experts, "FP8 routed experts");
    v("shared_experts", shared_experts, "FP8 shared experts");
    v("ue8m0", ue8m0, "power-of-two scales");
    v("fprop", fprop, "forward GEMM in FP8 (false: high precision; an ablation switch)");
    v("dgrad", dgrad, "input-gradient GEMM in FP8 (false: high precision)");
    v("wgrad", wgrad, "weight-gradient GEMM in FP8 (false: high precision)");
    v("backend", backend, "FP8 GEMM: auto | reference | cuda");
  }
};

struct ModelConfig {
  Arch arch = Arch::deepseek_v3;           // architecture family
  int64_t vocab_size = 0;                  // V
  int64_t hidden_size = 0;                 // D
  int64_t intermediate_size = 0;           // F of dense MLPs
  int64_t num_hidden_layers = 0;           // L (MTP modules not counted)
  int64_t num_attention_heads = 0;         // H
  int64_t num_key_value_heads = 0;         // Hkv (dense GQA); 0 = H
  int64_t head_dim = 0;                    // Dh (dense); 0 = D / H
  int64_t max_position_embeddings = 4096;  // longest sequence (sizes KV caches)
  double rms_norm_eps = 1e-6;              // RMSNorm epsilon
  RopeConfig rope;                         // rotary embedding
  bool rope_interleave = true;             // deepseek_v3: rope dims are adjacent pairs
  bool attention_bias = false;             // bias on attention projections (llama, deepseek_v3)
  bool qkv_bias = false;                   // bias on q/k/v only (qwen2)
  bool mlp_bias = false;                   // bias on MLP projections (llama)
  bool tie_word_embeddings = false;        // lm_head shares embed_tokens' weight
  double initializer_range = 0.02;         // std of the random init
  // Multi-head latent attention (deepseek_v3)
  std::optional<int64_t> q_lora_rank;                   // Cq; null = plain q_proj
  int64_t kv_lora_rank = 0;                             // C
  int64_t qk_nope_head_dim = 0;                         // Dn
  int64_t qk_rope_head_dim = 0;                         // Dr
  int64_t v_head_dim = 0;                               // Dv
  AttentionImpl attention_impl = AttentionImpl::naive;  // naive | absorbed
  // Mixture of experts (deepseek_v3)
  int64_t moe_intermediate_size = 0;   // F of each expert
  int64_t n_routed_experts = 0;        // E; 0 = dense model
  int64_t n_shared_experts = 0;        // always-on experts (one MLP of n * F)
  int64_t num_experts_per_tok = 0;     // K
  int64_t n_group = 1;                 // expert groups for group-limited routing
  int64_t topk_group = 1;              // groups kept per token
  bool norm_topk_prob = true;          // normalise the K weights to sum 1
  double routed_scaling_factor = 1.0;  // multiplies routed weights
  int64_t first_k_dense_replace = 0;   // layers below this use a dense MLP
  double seq_aux_loss_alpha = 0.0;     // sequence-wise balance loss weight (0 = off)
  // Multi-token prediction (deepseek_v3)
  int64_t num_nextn_predict_layers = 0;  // D MTP modules
  // Implementation of the hot paths: auto | reference | cuda (see KernelBackend), e.g. `reference`
  // to rule the kernels out when a GPU run drifts from a CPU one.
  KernelBackend kernels = KernelBackend::automatic;
  Fp8Config fp8;  // FP8 Linear layers (off by default)
  // Special tokens (informational; generation reads them)
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("arch", arch, "deepseek_v3 | qwen2 | llama");
    v("vocab_size", vocab_size, "V", Check().ge(1));
    v("hidden_size", hidden_size, "D", Check().ge(1));
    v("intermediate_size", intermediate_size, "F of dense MLPs", Check().ge(1));
    v("num_hidden_layers", num_hidden_layers, "L", Check().ge(1));
    v("num_attention_heads", num_attention_heads, "H", Check().ge(1));
    v("num_key_value_heads", num_key_value_heads, "Hkv for GQA; 0 = H", Check().ge(0));
    v("head_dim", head_dim, "dense head width; 0 = D / H", Check().ge(0));
    v("max_position_embeddings", max_position_embeddings, "longest sequence", Check().ge(1));
    v("rms_norm_eps", rms_norm_eps, "RMSNorm epsilon", Check().gt(0));
    v("rope", rope, "rotary embedding");
    v("rope_interleave", rope_interleave, "deepseek_v3: rope dims in adjacent pairs");
    v("attention_bias", attention_bias, "bias on attention projections");
    v("qkv_bias", qkv_bias, "bias on q/k/v projections (qwen2)");
    v("mlp_bias", mlp_bias, "bias on MLP projections");
    v("tie_word_embeddings", tie_word_embeddings, "lm_head shares the embedding");
    v("initializer_range", initializer_range, "std of the random init", Check().ge(0));
    v("q_lora_rank", q_lora_rank, "MLA query latent; null = q_proj", Check().ge(1));
    v("kv_lora_rank", kv_lora_rank, "MLA latent C", Check().ge(0));
    v("qk_nope_head_dim", qk_nope_head_dim, "MLA Dn", Check().ge(0));
    v("qk_rope_head_dim", qk_rope_head_dim, "MLA Dr", Check().ge(0));
    v("v_head_dim", v_head_dim, "MLA Dv", Check().ge(0));
    v("attention_impl", attention_impl, "MLA: naive | absorbed");
    v("moe_intermediate_size", moe_intermediate_size, "F of each expert", Check().ge(0));
    v("n_routed_experts", n_routed_experts, "E; 0 = dense", Check().ge(0));
    v("n_shared_experts", n_shared_experts, "shared experts", Check().ge(0));
    v("num_experts_per_tok", num_experts_per_tok, "K", Check().ge(0));
    v("n_group", n_group, "expert groups", Check().ge(1));
    v("topk_group", topk_group, "groups kept per token", Check().ge(1));
    v("norm_topk_prob", norm_topk_prob, "normalise top-k weights");
    v("routed_scaling_factor", routed_scaling_factor, "scale of routed weights", Check().gt(0));
    v("first_k_dense_replace", first_k_dense_replace, "leading dense layers", Check().ge(0));
    v("seq_aux_loss_alpha", seq_aux_loss_alpha, "sequence-wise balance loss weight", Check().ge(0));
    v("num_nextn_predict_layers", num_nextn_predict_layers, "MTP modules D", Check().ge(0));
    v("kernels", kernels, "hot-path implementation: auto | reference | cuda");
    v("fp8", fp8, "FP8 Linear layers (DeepSeek-V3 recipe)");
    v("bos_token_id", bos_token_id, "beginning-of-sequence id");
    v("eos_token_ids", eos_token_ids, "end-of-sequence ids");
  }
  // Training settings that were model keys once; the trainers own them.
  static constexpr std::array<config::RemovedKey, 2> removed_keys{
      {{"bias_update_gamma", "the trainers' router_bias_gamma (sft, grpo) sets the aux-loss-free bias step"},
       {"mtp_loss_weight", "the trainers' mtp_weight (sft, grpo) sets the MTP loss weight"}}};

  // "" when consistent, else the problem (heads divide, groups divide experts, ...).
  std::string validate() const;

  bool is_mla() const { return arch == Arch::deepseek_v3; }
  bool is_moe_layer(int64_t layer) const { return n_routed_experts > 0 && layer >= first_k_dense_replace; }
  int64_t kv_heads() const { return num_key_value_heads > 0 ? num_key_value_heads : num_attention_heads; }
  int64_t dense_head_dim() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Width the rotary embedding covers: Dr for MLA, Dh for dense attention.
  int64_t rope_dim() const { return is_mla() ? qk_rope_head_dim : dense_head_dim(); }
};

// Reads an HF config.json (a file, or a folder holding one). Accepts rope settings as
// `rope_theta` + `rope_scaling` ({"type"|"rope_type": ...}) or as `rope_parameters`. Throws
// std::runtime_error naming the file and key for an unsupported model_type, a missing key or a
// wrong type.
ModelConfig load_hf_config(const std::string& path);

// The config.json HF transformers reads for this model (model_type, architectures, rope in the
// `rope_parameters` form plus the legacy keys).
std::string hf_config_json(const ModelConfig& cfg);

// A YAML preset (configs/models/*.yaml, the ModelConfig keys) or an HF config.json, chosen by
// extension (.yaml/.yml) or by a folder holding config.json.
ModelConfig load_model_config(const std::string& path);

}  // namespace grpo::model
