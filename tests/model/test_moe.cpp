// MoE: group-limited routing against a loop reference, the sorted dispatch against computing every
// expert on every token, and the aux-loss-free bias update evening out a skewed router.
#include "grpo/model/moe.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "model_test_util.h"

namespace grpo::model {
namespace {

// Plain-loop routing of one token: scores s (with bias b), groups of E/G experts, keep the
// topk_group groups by the sum of their two best biased scores, pick the K best biased scores among
// them, weights = unbiased scores (normalised) * scale.
std::vector<std::pair<int64_t, double>> reference_route(const std::vector<double>& s, const std::vector<double>& bias,
                                                        const ModelConfig& c) {
  const int64_t e = c.n_routed_experts, per = e / c.n_group;
  std::vector<double> choice(e);
  for (int64_t i = 0; i < e; ++i) choice[i] = s[i] + bias[i];
  std::vector<std::pair<double, int64_t>> groups;
  for (int64_t g = 0; g < c.n_group; ++g) {
    std::vector<double> v(choice.begin() + g * per, choice.begin() + (g + 1) * per);
    std::sort(v.rbegin(), v.rend());
    groups.push_back({v[0] + v[1], g});
  }
  std::sort(groups.rbegin(), groups.rend());
  std::set<int64_t> kept;
  for (int64_t i = 0; i < c.topk_group; ++i) kept.insert(groups[i].second);
  std::vector<std::pair<double, int64_t>> candidates;
  for (int64_t i = 0; i < e; ++i) {
    if (kept.count(i / per)) candidates.push_back({choice[i], i});
  }
  std::sort(candidates.rbegin(), candidates.rend());
  std::vector<std::pair<int64_t, double>> out;
  double sum = 0;
  for (int64_t k = 0; k < c.num_experts_per_tok; ++k) {
    out.push_back({candidates[k].second, s[candidates[k].second]});
    sum += s[candidates[k].second];
  }
  for (auto& [i, w] : out) w = (c.norm_topk_prob ? w / (sum + 1e-20) : w) * c.routed_scaling_factor;
  std::sort(out.begin(), out.end());
  return out;
}

TEST(Moe, GroupLimitedRoutingMatchesALoopReference) {
  for (bool norm : {true, false}) {
    auto cfg = test::tiny_dsv3();
    cfg.norm_topk_prob = norm;
    torch::manual_seed(1);
    Moe moe(cfg);
    {
      torch::NoGradGuard g;
      moe->e_score_correction_bias.copy_(torch::randn({cfg.n_routed_experts}) * 0.3);
    }
    const auto x = torch::randn({40, cfg.hidden_size});
    const auto r = moe->route(x);
    const auto scores = torch::sigmoid(x.matmul(moe->gate_weight.t())).to(torch::kDouble);
    const auto bias = moe->e_score_correction_bias.to(torch::kDouble);
    std::vector<double> b(bias.data_ptr<double>(), bias.data_ptr<double>() + cfg.n_routed_experts);
    for (int64_t n = 0; n < x.size(0); ++n) {
      const auto row = scores[n].contiguous();
      std::vector<double> s(row.data_ptr<double>(), row.data_ptr<double>() + cfg.n_routed_experts);
      const auto want = reference_route(s, b, cfg);
      std::vector<std::pair<int64_t, double>> got;
      for (int64_t k = 0; k < cfg.num_experts_per_tok; ++k) {
        got.push_back({r.expert_index[n][k].item<int64_t>(), r.weight[n][k].item<double>()});
      }
      std::sort(got.begin(), got.end());
      for (size_t k = 0; k < want.size(); ++k) {
        EXPECT_EQ(got[k].first, want[k].first) << "token " << n;
        EXPECT_NEAR(got[k].second, want[k].second, 1e-6) << "token " << n;
      }
    }
  }
}

TEST(Moe, SortedDispatchEqualsEveryExpertOnEveryToken) {
  const auto cfg = test::tiny_dsv3();
  torch::manual_seed(2);
  Moe moe(cfg);
  const auto x = torch::randn({2, 7, cfg.hidden_size});
  const auto got = moe(x);
  const auto flat = x.reshape({-1, cfg.hidden_size});
  const auto r = moe->route(flat);
  auto want = moe->shared_experts(flat);
  for (int64_t e = 0; e < cfg.n_routed_experts; ++e) {
    const auto y = torch::linear(torch::silu(torch::linear(flat, moe->experts_gate[e])) *
                                     torch::linear(flat, moe->experts_up[e]),
                                 moe->experts_down[e]);
    const auto w = (r.weight * (r.expert_index == e)).sum(-1, true);  // 0 where not chosen
    want = want + y * w;
  }
  EXPECT_TRUE(torch::allclose(got.reshape({-1, cfg.hidden_size}), want, 1e-5, 1e-6));
  // Gradients flow to the experts that were used.
  got.sum().backward();
  EXPECT_GT(moe->experts_gate.grad().abs().sum().item<double>(), 0.0);
  EXPECT_GT(moe->gate_weight.grad().abs().sum().item<double>(), 0.0);
}

TEST(Moe, BiasUpdateEvensOutASkewedRouter) {
  auto cfg = test::tiny_dsv3();
  cfg.n_group = 1;
  cfg.topk_group = 1;
  torch::manual_seed(4);
  Moe moe(cfg);
  {
    torch::NoGradGuard g;
    // Skew: experts 0 and 1 score high for every token.
    moe->gate_weight.normal_(0, 0.05);
    moe->gate_weight[0].fill_(0.3);
    moe->gate_weight[1].fill_(0.25);
  }
  torch::NoGradGuard g;
  std::vector<double> imbalance;
  for (int step = 0; step < 100; ++step) {
    const auto x = torch::randn({256, cfg.hidden_size}).abs();
    moe(x);
    imbalance.push_back(moe->update_bias(0.01));
  }
  // Deliberately skewed: of 8 experts, 2 take most tokens (max / mean load near 4 = 8 / 2).
  EXPECT_GT(imbalance.front(), 3.5);
  // A constant-step sign update oscillates around balance; on average the last 20 steps sit far
  // below the start.
  const double late = std::accumulate(imbalance.end() - 20, imbalance.end(), 0.0) / 20.0;
  EXPECT_LT(late, 2.2) << "first " << imbalance.front();
  // The overloaded experts' biases went down, the others up.
  EXPECT_LT(moe->e_score_correction_bias[0].item<double>(), 0.0);
  EXPECT_GT(moe->e_score_correction_bias[5].item<double>(), 0.0);
}

TEST(Moe, OnlyTrainingForwardsCountTowardTheLoad) {
  const auto cfg = test::tiny_dsv3();
  Moe moe(cfg);
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({2, 5, cfg.hidden_size});
  moe->eval();
  moe(x);
  EXPECT_EQ(moe->expert_load().sum().item<double>(), 0.0);
  moe->train();
  auto valid = torch::ones({2, 5}, torch::kBool);
  valid[1][0] = false;  // a padding token is not counted
  moe(x, valid);
  EXPECT_EQ(moe->expert_load().sum().item<double>(), 9.0 * cfg.num_experts_per_tok);
}

TEST(Moe, SequenceBalanceLossIsAlphaTimesSumOfFTimesP) {
  auto cfg = test::tiny_dsv3();
  cfg.seq_aux_loss_alpha = 0.01;
  torch::manual_seed(6);
  Moe moe(cfg);
  moe->train();
  const auto x = torch::randn({1, 5, cfg.hidden_size});
  moe(x);
  const auto r = moe->route(x.reshape({-1, cfg.hidden_size}));
  // f_i = E / (K T) * count_i; P_i = mean_t s_i,t / sum_j s_j,t
  const auto counts = torch::bincount(r.expert_index.reshape({-1}), {}, cfg.n_routed_experts).to(torch::kDouble);
  const auto f = counts * (8.0 / (2.0 * 5.0));
  const auto p = (r.scores / r.scores.sum(-1, true)).mean(0).to(torch::kDouble);
  EXPECT_NEAR(moe->balance_loss().item<double>(), 0.01 * (f * p).sum().item<double>(), 1e-7);
}

// A tape that replays fixed experts and keeps what the layer used (the seam's contract).
struct FixedTape : RoutingTape {
  torch::Tensor given, used;
  torch::Tensor replay(const MoeImpl&, int64_t) override { return given; }
  void record(const MoeImpl&, const torch::Tensor& e) override { used = e; }
};

// Router replay on one layer: after the bias moves (which changes the routing), replaying the
// experts chosen before gives the earlier output exactly (the gate weights come from the scores,
// which the bias does not touch); rows marked -1 route themselves; the router still gets its
// gradient, equal to finite differences.
TEST(Moe, ReplayedExpertsGiveTheRecordedRoutingAndGradientsReachTheRouter) {
  auto cfg = test::tiny_dsv3();
  torch::manual_seed(9);
  Moe moe(cfg, torch::TensorOptions().dtype(torch::kDouble));
  moe->eval();
  const auto x = torch::randn({2, 6, cfg.hidden_size}, torch::kDouble);
  auto tape = std::make_shared<FixedTape>();
  moe->routing = tape;
  const auto before = moe(x).detach();
  const auto recorded = tape->used.clone();  // [12, K]
  {
    torch::NoGradGuard no_grad;
    moe->e_score_correction_bias.copy_(torch::randn({cfg.n_routed_experts}) * 2.0);
  }
  const auto fresh = moe(x).detach();
  const auto changed = (std::get<0>(tape->used.sort(-1)) != std::get<0>(recorded.sort(-1))).any(-1);
  ASSERT_GT(changed.sum().item<int64_t>(), 0) << "the bias should change some routing";
  EXPECT_GT((fresh - before).abs().max().item<double>(), 1e-3);

  tape->given = recorded;
  EXPECT_TRUE(torch::equal(moe(x).detach(), before));  // replayed: the recorded routing exactly
  EXPECT_TRUE(torch::equal(tape->used, recorded));
  auto partial = recorded.clone();
  partial.narrow(0, 6, 6).fill_(-1);  // the second sequence routes itself
  tape->given = partial;
  const auto half = moe(x).detach();
  // (Not bit for bit: the other sequence's tokens change how each expert's rows are batched.)
  EXPECT_LT((half[0] - before[0]).abs().max().item<double>(), 1e-12);
  EXPECT_LT((half[1] - fresh[1]).abs().max().item<double>(), 1e-12);

  // d/d gate_weight of a fixed projection of the replayed output, against central differences (the
  // router computes in float32 whatever the layer's dtype: a step of 1e-3, a tolerance of 1e-2 of
  // the largest gradient entry).
  tape->given = recorded;
  const auto proj = torch::randn_like(x);
  moe->gate_weight.mutable_grad() = torch::Tensor();
  (moe(x) * proj).sum().backward();
  const auto grad = moe->gate_weight.grad().clone();
  ASSERT_GT(grad.abs().max().item<double>(), 0) << "the router gets a gradient through the gate weights";
  double worst = 0;
  torch::NoGradGuard no_grad;
  for (int64_t i = 0; i < 6; ++i) {
    const int64_t e = i % cfg.n_routed_experts, d = (5 * i) % cfg.hidden_size;
    const double h = 1e-3, w0 = moe->gate_weight[e][d].item<double>();
    moe->gate_weight[e][d] = w0 + h;
    const double up = (moe(x) * proj).sum().item<double>();
    moe->gate_weight[e][d] = w0 - h;
    const double down = (moe(x) * proj).sum().item<double>();
    moe->gate_weight[e][d] = w0;
    worst = std::max(worst, std::abs((up - down) / (2 * h) - grad[e][d].item<double>()));
  }
  EXPECT_LT(worst, 1e-2 * grad.abs().max().item<double>());
  moe->routing = nullptr;
}

}  // namespace
}  // namespace grpo::model
