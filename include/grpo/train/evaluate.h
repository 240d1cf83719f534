// Held-out evaluation by generation + reward: format each record's prompt, generate (greedy by
// default) with the rollout engine, score the completions with a RewardSet, and report the
// accuracy (the mean of one chosen reward function) and the mean total reward.
//
//   EvalConfig cfg;                               // max_new_tokens, temperature 0, accuracy_reward
//   EvalResult r = evaluate(model, *tokenizer, prompt_cfg, eval_records, rewards, cfg);
//   // r.accuracy, r.mean_reward, r.mean_length, r.samples (first few prompts with their completions)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/data/prompt.h"
#include "grpo/data/record.h"
#include "grpo/data/tokenizer.h"
#include "grpo/model/causal_lm.h"
#include "grpo/rewards/reward_set.h"
#include "grpo/rollout/engine.h"

namespace grpo::train {

struct EvalConfig {
  int64_t max_new_tokens = 256;                   // tokens per completion
  double temperature = 0.0;                       // 0 = greedy (pass@1 of the greedy answer)
  int64_t max_records = 0;                        // evaluate at most this many records; 0 = all
  int64_t batch_rows = 64;                        // completions decoded at once
  std::string accuracy_reward = "math_accuracy";  // the reward label whose mean is the accuracy
  int64_t samples_logged = 3;                     // completions kept in EvalResult::samples
  std::vector<std::string> stop_strings;          // e.g. ["</answer>"]

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("max_new_tokens", max_new_tokens, "tokens per completion", Check().ge(1));
    v("temperature", temperature, "sampling temperature; 0 = greedy", Check().ge(0));
    v("max_records", max_records, "evaluate at most this many records; 0 = all", Check().ge(0));
    v("batch_rows", batch_rows, "completions decoded at once", Check().ge(1));
    v("accuracy_reward", accuracy_reward, "label of the reward whose mean is reported as accuracy", Check().nonempty());
    v("samples_logged", samples_logged, "completions kept for the log", Check().ge(0));
    v("stop_strings", stop_strings, "strings that end a completion, e.g. </answer>");
  }
};

struct EvalSample {
  std::string prompt, completion, answer;
  double reward = 0;
};

struct EvalResult {
  int64_t records = 0;
  double accuracy = 0;     // mean of accuracy_reward over records where it applies
  double mean_reward = 0;  // mean weighted total
  double mean_length = 0;  // completion tokens
  double seconds = 0;
  std::vector<EvalSample> samples;
};

// Runs the model in eval mode and restores its training mode after; the completions come from
// sample_scored (grpo/train/scored_rollouts.h), request i with seed derive_seed(0, i). Throws
// std::invalid_argument when `accuracy_reward` is not a label of `rewards`.
EvalResult evaluate(model::CausalLM& model, const data::Tokenizer& tokenizer, const data::PromptConfig& prompt,
                    const std::vector<data::Record>& records, const rewards::RewardSet& rewards, const EvalConfig& cfg);

}  // namespace grpo::train
