#include "grpo/model/model_config.h"

#include <cmath>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "grpo/core/files.h"

namespace grpo::model {
namespace {

using nlohmann::json;

// Reads typed keys out of an HF config.json, naming the file and key in every error.
class JsonReader {
 public:
  JsonReader(const json& j, std::string file) : j_(j), file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw std::runtime_error(file_ + ": key '" + key + "': " + what);
  }
  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const json& at(const std::string& key) const { return j_.at(key); }

  int64_t integer(const std::string& key) const {
    if (!has(key)) fail(key, "missing (expected an integer)");
    return as_integer(key, j_.at(key));
  }
  int64_t integer(const std::string& key, int64_t fallback) const {
    return has(key) ? as_integer(key, j_.at(key)) : fallback;
  }
  double number(const std::string& key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_number()) fail(key, "expected a number, found " + v.dump());
    return v.get<double>();
  }
  bool boolean(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_boolean()) fail(key, "expected true or false, found " + v.dump());
    return v.get<bool>();
  }
  std::string string(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_string()) fail(key, "expected a string, found " + v.dump());
    return v.get<std::string>();
  }

 private:
  int64_t as_integer(const std::string& key, const json& v) const {
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && v.get<double>() == static_cast<double>(static_cast<int64_t>(v.get<double>()))) {
      return static_cast<int64_t>(v.get<double>());
    }
    fail(key, "expected an integer, found " + v.dump());
  }
  const json& j_;
  std::string file_;
};

RopeConfig read_rope(const JsonReader& top, const std::string& file) {
  RopeConfig rope;
  rope.theta = top.number("rope_theta", 10000.0);
  const char* key = nullptr;
  if (top.has("rope_parameters")) {
    key = "rope_parameters";
  } else if (top.has("rope_scaling")) {
    key = "rope_scaling";
  }
  if (key == nullptr) return rope;
  const json& params = top.at(key);
  if (!params.is_object()) top.fail(key, "expected an object, found " + params.dump());
  const JsonReader r(params, file + " (" + key + ")");
  rope.theta = r.number("rope_theta", rope.theta);
  const std::string type = r.string("rope_type", r.string("type", "default"));
  const auto rope_type = config::enum_from_name<RopeType>(type);
  if (!rope_type) {
    top.fail(key, "rope type '" + type + "' is not supported (expected " + config::enum_names_text<RopeType>() + ")");
  }
  rope.type = *rope_type;
  rope.factor = r.number("factor", 1.0);
  rope.original_max_position_embeddings = r.integer("original_max_position_embeddings",
                                                    top.integer("max_position_embeddings", 4096));
  rope.beta_fast = r.number("beta_fast", 32.0);
  rope.beta_slow = r.number("beta_slow", 1.0);
  rope.mscale = r.number("mscale", 0.0);
  rope.mscale_all_dim = r.number("mscale_all_dim", 0.0);
  if (r.has("attention_factor")) rope.attention_factor = r.number("attention_factor", 1.0);
  rope.truncate = r.boolean("truncate", true);
  rope.low_freq_factor = r.number("low_freq_factor", 1.0);
  rope.high_freq_factor = r.number("high_freq_factor", 4.0);
  return rope;
}

std::string config_file_of(const std::string& path) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path)) return (fs::path(path) / "config.json").string();
  return path;
}

}  // namespace

