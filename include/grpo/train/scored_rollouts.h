// Scored rollouts: the one place where records become generation requests. Records + prompt config
// + tokenizer + a generator (the rollout engine) + a reward set -> groups of completions, each with
// its weighted total, every function's score and reason, and the reward set's metrics. GRPO
// (sampling), evaluation (greedy), rejection sampling (the teacher's k samples) and on-policy
// distillation (the student's samples) all go through sample_scored.
//
//   std::vector<RolloutRequest> which = {{.record = 4, .seed = derive_seed(seed, step, round, 4)}, ...};
//   ScoredRollouts r = sample_scored(engine_generator(engine), tok, prompt_cfg, records, which, &rewards);
//   // r.groups[p].completions[g], r.scores.total[p * G + g], r.scores.scores[f][p * G + g],
//   // r.scores.metrics ("rewards/<label>/mean", ...), r.stats (tokens, seconds)
//
// Seeds: every request carries its own seed, derived with derive_seed (grpo/core/random.h) from the
// stage's seed and tags, so what a prompt samples depends only on those, never on the batch:
//   GRPO               derive_seed(run.seed + grpo.seed_offset, step, round, record)
//   on-policy distill  derive_seed(run.seed + distill.seed_offset, step, 0, record)
//   rejection sampling derive_seed(rejection_sampling.seed, prompt index)
//   evaluation         derive_seed(0, record index) (greedy by default, where the seed is unused)
// Sample g of a request draws from RowRng::derive(its seed, g) (grpo/rollout/engine.h).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "grpo/data/prompt.h"
#include "grpo/data/record.h"
#include "grpo/data/tokenizer.h"
#include "grpo/rewards/reward_set.h"
#include "grpo/rollout/engine.h"

namespace grpo::train {

// Which record to prompt with, and the seed of its request.
struct RolloutRequest {
  int64_t record = 0;  // index into the records
  uint64_t seed = 0;   // the request's seed (derive_seed)
};

// One prompt and its G completions.
struct RolloutGroup {
  int64_t record = 0;                            // index into the records
  uint64_t seed = 0;                             // the request's seed
  std::string prompt_text;                       // format_prompt(prompt, record)
  std::vector<int64_t> prompt_ids;               // its token ids
  std::vector<rollout::Completion> completions;  // [G]
  std::vector<double> totals;                    // [G] weighted reward totals (0 without rewards)
};

struct ScoredRollouts {
  std::vector<RolloutGroup> groups;  // [P] in request order
  rewards::RewardScores scores;      // rows p * G + g (empty without rewards)
  int64_t generated_tokens = 0;      // tokens in all completions
  double generation_seconds = 0;     // wall time of the generator
  double reward_seconds = 0;         // wall time of RewardSet::score

  int64_t group_size() const { return groups.empty() ? 0 : static_cast<int64_t>(groups.front().completions.size()); }
};

// Generates G completions per request (result[p * G + g], as rollout::Engine::generate), adding its
// statistics to *stats when given.
using Generator = std::function<std::vector<rollout::Completion>(const std::vector<rollout::GenerationRequest>&,
                                                                 rollout::GenerationStats* stats)>;

// The engine as a Generator (the engine must outlive it).
Generator engine_generator(rollout::Engine& engine);

// Formats and encodes each requested record's prompt, generates, and scores every completion with
// `rewards` (null: no scoring; totals 0). Throws std::out_of_range for a record index outside
// `records`, std::runtime_error when the generator returns a count that is not a multiple of the
// requests, and whatever RewardSet::score throws (RewardError with on_error: fail).
ScoredRollouts sample_scored(const Generator& generate, const data::Tokenizer& tokenizer,
                             const data::PromptConfig& prompt, const std::vector<data::Record>& records,
                             const std::vector<RolloutRequest>& requests, const rewards::RewardSet* rewards);

// The index of reward `label` among `labels`. Throws std::invalid_argument naming `key` (the config
// key that chose it, e.g. "grpo.accuracy_reward") and the labels there are.
size_t reward_index(const std::vector<std::string>& labels, const std::string& label, const std::string& key);

// The reward sample of a completion: prompt text, completion text and ids, the record's answer and
// extra columns.
rewards::Sample reward_sample(const std::string& prompt_text, const rollout::Completion& completion,
                              const data::Record& record);

}  // namespace grpo::train
