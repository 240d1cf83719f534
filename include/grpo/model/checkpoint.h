// HF-format checkpoints for CausalLM: config.json + model.safetensors (or shards with
// model.safetensors.index.json), under HF's parameter names.
//
// The name mapping lives here, outside the model: our stacked expert tensors [E, F, D] become
// per-expert `mlp.experts.{e}.{gate,up,down}_proj.weight`, the router `mlp.gate.weight` and
// `mlp.gate.e_score_correction_bias`, and MTP depth k is stored the way DeepSeek stores it, as
// `model.layers.{num_hidden_layers + k - 1}.{enorm, hnorm, eh_proj, shared_head.norm,
// shared_head.head, embed_tokens}` plus a full decoder block. FP8 E4M3 weights with a
// `weight_scale_inv` beside them (128x128 blocks) are dequantised on load.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "grpo/model/causal_lm.h"

namespace grpo::model {

struct NamedTensor {
  std::string name;      // HF name, e.g. "model.layers.0.self_attn.kv_b_proj.weight"
  torch::Tensor tensor;  // the model's tensor, or a view of it (one expert's slice)
  bool copy_only = false;  // written for compatibility but not read back (MTP's copies of the shared embedding and head)
};

// Every tensor of the model under its HF name, as views sharing the model's storage.
std::vector<NamedTensor> hf_state_dict(CausalLM& model);

struct LoadOptions {
  torch::ScalarType dtype = torch::kFloat;  // dtype of the model's parameters (the router bias stays float32)
  torch::Device device = torch::kCPU;
  bool allow_unexpected = false;  // ignore tensors the model has no place for (else an error)
};

// Builds the model from DIR/config.json and loads every tensor. Checks every name, shape and dtype
// and reports all problems at once in one error (missing, unexpected, shape mismatches, unusable
// dtypes); truncated or malformed files give an error from the safetensors reader, never a partial load.
CausalLM load_hf_checkpoint(const std::string& dir, const LoadOptions& options = {});

// Loads the tensors of checkpoint folder `dir` into an existing model (same checks).
void load_hf_weights(CausalLM& model, const std::string& dir, bool allow_unexpected = false);

// Writes DIR/config.json and the weights in `dtype` (sharded above max_shard_bytes).
void save_hf_checkpoint(CausalLM& model, const std::string& dir, torch::ScalarType dtype = torch::kFloat,
                        uint64_t max_shard_bytes = 5ull << 30);

// Dequantises an FP8 weight [out, in] with per-block inverse scales [ceil(out/b), ceil(in/b)].
torch::Tensor dequantize_block_fp8(const torch::Tensor& weight, const torch::Tensor& scale_inv, int64_t block = 128);

}  // namespace grpo::model
