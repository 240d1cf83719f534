// Logit-level distillation: a student learns the teacher's next-token distribution on the tokens
// of completions, by a divergence between the two (forward KL, reverse KL or generalised JSD with
// temperature: grpo/train/distill_loss.h), computed chunked over the vocabulary so neither model's
// [N, V] logits are ever held. The teacher runs in inference mode (its parameters frozen), possibly
// on another device; teacher and student must share the tokenizer (the same vocabulary size).
//
//   DistillTrainer trainer(student, teacher, *tokenizer, prompt_cfg, cfg.distill, run);
//   trainer.train(records, eval_fn, resume);
//
// Where the sequences come from, per optimizer step (GKD's mixture, Agarwal et al. 2024):
//   - off-policy: `batch_size` records with reasoning (teacher traces from rejection sampling, or
//     any SFT data) as prompt + completion, exactly as the SFT trainer tokenizes them;
//   - on-policy, with probability `on_policy_fraction` per step: `batch_size` prompts from the
//     same records, one completion each sampled from the *student* (generation settings below),
//     then scored token by token by the teacher. The draw is derive_seed(seed, step) as a uniform
//     in [0, 1), and request seeds are derive_seed(seed, step, 0, record): a resumed run makes the
//     same choices and samples the same completions.
// Loss = mean over the step's completion tokens of the divergence (+ ce_weight x the student's
// next-token cross-entropy on off-policy completion tokens, i.e. sequence-level distillation mixed
// in). Position t's hidden state predicts token t + 1; only positions whose next token is a
// completion token count.
// Every step writes metrics (loss, divergence, ce, on_policy, lr, grad_norm, tokens/s) to the
// run's metrics.jsonl; checkpoints go to <run>/checkpoints/<stage> and --resume continues.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/core/metrics.h"
#include "grpo/core/run.h"
#include "grpo/data/prompt.h"
#include "grpo/data/record.h"
#include "grpo/data/tokenizer.h"
#include "grpo/model/causal_lm.h"
#include "grpo/rollout/engine.h"
#include "grpo/train/distill_loss.h"
#include "grpo/train/optimizer.h"
#include "grpo/train/schedule.h"
#include "grpo/train/train_state.h"

namespace grpo::train {

struct DistillConfig {
  int64_t steps = 300;                   // optimizer steps
  int64_t batch_size = 16;               // sequences per optimizer step
  int64_t max_length = 512;              // tokens per off-policy example (see prompt.truncation)
  DistillLossConfig loss;                // divergence, beta, temperature, vocabulary chunk
  double on_policy_fraction = 0.0;       // share of steps on student samples (GKD's lambda); 0 = off-policy only
  rollout::GenerationConfig generation;  // on-policy sampling by the student (num_generations 1)
  double ce_weight = 0.0;                // + this x next-token CE on off-policy completion tokens
  bool bf16_autocast = true;             // on CUDA: bf16 autocast for both forwards
  int64_t eval_every = 0;                // steps between evaluations (0 = only at the end)
  int64_t seed_offset = 3;               // added to run.seed for this stage's data order and sampling
  OptimizerConfig optim;                 // AdamW
  ScheduleConfig schedule;               // warmup + decay
  CheckpointConfig checkpoint;           // <run>/checkpoints/<stage>

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("steps", steps, "optimizer steps", Check().ge(1));
    v("batch_size", batch_size, "sequences per optimizer step", Check().ge(1));
    v("max_length", max_length, "tokens per off-policy example", Check().ge(2));
    v("loss", loss, "divergence (forward_kl | reverse_kl | jsd), beta, temperature, chunk_size");
    v("on_policy_fraction", on_policy_fraction, "share of steps on the student's own samples (GKD lambda)",
      Check().ge(0).le(1));
    v("generation", generation, "on-policy sampling by the student: max_new_tokens, sampling, stop strings");
    v("ce_weight", ce_weight, "weight of the student's CE on off-policy completion tokens; 0 = off", Check().ge(0));
    v("bf16_autocast", bf16_autocast, "bf16 autocast on CUDA");
    v("eval_every", eval_every, "steps between evaluations; 0 = only at the end", Check().ge(0));
    v("seed_offset", seed_offset, "added to run.seed for this stage", Check().ge(0));
    v("optim", optim, "AdamW");
    v("schedule", schedule, "learning-rate schedule");
    v("checkpoint", checkpoint, "checkpoints under <run>/checkpoints/<stage>");
  }
  std::string validate() const;
};

struct DistillResult {
  int64_t steps = 0;
  double last_loss = 0;
  double seconds = 0;
};

class DistillTrainer {
 public:
  using EvalFn = std::function<std::vector<Metric>(int64_t step)>;

  // Freezes the teacher (requires_grad off, eval mode). Throws std::invalid_argument when the
  // vocabulary sizes differ or the config is invalid.
  DistillTrainer(model::CausalLM student, model::CausalLM teacher, const data::Tokenizer& tokenizer,
                 data::PromptConfig prompt, DistillConfig cfg, Run& run, std::string stage = "distill");

  // Trains cfg.steps steps on `records` (off-policy steps need records with reasoning; with
  // on_policy_fraction 1 prompts alone do).
  DistillResult train(const std::vector<data::Record>& records, const EvalFn& eval = {}, bool resume = false);

  std::string checkpoint_dir() const;

 private:
  model::CausalLM student_, teacher_;
  const data::Tokenizer& tokenizer_;
  data::PromptConfig prompt_;
  DistillConfig cfg_;
  Run& run_;
  std::string stage_;
};

// Whether step `step` (0-based) of a run with this seed samples on-policy: a hash of both,
// compared with `fraction` (exactly 0 never, exactly 1 always).
bool on_policy_step(uint64_t seed, int64_t step, double fraction);

}  // namespace grpo::train
