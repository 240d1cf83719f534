// Parity with HF transformers. tests/model/hf_oracle.py saves tiny random HF models with inputs and
// HF's float32 logits (and, for dsv3_grad, the gradients of sum(logits * loss_weights)); here we
// load each, compare logits (max relative error 1e-5 of the logits' scale) and gradients (1e-4),
// and save our own copy with our logits for `hf_oracle.py check` to load in HF the other way.
//
// dsv3_hf_default_mtp is what transformers writes for every DeepSeek-V3 model: config.json asks for
// 1 MTP module (DeepseekV3Config's default) and the weights have none; the HfMissingMtp tests check
// LoadOptions::missing_mtp on it, and that a checkpoint with only part of the MTP tensors is refused.
//
// Environment: GRPO_HF_FIXTURES_DIR (the generated fixtures; the tests skip when unset) and
// GRPO_HF_ROUNDTRIP_DIR (where our checkpoints go).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "grpo/core/log.h"
#include "grpo/io/safetensors.h"
#include "grpo/model/checkpoint.h"
#include "model_test_util.h"
#include "test_util.h"

namespace grpo::model {
namespace {

namespace fs = std::filesystem;

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

struct Inputs {
  torch::Tensor ids, mask, positions;
};

Inputs read_inputs(const std::string& dir) {
  io::SafetensorsFile f((fs::path(dir) / "inputs.safetensors").string());
  return {f.load("input_ids").to(torch::kLong), f.load("attention_mask").to(torch::kLong),
          f.load("position_ids").to(torch::kLong)};
}

// Saves our checkpoint of `model`, the inputs and our logits for the Python check.
void write_roundtrip(CausalLM& model, const std::string& name, const Inputs& in, const torch::Tensor& logits,
                     uint64_t max_shard_bytes = 5ull << 30) {
  const std::string root = env_or_empty("GRPO_HF_ROUNDTRIP_DIR");
  if (root.empty()) return;
  const std::string dir = (fs::path(root) / name).string();
  fs::remove_all(dir);
  save_hf_checkpoint(model, dir, torch::kFloat, max_shard_bytes);
  io::save_safetensors((fs::path(dir) / "inputs.safetensors").string(),
                       {{"input_ids", in.ids}, {"attention_mask", in.mask}, {"position_ids", in.positions}});
  io::save_safetensors((fs::path(dir) / "ours.safetensors").string(), {{"logits", logits.detach().contiguous()}});
}

class HfParity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    fixtures_ = env_or_empty("GRPO_HF_FIXTURES_DIR");
    if (fixtures_.empty()) GTEST_SKIP() << "GRPO_HF_FIXTURES_DIR is not set (run through ctest)";
  }
  std::string dir() const { return (fs::path(fixtures_) / GetParam()).string(); }
  std::string fixtures_;
};

TEST_P(HfParity, LogitsMatchHfInBothDirections) {
  CausalLM model = load_hf_checkpoint(dir());
  model->eval();
  const Inputs in = read_inputs(dir());
  const auto expected = io::SafetensorsFile((fs::path(dir()) / "expected.safetensors").string()).load("logits");
  torch::NoGradGuard no_grad;
  const auto logits = model(in.ids, in.positions, in.mask).logits;
  ASSERT_EQ(logits.sizes(), expected.sizes());
  const double err = test::max_rel_error(logits, expected, in.mask);
  EXPECT_LE(err, 1e-5) << GetParam();
  std::cout << "[parity] " << GetParam() << " naive: relative error " << err << std::endl;
  if (model->config().is_mla()) {
    model->set_attention_impl(AttentionImpl::absorbed);
    const double err_absorbed = test::max_rel_error(model(in.ids, in.positions, in.mask).logits, expected, in.mask);
    EXPECT_LE(err_absorbed, 1e-5) << GetParam() << " absorbed";
    std::cout << "[parity] " << GetParam() << " absorbed: relative error " << err_absorbed << std::endl;
    model->set_attention_impl(AttentionImpl::naive);
  }
  write_roundtrip(model, GetParam(), in, logits);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfParity,
                         ::testing::Values("dsv3_qlora_groups", "dsv3_noq_yarn", "dsv3_dense2_yarn_interleave",
                                           "dsv3_grad", "dsv3_legacy_rope_keys", "dsv3_yarn_wide_rope",
                                           "dsv3_hf_default_mtp", "qwen2_gqa_bias", "llama_tied"));

