#include "grpo/model/checkpoint.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>

#include "grpo/core/files.h"
#include "grpo/core/log.h"
#include "grpo/io/safetensors.h"
#include "grpo/model/fp8_checkpoint.h"

namespace grpo::model {
namespace {

void add_module_tensors(torch::nn::Module& module, const std::string& prefix, std::vector<NamedTensor>& out) {
  for (const auto& p : module.named_parameters(/*recurse=*/true)) out.push_back({prefix + p.key(), p.value()});
  for (const auto& b : module.named_buffers(/*recurse=*/true)) out.push_back({prefix + b.key(), b.value()});
}

// A decoder block under HF names; `prefix` is "model.layers.N.".
void add_block(DecoderLayerImpl& layer, const std::string& prefix, std::vector<NamedTensor>& out) {
  add_module_tensors(*layer.input_layernorm, prefix + "input_layernorm.", out);
  add_module_tensors(*layer.post_attention_layernorm, prefix + "post_attention_layernorm.", out);
  if (layer.mla) add_module_tensors(*layer.mla, prefix + "self_attn.", out);
  if (layer.gqa) add_module_tensors(*layer.gqa, prefix + "self_attn.", out);
  if (layer.mlp) add_module_tensors(*layer.mlp, prefix + "mlp.", out);
  if (layer.moe) {
    auto& moe = *layer.moe;
    out.push_back({prefix + "mlp.gate.weight", moe.gate_weight});
    out.push_back({prefix + "mlp.gate.e_score_correction_bias", moe.e_score_correction_bias});
    for (int64_t e = 0; e < moe.experts_gate.size(0); ++e) {
      const std::string p = prefix + "mlp.experts." + std::to_string(e) + ".";
      out.push_back({p + "gate_proj.weight", moe.experts_gate[e]});
      out.push_back({p + "up_proj.weight", moe.experts_up[e]});
      out.push_back({p + "down_proj.weight", moe.experts_down[e]});
    }
    if (moe.shared_experts) add_module_tensors(*moe.shared_experts, prefix + "mlp.shared_experts.", out);
  }
}

std::string shape_text(at::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

std::string join_limited(const std::vector<std::string>& items, size_t limit = 8) {
  std::string s;
  for (size_t i = 0; i < items.size() && i < limit; ++i) s += (i ? ", " : "") + items[i];
  if (items.size() > limit) s += ", ... (" + std::to_string(items.size() - limit) + " more)";
  return s;
}

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

// "model.layers.{num_hidden_layers + k - 1}." for every MTP depth k the config asks for.
std::vector<std::string> mtp_prefixes(const ModelConfig& cfg) {
  std::vector<std::string> out;
  for (int64_t k = 0; k < cfg.num_nextn_predict_layers; ++k) {
    out.push_back("model.layers." + std::to_string(cfg.num_hidden_layers + k) + ".");
  }
  return out;
}

bool under_any(const std::string& name, const std::vector<std::string>& prefixes) {
  for (const auto& p : prefixes) {
    if (name.rfind(p, 0) == 0) return true;
  }
  return false;
}

// True when `prefixes` (the MTP depths of a config) is not empty and the checkpoint holds no tensor
// under any of them: the checkpoint has no MTP at all, as HF transformers saves DeepSeek-V3. A
// checkpoint with some MTP tensors is not "without MTP"; its missing ones are reported as such.
bool lacks_mtp(const io::SafetensorsCheckpoint& ckpt, const std::vector<std::string>& prefixes) {
  if (prefixes.empty()) return false;
  for (const auto& name : ckpt.names()) {
    if (under_any(name, prefixes)) return false;
  }
  return true;
}

std::string mtp_modules_text(int64_t n) { return std::to_string(n) + (n == 1 ? " MTP module" : " MTP modules"); }

// "has no MTP weights (config.json asks for 1 MTP module, as HF transformers writes DeepSeek-V3
// checkpoints)"; for a model that was not built from DIR/config.json (load_hf_weights),
// "has no MTP weights (the model has 1 MTP module)".
std::string no_mtp_text(int64_t n, bool from_config_json) {
  return std::string("has no MTP weights (") +
         (from_config_json
              ? "config.json asks for " + mtp_modules_text(n) + ", as HF transformers writes DeepSeek-V3 checkpoints"
              : "the model has " + mtp_modules_text(n)) +
         ")";
}

}  // namespace

std::vector<NamedTensor> hf_root_tensors(CausalLM& model) {
  std::vector<NamedTensor> out;
  out.push_back({"model.embed_tokens.weight", model->embed_tokens});
  out.push_back({"model.norm.weight", model->norm->weight});
  if (!model->config().tie_word_embeddings) out.push_back({"lm_head.weight", model->lm_head});
  return out;
}

std::vector<NamedTensor> hf_block_tensors(CausalLM& model, int64_t block) {
  const auto& cfg = model->config();
  std::vector<NamedTensor> out;
  if (block < cfg.num_hidden_layers) {
    add_block(*model->layers[block]->as<DecoderLayerImpl>(), "model.layers." + std::to_string(block) + ".", out);
    return out;
  }
  const int64_t k = block - cfg.num_hidden_layers;
  TORCH_CHECK(k < cfg.num_nextn_predict_layers, "hf_block_tensors: block ", block, " is outside the ",
              cfg.num_hidden_layers, " decoder layers and ", cfg.num_nextn_predict_layers, " MTP modules");
  auto& m = *model->mtp[k]->as<MtpModuleImpl>();
  const std::string p = "model.layers." + std::to_string(block) + ".";
  out.push_back({p + "enorm.weight", m.enorm->weight});
  out.push_back({p + "hnorm.weight", m.hnorm->weight});
  out.push_back({p + "eh_proj.weight", m.eh_proj->weight});
  out.push_back({p + "shared_head.norm.weight", m.shared_head_norm->weight});
  out.push_back({p + "embed_tokens.weight", model->embed_tokens, /*copy_only=*/true});
  out.push_back({p + "shared_head.head.weight", model->lm_head, /*copy_only=*/true});
  add_block(*m.block, p, out);
  return out;
}

std::vector<NamedTensor> hf_state_dict(CausalLM& model) {
  // HF's order: the embedding, the decoder layers, the final norm and head, the MTP modules.
  const auto root = hf_root_tensors(model);
  std::vector<NamedTensor> out{root.front()};
  const auto& cfg = model->config();
  auto add = [&](int64_t b) {
    auto block = hf_block_tensors(model, b);
    out.insert(out.end(), std::make_move_iterator(block.begin()), std::make_move_iterator(block.end()));
  };
  for (int64_t b = 0; b < cfg.num_hidden_layers; ++b) add(b);
  out.insert(out.end(), root.begin() + 1, root.end());
  for (int64_t k = 0; k < cfg.num_nextn_predict_layers; ++k) add(cfg.num_hidden_layers + k);
  return out;
}

torch::Tensor dequantize_block_fp8(const torch::Tensor& weight, const torch::Tensor& scale_inv, int64_t block) {
  TORCH_CHECK(weight.dim() == 2, "dequantize_block_fp8: expected a 2-d weight, got ", weight.sizes());
  const int64_t rows = weight.size(0), cols = weight.size(1);
  const int64_t br = (rows + block - 1) / block, bc = (cols + block - 1) / block;
  TORCH_CHECK(scale_inv.dim() == 2 && scale_inv.size(0) == br && scale_inv.size(1) == bc,
              "dequantize_block_fp8: weight ", weight.sizes(), " needs scales [", br, ", ", bc, "], got ",
              scale_inv.sizes());
  const auto scale = scale_inv.to(torch::kFloat).repeat_interleave(block, 0).repeat_interleave(block, 1);
  return weight.to(torch::kFloat) * scale.narrow(0, 0, rows).narrow(1, 0, cols);
}

namespace {

// load_hf_weights on an open checkpoint. `from_config_json`: the model was just built from
// DIR/config.json (load_hf_checkpoint), which only changes the wording of messages.
void load_weights(CausalLM& model, const io::SafetensorsCheckpoint& ckpt, const std::string& dir, bool allow_unexpected,
                  MissingMtp missing_mtp, bool from_config_json) {
  const auto& cfg = model->config();
  const auto prefixes = mtp_prefixes(cfg);
  const bool no_mtp = lacks_mtp(ckpt, prefixes);
  // init: the MTP modules are not looked for and keep the values they have.
  const bool keep_mtp = no_mtp && missing_mtp == MissingMtp::init;
  const auto targets = hf_state_dict(model);
  std::set<std::string> used;
  std::vector<std::string> missing, shape_errors, dtype_errors, unexpected;
  std::vector<std::pair<const NamedTensor*, const io::TensorInfo*>> plan;
  for (const auto& t : targets) {
    if (keep_mtp && under_any(t.name, prefixes)) continue;
    if (!ckpt.contains(t.name)) {
      if (!t.copy_only) missing.push_back(t.name);
      continue;
    }
    used.insert(t.name);
    const auto& info = ckpt.info(t.name);
    if (info.shape != t.tensor.sizes().vec()) {
      shape_errors.push_back(t.name + ": checkpoint " + shape_text(info.shape) + ", model " +
                             shape_text(t.tensor.sizes()));
      continue;
    }
    const bool fp8 = info.dtype == at::kFloat8_e4m3fn;
    if (fp8) {
      used.insert(t.name + "_scale_inv");
      if (!ckpt.contains(t.name + "_scale_inv")) {
        dtype_errors.push_back(t.name + ": float8_e4m3fn without " + t.name + "_scale_inv");
        continue;
      }
    } else if (!is_float_dtype(info.dtype)) {
      dtype_errors.push_back(t.name + ": " + std::string(c10::toString(info.dtype)) + " is not a floating dtype");
      continue;
    }
    if (!t.copy_only) plan.push_back({&t, &info});
  }
  for (const auto& name : ckpt.names()) {
    if (!used.count(name)) unexpected.push_back(name);
  }
  if (allow_unexpected) unexpected.clear();
  if (!missing.empty() || !shape_errors.empty() || !dtype_errors.empty() || !unexpected.empty()) {
    std::string msg = "checkpoint '" + dir + "' does not match the model:";
    auto add = [&msg](const std::vector<std::string>& items, const char* what) {
      if (items.empty()) return;
      msg += ' ';
      msg += std::to_string(items.size());
      msg += what;
      msg += " (";
      msg += join_limited(items);
      msg += ");";
    };
    add(missing, " missing");
    add(shape_errors, " with other shapes");
    add(dtype_errors, " with unusable dtypes");
    add(unexpected, " unexpected");
    msg.pop_back();
    if (no_mtp && !keep_mtp) {
      // Only when the checkpoint has no MTP at all: a partial MTP is a broken checkpoint, no option helps.
      msg += "; it " + no_mtp_text(cfg.num_nextn_predict_layers, from_config_json);
      if (from_config_json) {
        msg += ": load option missing_mtp: drop loads it without MTP, init keeps freshly initialised MTP modules";
      } else if (missing_mtp == MissingMtp::drop) {
        msg +=
            " and load_hf_weights cannot drop the MTP modules of an existing model: build the model with "
            "num_nextn_predict_layers 0, or load it with load_hf_checkpoint (load option missing_mtp: drop), "
            "or pass missing_mtp init to keep the model's MTP modules as they are";
      } else {
        msg +=
            ": missing_mtp init keeps the model's MTP modules as they are; or build the model with "
            "num_nextn_predict_layers 0";
      }
    }
    throw std::runtime_error(msg);
  }
  // Read everything first, then copy: a read error leaves the model untouched.
  std::vector<torch::Tensor> values;
  values.reserve(plan.size());
  for (const auto& [target, info] : plan) {
    auto value = ckpt.load(target->name);
    if (info->dtype == at::kFloat8_e4m3fn) value = dequantize_block_fp8(value, ckpt.load(target->name + "_scale_inv"));
    values.push_back(std::move(value));
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < plan.size(); ++i) {
    auto dst = plan[i].first->tensor;
    dst.copy_(values[i].to(dst.scalar_type()));
  }
  attach_fp8_checkpoint_weights(model, ckpt);  // FP8 path: keep FP8 weights as they were released
  if (keep_mtp) {
    const int64_t n = cfg.num_nextn_predict_layers;
    if (from_config_json) {
      log::info(
          "checkpoint '{}' {}: kept {} freshly initialised (load option missing_mtp: init; drop loads it "
          "without MTP)",
          dir, no_mtp_text(n, true), mtp_modules_text(n));
    } else {
      log::info("checkpoint '{}' {}: left the model's MTP modules as they were (missing_mtp: init)", dir,
                no_mtp_text(n, false));
    }
  }
}

}  // namespace

void load_hf_weights(CausalLM& model, const std::string& dir, bool allow_unexpected, MissingMtp missing_mtp) {
  const io::SafetensorsCheckpoint ckpt(dir);
  load_weights(model, ckpt, dir, allow_unexpected, missing_mtp, /*from_config_json=*/false);
}

CausalLM load_hf_checkpoint(const std::string& dir, const LoadOptions& options) {
  ModelConfig cfg = load_hf_config(dir);
  const io::SafetensorsCheckpoint ckpt(dir);
  // drop: a checkpoint without any MTP tensor gives a model without MTP modules.
  const int64_t asked_mtp = cfg.num_nextn_predict_layers;
  const bool drop_mtp = options.missing_mtp == MissingMtp::drop && lacks_mtp(ckpt, mtp_prefixes(cfg));
  if (drop_mtp) cfg.num_nextn_predict_layers = 0;
  CausalLM model(cfg, torch::TensorOptions().dtype(options.dtype));
  load_weights(model, ckpt, dir, options.allow_unexpected, options.missing_mtp, /*from_config_json=*/true);
  if (drop_mtp) {
    log::info(
        "checkpoint '{}' {}: loaded without MTP (load option missing_mtp: init keeps freshly initialised "
        "MTP modules)",
        dir, no_mtp_text(asked_mtp, true));
  }
  model->to(options.device);
  {
    // The router bias stays float32 whatever the parameters' dtype.
    torch::NoGradGuard no_grad;
    for (auto& moe : model->moe_layers())
      moe->e_score_correction_bias.set_data(moe->e_score_correction_bias.to(torch::kFloat));
  }
  return model;
}

void save_hf_checkpoint(CausalLM& model, const std::string& dir, torch::ScalarType dtype, uint64_t max_shard_bytes) {
  save_hf_checkpoint(model, dir, dtype, max_shard_bytes, BlockwiseSave{});
}

void save_hf_checkpoint(CausalLM& model, const std::string& dir, torch::ScalarType dtype, uint64_t max_shard_bytes,
                        const BlockwiseSave& how) {
  torch::NoGradGuard no_grad;
  // The blocks are brought in one at a time; with sharding, freed again after (an eval-mode,
  // gradient-free pass never keeps them).
  const bool was_training = model->is_training();
  if (how.blocks != nullptr) model->eval();
  std::optional<io::CheckpointWriter> writer;
  std::string error;  // the first write failure: the blocks' collectives go on, so every rank finishes
  const auto put = [&](const std::vector<NamedTensor>& tensors) {
    if (!writer) return;
    try {
      for (const auto& t : tensors) {
        const bool keep_fp32 = t.name.find("e_score_correction_bias") != std::string::npos;
        auto value = t.tensor.detach().to(torch::kCPU);
        if (!keep_fp32) value = value.to(dtype);
        writer->add(t.name, value);
      }
    } catch (const std::exception& e) {
      error = e.what();
      writer.reset();
    }
  };
  if (how.write) {
    try {
      std::filesystem::create_directories(dir);
      writer.emplace(dir, max_shard_bytes);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  put(hf_root_tensors(model));
  const auto& cfg = model->config();
  for (int64_t b = 0; b < cfg.num_hidden_layers + cfg.num_nextn_predict_layers; ++b) {
    if (how.blocks != nullptr) how.blocks->before_block(b);
    put(hf_block_tensors(model, b));
    if (how.blocks != nullptr) how.blocks->after_block(b, {});
  }
  if (was_training) model->train();
  if (!error.empty()) throw std::runtime_error(error);
  if (!writer) return;
  writer->finish();
  write_file_atomic((std::filesystem::path(dir) / "config.json").string(), hf_config_json(model->config()));
}

}  // namespace grpo::model
