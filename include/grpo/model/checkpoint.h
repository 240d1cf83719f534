// HF-format checkpoints for CausalLM: config.json + model.safetensors (or shards with
// model.safetensors.index.json), under HF's parameter names.
//
// The name mapping lives here, outside the model: our stacked expert tensors [E, F, D] become
// per-expert `mlp.experts.{e}.{gate,up,down}_proj.weight`, the router `mlp.gate.weight` and
// `mlp.gate.e_score_correction_bias`, and MTP depth k is stored the way DeepSeek stores it, as
// `model.layers.{num_hidden_layers + k - 1}.{enorm, hnorm, eh_proj, shared_head.norm,
// shared_head.head, embed_tokens}` plus a full decoder block. FP8 E4M3 weights with a
// `weight_scale_inv` beside them (128x128 blocks) are dequantised on load.
//
// HF transformers' DeepseekV3ForCausalLM has no MTP module: save_pretrained writes config.json with
// `num_nextn_predict_layers: 1` (DeepseekV3Config's default) but none of the MTP tensors. What the
// loaders do then is LoadOptions::missing_mtp (below).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "grpo/model/causal_lm.h"

namespace grpo::model {

struct NamedTensor {
  std::string name;      // HF name, e.g. "model.layers.0.self_attn.kv_b_proj.weight"
  torch::Tensor tensor;  // the model's tensor, or a view of it (one expert's slice)
  bool copy_only =
      false;  // written for compatibility but not read back (MTP's copies of the shared embedding and head)
};

// Every tensor of the model under its HF name, as views sharing the model's storage; the root's
// (embeddings, final norm, head) and one block's (decoder layers 0..L-1, then the MTP modules as
// blocks L..L+D-1, numbered as BlockHooks numbers them).
std::vector<NamedTensor> hf_state_dict(CausalLM& model);
std::vector<NamedTensor> hf_root_tensors(CausalLM& model);
std::vector<NamedTensor> hf_block_tensors(CausalLM& model, int64_t block);

// What to do when the config asks for MTP modules (num_nextn_predict_layers > 0) and the checkpoint
// holds none of their tensors (no tensor under `model.layers.{num_hidden_layers + k - 1}.` for any
// depth k), as in every DeepSeek-V3 checkpoint HF transformers has saved. A checkpoint that holds
// some of them but not all is broken: that stays an error (missing tensors listed) whatever this says.
//   drop:  build the model without MTP (num_nextn_predict_layers 0) and load the rest.
//   init:  keep the MTP modules, freshly initialised (the model's random init), and load the rest.
//   error: refuse it, listing the missing MTP tensors (the message names this option).
enum class MissingMtp { drop, init, error };
constexpr auto config_enum_names(MissingMtp) {
  return std::array{std::pair{MissingMtp::drop, "drop"}, std::pair{MissingMtp::init, "init"},
                    std::pair{MissingMtp::error, "error"}};
}

struct LoadOptions {
  torch::ScalarType dtype = torch::kFloat;  // dtype of the model's parameters (the router bias stays float32)
  torch::Device device = torch::kCPU;
  bool allow_unexpected = false;              // ignore tensors the model has no place for (else an error)
  MissingMtp missing_mtp = MissingMtp::drop;  // the checkpoint has no MTP tensors but config.json asks for MTP
};

// Builds the model from DIR/config.json and loads every tensor. Checks every name, shape and dtype
// and reports all problems at once in one error (missing, unexpected, shape mismatches, unusable
// dtypes); truncated or malformed files give an error from the safetensors reader, never a partial load.
// A checkpoint without MTP tensors whose config asks for MTP is handled by options.missing_mtp, with
// one info log line saying what was done.
CausalLM load_hf_checkpoint(const std::string& dir, const LoadOptions& options = {});

// Loads the tensors of checkpoint folder `dir` into an existing model (same checks). The model's
// shape is fixed, so when the checkpoint has none of the model's MTP tensors: error (the default)
// refuses it, init leaves the model's MTP modules as they are (one info log line), and drop is an
// error too (an existing model cannot lose its MTP modules; build it with num_nextn_predict_layers 0,
// or use load_hf_checkpoint).
void load_hf_weights(CausalLM& model, const std::string& dir, bool allow_unexpected = false,
                     MissingMtp missing_mtp = MissingMtp::error);

// Writes DIR/config.json and the weights in `dtype` (sharded above max_shard_bytes).
void save_hf_checkpoint(CausalLM& model, const std::string& dir, torch::ScalarType dtype = torch::kFloat,
                        uint64_t max_shard_bytes = 5ull << 30);

// Saving a model whose blocks are not all on this rank (full sharding's chunks, expert
// parallelism's experts), one block at a time: blocks->before_block(i) brings block i's
// parameters in before its tensors are read and after_block(i, {}) lets them go again, so only
// one block is whole at once, plus at most one file's worth of tensors waiting to be written. The
// root must be in place. `write` false: take part (the hooks' collectives) and write nothing.
struct BlockwiseSave {
  BlockHooks* blocks = nullptr;
  bool write = true;
};
void save_hf_checkpoint(CausalLM& model, const std::string& dir, torch::ScalarType dtype, uint64_t max_shard_bytes,
                        const BlockwiseSave& how);

// Dequantises an FP8 weight [out, in] with per-block inverse scales [ceil(out/b), ceil(in/b)].
torch::Tensor dequantize_block_fp8(const torch::Tensor& weight, const torch::Tensor& scale_inv, int64_t block = 128);

}  // namespace grpo::model
