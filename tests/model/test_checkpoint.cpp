// Checkpoint loading: every mismatch reported at once, truncated files and malformed configs give
// one clear error and leave nothing half-loaded, FP8 block dequantisation, config.json parsing.
#include "grpo/model/checkpoint.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <torch/torch.h>
#include <tuple>

#include <filesystem>
#include <fstream>

#include "grpo/io/safetensors.h"
#include "model_test_util.h"
#include "test_util.h"

namespace grpo::model {
namespace {

namespace fs = std::filesystem;

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Checkpoint, SaveLoadRoundTripIsExactForEveryArchitecture) {
  for (const auto& cfg : {test::tiny_dsv3(), test::tiny_qwen2()}) {
    ::grpo::test::TempDir tmp;
    torch::manual_seed(1);
    CausalLM model(cfg);
    save_hf_checkpoint(model, tmp.path("m"));
    CausalLM loaded = load_hf_checkpoint(tmp.path("m"));
    auto want = model->named_parameters();
    for (const auto& p : loaded->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), want[p.key()])) << p.key();
  }
}

TEST(Checkpoint, Bf16SaveKeepsTheRouterBiasInFloat32) {
  ::grpo::test::TempDir tmp;
  CausalLM model(test::tiny_dsv3());
  save_hf_checkpoint(model, tmp.path("m"), torch::kBFloat16);
  io::SafetensorsCheckpoint ckpt(tmp.path("m"));
  EXPECT_EQ(ckpt.info("model.layers.1.mlp.gate.e_score_correction_bias").dtype, at::kFloat);
  EXPECT_EQ(ckpt.info("model.layers.1.mlp.gate.weight").dtype, at::kBFloat16);
  CausalLM loaded = load_hf_checkpoint(tmp.path("m"), {torch::kBFloat16});
  EXPECT_EQ(loaded->embed_tokens.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(loaded->moe_layers()[0]->e_score_correction_bias.scalar_type(), torch::kFloat);
}

TEST(Checkpoint, EveryMismatchIsReportedInOneError) {
  ::grpo::test::TempDir tmp;
  const auto cfg = test::tiny_qwen2();
  CausalLM model(cfg);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& t : hf_state_dict(model)) {
    if (t.name == "model.norm.weight" || t.name == "model.layers.1.mlp.up_proj.weight") continue;  // 2 missing
    auto v = t.tensor.detach().clone();
    if (t.name == "model.layers.0.self_attn.q_proj.weight") v = torch::zeros({5, 32});  // 1 wrong shape
    if (t.name == "model.layers.0.self_attn.k_proj.bias") v = v.to(torch::kLong);       // 1 wrong dtype
    tensors.emplace_back(t.name, v);
  }
  tensors.emplace_back("model.layers.9.extra.weight", torch::zeros({2}));  // 1 unexpected
  io::save_checkpoint_tensors(tmp.path("m"), tensors);
  CausalLM target(cfg);
  const auto before = target->embed_tokens.clone();
  EXPECT_EQ(message_of([&] { load_hf_weights(target, tmp.path("m")); }),
            "checkpoint '" + tmp.path("m") +
                "' does not match the model: 2 missing (model.layers.1.mlp.up_proj.weight, model.norm.weight); 1 "
                "with other shapes (model.layers.0.self_attn.q_proj.weight: checkpoint [5, 32], model [32, 32]); 1 "
                "with unusable dtypes (model.layers.0.self_attn.k_proj.bias: Long is not a floating dtype); 1 "
                "unexpected (model.layers.9.extra.weight)");
  EXPECT_TRUE(torch::equal(target->embed_tokens, before)) << "nothing may be loaded from a mismatching checkpoint";
}