std::string ModelConfig::validate() const {
  // Sizes first: a config.json does not pass through the YAML loader's ranges, and the checks
  // below divide by some of these (num_attention_heads 0 was a SIGFPE).
  const std::pair<const char*, int64_t> at_least_one[] = {{"vocab_size", vocab_size},
                                                          {"hidden_size", hidden_size},
                                                          {"intermediate_size", intermediate_size},
                                                          {"num_hidden_layers", num_hidden_layers},
                                                          {"num_attention_heads", num_attention_heads},
                                                          {"max_position_embeddings", max_position_embeddings},
                                                          {"n_group", n_group}};
  for (const auto& [key, value] : at_least_one) {
    if (value < 1) return std::string(key) + " must be >= 1, found " + std::to_string(value);
  }
  const std::pair<const char*, int64_t> not_negative[] = {
      {"num_key_value_heads", num_key_value_heads},     {"head_dim", head_dim},
      {"n_routed_experts", n_routed_experts},           {"n_shared_experts", n_shared_experts},
      {"first_k_dense_replace", first_k_dense_replace}, {"num_nextn_predict_layers", num_nextn_predict_layers}};
  for (const auto& [key, value] : not_negative) {
    if (value < 0) return std::string(key) + " must be >= 0, found " + std::to_string(value);
  }
  if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps)) {
    return "rms_norm_eps must be a finite number > 0, found " + std::to_string(rms_norm_eps);
  }
  if (!(rope.theta > 0) || !std::isfinite(rope.theta)) {
    return "rope_theta must be a finite number > 0, found " + std::to_string(rope.theta);
  }
  if (!is_mla() && dense_head_dim() < 1) {
    return "head_dim (hidden_size / num_attention_heads = " + std::to_string(hidden_size) + " / " +
           std::to_string(num_attention_heads) + ") must be >= 1";
  }
  if (num_attention_heads > 0 && kv_heads() > 0 && num_attention_heads % kv_heads() != 0) {
    return "num_attention_heads (" + std::to_string(num_attention_heads) +
           ") must be a multiple of num_key_value_heads (" + std::to_string(kv_heads()) + ")";
  }
  if (is_mla()) {
    if (kv_lora_rank < 1 || qk_rope_head_dim < 1 || v_head_dim < 1 || qk_nope_head_dim < 0) {
      return "deepseek_v3 needs kv_lora_rank, qk_rope_head_dim and v_head_dim >= 1";
    }
    if (qk_rope_head_dim % 2 != 0) return "qk_rope_head_dim must be even, found " + std::to_string(qk_rope_head_dim);
  } else if (dense_head_dim() % 2 != 0) {
    return "head_dim must be even for rotary embeddings, found " + std::to_string(dense_head_dim());
  }
  if (n_routed_experts > 0) {
    if (moe_intermediate_size < 1) return "moe_intermediate_size must be >= 1 when n_routed_experts > 0";
    if (num_experts_per_tok < 1 || num_experts_per_tok > n_routed_experts) {
      return "num_experts_per_tok must be in [1, n_routed_experts=" + std::to_string(n_routed_experts) + "], found " +
             std::to_string(num_experts_per_tok);
    }
    if (n_routed_experts % n_group != 0) {
      return "n_routed_experts (" + std::to_string(n_routed_experts) + ") must be a multiple of n_group (" +
             std::to_string(n_group) + ")";
    }
    if (topk_group > n_group) {
      return "topk_group (" + std::to_string(topk_group) + ") must not exceed n_group (" + std::to_string(n_group) +
             ")";
    }
    const int64_t per_group = n_routed_experts / n_group;
    if (n_group > 1 && per_group < 2) return "group-limited routing needs at least 2 experts per group";
    if (topk_group * per_group < num_experts_per_tok) {
      return "topk_group * experts per group (" + std::to_string(topk_group * per_group) +
             ") must be >= num_experts_per_tok (" + std::to_string(num_experts_per_tok) + ")";
    }
  }
  if (num_nextn_predict_layers > 0 && !is_mla()) return "MTP modules are only supported for deepseek_v3";
  return "";
}

