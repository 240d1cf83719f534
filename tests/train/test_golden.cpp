// Golden numbers: the tiny DeepSeek-V3 config with a fixed seed, a few SFT steps then a few GRPO
// steps; the per-step loss (and GRPO's reward) must equal the committed values in
// tests/train/golden.json. A change that should not change numerics reproduces them; one that does
// shows here. Regenerate deliberately with GRPO_WRITE_GOLDEN=1 and say why in the commit.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdlib>

#include "grpo/core/files.h"
#include "grpo/core/metrics.h"
#include "grpo/core/run.h"
#include "grpo/data/generators.h"
#include "grpo/train/grpo_trainer.h"
#include "grpo/train/job.h"
#include "grpo/train/sft_trainer.h"
#include "test_util.h"
#include "train/train_test_util.h"

namespace grpo::train {
namespace {

TEST(Golden, TinyConfigSftThenGrpoStepLosses) {
  grpo::test::TempDir dir;
  RunConfig rc;
  rc.output_dir = dir.path("run");
  rc.seed = 11;
  rc.log_level = "warn";
  grpo::Run run(rc, "golden: true\n");
  const auto tok = test::byte_tokenizer();
  const auto prompt = test::prompt_config();
  torch::manual_seed(11);
  model::CausalLM model(test::tiny_config(tok->vocab_size()));

  SftConfig sft;
  sft.steps = 4;
  sft.batch_size = 4;
  sft.max_length = 128;
  sft.optim.lr = 3e-3;
  SftTrainer(model, *tok, prompt, sft, run).train(test::addition(24, 1, true));

  GrpoConfig g;
  g.steps = 3;
  g.prompts_per_step = 2;
  g.generation.num_generations = 4;
  g.generation.max_new_tokens = 16;
  g.generation.stop_strings = {"</answer>"};
  g.loss.loss_type = LossType::grpo;
  g.loss.beta = 0.04;
  g.optim.lr = 1e-3;
  const auto root = config::parse_yaml_string(
      "functions: [{name: math_accuracy}, {name: format, weight: 0.5, options: {mode: lenient}}]\n", "r.yaml");
  const rewards::RewardSet rewards(config::from_value<rewards::RewardsConfig>(root));
  GrpoTrainer(model, *tok, prompt, g, rewards, run).train(test::addition(24, 2, false));

  nlohmann::json got = nlohmann::json::array();
  for (const auto& row : read_metrics(run.path("metrics.jsonl"))) {
    nlohmann::json item;
    item["step"] = row.step;
    item["loss"] = row.get("loss", 0);
    item["reward"] = row.get("reward", 0);
    item["completion_length"] = row.get("completion_length", 0);
    got.push_back(item);
  }
  const std::string path = std::string(GRPO_SOURCE_DIR) + "/tests/train/golden.json";
  if (std::getenv("GRPO_WRITE_GOLDEN")) {
    write_file_atomic(path, got.dump(2) + "\n");
    GTEST_SKIP() << "wrote " << path;
  }
  const auto want = nlohmann::json::parse(read_file(path));
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    for (const char* key : {"loss", "reward", "completion_length"}) {
      const double w = want[i][key].get<double>(), v = got[i][key].get<double>();
      EXPECT_NEAR(v, w, 1e-4 * std::max(1.0, std::abs(w)))
          << "row " << i << " (step " << want[i]["step"] << ") " << key;
    }
  }
}

}  // namespace
}  // namespace grpo::train