TEST(Checkpoint, TruncatedWeightsFileFailsWithoutTouchingTheModel) {
  ::grpo::test::TempDir tmp;
  const auto cfg = test::tiny_qwen2();
  CausalLM model(cfg);
  save_hf_checkpoint(model, tmp.path("m"));
  const auto file = fs::path(tmp.path("m")) / "model.safetensors";
  fs::resize_file(file, fs::file_size(file) - 100);
  const std::string msg = message_of([&] { load_hf_checkpoint(tmp.path("m")); });
  EXPECT_EQ(msg.rfind(file.string() + ": truncated", 0), 0u) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

TEST(Checkpoint, MissingFolderAndMissingConfig) {
  ::grpo::test::TempDir tmp;
  EXPECT_EQ(message_of([&] { load_hf_checkpoint(tmp.path("nope")); }),
            "model config '" + tmp.path("nope") + "' does not exist");
  fs::create_directories(tmp.path("empty"));
  EXPECT_EQ(message_of([&] { load_hf_checkpoint(tmp.path("empty")); }),
            "model config '" + tmp.path("empty/config.json") + "' does not exist");
}

TEST(Checkpoint, Fp8WeightsWithBlockScalesAreDequantisedOnLoad) {
  // Hand-computed: a 130 x 3 weight of ones in fp8 with scales [[2], [0.5]] (rows 0-127, 128-129).
  const auto w = torch::ones({130, 3}).to(at::kFloat8_e4m3fn);
  const auto s = torch::tensor({{2.0f}, {0.5f}});
  const auto d = dequantize_block_fp8(w, s);
  EXPECT_TRUE(torch::equal(d.narrow(0, 0, 128), torch::full({128, 3}, 2.0f)));
  EXPECT_TRUE(torch::equal(d.narrow(0, 128, 2), torch::full({2, 3}, 0.5f)));
  EXPECT_THROW(dequantize_block_fp8(w, torch::ones({1, 1})), c10::Error);

  // A checkpoint whose q_proj is stored the DeepSeek way: fp8 + weight_scale_inv.
  ::grpo::test::TempDir tmp;
  const auto cfg = test::tiny_qwen2();
  CausalLM model(cfg);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  const std::string name = "model.layers.0.self_attn.q_proj.weight";
  for (const auto& t : hf_state_dict(model)) {
    if (t.name == name) {
      tensors.emplace_back(name, torch::full({32, 32}, 1.5f).to(at::kFloat8_e4m3fn));
      tensors.emplace_back(name + "_scale_inv", torch::full({1, 1}, 0.25f));
    } else {
      tensors.emplace_back(t.name, t.tensor.detach().clone());
    }
  }
  io::save_checkpoint_tensors(tmp.path("m"), tensors);
  std::ofstream(fs::path(tmp.path("m")) / "config.json") << hf_config_json(cfg);
  CausalLM loaded = load_hf_checkpoint(tmp.path("m"));
  const auto* attn = loaded->layers[0]->as<DecoderLayerImpl>()->gqa.get();
  EXPECT_TRUE(torch::equal(attn->q_proj->weight, torch::full({32, 32}, 0.375f)));
}

// Block by block (what sharded training saves through): hooks that hold every block's values
// elsewhere and put only the asked-for block into the model; the files are the plain save's, bit
// for bit, and no two blocks are ever in the model at once.
class OneBlockAtATime : public BlockHooks {
 public:
  explicit OneBlockAtATime(CausalLM& model) : model_(model) {
    torch::NoGradGuard no_grad;
    for (int64_t b = 0; b < blocks(); ++b) {
      std::vector<torch::Tensor> kept;
      for (auto& p : block(b).parameters()) {
        kept.push_back(p.detach().clone());
        p.set_data(torch::empty({0}, p.options()));
      }
      kept_.push_back(std::move(kept));
    }
  }
  void before_block(int64_t index) override {
    EXPECT_EQ(present_, -1) << "block " << present_ << " still in when block " << index << " comes";
    torch::NoGradGuard no_grad;
    auto params = block(index).parameters();
    for (size_t i = 0; i < params.size(); ++i) params[i].set_data(kept_[static_cast<size_t>(index)][i].clone());
    present_ = index;
    ++calls;
  }
  void after_block(int64_t index, const std::vector<torch::Tensor>&) override {
    EXPECT_EQ(present_, index);
    torch::NoGradGuard no_grad;
    for (auto& p : block(index).parameters()) p.set_data(torch::empty({0}, p.options()));
    present_ = -1;
  }
  int64_t blocks() const { return model_->config().num_hidden_layers + model_->config().num_nextn_predict_layers; }
  int64_t calls = 0;

 private:
  torch::nn::Module& block(int64_t b) {
    const int64_t layers = model_->config().num_hidden_layers;
    return b < layers ? *model_->layers[b] : *model_->mtp[b - layers];
  }
  CausalLM& model_;
  std::vector<std::vector<torch::Tensor>> kept_;
  int64_t present_ = -1;
};

TEST(Checkpoint, BlockwiseSaveWritesThePlainSaveWithOneBlockInAtATime) {
  ::grpo::test::TempDir dir;
  torch::manual_seed(3);
  CausalLM model(test::tiny_dsv3(), torch::TensorOptions().dtype(torch::kFloat));
  save_hf_checkpoint(model, dir.path("plain"), torch::kBFloat16, 2000);  // several shards
  {
    OneBlockAtATime hooks(model);
    save_hf_checkpoint(model, dir.path("blockwise"), torch::kBFloat16, 2000, {.blocks = &hooks});
    EXPECT_EQ(hooks.calls, hooks.blocks());
    save_hf_checkpoint(model, dir.path("not_written"), torch::kBFloat16, 2000, {.blocks = &hooks, .write = false});
    EXPECT_EQ(hooks.calls, 2 * hooks.blocks());  // every block visited, nothing written
  }
  EXPECT_FALSE(fs::exists(dir.path("not_written")));
  const io::SafetensorsCheckpoint plain(dir.path("plain")), blockwise(dir.path("blockwise"));
  ASSERT_EQ(plain.names(), blockwise.names());
  EXPECT_GT(plain.names().size(), 20u);
  for (const auto& name : plain.names()) {
    EXPECT_TRUE(torch::equal(plain.load(name), blockwise.load(name))) << name;
    EXPECT_EQ(plain.info(name).dtype, blockwise.info(name).dtype) << name;
  }
  EXPECT_TRUE(fs::exists(dir.path("blockwise/model.safetensors.index.json")));
  EXPECT_EQ(::grpo::test::read_text(dir.path("plain/config.json")),
            ::grpo::test::read_text(dir.path("blockwise/config.json")));
}

TEST(ModelConfigJson, ReadsBothRopeFormsAndRejectsWhatItCannotRun) {
  ::grpo::test::TempDir tmp;
  const auto legacy = tmp.write("legacy.json", R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "rope_theta": 500000.0,
    "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}, "tie_word_embeddings": true})");
  const auto c = load_hf_config(legacy);
  EXPECT_EQ(c.arch, Arch::llama);
  EXPECT_EQ(c.rope.type, RopeType::llama3);
  EXPECT_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  EXPECT_TRUE(c.tie_word_embeddings);

  const auto modern = tmp.write("modern.json", R"({"model_type": "qwen2", "vocab_size": 10, "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}})");
  const auto q = load_hf_config(modern);
  EXPECT_EQ(q.rope.theta, 1e6);
  EXPECT_TRUE(q.qkv_bias);
  EXPECT_EQ(q.kv_heads(), 1);

  const auto mixtral = tmp.write("mixtral.json", R"({"model_type": "mixtral", "vocab_size": 10})");
  EXPECT_EQ(message_of([&] { load_hf_config(mixtral); }),
            mixtral + ": key 'model_type': 'mixtral' is not supported (expected deepseek_v3, qwen2 or llama)");
  const auto bad_type = tmp.write("bad.json", R"({"model_type": "llama", "vocab_size": "ten"})");
  EXPECT_EQ(message_of([&] { load_hf_config(bad_type); }),
            bad_type + ": key 'vocab_size': expected an integer, found \"ten\"");
  const auto missing = tmp.write("missing.json", R"({"model_type": "llama", "vocab_size": 10})");
  EXPECT_EQ(message_of([&] { load_hf_config(missing); }),
            missing + ": key 'hidden_size': missing (expected an integer)");
  const auto dynamic = tmp.write("dyn.json", R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"type": "dynamic", "factor": 2}})");
  EXPECT_EQ(
      message_of([&] { load_hf_config(dynamic); }),
      dynamic +
          ": key 'rope_scaling': rope type 'dynamic' is not supported (expected default, yarn, llama3 or linear)");
  const auto groups = tmp.write("groups.json", R"({"model_type": "deepseek_v3", "vocab_size": 10, "hidden_size": 8,
    "num_hidden_layers": 1, "num_attention_heads": 2, "n_routed_experts": 6, "num_experts_per_tok": 2,
    "n_group": 4})");
  EXPECT_EQ(message_of([&] { load_hf_config(groups); }),
            groups + ": n_routed_experts (6) must be a multiple of n_group (4)");
}

