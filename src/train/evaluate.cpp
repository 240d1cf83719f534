#include "grpo/train/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>

#include "grpo/core/random.h"
#include "grpo/dist/world.h"
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
  // Data parallel: each rank generates for its share of the records; the per-record results are
  // gathered in record order.
  auto& world = dist::world(model->embed_tokens.device());
  const auto [begin, end] = dist::share(static_cast<int64_t>(n), world.rank(), world.size());
  std::vector<RolloutRequest> requests;
  for (int64_t i = begin; i < end; ++i) {
    requests.push_back({.record = i, .seed = derive_seed(0, static_cast<uint64_t>(i))});
  }
  // A rank without records still calls generate(): paired forwards need every rank's call.
  if (requests.empty()) engine.generate({});
  const auto rollouts = requests.empty()
                            ? ScoredRollouts{}
                            : sample_scored(engine_generator(engine), tokenizer, prompt, records, requests, &rewards);
  const auto& scores = rollouts.scores;

  EvalResult out;
  out.records = static_cast<int64_t>(n);
  std::vector<double> acc, reward, length;  // this rank's records; acc NaN where the reward is absent
  for (size_t k = 0; k < requests.size(); ++k) {
    const auto& group = rollouts.groups[k];
    const auto& completion = group.completions.front();
    acc.push_back(scores.scores[acc_index][k] ? *scores.scores[acc_index][k] : std::nan(""));
    reward.push_back(scores.total[k]);
    length.push_back(static_cast<double>(completion.token_ids.size()));
    if (static_cast<int64_t>(out.samples.size()) < cfg.samples_logged) {
      out.samples.push_back(
          {group.prompt_text, completion.text, records[static_cast<size_t>(group.record)].answer, scores.total[k]});
    }
  }
  if (world.distributed()) {
    acc = world.all_gather_flat(acc), reward = world.all_gather_flat(reward), length = world.all_gather_flat(length);
  }
  double acc_sum = 0, reward_sum = 0, length_sum = 0;
  int64_t acc_n = 0;
  for (size_t i = 0; i < acc.size(); ++i) {
    if (!std::isnan(acc[i])) {
      acc_sum += acc[i];
      ++acc_n;
    }
    reward_sum += reward[i];
    length_sum += length[i];
  }
  out.accuracy = acc_n > 0 ? acc_sum / static_cast<double>(acc_n) : 0.0;
  out.mean_reward = n > 0 ? reward_sum / static_cast<double>(n) : 0.0;
  out.mean_length = n > 0 ? length_sum / static_cast<double>(n) : 0.0;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (was_training) model->train();
  return out;
}

}  // namespace grpo::train
