// Parity of the GRPO loss with TRL's GRPOTrainer (trl 1.16.0). tests/train/trl_oracle.py runs TRL's
// own trainer on a tiny random Qwen2 with fixed prompts, completions and rewards for a grid of
// configurations; here, for each one, we rebuild the batch, compute the advantages from the rewards,
// the log-probs with our model (old and reference ones from the initial weights, as TRL had them),
// the loss and its gradient, and compare everything with what TRL saved:
//   advantages and log-probs: abs 1e-5; loss: 1e-5 relative to max(|TRL's loss|, 0.1) (with ratio 1
//   and beta 0, grpo's loss is the mean advantage, 0 up to rounding); every parameter's gradient:
//   max abs difference <= 1e-4 x max |TRL's gradient| of that tensor. With the sampler correction
//   (TRL's vllm_importance_sampling_correction, every mode), also its weights' min, mean and max.
// Environment: GRPO_TRL_ORACLE_DIR (skips when unset; run through ctest).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "grpo/io/safetensors.h"
#include "grpo/model/checkpoint.h"
#include "grpo/train/grpo_loss.h"

namespace grpo::train {
namespace {

namespace fs = std::filesystem;

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

template <class E>
E enum_or_throw(const std::string& name) {
  const auto e = config::enum_from_name<E>(name);
  if (!e) throw std::runtime_error("unknown enum value '" + name + "' in configs.json");
  return *e;
}

TEST(TrlOracle, LossAndGradientsMatchTrlGrpoTrainer) {
  const char* env = std::getenv("GRPO_TRL_ORACLE_DIR");
  if (env == nullptr || *env == '\0') GTEST_SKIP() << "GRPO_TRL_ORACLE_DIR is not set (run through ctest)";
  const fs::path dir(env);
  std::ifstream config_file(dir / "configs.json");
  ASSERT_TRUE(config_file) << "cannot read " << (dir / "configs.json");
  const auto configs = nlohmann::json::parse(config_file);
  ASSERT_FALSE(configs.empty());

  torch::manual_seed(0);
  const io::SafetensorsFile batch((dir / "batch.safetensors").string());
  const auto prompt_ids = batch.load("prompt_ids").to(torch::kLong);
  const auto prompt_mask = batch.load("prompt_mask").to(torch::kLong);
  const auto completion_ids = batch.load("completion_ids").to(torch::kLong);
  const auto completion_mask = batch.load("completion_mask").to(torch::kLong);
  const int64_t group_size = batch.load("group_size").item<int64_t>();
  // The weighted sum of the reward functions, as TRL forms it before the advantages.
  const auto rewards = (batch.load("rewards_per_func") * batch.load("reward_weights").unsqueeze(0)).sum(1);
  const auto input_ids = torch::cat({prompt_ids, completion_ids}, 1);
  const auto attention_mask = torch::cat({prompt_mask, completion_mask}, 1);
  const int64_t L = completion_ids.size(1);

  auto initial = model::load_hf_checkpoint((dir / "model").string());
  std::printf("%-44s %9s %9s %9s %9s %9s  %s\n", "configuration", "adv", "logps", "old/ref", "loss", "grad",
              "worst gradient");
  int checked = 0;
  for (const auto& c : configs) {
    const auto name = c["name"].get<std::string>();
    SCOPED_TRACE(name);
    GrpoLossConfig cfg;
    cfg.loss_type = enum_or_throw<LossType>(c["loss_type"].get<std::string>());
    cfg.scale_rewards = enum_or_throw<RewardScaling>(c["scale_rewards"].get<std::string>());
    cfg.importance_sampling_level = enum_or_throw<ImportanceSamplingLevel>(
        c["importance_sampling_level"].get<std::string>());
    cfg.beta = c["beta"].get<double>();
    cfg.epsilon = c["epsilon"].get<double>();
    if (!c["epsilon_high"].is_null()) cfg.epsilon_high = c["epsilon_high"].get<double>();
    if (!c["delta"].is_null()) cfg.delta = c["delta"].get<double>();
    const double temperature = c["temperature"].get<double>();  // the sampling temperature
    cfg.use_bias_correction_kl = c["use_bias_correction_kl"].get<bool>();
    cfg.max_completion_length = c["max_completion_length"].get<int64_t>();
    const int num_iterations = c["num_iterations"].get<int>();
    if (c.contains("sampler_correction")) {
      cfg.sampler_correction = enum_or_throw<SamplerCorrection>(c["sampler_correction"].get<std::string>());
      cfg.sampler_clip_min = c["sampler_clip_min"].is_null() ? std::nullopt
                                                             : std::optional(c["sampler_clip_min"].get<double>());
      cfg.sampler_clip_max = c["sampler_clip_max"].is_null() ? std::nullopt
                                                             : std::optional(c["sampler_clip_max"].get<double>());
    }
    const bool corrected = cfg.sampler_correction != SamplerCorrection::none;

    const io::SafetensorsFile trl((dir / name / "trl.safetensors").string());
    ASSERT_TRUE(torch::equal(trl.load("completion_ids").to(torch::kLong), completion_ids));
    ASSERT_TRUE(torch::equal(trl.load("prompt_ids").to(torch::kLong), prompt_ids));

    // Advantages from the rewards.
    const auto advantages = compute_advantages(rewards, group_size, cfg.scale_rewards);
    const double adv_err = max_abs_diff(advantages, trl.load("advantages"));
    EXPECT_LE(adv_err, 1e-5);

    // The policy the loss ran on: the initial weights, or after TRL's optimizer step (num_iterations 2).
    auto policy = num_iterations == 2 ? model::load_hf_checkpoint((dir / name / "policy").string())
                                      : model::load_hf_checkpoint((dir / "model").string());
    const auto logps = completion_logprobs(policy, input_ids, attention_mask, {}, L, temperature);
    const double logps_err = max_abs_diff(logps, trl.load("logps"));
    EXPECT_LE(logps_err, 1e-5);

    // Old (sampling-time = initial) and reference (initial) log-probs, where TRL had them.
    GrpoLossInputs in{.logps = logps, .advantages = advantages, .completion_mask = completion_mask};
    double side_err = 0;
    torch::Tensor initial_logps;
    {
      torch::NoGradGuard no_grad;
      initial_logps = completion_logprobs(initial, input_ids, attention_mask, {}, L, temperature);
    }
    if (trl.contains("old_logps")) {
      EXPECT_TRUE(num_iterations == 2 || corrected);  // TRL recomputes them for the sampler correction
      in.old_logps = initial_logps;
      side_err = std::max(side_err, max_abs_diff(initial_logps, trl.load("old_logps")));
    } else {
      EXPECT_EQ(num_iterations, 1);
    }
    if (cfg.beta > 0) {
      ASSERT_TRUE(trl.contains("ref_logps"));
      in.ref_logps = initial_logps;
      side_err = std::max(side_err, max_abs_diff(initial_logps, trl.load("ref_logps")));
    }
    EXPECT_LE(side_err, 1e-5);
    // TRL's dapo normaliser: the completion tokens of the accumulated batch (the step's T).
    in.tokens_in_batch = trl.load("num_items_in_batch").item<double>();

    if (corrected) {
      ASSERT_TRUE(trl.contains("sampler_logps") && trl.contains("sampler_weight"));
      in.sampler_logps = trl.load("sampler_logps");
    }
    const auto out = grpo_loss(in, cfg);
    if (corrected) {  // the weights TRL applied, through their mean over what TRL counts
      const auto w = trl.load("sampler_weight").to(torch::kDouble);
      const auto counted = w.size(1) == 1 ? torch::ones_like(w, torch::kBool) : completion_mask.to(torch::kBool);
      const double want = w.masked_select(counted).mean().item<double>();
      EXPECT_NEAR(out.sampler_weight_mean.item<double>(), want, 1e-5);
      EXPECT_NEAR(out.sampler_weight_max.item<double>(), w.masked_select(counted).max().item<double>(), 1e-5);
      EXPECT_NEAR(out.sampler_weight_min.item<double>(), w.masked_select(counted).min().item<double>(), 1e-5);
    }
    const double trl_loss = trl.load("loss").item<double>();
    const double loss_err = std::abs(out.loss.item<double>() - trl_loss) / std::max(std::abs(trl_loss), 0.1);
    EXPECT_LE(loss_err, 1e-5) << "ours " << out.loss.item<double>() << " TRL " << trl_loss;

    out.loss.backward();
    double grad_err = 0;
    std::string worst;
    int tensors = 0;
    for (const auto& t : model::hf_state_dict(policy)) {
      const std::string key = "grad." + t.name;
      ASSERT_TRUE(trl.contains(key)) << key;
      ASSERT_TRUE(t.tensor.grad().defined()) << t.name << " has no gradient";
      const auto want = trl.load(key);
      const double scale = want.abs().max().item<double>();
      const double err = max_abs_diff(t.tensor.grad(), want) / (scale > 0 ? scale : 1.0);
      EXPECT_LE(err, 1e-4) << t.name << " (max |grad| " << scale << ")";
      if (err >= grad_err) {
        grad_err = err;
        worst = t.name;
      }
      ++tensors;
    }
    EXPECT_EQ(static_cast<std::ptrdiff_t>(tensors),
              std::count_if(trl.tensors().begin(), trl.tensors().end(),
                            [](const io::TensorInfo& i) { return i.name.rfind("grad.", 0) == 0; }));
    std::printf("%-44s %9.2e %9.2e %9.2e %9.2e %9.2e  %s\n", name.c_str(), adv_err, logps_err, side_err, loss_err,
                grad_err, worst.c_str());
    ++checked;
  }
  std::printf("%d configurations compared with TRL\n", checked);
  EXPECT_EQ(checked, static_cast<int>(configs.size()));
}

}  // namespace
}  // namespace grpo::train