ModelConfig load_hf_config(const std::string& path) {
  const std::string file = config_file_of(path);
  if (!std::filesystem::exists(file)) throw std::runtime_error("model config '" + file + "' does not exist");
  json j;
  try {
    j = json::parse(read_file(file));
  } catch (const json::exception& e) {
    throw std::runtime_error(file + ": invalid JSON: " + e.what());
  }
  if (!j.is_object()) throw std::runtime_error(file + ": expected a JSON object at the top level");
  const JsonReader r(j, file);
  const std::string type = r.string("model_type", "");
  ModelConfig c;
  const auto arch = config::enum_from_name<Arch>(type);
  if (!arch) r.fail("model_type", "'" + type + "' is not supported (expected " + config::enum_names_text<Arch>() + ")");
  c.arch = *arch;
  const std::string act = r.string("hidden_act", "silu");
  if (act != "silu") r.fail("hidden_act", "'" + act + "' is not supported (expected silu)");

  c.vocab_size = r.integer("vocab_size");
  c.hidden_size = r.integer("hidden_size");
  c.num_hidden_layers = r.integer("num_hidden_layers");
  c.num_attention_heads = r.integer("num_attention_heads");
  c.num_key_value_heads = r.integer("num_key_value_heads", c.num_attention_heads);
  c.max_position_embeddings = r.integer("max_position_embeddings", 4096);
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.initializer_range = r.number("initializer_range", 0.02);
  c.rope = read_rope(r, file);
  if (r.has("bos_token_id")) c.bos_token_id = r.integer("bos_token_id");
  if (r.has("eos_token_id")) {
    const json& e = j.at("eos_token_id");
    if (e.is_array()) {
      for (const auto& id : e) {
        if (!id.is_number_integer()) r.fail("eos_token_id", "expected integers, found " + e.dump());
        c.eos_token_ids.push_back(id.get<int64_t>());
      }
    } else {
      c.eos_token_ids.push_back(r.integer("eos_token_id"));
    }
  }

  if (c.arch == Arch::deepseek_v3) {
    c.intermediate_size = r.integer("intermediate_size", 18432);
    c.moe_intermediate_size = r.integer("moe_intermediate_size", 2048);
    c.n_shared_experts = r.integer("n_shared_experts", 1);
    c.n_routed_experts = r.integer("n_routed_experts", 256);
    c.routed_scaling_factor = r.number("routed_scaling_factor", 2.5);
    c.kv_lora_rank = r.integer("kv_lora_rank", 512);
    if (j.contains("q_lora_rank")) {
      if (!j.at("q_lora_rank").is_null()) c.q_lora_rank = r.integer("q_lora_rank");
    } else {
      c.q_lora_rank = 1536;
    }
    c.qk_rope_head_dim = r.integer("qk_rope_head_dim", 64);
    c.v_head_dim = r.integer("v_head_dim", 128);
    c.qk_nope_head_dim = r.integer("qk_nope_head_dim", 128);
    c.n_group = r.integer("n_group", 8);
    c.topk_group = r.integer("topk_group", 4);
    c.num_experts_per_tok = r.integer("num_experts_per_tok", 8);
    c.first_k_dense_replace = r.integer("first_k_dense_replace", 3);
    c.norm_topk_prob = r.boolean("norm_topk_prob", true);
    c.rope_interleave = r.boolean("rope_interleave", true);
    c.attention_bias = r.boolean("attention_bias", false);
    c.num_nextn_predict_layers = r.integer("num_nextn_predict_layers", r.integer("num_mtp_layers", 0));
    const std::string scoring = r.string("scoring_func", "sigmoid");
    if (scoring != "sigmoid") r.fail("scoring_func", "'" + scoring + "' is not supported (expected sigmoid)");
    const std::string topk_method = r.string("topk_method", "noaux_tc");
    if (topk_method != "noaux_tc") {
      r.fail("topk_method", "'" + topk_method + "' is not supported (expected noaux_tc)");
    }
  } else {
    c.intermediate_size = r.integer("intermediate_size");
    c.head_dim = r.integer("head_dim", 0);
    if (c.arch == Arch::qwen2) {
      c.qkv_bias = true;
    } else {
      c.attention_bias = r.boolean("attention_bias", false);
      c.mlp_bias = r.boolean("mlp_bias", false);
    }
  }
  const std::string problem = c.validate();
  if (!problem.empty()) throw std::runtime_error(file + ": " + problem);
  return c;
}

