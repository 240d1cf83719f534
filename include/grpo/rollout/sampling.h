// Token sampling for generation: temperature, top-k, top-p, min-p, greedy; and the log-probability
// of the chosen token that the trainer will recompute.
//
//   SamplingConfig cfg{.temperature = 0.7, .top_p = 0.95};
//   auto probs = sampling_probs(logits, cfg);            // [B, V] float64, each row sums to 1
//   auto tokens = sample_from_probs(probs, uniforms);     // [B] int64, one uniform in [0, 1) per row
//   auto lp = token_logprobs(logits, tokens, cfg.temperature);  // [B] float32
//
// The filters apply in this order, each to the renormalised result of the previous one:
// temperature (logits / T), top_k (the k most likely), top_p (the smallest set, most likely first,
// whose mass reaches p; at least one token), min_p (tokens with prob >= min_p * the largest prob).
// temperature 0 is greedy (argmax; ties go to the lowest id, as torch.argmax).
//
// Recorded log-probs: log_softmax(logits / T) at the chosen token, over the whole vocabulary,
// BEFORE top-k/top-p/min-p filtering (T = 1 when greedy). This is the distribution TRL and verl
// recompute in the trainer (they scale logits by the temperature and never apply the filters), so
// the PPO ratio of the first iteration is exactly 1. It is not the filtered distribution the token
// was drawn from; with filters on, the two differ on purpose.
//
// Sampling is inverse-CDF on the filtered probabilities in float64 with one uniform per row, so a
// row's token depends only on its own logits and its own random stream, never on the other rows.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <random>

#include "grpo/config/config.h"

namespace grpo::rollout {

struct SamplingConfig {
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // keep the k most likely tokens; 0 = off
  double top_p = 1.0;        // nucleus: keep the most likely tokens whose mass reaches p; 1 = off
  double min_p = 0.0;        // keep tokens with prob >= min_p * max prob; 0 = off

  bool greedy() const { return temperature == 0.0; }

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("temperature", temperature, "softmax temperature; 0 = greedy", Check().ge(0).le(100));
    v("top_k", top_k, "keep the k most likely tokens; 0 = off", Check().ge(0));
    v("top_p", top_p, "keep the most likely tokens whose total probability reaches top_p; 1 = off",
      Check().gt(0).le(1));
    v("min_p", min_p, "keep tokens at least min_p times as likely as the most likely; 0 = off", Check().in(0, 1));
  }
};

// One row's random stream: a 64-bit Mersenne twister seeded through SplitMix64, so nearby seeds
// give unrelated streams. uniform() is in [0, 1) with 53 random bits.
class RowRng {
 public:
  explicit RowRng(uint64_t seed = 0);
  double uniform();
  // The stream of sample `index` of a request seeded with `seed` (G samples of one prompt).
  static uint64_t derive(uint64_t seed, uint64_t index);

 private:
  std::mt19937_64 gen_;
};

// logits [B, V] (any floating dtype) -> filtered, renormalised probabilities [B, V] float64.
torch::Tensor sampling_probs(const torch::Tensor& logits, const SamplingConfig& cfg);

// probs [B, V] (rows summing to 1 or to any positive mass), uniforms [B] float64 in [0, 1)
// -> tokens [B] int64: the first id whose cumulative mass exceeds u * row mass (never a zero-prob id).
torch::Tensor sample_from_probs(const torch::Tensor& probs, const torch::Tensor& uniforms);

// log_softmax(logits / T) at `tokens` [B] -> [B] float32, computed in float32 (T = 1 when T == 0).
torch::Tensor token_logprobs(const torch::Tensor& logits, const torch::Tensor& tokens, double temperature);

// The whole step: greedy argmax, or sampling_probs + sample_from_probs.
torch::Tensor choose_tokens(const torch::Tensor& logits, const SamplingConfig& cfg, const torch::Tensor& uniforms);

}  // namespace grpo::rollout
