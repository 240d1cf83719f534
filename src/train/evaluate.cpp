#include "grpo/train/evaluate.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "grpo/core/random.h"
#include "grpo/train/scored_rollouts.h"

namespace grpo::train {

EvalResult evaluate(model::CausalLM& model, const data::Tokenizer& tokenizer, const data::PromptConfig& prompt,
                    const std::vector<data::Record>& records, const rewards::RewardSet& rewards,
                    const EvalConfig& cfg) {
  const size_t acc_index = reward_index(rewards.labels(), cfg.accuracy_reward, "eval.accuracy_reward");
  const auto t0 = std::chrono::steady_clock::now();
  const bool was_training = model->is_training();
  model->eval();

  const size_t n = cfg.max_records > 0 ? std::min(records.size(), static_cast<size_t>(cfg.max_records))
                                       : records.size();
  rollout::GenerationConfig gc;
  gc.max_new_tokens = cfg.max_new_tokens;
  gc.sampling.temperature = cfg.temperature;
  gc.stop_strings = cfg.stop_strings;
  gc.max_batch_rows = cfg.batch_rows;
  rollout::Engine engine(model, &tokenizer, gc);
  std::vector<RolloutRequest> requests;
  for (size_t i = 0; i < n; ++i) requests.push_back({.record = static_cast<int64_t>(i), .seed = derive_seed(0, i)});
  const auto rollouts = sample_scored(engine_generator(engine), tokenizer, prompt, records, requests, &rewards);
  const auto& scores = rollouts.scores;

  EvalResult out;
  out.records = static_cast<int64_t>(n);
  double acc_sum = 0, reward_sum = 0, length_sum = 0;
  int64_t acc_n = 0;
  for (size_t i = 0; i < n; ++i) {
    const auto& group = rollouts.groups[i];
    const auto& completion = group.completions.front();
    if (scores.scores[acc_index][i]) {
      acc_sum += *scores.scores[acc_index][i];
      ++acc_n;
    }
    reward_sum += scores.total[i];
    length_sum += static_cast<double>(completion.token_ids.size());
    if (static_cast<int64_t>(out.samples.size()) < cfg.samples_logged) {
      out.samples.push_back({group.prompt_text, completion.text, records[i].answer, scores.total[i]});
    }
  }
  out.accuracy = acc_n > 0 ? acc_sum / static_cast<double>(acc_n) : 0.0;
  out.mean_reward = n > 0 ? reward_sum / static_cast<double>(n) : 0.0;
  out.mean_length = n > 0 ? length_sum / static_cast<double>(n) : 0.0;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (was_training) model->train();
  return out;
}

}  // namespace grpo::train
