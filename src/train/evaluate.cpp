#include "grpo/train/evaluate.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace grpo::train {

rewards::Sample reward_sample(const std::string& prompt_text, const rollout::Completion& completion,
                              const data::Record& record) {
  rewards::Sample s;
  s.prompt = prompt_text;
  s.completion = completion.text;
  s.completion_ids = completion.token_ids;
  s.answer = record.answer;
  s.extra = record.extra;
  return s;
}

EvalResult evaluate(model::CausalLM& model, const data::Tokenizer& tokenizer, const data::PromptConfig& prompt,
                    const std::vector<data::Record>& records, const rewards::RewardSet& rewards,
                    const EvalConfig& cfg) {
  const auto& labels = rewards.labels();
  const auto acc_it = std::find(labels.begin(), labels.end(), cfg.accuracy_reward);
  if (acc_it == labels.end()) {
    std::string known;
    for (const auto& l : labels) known += (known.empty() ? "" : ", ") + l;
    throw std::invalid_argument("eval.accuracy_reward '" + cfg.accuracy_reward +
                                "' is not one of the reward functions (" + known + ")");
  }
  const size_t acc_index = static_cast<size_t>(acc_it - labels.begin());
  const auto t0 = std::chrono::steady_clock::now();
  const bool was_training = model->is_training();
  model->eval();

  const size_t n = cfg.max_records > 0 ? std::min(records.size(), static_cast<size_t>(cfg.max_records)) : records.size();
  rollout::GenerationConfig gc;
  gc.max_new_tokens = cfg.max_new_tokens;
  gc.sampling.temperature = cfg.temperature;
  gc.stop_strings = cfg.stop_strings;
  gc.max_batch_rows = cfg.batch_rows;
  gc.seed = 0;
  rollout::Engine engine(model, &tokenizer, gc);

  std::vector<std::string> prompts;
  std::vector<rollout::GenerationRequest> reqs;
  for (size_t i = 0; i < n; ++i) {
    prompts.push_back(data::format_prompt(prompt, records[i]));
    rollout::GenerationRequest r;
    r.prompt_ids = tokenizer.encode(prompts.back(), prompt.add_special_tokens);
    r.seed = static_cast<uint64_t>(i);
    reqs.push_back(std::move(r));
  }
  const auto completions = engine.generate(reqs);
  std::vector<rewards::Sample> samples;
  for (size_t i = 0; i < n; ++i) samples.push_back(reward_sample(prompts[i], completions[i], records[i]));
  const auto scores = rewards.score(samples);

  EvalResult out;
  out.records = static_cast<int64_t>(n);
  double acc_sum = 0, reward_sum = 0, length_sum = 0;
  int64_t acc_n = 0;
  for (size_t i = 0; i < n; ++i) {
    if (scores.scores[acc_index][i]) {
      acc_sum += *scores.scores[acc_index][i];
      ++acc_n;
    }
    reward_sum += scores.total[i];
    length_sum += static_cast<double>(completions[i].token_ids.size());
    if (static_cast<int64_t>(out.samples.size()) < cfg.samples_logged) {
      out.samples.push_back({prompts[i], completions[i].text, records[i].answer, scores.total[i]});
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