TEST(HfParityGradients, EveryParameterGradientMatchesHf) {
  const std::string root = env_or_empty("GRPO_HF_FIXTURES_DIR");
  if (root.empty()) GTEST_SKIP() << "GRPO_HF_FIXTURES_DIR is not set";
  const std::string dir = (fs::path(root) / "dsv3_grad").string();
  CausalLM model = load_hf_checkpoint(dir);
  const Inputs in = read_inputs(dir);
  const auto weights = io::SafetensorsFile((fs::path(dir) / "inputs.safetensors").string()).load("loss_weights");
  (model(in.ids, in.positions, in.mask).logits * weights).sum().backward();

  // Put each gradient in a second model's parameters, so hf_state_dict names (and slices) them.
  CausalLM grads(model->config());
  {
    torch::NoGradGuard no_grad;
    auto dst = grads->named_parameters();
    for (const auto& p : model->named_parameters()) dst[p.key()].copy_(p.value().grad());
  }
  io::SafetensorsFile expected((fs::path(dir) / "grads.safetensors").string());
  int compared = 0;
  for (const auto& t : hf_state_dict(grads)) {
    if (t.copy_only || !expected.contains(t.name)) {
      EXPECT_NE(t.name.find("e_score_correction_bias"), std::string::npos) << "no HF gradient for " << t.name;
      continue;
    }
    const auto want = expected.load(t.name);
    const double scale = want.abs().max().item<double>();
    const double err = (t.tensor - want).abs().max().item<double>() / std::max(scale, 1e-30);
    EXPECT_LE(err, 1e-4) << t.name << " scale " << scale;
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(expected.tensors().size()));
  std::cout << "[parity] gradients compared: " << compared << std::endl;
}

TEST(HfParityRoundTrip, OurMtpCheckpointReloadsIdenticallyAndShardsForHf) {
  const auto cfg = test::tiny_dsv3();
  torch::manual_seed(21);
  CausalLM model(cfg);
  {
    torch::NoGradGuard no_grad;
    for (auto& moe : model->moe_layers())
      moe->e_score_correction_bias.copy_(torch::randn({cfg.n_routed_experts}) * 0.05);
  }
  model->eval();
  const auto batch = test::ragged_batch(cfg.vocab_size, 3, 9);
  const Inputs in{batch.ids, batch.mask, batch.positions};
  ForwardOptions opts;
  opts.mtp = true;
  torch::NoGradGuard no_grad;
  const auto out = model(in.ids, in.positions, in.mask, nullptr, opts);

  ::grpo::test::TempDir tmp;
  const std::string dir = tmp.path("ckpt");
  save_hf_checkpoint(model, dir, torch::kFloat, /*max_shard_bytes=*/20000);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));
  io::SafetensorsCheckpoint saved(dir);
  const std::string mtp = "model.layers." + std::to_string(cfg.num_hidden_layers) + ".";
  for (const char* n :
       {"enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight", "shared_head.head.weight",
        "embed_tokens.weight", "self_attn.kv_b_proj.weight", "mlp.experts.7.down_proj.weight"}) {
    EXPECT_TRUE(saved.contains(mtp + n)) << mtp + n;
  }
  CausalLM again = load_hf_checkpoint(dir);
  again->eval();
  const auto out2 = again(in.ids, in.positions, in.mask, nullptr, opts);
  EXPECT_TRUE(torch::equal(out.logits, out2.logits));
  EXPECT_TRUE(torch::equal(out.mtp_logits[0], out2.mtp_logits[0]));
  write_roundtrip(model, "ours_dsv3_mtp_sharded", in, out.logits, 20000);
}

// --- Checkpoints without MTP tensors (LoadOptions::missing_mtp) ----------------------------------

constexpr const char* kHfDefaultMtp = "dsv3_hf_default_mtp";

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no error>";
}

// What `f` logs at info level and above (and its exception, if any, propagates).
std::string log_of(const std::function<void()>& f) {
  ::grpo::test::TempDir tmp;
  const std::string path = tmp.path("log.txt");
  const log::Level saved_level = log::level();
  log::set_level(log::Level::info);
  log::add_file(path);
  try {
    f();
  } catch (...) {
    log::close_files();
    log::set_level(saved_level);
    throw;
  }
  log::close_files();
  log::set_level(saved_level);
  return ::grpo::test::read_text(path);
}

