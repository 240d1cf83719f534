// train_grpo: GRPO on prompts with reference answers, starting from a checkpoint (usually the
// cold-start SFT model), with rule-based and plugin rewards from the YAML; writes <run>/model.
//
//   train_grpo --config configs/train/grpo.yaml [--set model.init=DIR]... [--resume] [--print-config]
#include <torch/torch.h>

#include <iostream>

#include "grpo/config/config.h"
#include "grpo/core/cli.h"
#include "grpo/core/run.h"
#include "grpo/rewards/reward_set.h"
#include "grpo/train/evaluate.h"
#include "grpo/train/grpo_trainer.h"
#include "grpo/train/job.h"

namespace {

using namespace grpo;

struct GrpoJob {
  RunConfig run;
  train::TokenizerSection tokenizer;
  train::ModelSection model;
  data::PromptConfig prompt;
  train::DataSection data, eval_data;
  rewards::RewardsConfig rewards;
  train::EvalConfig eval;
  train::GrpoConfig grpo;

  template <class V>
  void visit(V& v) {
    v("run", run, "run folder, seed and logging");
    v("tokenizer", tokenizer, "the tokenizer");
    v("model", model, "the policy to start from (model.init: an HF checkpoint)");
    v("prompt", prompt, "prompt template");
    v("data", data, "prompts with reference answers");
    v("eval_data", eval_data, "held-out records for accuracy");
    v("rewards", rewards, "reward functions and weights");
    v("eval", eval, "held-out evaluation by generation + reward");
    v("grpo", grpo, "the GRPO stage");
  }
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const auto args = cli::parse_job_args(argc, argv);
    if (args.help || !args.config_path) {
      std::cout << cli::job_usage("train_grpo", "GRPO (docs/training.md); --config is required.");
      return args.help ? 0 : 2;
    }
    const auto cfg = config::load<GrpoJob>(*args.config_path, args.overrides);
    if (args.print_config) {
      std::cout << config::to_yaml(cfg);
      return 0;
    }
    Run run(cfg.run, config::to_yaml(cfg));
    torch::manual_seed(cfg.run.seed);
    const auto tokenizer = train::make_tokenizer(cfg.tokenizer);
    const auto records = train::load_records(cfg.data);
    const auto eval_records = train::load_records(cfg.eval_data);
    const rewards::RewardSet reward_set(cfg.rewards, *args.config_path);
    auto policy = train::make_model(cfg.model, *tokenizer, cfg.prompt.eos_token);

    const auto eval = train::held_out_eval(policy, *tokenizer, cfg.prompt, eval_records, reward_set, cfg.eval);
    train::GrpoTrainer trainer(policy, *tokenizer, cfg.prompt, cfg.grpo, reward_set, run, "grpo");
    trainer.train(records, eval, args.resume);
    train::save_model(run, policy, cfg.tokenizer, "model");
    train::write_training_plot(run);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "train_grpo: error: " << e.what() << "\n";
    return 1;
  }
}
