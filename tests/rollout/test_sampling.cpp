// Sampling: the filters against hand-computed distributions, inverse-CDF draws against the
// probabilities, log-probs against log_softmax, and per-row random streams.
#include "grpo/rollout/sampling.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

namespace grpo::rollout {
namespace {

torch::Tensor row(std::vector<double> p) { return torch::tensor(p, torch::kDouble).log().view({1, -1}); }

void expect_probs(const torch::Tensor& got, std::vector<double> want) {
  ASSERT_EQ(got.size(1), static_cast<int64_t>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[0][static_cast<int64_t>(i)].item<double>(), want[i], 1e-12) << "token " << i;
  }
}

TEST(Sampling, FiltersMatchHandComputedDistributions) {
  const auto logits = row({0.1, 0.4, 0.2, 0.3});  // probabilities as logs
  SamplingConfig cfg;
  expect_probs(sampling_probs(logits, cfg), {0.1, 0.4, 0.2, 0.3});
  cfg.top_k = 2;  // keep 0.4 and 0.3
  expect_probs(sampling_probs(logits, cfg), {0, 0.4 / 0.7, 0, 0.3 / 0.7});
  cfg = {};
  cfg.top_p = 0.69;  // 0.4 then 0.3 reach 0.69: 0.2 is dropped (the mass before it is 0.7)
  expect_probs(sampling_probs(logits, cfg), {0, 0.4 / 0.7, 0, 0.3 / 0.7});
  cfg.top_p = 0.71;  // 0.4 + 0.3 < 0.71: 0.2 is needed too
  expect_probs(sampling_probs(logits, cfg), {0, 0.4 / 0.9, 0.2 / 0.9, 0.3 / 0.9});
  cfg.top_p = 0.01;  // at least the most likely token
  expect_probs(sampling_probs(logits, cfg), {0, 1, 0, 0});
  cfg = {};
  cfg.min_p = 0.5;  // keep p >= 0.2
  expect_probs(sampling_probs(logits, cfg), {0, 0.4 / 0.9, 0.2 / 0.9, 0.3 / 0.9});
  cfg = {};
  cfg.temperature = 0.5;  // p^2 renormalised
  expect_probs(sampling_probs(logits, cfg), {0.01 / 0.3, 0.16 / 0.3, 0.04 / 0.3, 0.09 / 0.3});
  // Order: temperature, then top_k, then top_p on the renormalised top-k, then min_p.
  cfg = {};
  cfg.temperature = 0.5;
  cfg.top_k = 3;    // 0.16, 0.09, 0.04 of 0.29
  cfg.top_p = 0.8;  // 0.16/0.29 = 0.552 < 0.8, + 0.09/0.29 = 0.862: keep two
  expect_probs(sampling_probs(logits, cfg), {0, 0.16 / 0.25, 0, 0.09 / 0.25});
}

TEST(Sampling, InverseCdfPicksByUniformAndNeverAZeroProbabilityToken) {
  const auto probs = torch::tensor({0.0, 0.25, 0.0, 0.75}, torch::kDouble).view({1, 4});
  auto pick = [&](double u) { return sample_from_probs(probs, torch::tensor({u}, torch::kDouble)).item<int64_t>(); };
  EXPECT_EQ(pick(0.0), 1);
  EXPECT_EQ(pick(0.2499), 1);
  EXPECT_EQ(pick(0.25), 3);
  EXPECT_EQ(pick(0.9999999), 3);
  // Rows are independent: each uses its own uniform.
  const auto two = torch::cat({probs, torch::tensor({1.0, 0.0, 0.0, 0.0}, torch::kDouble).view({1, 4})});
  const auto t = sample_from_probs(two, torch::tensor({0.5, 0.5}, torch::kDouble));
  EXPECT_EQ(t[0].item<int64_t>(), 3);
  EXPECT_EQ(t[1].item<int64_t>(), 0);
}

TEST(Sampling, DrawFrequenciesFollowTheFilteredDistribution) {
  torch::manual_seed(0);
  const auto logits = torch::randn({1, 12}) * 2;
  SamplingConfig cfg;
  cfg.temperature = 0.8;
  cfg.top_p = 0.9;
  const auto probs = sampling_probs(logits, cfg);
  RowRng rng(42);
  const int draws = 40000;
  std::vector<int> counts(12, 0);
  auto u = torch::empty({draws}, torch::kDouble);
  for (int i = 0; i < draws; ++i) u[i] = rng.uniform();
  const auto tokens = sample_from_probs(probs.expand({draws, 12}), u);
  for (int i = 0; i < draws; ++i) ++counts[static_cast<size_t>(tokens[i].item<int64_t>())];
  for (int v = 0; v < 12; ++v) {
    const double p = probs[0][v].item<double>();
    const double sd = std::sqrt(draws * p * (1 - p)) + 1e-9;
    if (p == 0) {
      EXPECT_EQ(counts[static_cast<size_t>(v)], 0) << "token " << v << " was filtered out";
    } else {
      EXPECT_LT(std::abs(counts[static_cast<size_t>(v)] - draws * p), 5 * sd) << "token " << v;
    }
  }
}

TEST(Sampling, LogprobsAreTheTemperatureScaledLogSoftmax) {
  torch::manual_seed(1);
  const auto logits = torch::randn({3, 17});
  const auto tokens = torch::tensor({4, 0, 16}, torch::kLong);
  for (double t : {0.0, 1.0, 0.7}) {
    const auto lp = token_logprobs(logits, tokens, t);
    for (int64_t b = 0; b < 3; ++b) {
      const double scale = t == 0.0 ? 1.0 : t;
      double z = 0;
      for (int64_t v = 0; v < 17; ++v) z += std::exp(logits[b][v].item<double>() / scale);
      const double want = logits[b][tokens[b].item<int64_t>()].item<double>() / scale - std::log(z);
      EXPECT_NEAR(lp[b].item<double>(), want, 1e-5);
    }
  }
  // Greedy is the argmax, ties to the lowest id.
  const auto tied = torch::tensor({1.0, 3.0, 3.0, 2.0}).view({1, 4});
  SamplingConfig greedy;
  greedy.temperature = 0;
  EXPECT_EQ(choose_tokens(tied, greedy, {}).item<int64_t>(), 1);
}

TEST(Sampling, RowStreamsAreReproducibleAndDistinct) {
  RowRng a(RowRng::derive(7, 0)), b(RowRng::derive(7, 0)), c(RowRng::derive(7, 1)), d(RowRng::derive(8, 0));
  std::set<double> firsts;
  for (int i = 0; i < 100; ++i) {
    const double x = a.uniform();
    EXPECT_EQ(x, b.uniform());
    EXPECT_GE(x, 0.0);
    EXPECT_LT(x, 1.0);
  }
  firsts.insert(a.uniform());
  firsts.insert(c.uniform());
  firsts.insert(d.uniform());
  EXPECT_EQ(firsts.size(), 3u);
}

}  // namespace
}  // namespace grpo::rollout
