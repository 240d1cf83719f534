// Parity with HF transformers. tests/model/hf_oracle.py saves tiny random HF models with inputs and
// HF's float32 logits (and, for dsv3_grad, the gradients of sum(logits * loss_weights)); here we
// load each, compare logits (max relative error 1e-5 of the logits' scale) and gradients (1e-4),
// and save our own copy with our logits for `hf_oracle.py check` to load in HF the other way.
//
// Environment: GRPO_HF_FIXTURES_DIR (the generated fixtures; the tests skip when unset) and
// GRPO_HF_ROUNDTRIP_DIR (where our checkpoints go).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <map>

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
                                           "qwen2_gqa_bias", "llama_tied"));

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
    for (auto& moe : model->moe_layers()) moe->e_score_correction_bias.copy_(torch::randn({cfg.n_routed_experts}) * 0.05);
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
  for (const char* n : {"enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                        "shared_head.head.weight", "embed_tokens.weight", "self_attn.kv_b_proj.weight",
                        "mlp.experts.7.down_proj.weight"}) {
    EXPECT_TRUE(saved.contains(mtp + n)) << mtp + n;
  }
  CausalLM again = load_hf_checkpoint(dir);
  again->eval();
  const auto out2 = again(in.ids, in.positions, in.mask, nullptr, opts);
  EXPECT_TRUE(torch::equal(out.logits, out2.logits));
  EXPECT_TRUE(torch::equal(out.mtp_logits[0], out2.mtp_logits[0]));
  write_roundtrip(model, "ours_dsv3_mtp_sharded", in, out.logits, 20000);
}

}  // namespace
}  // namespace grpo::model