std::string hf_config_json(const ModelConfig& c) {
  json j;
  switch (c.arch) {
    case Arch::deepseek_v3:
      j["model_type"] = "deepseek_v3";
      j["architectures"] = {"DeepseekV3ForCausalLM"};
      break;
    case Arch::qwen2:
      j["model_type"] = "qwen2";
      j["architectures"] = {"Qwen2ForCausalLM"};
      break;
    case Arch::llama:
      j["model_type"] = "llama";
      j["architectures"] = {"LlamaForCausalLM"};
      break;
  }
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.kv_heads();
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["initializer_range"] = c.initializer_range;
  j["torch_dtype"] = "float32";
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
  if (c.eos_token_ids.size() > 1) j["eos_token_id"] = c.eos_token_ids;

  json rope;
  rope["rope_theta"] = c.rope.theta;
  switch (c.rope.type) {
    case RopeType::standard: rope["rope_type"] = "default"; break;
    case RopeType::yarn:
      rope["rope_type"] = "yarn";
      rope["factor"] = c.rope.factor;
      rope["original_max_position_embeddings"] = c.rope.original_max_position_embeddings;
      rope["beta_fast"] = c.rope.beta_fast;
      rope["beta_slow"] = c.rope.beta_slow;
      if (c.rope.mscale > 0) rope["mscale"] = c.rope.mscale;
      if (c.rope.mscale_all_dim > 0) rope["mscale_all_dim"] = c.rope.mscale_all_dim;
      if (c.rope.attention_factor) rope["attention_factor"] = *c.rope.attention_factor;
      if (!c.rope.truncate) rope["truncate"] = false;
      break;
    case RopeType::llama3:
      rope["rope_type"] = "llama3";
      rope["factor"] = c.rope.factor;
      rope["original_max_position_embeddings"] = c.rope.original_max_position_embeddings;
      rope["low_freq_factor"] = c.rope.low_freq_factor;
      rope["high_freq_factor"] = c.rope.high_freq_factor;
      break;
    case RopeType::linear:
      rope["rope_type"] = "linear";
      rope["factor"] = c.rope.factor;
      break;
  }
  j["rope_parameters"] = rope;

  if (c.arch == Arch::deepseek_v3) {
    j["moe_intermediate_size"] = c.moe_intermediate_size;
    j["n_shared_experts"] = c.n_shared_experts;
    j["n_routed_experts"] = c.n_routed_experts;
    j["routed_scaling_factor"] = c.routed_scaling_factor;
    j["kv_lora_rank"] = c.kv_lora_rank;
    j["q_lora_rank"] = c.q_lora_rank ? json(*c.q_lora_rank) : json(nullptr);
    j["qk_rope_head_dim"] = c.qk_rope_head_dim;
    j["v_head_dim"] = c.v_head_dim;
    j["qk_nope_head_dim"] = c.qk_nope_head_dim;
    j["n_group"] = c.n_group;
    j["topk_group"] = c.topk_group;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["first_k_dense_replace"] = c.first_k_dense_replace;
    j["norm_topk_prob"] = c.norm_topk_prob;
    j["rope_interleave"] = c.rope_interleave;
    j["attention_bias"] = c.attention_bias;
    j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
    j["scoring_func"] = "sigmoid";
    j["topk_method"] = "noaux_tc";
  } else {
    if (c.head_dim > 0) j["head_dim"] = c.head_dim;
    if (c.arch == Arch::llama) {
      j["attention_bias"] = c.attention_bias;
      j["mlp_bias"] = c.mlp_bias;
    }
  }
  return j.dump(2) + "\n";
}

ModelConfig load_model_config(const std::string& path) {
  const std::filesystem::path p(path);
  const std::string ext = p.extension().string();
  if (ext == ".yaml" || ext == ".yml") {
    ModelConfig c = config::load<ModelConfig>(path);
    return c;
  }
  return load_hf_config(path);
}

}  // namespace grpo::model
