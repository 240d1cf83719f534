#include "grpo/rollout/sampling.h"

#include <torch/torch.h>

#include "grpo/core/random.h"
#include "grpo/model/invariant_ops.h"

namespace grpo::rollout {

RowRng::RowRng(uint64_t seed) : gen_(splitmix64(seed)) {}

double RowRng::uniform() { return static_cast<double>(gen_() >> 11) * 0x1.0p-53; }

uint64_t RowRng::derive(uint64_t seed, uint64_t index) { return splitmix64(splitmix64(seed) ^ (index + 1)); }

torch::Tensor sampling_probs(const torch::Tensor& logits, const SamplingConfig& cfg) {
  TORCH_CHECK(logits.dim() == 2, "sampling_probs: logits must be [B, V], got ", logits.sizes());
  const double t = cfg.greedy() ? 1.0 : cfg.temperature;
  auto probs = torch::softmax(logits.to(torch::kDouble) / t, -1);  // [B, V]
  const int64_t vocab = probs.size(1);
  if (cfg.top_k > 0 && cfg.top_k < vocab) {
    // Keep the k largest (ties at the k-th value are all kept, as HF's top-k does).
    const auto kth = std::get<0>(probs.topk(cfg.top_k, -1)).narrow(1, cfg.top_k - 1, 1);  // [B, 1]
    probs = probs.masked_fill(probs < kth, 0.0);
    probs = probs / probs.sum(-1, true);
  }
  if (cfg.top_p < 1.0) {
    auto [sorted, order] = probs.sort(-1, /*descending=*/true);  // [B, V]
    const auto before = sorted.cumsum(-1) - sorted;              // mass of the more likely tokens
    auto drop_sorted = before >= cfg.top_p;                      // the first token is always kept
    auto drop = torch::zeros_like(drop_sorted).scatter(1, order, drop_sorted);
    probs = probs.masked_fill(drop, 0.0);
    probs = probs / probs.sum(-1, true);
  }
  if (cfg.min_p > 0.0) {
    const auto top = std::get<0>(probs.max(-1, true));  // [B, 1]
    probs = probs.masked_fill(probs < cfg.min_p * top, 0.0);
    probs = probs / probs.sum(-1, true);
  }
  return probs;
}

torch::Tensor sample_from_probs(const torch::Tensor& probs, const torch::Tensor& uniforms) {
  TORCH_CHECK(probs.dim() == 2 && uniforms.dim() == 1 && uniforms.size(0) == probs.size(0),
              "sample_from_probs: expected probs [B, V] and uniforms [B], got ", probs.sizes(), " and ",
              uniforms.sizes());
  const auto cdf = probs.to(torch::kDouble).cumsum(-1);  // [B, V]
  const auto target = uniforms.to(cdf.device(), torch::kDouble).unsqueeze(1) * cdf.narrow(1, cdf.size(1) - 1, 1);
  // First index whose cumulative mass is strictly greater than the target: a token with zero
  // probability never is (its cdf equals its predecessor's).
  auto tokens = torch::searchsorted(cdf, target, /*out_int32=*/false, /*right=*/true).squeeze(1);
  return tokens.clamp_max(probs.size(1) - 1);
}

torch::Tensor token_logprobs(const torch::Tensor& logits, const torch::Tensor& tokens, double temperature) {
  const double t = temperature == 0.0 ? 1.0 : temperature;
  if (model::invariant::applies(logits)) return model::invariant::token_logprobs(logits, tokens, t);
  const auto lp = torch::log_softmax(logits.to(torch::kFloat) / t, -1);
  return lp.gather(1, tokens.to(lp.device()).view({-1, 1})).squeeze(1);
}

torch::Tensor choose_tokens(const torch::Tensor& logits, const SamplingConfig& cfg, const torch::Tensor& uniforms) {
  if (cfg.greedy()) return logits.argmax(-1);
  return sample_from_probs(sampling_probs(logits, cfg), uniforms);
}

}  // namespace grpo::rollout