// Regression: num_attention_heads 0 in a config.json was a SIGFPE (a division in validate());
// zero or negative sizes gave "Trying to create tensor with negative dimension" from deep inside.
// Now one line naming the file and the key, before anything is allocated.
TEST(ModelConfigJson, SizesOutOfRangeNameTheFileAndKey) {
  ::grpo::test::TempDir tmp;
  const auto with = [&](const std::string& key, const nlohmann::json& value) {
    nlohmann::json j = {{"model_type", "qwen2"},   {"vocab_size", 10},       {"hidden_size", 8},
                        {"intermediate_size", 16}, {"num_hidden_layers", 1}, {"num_attention_heads", 2},
                        {"num_key_value_heads", 1}};
    j[key] = value;
    return tmp.write(key + ".json", j.dump());
  };
  for (const auto& [key, value, want] : std::vector<std::tuple<std::string, nlohmann::json, std::string>>{
           {"num_attention_heads", 0, "num_attention_heads must be >= 1, found 0"},
           {"vocab_size", -5, "vocab_size must be >= 1, found -5"},
           {"num_hidden_layers", 0, "num_hidden_layers must be >= 1, found 0"},
           {"max_position_embeddings", 0, "max_position_embeddings must be >= 1, found 0"},
           {"head_dim", -2, "head_dim must be >= 0, found -2"},
           {"rms_norm_eps", -1.0, "rms_norm_eps must be a finite number > 0, found -1.000000"},
           {"rope_theta", 0.0, "rope_theta must be a finite number > 0, found 0.000000"},
           {"hidden_size", 1, "head_dim (hidden_size / num_attention_heads = 1 / 2) must be >= 1"}}) {
    const auto path = with(key, value);
    EXPECT_EQ(message_of([&] { load_hf_config(path); }), path + ": " + want) << key;
  }
}

TEST(ModelConfigJson, WrittenConfigReadsBackTheSame) {
  ::grpo::test::TempDir tmp;
  auto cfg = test::tiny_dsv3();
  cfg.rope.type = RopeType::yarn;
  cfg.rope.factor = 4;
  cfg.rope.mscale = 0.707;
  cfg.rope.mscale_all_dim = 0.707;
  cfg.rope.original_max_position_embeddings = 16;
  cfg.eos_token_ids = {1, 2};
  const auto path = tmp.write("config.json", hf_config_json(cfg));
  const auto back = load_hf_config(path);
  EXPECT_EQ(config::to_yaml(back), config::to_yaml([&] {
              auto c = cfg;
              c.num_key_value_heads = c.num_attention_heads;  // written explicitly for HF
              c.initializer_range = back.initializer_range;
              return c;
            }()));
}

TEST(ModelPresets, EveryShippedPresetLoadsAndValidates) {
  const fs::path dir = fs::path(GRPO_SOURCE_DIR) / "configs/models";
  int count = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto cfg = load_model_config(entry.path().string());
    EXPECT_EQ(cfg.validate(), "") << entry.path();
    ++count;
  }
  EXPECT_GE(count, 3);
}

}  // namespace
}  // namespace grpo::model