// "model.layers.{num_hidden_layers}.": MTP depth 1 under its HF names.
std::string mtp_prefix(const ModelConfig& cfg) { return "model.layers." + std::to_string(cfg.num_hidden_layers) + "."; }

// The MTP tensors a loader looks for (the copies of the embedding and head are optional).
std::vector<std::string> mtp_tensor_names(CausalLM& model) {
  std::vector<std::string> out;
  const std::string prefix = mtp_prefix(model->config());
  for (const auto& t : hf_state_dict(model)) {
    if (!t.copy_only && t.name.rfind(prefix, 0) == 0) out.push_back(t.name);
  }
  return out;
}

torch::Tensor eval_logits(CausalLM& model, const Inputs& in) {
  model->eval();
  torch::NoGradGuard no_grad;
  return model(in.ids, in.positions, in.mask).logits;
}

class HfMissingMtp : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string root = env_or_empty("GRPO_HF_FIXTURES_DIR");
    if (root.empty()) GTEST_SKIP() << "GRPO_HF_FIXTURES_DIR is not set (run through ctest)";
    dir_ = (fs::path(root) / kHfDefaultMtp).string();
  }
  torch::Tensor expected() const {
    return io::SafetensorsFile((fs::path(dir_) / "expected.safetensors").string()).load("logits");
  }
  // "checkpoint 'DIR' has no MTP weights (config.json asks for 1 MTP module, as HF transformers
  // writes DeepSeek-V3 checkpoints)", the start of the log lines and the error's hint.
  std::string no_mtp() const {
    return "checkpoint '" + dir_ +
           "' has no MTP weights (config.json asks for 1 MTP module, as HF transformers writes DeepSeek-V3 "
           "checkpoints)";
  }
  std::string dir_;
};

TEST_F(HfMissingMtp, FixtureIsWhatTransformersWrites) {
  const ModelConfig cfg = load_hf_config(dir_);
  EXPECT_EQ(cfg.num_nextn_predict_layers, 1);
  const io::SafetensorsCheckpoint ckpt(dir_);
  for (const auto& name : ckpt.names()) EXPECT_NE(name.rfind(mtp_prefix(cfg), 0), 0u) << name;
  EXPECT_TRUE(ckpt.contains("model.layers." + std::to_string(cfg.num_hidden_layers - 1) + ".mlp.gate.weight"));
}

TEST_F(HfMissingMtp, DefaultDropsTheMtpModulesAndMatchesHf) {
  CausalLM model{nullptr};
  const std::string logged = log_of([&] { model = load_hf_checkpoint(dir_); });
  EXPECT_NE(logged.find(no_mtp() + ": loaded without MTP (load option missing_mtp: init keeps freshly initialised MTP "
                                   "modules)"),
            std::string::npos)
      << logged;
  EXPECT_EQ(model->config().num_nextn_predict_layers, 0);
  EXPECT_EQ(model->mtp->size(), 0u);
  const Inputs in = read_inputs(dir_);
  const auto logits = eval_logits(model, in);
  const auto want = expected();
  ASSERT_EQ(logits.sizes(), want.sizes());
  const double err = test::max_rel_error(logits, want, in.mask);
  EXPECT_LE(err, 1e-5);
  std::cout << "[parity] " << kHfDefaultMtp << " missing_mtp drop: relative error " << err << std::endl;
}

