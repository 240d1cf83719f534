// Length shaping (registry name "length"): a reward on the completion's token count, either
//
//   dapo_overlong  DAPO's soft overlong punishment (Yu et al. 2025), independent of correctness. With
//                  L_max = max_length, L_cache = cache_length and |y| = completion tokens:
//                    0                                 |y| <= L_max - L_cache
//                    ((L_max - L_cache) - |y|) / L_cache   L_max - L_cache < |y| <= L_max   (0 down to -1)
//                    -1                                |y| > L_max
//                  times penalty_factor. Meant to be ADDED (weight 1) to the accuracy reward.
//   cosine         the cosine-scaled reward of Yeo et al. 2025 ("Demystifying Long Chain-of-Thought
//                  Reasoning in LLMs"), as open-r1's cosine_scaled reward: with
//                  c = cos(pi * min(|y|, max_length) / max_length),
//                    correct: min_value_correct + 0.5 (max_value_correct - min_value_correct)(1 + c)
//                    wrong:   max_value_wrong   + 0.5 (min_value_wrong   - max_value_wrong)(1 + c)
//                  so a short correct answer earns max_value_correct, a short wrong one the harsher
//                  min_value_wrong, and both move towards the other end as they grow. Correctness is
//                  math_accuracy(answer, completion, math); records without an answer -> absent.
//                  It replaces the accuracy reward rather than adding to it.
//
//   rewards:
//     - {name: length, options: {mode: dapo_overlong, max_length: 4096, cache_length: 512}}
//
// The token count is Sample::completion_ids.size(); a sample with text but no ids throws
// std::invalid_argument (the length would be a guess).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "grpo/config/config.h"
#include "grpo/rewards/math_answer.h"
#include "grpo/rewards/reward.h"

namespace grpo::rewards {

struct LengthRewardConfig {
  std::string mode = "dapo_overlong";  // dapo_overlong | cosine
  int64_t max_length = 0;              // tokens; dapo: L_max, cosine: the length at which the cosine ends (required)
  int64_t cache_length = 0;        // dapo: the soft-punishment band below max_length (L_cache), 0 <= it < max_length
  double penalty_factor = 1.0;     // dapo: the penalty is multiplied by this
  double min_value_wrong = -1.0;   // cosine: score of a wrong answer of length 0
  double max_value_wrong = -0.5;   // cosine: score of a wrong answer of max_length tokens or more
  double min_value_correct = 0.5;  // cosine: score of a correct answer of max_length tokens or more
  double max_value_correct = 1.0;  // cosine: score of a correct answer of length 0
  MathAnswerConfig math;           // cosine: how correctness is decided

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("mode", mode, "dapo_overlong (DAPO soft overlong punishment) | cosine (Yeo et al. cosine-scaled)",
      Check().one_of({"dapo_overlong", "cosine"}));
    v("max_length", max_length, "completion tokens: dapo L_max; cosine: where the cosine ends",
      Check().gt(0).required());
    v("cache_length", cache_length, "dapo L_cache: the band below max_length with a linear penalty", Check().ge(0));
    v("penalty_factor", penalty_factor, "dapo: multiplies the penalty", Check().ge(0));
    v("min_value_wrong", min_value_wrong, "cosine: wrong answer, shortest");
    v("max_value_wrong", max_value_wrong, "cosine: wrong answer, max_length or longer");
    v("min_value_correct", min_value_correct, "cosine: correct answer, max_length or longer");
    v("max_value_correct", max_value_correct, "cosine: correct answer, shortest");
    v("math", math, "cosine: how a completion's answer is compared with the reference");
  }
  // cache_length < max_length.
  std::string validate() const;
};

// DAPO soft overlong punishment of a completion of `length` tokens, times penalty_factor (<= 0).
double dapo_overlong_penalty(int64_t length, const LengthRewardConfig& cfg);

// The cosine-scaled reward of a completion of `length` tokens whose answer is (not) correct.
double cosine_length_reward(int64_t length, bool correct, const LengthRewardConfig& cfg);

// Registry name "length". Throws std::invalid_argument when cfg does not validate (max_length <= 0,
// cache_length out of range, unknown mode). Metrics: mean_length, over_length_fraction (> max_length),
// and for cosine correct_fraction.
std::unique_ptr<RewardFunction> make_length_reward(const LengthRewardConfig& cfg);

}  // namespace grpo::rewards
