// Cold-start SFT: next-token cross-entropy on the completion tokens only (the prompt is context),
// over padded batches or packed rows, plus DeepSeek-V3's MTP loss and the MoE router-bias update.
//
//   SftTrainer trainer(model, *tokenizer, prompt_cfg, cfg.sft, run);
//   SftResult r = trainer.train(records, eval_fn, /*resume=*/args.resume);
//
// Batching: `packing: false` pads each micro-batch of `batch_size` examples on the right to its
// longest; `packing: true` fills rows of `max_length` tokens with whole examples (first fit in
// data order), numbering the documents of a row 1, 2, ... in the attention mask and restarting
// positions per document, so no token attends across documents (grpo/model/attention.h). The loss
// is the mean over the optimizer step's completion tokens (all micro-batches together), so
// gradient accumulation and packing give the same objective as one big batch.
// Every step writes metrics (loss, ce, mtp, lr, grad_norm, tokens/s, router imbalance) to the run's
// metrics.jsonl; checkpoints go to <run>/checkpoints/<stage> and --resume continues from the last.
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
#include "grpo/train/optimizer.h"
#include "grpo/train/schedule.h"
#include "grpo/train/train_state.h"

namespace grpo::train {

struct SftConfig {
  int64_t steps = 300;                    // optimizer steps
  int64_t batch_size = 16;                // examples (padded) or rows (packed) per micro-batch
  int64_t grad_accum = 1;                 // micro-batches per optimizer step
  int64_t max_length = 512;               // tokens per example (longer ones are cut or dropped, see prompt.truncation)
  bool packing = false;                   // pack whole examples into rows of max_length
  double mtp_weight = 0.3;                // DeepSeek-V3's MTP loss weight lambda (0 = off; ignored without MTP)
  double router_bias_gamma = 0.001;       // aux-loss-free router bias update per step (0 = off; MoE only)
  bool bf16_autocast = true;              // on CUDA: bf16 autocast with fp32 master weights (CPU: fp32)
  bool activation_checkpointing = false;  // recompute each decoder block in backward (less memory)
  int64_t eval_every = 0;                 // steps between evaluations (0 = only at the end)
  int64_t seed_offset = 0;                // added to run.seed for this stage's data order
  OptimizerConfig optim;                  // AdamW
  ScheduleConfig schedule;                // warmup + decay
  CheckpointConfig checkpoint;            // when and how many checkpoints to keep

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("steps", steps, "optimizer steps", Check().ge(1));
    v("batch_size", batch_size, "examples (padded) or rows (packed) per micro-batch", Check().ge(1));
    v("grad_accum", grad_accum, "micro-batches per optimizer step", Check().ge(1));
    v("max_length", max_length, "tokens per example or packed row", Check().ge(2));
    v("packing", packing, "pack whole examples into rows of max_length (no cross-document attention)");
    v("mtp_weight", mtp_weight, "MTP loss weight (DeepSeek-V3: 0.3, then 0.1); 0 = off", Check().ge(0));
    v("router_bias_gamma", router_bias_gamma, "aux-loss-free router bias update speed; 0 = off", Check().ge(0));
    v("bf16_autocast", bf16_autocast, "bf16 autocast on CUDA (fp32 master weights)");
    v("activation_checkpointing", activation_checkpointing, "recompute each decoder block in backward");
    v("eval_every", eval_every, "steps between evaluations; 0 = only at the end", Check().ge(0));
    v("seed_offset", seed_offset, "added to run.seed for this stage's data order", Check().ge(0));
    v("optim", optim, "AdamW");
    v("schedule", schedule, "learning-rate schedule");
    v("checkpoint", checkpoint, "checkpoints under <run>/checkpoints/sft");
  }
  std::string validate() const;  // the warmup fits in the run
};

// One micro-batch in tensors (CPU): ids, attention mask (0 pad, else document number), positions,
// and the loss mask of the predicted tokens (1 where token i is a completion token to predict).
struct SftBatch {
  torch::Tensor input_ids, attention_mask, position_ids, loss_mask;  // [B, T] int64
  int64_t tokens = 0;                                                // real tokens
  int64_t completion_tokens = 0;                                     // loss_mask.sum()
};

// Padded: right-pads `examples` to the longest. Packed: the caller gives the examples of one or
// more rows; rows are filled first fit, each `max_length` long.
SftBatch pad_batch(const std::vector<const data::TokenizedExample*>& examples);
SftBatch pack_batch(const std::vector<const data::TokenizedExample*>& examples, int64_t max_length);

// The CE part of the loss: sum over predicted tokens of -log p (logits [B, T, V] at position i
// predict token i + 1 where loss_mask[i + 1] == 1 and both are in the same document).
torch::Tensor sft_token_loss_sum(const torch::Tensor& logits, const SftBatch& batch);

struct SftResult {
  int64_t steps = 0;
  double last_loss = 0;
  double seconds = 0;
};

class SftTrainer {
 public:
  // Called every eval_every steps and after the last; returns metrics to log (e.g. accuracy).
  using EvalFn = std::function<std::vector<Metric>(int64_t step)>;

  SftTrainer(model::CausalLM model, const data::Tokenizer& tokenizer, data::PromptConfig prompt, SftConfig cfg,
             Run& run, std::string stage = "sft");

  // Tokenizes `records` (which need reasoning), trains cfg.steps steps (from the last checkpoint
  // of this stage when `resume` and one exists), saves a final checkpoint, and returns.
  SftResult train(const std::vector<data::Record>& records, const EvalFn& eval = {}, bool resume = false);

  // The folder of this stage's checkpoints: <run>/checkpoints/<stage>.
  std::string checkpoint_dir() const;

 private:
  model::CausalLM model_;
  const data::Tokenizer& tokenizer_;
  data::PromptConfig prompt_;
  SftConfig cfg_;
  Run& run_;
  std::string stage_;
};

}  // namespace grpo::train