TEST_F(HfMissingMtp, InitKeepsFreshlyInitialisedMtpModulesAndTheSameLogits) {
  LoadOptions init;
  init.missing_mtp = MissingMtp::init;
  torch::manual_seed(7);
  CausalLM model{nullptr};
  const std::string logged = log_of([&] { model = load_hf_checkpoint(dir_, init); });
  EXPECT_NE(logged.find(no_mtp() + ": kept 1 MTP module freshly initialised (load option missing_mtp: init; drop loads "
                                   "it without MTP)"),
            std::string::npos)
      << logged;
  ASSERT_EQ(model->config().num_nextn_predict_layers, 1);
  ASSERT_EQ(model->mtp->size(), 1u);

  // The MTP module is the model's own random init: a model built from the same config and seed has it.
  torch::manual_seed(7);
  CausalLM fresh(model->config(), torch::TensorOptions().dtype(torch::kFloat));
  auto fresh_params = fresh->named_parameters();
  int compared = 0;
  for (const auto& p : model->named_parameters()) {
    if (p.key().rfind("mtp.", 0) != 0) continue;
    EXPECT_TRUE(torch::equal(p.value(), fresh_params[p.key()])) << p.key();
    ++compared;
  }
  EXPECT_GT(compared, 0);

  // The main model is the checkpoint's: HF's logits, and exactly those of the model loaded without MTP.
  const Inputs in = read_inputs(dir_);
  const auto logits = eval_logits(model, in);
  const double err = test::max_rel_error(logits, expected(), in.mask);
  EXPECT_LE(err, 1e-5);
  std::cout << "[parity] " << kHfDefaultMtp << " missing_mtp init: relative error " << err << std::endl;
  CausalLM dropped = load_hf_checkpoint(dir_);
  EXPECT_TRUE(torch::equal(logits, eval_logits(dropped, in)));

  // And the MTP module runs.
  ForwardOptions opts;
  opts.mtp = true;
  torch::NoGradGuard no_grad;
  const auto out = model(in.ids, in.positions, in.mask, nullptr, opts);
  ASSERT_EQ(out.mtp_logits.size(), 1u);
  EXPECT_EQ(out.mtp_logits[0].sizes(), logits.sizes());
  EXPECT_TRUE(torch::isfinite(out.mtp_logits[0]).all().item<bool>());
}

TEST_F(HfMissingMtp, ErrorNamesTheMissingMtpTensorsAndTheOption) {
  LoadOptions strict;
  strict.missing_mtp = MissingMtp::error;
  const std::string msg = message_of([&] { load_hf_checkpoint(dir_, strict); });
  CausalLM with_mtp(load_hf_config(dir_));
  const auto names = mtp_tensor_names(with_mtp);
  ASSERT_GT(names.size(), 8u);
  // Every MTP tensor is missing, nothing else: the list starts with the first of them.
  EXPECT_EQ(msg.rfind("checkpoint '" + dir_ + "' does not match the model: " + std::to_string(names.size()) +
                          " missing (" + names[0] + ", " + names[1] + ", ",
                      0),
            0u)
      << msg;
  EXPECT_NE(msg.find("... (" + std::to_string(names.size() - 8) + " more))"), std::string::npos) << msg;
  const std::string hint =
      "; it has no MTP weights (config.json asks for 1 MTP module, as HF transformers writes "
      "DeepSeek-V3 checkpoints): load option missing_mtp: drop loads it without MTP, init keeps "
      "freshly initialised MTP modules";
  EXPECT_EQ(msg.size() >= hint.size() ? msg.substr(msg.size() - hint.size()) : msg, hint) << msg;
  EXPECT_EQ(msg.find("unexpected"), std::string::npos) << msg;
}

// A checkpoint of our own without any MTP tensor, whose config.json asks for 1 MTP module.
struct NoMtpCheckpoint {
  NoMtpCheckpoint() : cfg(test::tiny_dsv3()), model(nullptr) {
    torch::manual_seed(11);
    model = CausalLM(cfg);
    const std::string prefix = mtp_prefix(cfg);
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& t : hf_state_dict(model)) {
      if (t.name.rfind(prefix, 0) != 0) tensors.emplace_back(t.name, t.tensor.detach().clone());
    }
    io::save_checkpoint_tensors(dir(), tensors);
    std::ofstream(fs::path(dir()) / "config.json") << hf_config_json(cfg);
  }
  std::string dir() const { return tmp.path("no_mtp"); }
  ::grpo::test::TempDir tmp;
  ModelConfig cfg;
  CausalLM model;
};

