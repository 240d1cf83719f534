#include "grpo/train/grpo_batch.h"

#include <torch/torch.h>

#include <algorithm>
#include <stdexcept>

namespace grpo::train {

double GrpoBatch::completion_tokens() const { return completion_mask.sum().item<double>(); }

GrpoBatch GrpoBatch::rows(int64_t begin, int64_t count) const {
  const auto part = [&](const torch::Tensor& t) { return t.defined() ? t.narrow(0, begin, count) : t; };
  GrpoBatch out;
  out.input_ids = part(input_ids);
  out.attention_mask = part(attention_mask);
  out.position_ids = part(position_ids);
  out.completion_mask = part(completion_mask);
  out.sampler_logps = part(sampler_logps);
  out.rewards = part(rewards);
  out.ref_logps = part(ref_logps);
  out.routing = part(routing);
  out.group_size = group_size;
  out.staleness = staleness;
  return out;
}

GrpoBatch build_grpo_batch(const std::vector<RolloutGroup>& groups, bool mask_truncated) {
  if (groups.empty()) throw std::invalid_argument("build_grpo_batch: no groups");
  const auto G = static_cast<int64_t>(groups.front().completions.size());
  int64_t plen = 1, clen = 1;
  for (const auto& g : groups) {
    if (static_cast<int64_t>(g.completions.size()) != G || static_cast<int64_t>(g.totals.size()) != G) {
      throw std::invalid_argument("build_grpo_batch: every group needs " + std::to_string(G) +
                                  " completions and totals, found " + std::to_string(g.completions.size()) + " and " +
                                  std::to_string(g.totals.size()));
    }
    plen = std::max<int64_t>(plen, static_cast<int64_t>(g.prompt_ids.size()));
    for (const auto& c : g.completions) clen = std::max<int64_t>(clen, static_cast<int64_t>(c.token_ids.size()));
  }
  const int64_t n = static_cast<int64_t>(groups.size()) * G;
  GrpoBatch b;
  b.group_size = G;
  b.input_ids = torch::zeros({n, plen + clen}, torch::kLong);
  b.attention_mask = torch::zeros({n, plen + clen}, torch::kLong);
  b.completion_mask = torch::zeros({n, clen}, torch::kFloat);
  b.sampler_logps = torch::zeros({n, clen}, torch::kFloat);
  std::vector<float> totals;
  auto ids = b.input_ids.accessor<int64_t, 2>();
  auto mask = b.attention_mask.accessor<int64_t, 2>();
  auto cmask = b.completion_mask.accessor<float, 2>();
  auto old = b.sampler_logps.accessor<float, 2>();
  int64_t row = 0;
  for (const auto& g : groups) {
    const auto pl = static_cast<int64_t>(g.prompt_ids.size());
    for (int64_t k = 0; k < G; ++k, ++row) {
      const auto& c = g.completions[static_cast<size_t>(k)];
      for (int64_t j = 0; j < pl; ++j) {
        ids[row][plen - pl + j] = g.prompt_ids[static_cast<size_t>(j)];
        mask[row][plen - pl + j] = 1;
      }
      const bool cut = c.finish_reason == rollout::FinishReason::length;
      b.truncated += cut;
      const float w = cut && mask_truncated ? 0.0f : 1.0f;
      for (size_t j = 0; j < c.token_ids.size(); ++j) {
        const auto col = static_cast<int64_t>(j);
        ids[row][plen + col] = c.token_ids[j];
        mask[row][plen + col] = 1;
        cmask[row][col] = w;
        old[row][col] = c.logprobs[j];
      }
      totals.push_back(static_cast<float>(g.totals[static_cast<size_t>(k)]));
      b.lengths.push_back(static_cast<double>(c.token_ids.size()));
    }
  }
  // The sampler's experts per position, when every completion carries them.
  bool routed = true;
  for (const auto& g : groups) {
    for (const auto& c : g.completions) routed = routed && c.routing.defined();
  }
  if (routed) {
    const auto& first = groups.front().completions.front().routing;  // [T, M, K]
    b.routing = torch::full({n, plen + clen, first.size(1), first.size(2)}, -1, torch::kLong);
    row = 0;
    for (const auto& g : groups) {
      const auto pl = static_cast<int64_t>(g.prompt_ids.size());
      for (const auto& c : g.completions) {
        const auto cl = static_cast<int64_t>(c.token_ids.size());
        if (c.routing.size(0) != pl + cl - 1) {
          throw std::invalid_argument("build_grpo_batch: a completion's routing has " +
                                      std::to_string(c.routing.size(0)) + " positions, expected prompt " +
                                      std::to_string(pl) + " + completion " + std::to_string(cl) + " - 1");
        }
        b.routing[row].narrow(0, plen - pl, pl + cl - 1).copy_(c.routing.to(torch::kLong));
        ++row;
      }
    }
  }
  b.position_ids = (b.attention_mask.cumsum(1) - 1).clamp_min(0);
  b.rewards = torch::tensor(totals, torch::kFloat);
  return b;
}

}  // namespace grpo::train
