// train_sft: cold-start SFT of a model on records with worked solutions (loss on the completion
// tokens only), with held-out evaluation by generation + reward; writes <run>/model (HF format,
// with tokenizer.json when the tokenizer is the built-in one).
//
//   train_sft --config configs/train/sft.yaml [--set key=value]... [--resume] [--print-config]
#include <torch/torch.h>

#include <iostream>

#include "grpo/config/config.h"
#include "grpo/core/cli.h"
#include "grpo/core/run.h"
#include "grpo/rewards/reward_set.h"
#include "grpo/train/evaluate.h"
#include "grpo/train/job.h"
#include "grpo/train/sft_trainer.h"

namespace {

using namespace grpo;

struct SftJob {
  RunConfig run;
  train::TokenizerSection tokenizer;
  train::ModelSection model;
  data::PromptConfig prompt;
  train::DataSection data, eval_data;
  rewards::RewardsConfig rewards;
  train::EvalConfig eval;
  train::SftConfig sft;

  template <class V>
  void visit(V& v) {
    v("run", run, "run folder, seed and logging");
    v("tokenizer", tokenizer, "the tokenizer");
    v("model", model, "a new model from config, or an HF checkpoint to continue");
    v("prompt", prompt, "prompt template");
    v("data", data, "records with worked solutions");
    v("eval_data", eval_data, "held-out records for accuracy");
    v("rewards", rewards, "reward functions for the evaluation");
    v("eval", eval, "held-out evaluation by generation + reward");
    v("sft", sft, "the SFT stage");
  }
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const auto args = cli::parse_job_args(argc, argv);
    if (args.help || !args.config_path) {
      std::cout << cli::job_usage("train_sft", "Cold-start SFT (docs/training.md); --config is required.");
      return args.help ? 0 : 2;
    }
    const auto cfg = config::load<SftJob>(*args.config_path, args.overrides);
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
    auto model = train::make_model(cfg.model, *tokenizer, cfg.prompt.eos_token);

    const auto eval = train::held_out_eval(model, *tokenizer, cfg.prompt, eval_records, reward_set, cfg.eval);
    train::SftTrainer trainer(model, *tokenizer, cfg.prompt, cfg.sft, run, "sft");
    trainer.train(records, eval, args.resume);
    train::save_model(run, model, cfg.tokenizer, "model");
    train::write_training_plot(run);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "train_sft: error: " << e.what() << "\n";
    return 1;
  }
}