TEST(HfMissingMtpOurs, LoadHfWeightsIntoAModelWithMtp) {
  NoMtpCheckpoint ckpt;
  ASSERT_EQ(ckpt.cfg.num_nextn_predict_layers, 1);
  const std::string no_mtp = "; it has no MTP weights (the model has 1 MTP module)";
  {
    // Default: refused, every MTP tensor listed, with a hint.
    CausalLM target(ckpt.cfg);
    const auto before = target->embed_tokens.clone();
    const std::string msg = message_of([&] { load_hf_weights(target, ckpt.dir()); });
    EXPECT_EQ(msg.rfind("checkpoint '" + ckpt.dir() +
                            "' does not match the model: " + std::to_string(mtp_tensor_names(target).size()) +
                            " missing (" + mtp_prefix(ckpt.cfg) + "enorm.weight, ",
                        0),
              0u)
        << msg;
    EXPECT_NE(msg.find(no_mtp + ": missing_mtp init keeps the model's MTP modules as they are; or build the model "
                                "with num_nextn_predict_layers 0"),
              std::string::npos)
        << msg;
    EXPECT_TRUE(torch::equal(target->embed_tokens, before)) << "nothing may be loaded from a refused checkpoint";
  }
  {
    // drop cannot take the MTP modules out of an existing model.
    CausalLM target(ckpt.cfg);
    const std::string msg = message_of([&] { load_hf_weights(target, ckpt.dir(), false, MissingMtp::drop); });
    EXPECT_NE(msg.find(no_mtp + " and load_hf_weights cannot drop the MTP modules of an existing model"),
              std::string::npos)
        << msg;
  }
  {
    // init: the main model is loaded, the MTP module keeps its values.
    torch::manual_seed(12);
    CausalLM target(ckpt.cfg);
    std::map<std::string, torch::Tensor> mtp_before;
    for (const auto& p : target->named_parameters()) {
      if (p.key().rfind("mtp.", 0) == 0) mtp_before[p.key()] = p.value().clone();
    }
    ASSERT_FALSE(mtp_before.empty());
    const std::string logged = log_of([&] { load_hf_weights(target, ckpt.dir(), false, MissingMtp::init); });
    EXPECT_NE(logged.find("checkpoint '" + ckpt.dir() +
                          "' has no MTP weights (the model has 1 MTP module): left the model's MTP modules as they "
                          "were (missing_mtp: init)"),
              std::string::npos)
        << logged;
    auto source = ckpt.model->named_parameters();
    for (const auto& p : target->named_parameters()) {
      const bool mtp = p.key().rfind("mtp.", 0) == 0;
      EXPECT_TRUE(torch::equal(p.value(), mtp ? mtp_before.at(p.key()) : source[p.key()])) << p.key();
    }
  }
  {
    // load_hf_checkpoint: drop by default (the model is built without MTP), init keeps them.
    CausalLM dropped = load_hf_checkpoint(ckpt.dir());
    EXPECT_EQ(dropped->mtp->size(), 0u);
    LoadOptions init;
    init.missing_mtp = MissingMtp::init;
    CausalLM kept = load_hf_checkpoint(ckpt.dir(), init);
    EXPECT_EQ(kept->mtp->size(), 1u);
    auto source = ckpt.model->named_parameters();
    for (const auto& p : dropped->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), source[p.key()])) << p.key();
  }
}

TEST(HfMissingMtpOurs, PartOfTheMtpTensorsIsRefusedWhateverTheOption) {
  const auto cfg = test::tiny_dsv3();
  ASSERT_EQ(cfg.num_nextn_predict_layers, 1);
  torch::manual_seed(13);
  CausalLM model(cfg);
  ::grpo::test::TempDir tmp;
  const std::string dir = tmp.path("partial");
  const std::string gone = mtp_prefix(cfg) + "enorm.weight";
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& t : hf_state_dict(model)) {
    if (t.name != gone) tensors.emplace_back(t.name, t.tensor.detach().clone());
  }
  io::save_checkpoint_tensors(dir, tensors);
  std::ofstream(fs::path(dir) / "config.json") << hf_config_json(cfg);

  const std::string want = "checkpoint '" + dir + "' does not match the model: 1 missing (" + gone + ")";
  for (const MissingMtp option : {MissingMtp::drop, MissingMtp::init, MissingMtp::error}) {
    LoadOptions lo;
    lo.missing_mtp = option;
    EXPECT_EQ(message_of([&] { load_hf_checkpoint(dir, lo); }), want) << config::enum_name(option);
    CausalLM target(cfg);
    const auto before = target->embed_tokens.clone();
    EXPECT_EQ(message_of([&] { load_hf_weights(target, dir, false, option); }), want) << config::enum_name(option);
    EXPECT_TRUE(torch::equal(target->embed_tokens, before)) << config::enum_name(option);
  }
}

}  // namespace
}  // namespace grpo::model
