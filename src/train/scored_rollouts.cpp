#include "grpo/train/scored_rollouts.h"

#include <chrono>
#include <stdexcept>

#include "grpo/core/progress.h"

namespace grpo::train {

Generator engine_generator(rollout::Engine& engine) {
  return [&engine](const std::vector<rollout::GenerationRequest>& requests, rollout::GenerationStats* stats) {
    return engine.generate(requests, stats);
  };
}

size_t reward_index(const std::vector<std::string>& labels, const std::string& label, const std::string& key) {
  for (size_t f = 0; f < labels.size(); ++f) {
    if (labels[f] == label) return f;
  }
  std::string known;
  for (const auto& l : labels) known += (known.empty() ? "" : ", ") + l;
  throw std::invalid_argument(key + " '" + label + "' is not one of the reward functions (" + known + ")");
}

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

ScoredRollouts sample_scored(const Generator& generate, const data::Tokenizer& tokenizer,
                             const data::PromptConfig& prompt, const std::vector<data::Record>& records,
                             const std::vector<RolloutRequest>& requests, const rewards::RewardSet* rewards) {
  ScoredRollouts out;
  if (requests.empty()) return out;
  std::vector<rollout::GenerationRequest> reqs;
  reqs.reserve(requests.size());
  for (const auto& want : requests) {
    if (want.record < 0 || want.record >= static_cast<int64_t>(records.size())) {
      throw std::out_of_range("sample_scored: record " + std::to_string(want.record) + " is outside the " +
                              std::to_string(records.size()) + " records");
    }
    RolloutGroup g;
    g.record = want.record;
    g.seed = want.seed;
    g.prompt_text = data::format_prompt(prompt, records[static_cast<size_t>(want.record)]);
    g.prompt_ids = tokenizer.encode(g.prompt_text, prompt.add_special_tokens);
    reqs.push_back({.prompt_ids = g.prompt_ids, .seed = want.seed});
    out.groups.push_back(std::move(g));
  }

  const auto t_gen = std::chrono::steady_clock::now();
  rollout::GenerationStats stats;
  auto completions = generate(reqs, &stats);
  out.generation_seconds = seconds_since(t_gen);
  const size_t P = requests.size();
  if (completions.empty() || completions.size() % P != 0) {
    throw std::runtime_error("sample_scored: the generator returned " + std::to_string(completions.size()) +
                             " completions for " + std::to_string(P) + " requests (expected a multiple)");
  }
  const size_t G = completions.size() / P;

  std::vector<rewards::Sample> samples;
  if (rewards != nullptr) samples.reserve(completions.size());
  for (size_t p = 0; p < P; ++p) {
    auto& g = out.groups[p];
    const auto& record = records[static_cast<size_t>(g.record)];
    for (size_t k = 0; k < G; ++k) {
      auto& c = completions[p * G + k];
      out.generated_tokens += static_cast<int64_t>(c.token_ids.size());
      if (rewards != nullptr) samples.push_back(reward_sample(g.prompt_text, c, record));
      g.completions.push_back(std::move(c));
    }
  }
  if (rewards != nullptr) {
    const auto t_reward = std::chrono::steady_clock::now();
    out.scores = rewards->score(samples);
    out.reward_seconds = seconds_since(t_reward);
  }
  for (size_t p = 0; p < P; ++p) {
    auto& g = out.groups[p];
    for (size_t k = 0; k < G; ++k) g.totals.push_back(rewards != nullptr ? out.scores.total[p * G + k] : 0.0);
  }
  return out;
}

}  // namespace grpo::train
