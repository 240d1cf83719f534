// Hand-computed checks of the GRPO objective (grpo/train/grpo_loss.h): every expected number below
// is worked out in the comment beside it, never by calling the function under test twice.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <optional>

#include "grpo/model/causal_lm.h"
#include "grpo/train/grpo_loss.h"

namespace grpo::train {
namespace {

const auto kF64 = torch::TensorOptions().dtype(torch::kDouble);

torch::Tensor t1(std::vector<double> v) { return torch::tensor(v, kF64); }
torch::Tensor t2(std::vector<std::vector<double>> rows) {
  std::vector<torch::Tensor> r;
  for (auto& v : rows) r.push_back(t1(v));
  return torch::stack(r);
}

void expect_near(const torch::Tensor& got, const torch::Tensor& want, double tol = 1e-9) {
  ASSERT_EQ(got.sizes(), want.sizes());
  const double err = (got.to(torch::kDouble) - want).abs().max().item<double>();
  EXPECT_LE(err, tol) << "got\n" << got << "\nwant\n" << want;
}

GrpoLossConfig config(LossType type) {
  GrpoLossConfig c;
  c.loss_type = type;
  return c;
}

// The sampler correction by hand: old = logps (ratio 1), sampler log-probs chosen so that the
// token weights are [[4, 0.5], [0.5, (padding)]] and the sequence weights [2, 0.5]; advantages
// [1, -1], dapo over T = 3 tokens, so each token's loss is -A_i * w.
TEST(GrpoLoss, SamplerCorrectionEveryModeByHand) {
  const auto logps = torch::zeros({2, 2}, torch::kDouble).requires_grad_();
  const auto sampler = torch::tensor({{-std::log(4.0), -std::log(0.5)}, {std::log(2.0), 0.0}}, torch::kDouble);
  const auto mask = torch::tensor({{1, 1}, {1, 0}}, torch::kLong);
  const auto adv = torch::tensor({1.0, -1.0}, torch::kDouble);
  struct Case {
    SamplerCorrection mode;
    std::optional<double> lo, hi;
    double loss, weight_mean, weight_min, weight_max;
  };
  const Case cases[] = {
      // weights [[3, 0.5], [0.5]]: (-3.5 + 0.5) / 3
      {SamplerCorrection::token_truncate, std::nullopt, 3.0, -1.0, 4.0 / 3.0, 0.5, 3.0},
      // [[0, 0], [0]] outside [0.6, 3]
      {SamplerCorrection::token_mask, 0.6, 3.0, 0.0, 0.0, 0.0, 0.0},
      // [2, 0.8]: (-2 * 2 + 0.8) / 3
      {SamplerCorrection::sequence_truncate, 0.8, 3.0, -3.2 / 3.0, 1.4, 0.8, 2.0},
      // [2, 0]
      {SamplerCorrection::sequence_mask, 0.6, 3.0, -4.0 / 3.0, 1.0, 0.0, 2.0},
  };
  for (const auto& c : cases) {
    GrpoLossConfig cfg;
    cfg.loss_type = LossType::dapo;
    cfg.sampler_correction = c.mode;
    cfg.sampler_clip_min = c.lo;
    cfg.sampler_clip_max = c.hi;
    const auto out = grpo_loss({.logps = logps, .advantages = adv, .completion_mask = mask, .sampler_logps = sampler},
                               cfg);
    SCOPED_TRACE(static_cast<int>(c.mode));
    EXPECT_NEAR(out.loss.item<double>(), c.loss, 1e-12);
    EXPECT_NEAR(out.sampler_weight_mean.item<double>(), c.weight_mean, 1e-12);
    EXPECT_NEAR(out.sampler_weight_min.item<double>(), c.weight_min, 1e-12);
    EXPECT_NEAR(out.sampler_weight_max.item<double>(), c.weight_max, 1e-12);
    EXPECT_NEAR(out.sampler_logp_diff_max.item<double>(), std::log(4.0), 1e-12);
    EXPECT_NEAR(out.sampler_logp_diff_mean.item<double>(), (std::log(4.0) + 2 * std::log(2.0)) / 3.0, 1e-12);
    // The weight scales the gradient too: d loss / d logp_t = -A_i * w_t / T at ratio 1.
    ASSERT_TRUE(out.loss.requires_grad());
    const auto g = torch::autograd::grad({out.loss}, {logps})[0];
    EXPECT_NEAR(g[0][0].item<double>(),
                c.mode == SamplerCorrection::token_truncate ? -3.0 / 3
                : c.mode == SamplerCorrection::token_mask   ? 0.0
                                                            : -2.0 / 3,
                1e-12);
    EXPECT_NEAR(g[1][0].item<double>(),
                c.mode == SamplerCorrection::token_truncate      ? 0.5 / 3
                : c.mode == SamplerCorrection::sequence_truncate ? 0.8 / 3
                                                                 : 0.0,
                1e-12);
  }
  GrpoLossConfig cfg;
  cfg.sampler_correction = SamplerCorrection::token_mask;
  EXPECT_THROW(grpo_loss({.logps = logps, .advantages = adv, .completion_mask = mask}, cfg), c10::Error);
  cfg.sampler_clip_min = 3.0;
  EXPECT_NE(cfg.validate().find("sampler_clip_min"), std::string::npos);
}

TEST(Advantages, GroupScalingWithAZeroStdGroup) {
  // Group 1 {1,2,3,4}: mean 2.5, Bessel std sqrt(5/3) = 1.2909944; group 2 all 5: std 0 -> 0.
  const auto adv = compute_advantages(t1({1, 2, 3, 4, 5, 5, 5, 5}), 4, RewardScaling::group);
  const double s = std::sqrt(5.0 / 3.0) + 1e-4;
  expect_near(adv, t1({-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s, 0, 0, 0, 0}));
}

TEST(Advantages, BatchScalingUsesTheBatchStdAndTheGroupMean) {
  // Batch mean 3.75, squared deviations sum 17.5, / 7 = 2.5: std 1.5811388; centred by group means.
  const auto adv = compute_advantages(t1({1, 2, 3, 4, 5, 5, 5, 5}), 4, RewardScaling::batch);
  const double s = std::sqrt(2.5) + 1e-4;
  expect_near(adv, t1({-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s, 0, 0, 0, 0}));
}

TEST(Advantages, NoScalingOnlyCentres) {
  expect_near(compute_advantages(t1({1, 2, 3, 4, 5, 5, 5, 5}), 4, RewardScaling::none),
              t1({-1.5, -0.5, 0.5, 1.5, 0, 0, 0, 0}));
  // Groups of one: centred to 0 (TRL: zero std).
  expect_near(compute_advantages(t1({3, -1}), 1, RewardScaling::group), t1({0, 0}));
}

TEST(Advantages, RejectsRaggedGroups) {
  EXPECT_THROW(compute_advantages(t1({1, 2, 3}), 2, RewardScaling::group), c10::Error);
}

TEST(SelectiveLogprobs, LogSoftmaxAtTheIds) {
  // Row [0, ln 3]: probabilities 1/4, 3/4.
  const auto logits = torch::tensor({0.0, std::log(3.0), 0.0, std::log(3.0)}, kF64).view({1, 2, 2});
  const auto ids = torch::tensor({1, 0}, torch::kLong).view({1, 2});
  expect_near(selective_logprobs(logits, ids), t2({{std::log(0.75), std::log(0.25)}}));
  EXPECT_EQ(selective_logprobs(logits.to(torch::kBFloat16), ids).scalar_type(), torch::kFloat);
}

// Two sequences of ratios {0.5, 1.1, 1.5} (old logps 0), advantages +1 and -1, epsilon 0.2.
struct ClipCase {
  torch::Tensor logps = torch::log(t2({{0.5, 1.1, 1.5}, {0.5, 1.1, 1.5}})).requires_grad_(true);
  torch::Tensor old = torch::zeros({2, 3}, kF64);
  torch::Tensor mask = torch::ones({2, 3}, kF64);
  torch::Tensor adv = t1({1, -1});
  GrpoLossInputs inputs() const {
    return {.logps = logps, .old_logps = old, .advantages = adv, .completion_mask = mask};
  }
};

TEST(GrpoLoss, ClipsBelowAndAboveTheBandForBothSigns) {
  ClipCase c;
  const auto out = grpo_loss(c.inputs(), config(LossType::bnpo));
  // A=+1: -min(r, clip(r)) = -0.5, -1.1, -1.2 (1.5 clipped to 1.2).
  // A=-1: max(r, clip(r)) = 0.8 (0.5 clipped up), 1.1, 1.5.  Sum 0.6 over 6 tokens.
  EXPECT_NEAR(out.loss.item<double>(), 0.1, 1e-12);
  // Low clip: r < 0.8 with A < 0 (1 token); high clip: r > 1.2 with A > 0 (1 token).
  EXPECT_NEAR(out.clip_ratio_low_mean.item<double>(), 1.0 / 6, 1e-12);
  EXPECT_NEAR(out.clip_ratio_high_mean.item<double>(), 1.0 / 6, 1e-12);
  EXPECT_NEAR(out.clip_ratio_region_mean.item<double>(), 2.0 / 6, 1e-12);
  EXPECT_NEAR(out.clip_ratio_low_min.item<double>(), 0.0, 1e-12);       // per sequence {0, 1/3}
  EXPECT_NEAR(out.clip_ratio_high_max.item<double>(), 1.0 / 3, 1e-12);  // per sequence {1/3, 0}
  out.loss.backward();
  // d/dlogp of an unclipped term is -A*r/6; a clipped term is constant.
  expect_near(c.logps.grad(), t2({{-0.5 / 6, -1.1 / 6, 0}, {0, 1.1 / 6, 1.5 / 6}}));
}

TEST(GrpoLoss, ClipHigherWidensTheUpperBound) {
  ClipCase c;
  c.logps = torch::log(t2({{1.25, 1.25, 1.25}, {1, 1, 1}})).requires_grad_(true);
  c.adv = t1({1, 0});
  auto cfg = config(LossType::bnpo);
  // epsilon 0.2: -1.2 x 3 / 6 = -0.6.  epsilon_high 0.28: 1.25 is inside: -1.25 x 3 / 6 = -0.625.
  EXPECT_NEAR(grpo_loss(c.inputs(), cfg).loss.item<double>(), -0.6, 1e-12);
  cfg.epsilon_high = 0.28;
  const auto out = grpo_loss(c.inputs(), cfg);
  EXPECT_NEAR(out.loss.item<double>(), -0.625, 1e-12);
  EXPECT_EQ(out.clip_ratio_high_mean.item<double>(), 0.0);
}

TEST(GrpoLoss, DeltaCapsTheUnclippedRatio) {
  ClipCase c;
  auto cfg = config(LossType::bnpo);
  cfg.delta = 1.4;
  const auto out = grpo_loss(c.inputs(), cfg);
  // Only the A=-1, r=1.5 token changes: max(min(1.5, 1.4), 1.2) = 1.4 instead of 1.5.
  // Sum -0.5 - 1.1 - 1.2 + 0.8 + 1.1 + 1.4 = 0.5, / 6.
  EXPECT_NEAR(out.loss.item<double>(), 0.5 / 6, 1e-12);
  out.loss.backward();
  // The capped token has no gradient any more.
  expect_near(c.logps.grad(), t2({{-0.5 / 6, -1.1 / 6, 0}, {0, 1.1 / 6, 0}}));
}

TEST(GrpoLoss, K3KlToTheReference) {
  // Ratio 1, A = 0: only the KL term. ref - logp = {-1, +1}: k3 = e^-1 + 1 - 1, e - 1 - 1.
  auto logps = t2({{0.0, -1.0}}).requires_grad_(true);
  auto cfg = config(LossType::bnpo);
  cfg.beta = 0.1;
  cfg.use_bias_correction_kl = false;
  const GrpoLossInputs in{.logps = logps,
                          .ref_logps = t2({{-1.0, 0.0}}),
                          .advantages = t1({0}),
                          .completion_mask = torch::ones({1, 2}, kF64)};
  const auto out = grpo_loss(in, cfg);
  const double k0 = std::exp(-1.0), k1 = std::exp(1.0) - 2.0;
  EXPECT_NEAR(out.kl.item<double>(), (k0 + k1) / 2, 1e-12);
  EXPECT_NEAR(out.loss.item<double>(), 0.1 * (k0 + k1) / 2, 1e-12);
  out.loss.backward();
  // d k3 / d logp = 1 - e^(ref - logp).
  const double g0 = 1 - std::exp(-1.0), g1 = 1 - std::exp(1.0);
  expect_near(logps.grad(), t2({{0.1 * g0 / 2, 0.1 * g1 / 2}}));
  // TRL's default bias correction: k3 * r with r = exp(logp - old) = 1 here; same value, but
  // d(k3 * r)/dlogp = (1 - e^(ref - logp)) * r + k3 * r = g + k3.
  cfg.use_bias_correction_kl = true;
  logps.mutable_grad().reset();
  const auto corrected = grpo_loss(in, cfg);
  EXPECT_NEAR(corrected.loss.item<double>(), 0.1 * (k0 + k1) / 2, 1e-12);
  corrected.loss.backward();
  expect_near(logps.grad(), t2({{0.1 * (g0 + k0) / 2, 0.1 * (g1 + k1) / 2}}));
  // Off policy (r = e^0.5 on token 0, old = logp - 0.5): the KL term is k3 * r.
  auto off = in;
  off.old_logps = t2({{-0.5, -1.0}});
  EXPECT_NEAR(grpo_loss(off, cfg).kl.item<double>(), (k0 * std::exp(0.5) + k1) / 2, 1e-12);
  cfg.beta = 0.04;
  EXPECT_THROW(grpo_loss({.logps = logps, .advantages = t1({0}), .completion_mask = torch::ones({1, 2}, kF64)}, cfg),
               c10::Error);
}

// Ratio 1 everywhere (old undefined): token loss = -A. Row 0 has 3 tokens (A = 1), row 1 one (A = -2).
struct AggregationCase {
  torch::Tensor logps = t2({{-1, -2, -3}, {-1, 7, 9}}).requires_grad_(true);
  torch::Tensor mask = t2({{1, 1, 1}, {1, 0, 0}});
  GrpoLossInputs inputs(double tokens = 0, double rows = 0) const {
    return {.logps = logps,
            .advantages = t1({1, -2}),
            .completion_mask = mask,
            .rows_in_batch = rows,
            .tokens_in_batch = tokens};
  }
};

TEST(GrpoLoss, EachAggregation) {
  AggregationCase c;
  // grpo: mean(-3/3, 2/1) = 0.5.  bnpo: (-3 + 2) / 4.  dr_grpo: -1 / (2 x 5).  dapo: -1 / 4, or / 10.
  EXPECT_NEAR(grpo_loss(c.inputs(), config(LossType::grpo)).loss.item<double>(), 0.5, 1e-12);
  EXPECT_NEAR(grpo_loss(c.inputs(), config(LossType::bnpo)).loss.item<double>(), -0.25, 1e-12);
  auto dr = config(LossType::dr_grpo);
  dr.max_completion_length = 5;
  EXPECT_NEAR(grpo_loss(c.inputs(), dr).loss.item<double>(), -0.1, 1e-12);
  EXPECT_NEAR(grpo_loss(c.inputs(), config(LossType::dapo)).loss.item<double>(), -0.25, 1e-12);
  EXPECT_NEAR(grpo_loss(c.inputs(10), config(LossType::dapo)).loss.item<double>(), -0.1, 1e-12);
  // The TRL default is dapo.
  EXPECT_EQ(GrpoLossConfig{}.loss_type, LossType::dapo);
}

// The loss owns its whole normaliser: given the step's row and token counts, the losses and the
// gradients of the micro-batches add up to those of the whole batch in one call, for every type.
TEST(GrpoLoss, MicroBatchesGivenTheStepCountsAddUpToTheWholeBatch) {
  torch::manual_seed(5);
  const auto mask = t2({{1, 1, 1, 0}, {1, 0, 0, 0}, {1, 1, 0, 0}, {1, 1, 1, 1}, {0, 0, 0, 0}, {1, 1, 0, 0}});
  const auto base = torch::randn({6, 4}, kF64) * 0.3 - 2;
  const auto old = base + torch::randn({6, 4}, kF64) * 0.2;
  const auto ref = base + torch::randn({6, 4}, kF64) * 0.1;
  const auto adv = t1({1, -0.5, 2, -1.5, 0.3, 0.7});
  const double rows = 6, tokens = mask.sum().item<double>();  // 12
  for (auto type : {LossType::grpo, LossType::bnpo, LossType::dr_grpo, LossType::dapo}) {
    for (auto level : {ImportanceSamplingLevel::token, ImportanceSamplingLevel::sequence}) {
      SCOPED_TRACE(std::string(config::enum_name(type)) + " " + std::string(config::enum_name(level)));
      auto cfg = config(type);
      cfg.importance_sampling_level = level;
      cfg.beta = 0.04;
      cfg.max_completion_length = 4;
      auto whole = base.clone().requires_grad_(true);
      const auto one = grpo_loss({whole, old, ref, adv, mask}, cfg);
      one.loss.backward();
      auto parts = base.clone().requires_grad_(true);
      double sum = 0;
      for (int64_t b = 0; b < 6; b += 4) {  // micro-batches of 4 and 2 rows
        const int64_t m = std::min<int64_t>(4, 6 - b);
        const auto out = grpo_loss({parts.narrow(0, b, m), old.narrow(0, b, m), ref.narrow(0, b, m),
                                    adv.narrow(0, b, m), mask.narrow(0, b, m), rows, tokens},
                                   cfg);
        out.loss.backward();
        sum += out.loss.item<double>();
      }
      EXPECT_NEAR(sum, one.loss.item<double>(), 1e-12);
      expect_near(parts.grad(), whole.grad(), 1e-12);
    }
  }
  // Hand values on AggregationCase with counts of a larger step (R = 4 rows, T = 10 tokens):
  // grpo (-1 + 2) / 4; bnpo and dapo -1 / 10; dr_grpo -1 / (4 x 5).
  AggregationCase c;
  EXPECT_NEAR(grpo_loss(c.inputs(10, 4), config(LossType::grpo)).loss.item<double>(), 0.25, 1e-12);
  EXPECT_NEAR(grpo_loss(c.inputs(10, 4), config(LossType::bnpo)).loss.item<double>(), -0.1, 1e-12);
  EXPECT_NEAR(grpo_loss(c.inputs(10, 4), config(LossType::dapo)).loss.item<double>(), -0.1, 1e-12);
  auto dr = config(LossType::dr_grpo);
  dr.max_completion_length = 5;
  EXPECT_NEAR(grpo_loss(c.inputs(10, 4), dr).loss.item<double>(), -0.05, 1e-12);
}

TEST(GrpoLoss, GrpoGradientWeighsTokensByTheirSequenceLength) {
  AggregationCase c;
  const auto out = grpo_loss(c.inputs(), config(LossType::grpo));
  out.loss.backward();
  // d/dlogp of -A*r averaged per sequence, then over 2 sequences: -A / (2 * len).
  expect_near(c.logps.grad(), t2({{-1.0 / 6, -1.0 / 6, -1.0 / 6}, {1.0, 0, 0}}));
}

TEST(GrpoLoss, SequenceLevelRatioIsTheExpOfTheMeanLogRatio) {
  // log ratios {0.2, -0.1} (third token masked, its 5.0 ignored): r = e^0.05 for the whole sequence.
  auto logps = t2({{0.2, -0.1, 5.0}}).requires_grad_(true);
  auto cfg = config(LossType::grpo);
  cfg.importance_sampling_level = ImportanceSamplingLevel::sequence;
  const GrpoLossInputs in{.logps = logps,
                          .old_logps = torch::zeros({1, 3}, kF64),
                          .advantages = t1({1}),
                          .completion_mask = t2({{1, 1, 0}})};
  const auto out = grpo_loss(in, cfg);
  const double r = std::exp(0.05);
  EXPECT_NEAR(out.loss.item<double>(), -r, 1e-12);
  out.loss.backward();
  // loss = -r, dr/dlogp_t = r / 2 for each of the two tokens.
  expect_near(logps.grad(), t2({{-r / 2, -r / 2, 0}}));
  // Mean log ratio 0.5: r = 1.6487 > 1.2 is clipped: loss -1.2, no gradient, the sequence counts as clipped.
  auto far = t2({{0.6, 0.4, 0.0}}).requires_grad_(true);
  auto in2 = in;
  in2.logps = far;
  const auto out2 = grpo_loss(in2, cfg);
  EXPECT_NEAR(out2.loss.item<double>(), -1.2, 1e-12);
  EXPECT_NEAR(out2.clip_ratio_high_mean.item<double>(), 1.0, 1e-12);
  out2.loss.backward();
  expect_near(far.grad(), torch::zeros({1, 3}, kF64));
}

TEST(GrpoLoss, MaskedTokensHaveNoEffect) {
  torch::manual_seed(3);
  const auto mask = t2({{1, 1, 1, 0}, {1, 0, 0, 0}, {1, 1, 0, 0}});
  const auto base = torch::randn({3, 4}, kF64) * 0.3 - 2;
  const auto old = base + torch::randn({3, 4}, kF64) * 0.1;
  const auto ref = base + torch::randn({3, 4}, kF64) * 0.1;
  const auto garbage = torch::randn({3, 4}, kF64) * 10 * (1 - mask);
  for (auto type : {LossType::grpo, LossType::bnpo, LossType::dr_grpo, LossType::dapo}) {
    for (auto level : {ImportanceSamplingLevel::token, ImportanceSamplingLevel::sequence}) {
      auto cfg = config(type);
      cfg.importance_sampling_level = level;
      cfg.beta = 0.04;
      auto a = base.clone().requires_grad_(true);
      auto b = (base + garbage).clone().requires_grad_(true);
      const auto out_a = grpo_loss({a, old, ref, t1({1, -0.5, 2}), mask}, cfg);
      const auto out_b = grpo_loss({b, old + garbage, ref - garbage, t1({1, -0.5, 2}), mask}, cfg);
      EXPECT_NEAR(out_a.loss.item<double>(), out_b.loss.item<double>(), 1e-12);
      EXPECT_NEAR(out_a.kl.item<double>(), out_b.kl.item<double>(), 1e-12);
      out_a.loss.backward();
      out_b.loss.backward();
      expect_near(a.grad(), b.grad().to(torch::kDouble), 1e-12);
      expect_near(a.grad() * (1 - mask), torch::zeros({3, 4}, kF64), 0);
    }
  }
}

TEST(GrpoLoss, GradientMatchesFiniteDifferences) {
  torch::manual_seed(7);
  const auto mask = t2({{1, 1, 1, 1, 0}, {1, 1, 0, 0, 0}, {1, 1, 1, 0, 0}, {1, 0, 0, 0, 0}});
  const auto logps0 = torch::randn({4, 5}, kF64) * 0.5 - 2;
  const auto old = logps0 + torch::randn({4, 5}, kF64) * 0.15;
  const auto ref = logps0 + torch::randn({4, 5}, kF64) * 0.2;
  const auto adv = t1({1.3, -0.7, 0.4, -1.0});
  for (auto type : {LossType::grpo, LossType::bnpo, LossType::dr_grpo, LossType::dapo}) {
    for (auto level : {ImportanceSamplingLevel::token, ImportanceSamplingLevel::sequence}) {
      auto cfg = config(type);
      cfg.importance_sampling_level = level;
      cfg.beta = 0.04;
      cfg.epsilon_high = 0.28;
      cfg.delta = 1.3;
      cfg.max_completion_length = 6;
      auto logps = logps0.clone().requires_grad_(true);
      grpo_loss({logps, old, ref, adv, mask, 20}, cfg).loss.backward();
      auto numeric = torch::zeros_like(logps0);
      const double h = 1e-6;
      for (int64_t i = 0; i < 4; ++i) {
        for (int64_t t = 0; t < 5; ++t) {
          auto plus = logps0.clone(), minus = logps0.clone();
          plus[i][t] += h;
          minus[i][t] -= h;
          const double f1 = grpo_loss({plus, old, ref, adv, mask, 20}, cfg).loss.item<double>();
          const double f0 = grpo_loss({minus, old, ref, adv, mask, 20}, cfg).loss.item<double>();
          numeric[i][t] = (f1 - f0) / (2 * h);
        }
      }
      SCOPED_TRACE(std::string(config::enum_name(type)) + " " + std::string(config::enum_name(level)));
      expect_near(logps.grad(), numeric, 1e-7);
      EXPECT_GT(logps.grad().abs().max().item<double>(), 1e-3);
    }
  }
}

TEST(GrpoLossConfig, DefaultsAreTrls) {
  const GrpoLossConfig c;
  EXPECT_EQ(c.epsilon, 0.2);
  EXPECT_EQ(c.epsilon_upper(), 0.2);
  EXPECT_FALSE(c.delta.has_value());
  EXPECT_EQ(c.importance_sampling_level, ImportanceSamplingLevel::token);
  EXPECT_EQ(c.beta, 0.0);
  EXPECT_TRUE(c.use_bias_correction_kl);
  EXPECT_EQ(c.scale_rewards, RewardScaling::group);
  EXPECT_EQ(c.max_completion_length, 512);
  EXPECT_EQ(c.validate(), "");
  GrpoLossConfig bad;
  bad.delta = 1.1;
  EXPECT_NE(bad.validate(), "");
  EXPECT_EQ(config::enum_from_name<LossType>("dr_grpo"), LossType::dr_grpo);
  EXPECT_EQ(config::enum_from_name<RewardScaling>("batch"), RewardScaling::batch);
}

// The chunked log-prob head (kernels/token_logprobs.h) gives the log-probs and gradients of the
// whole-logits path (head, then selective_logprobs, checked against log_softmax above), for chunks
// that split the vocabulary unevenly, at temperature 0.7, with left- and right-padding.
TEST(CompletionLogprobs, ChunkedHeadEqualsWholeLogits) {
  model::ModelConfig c;
  c.arch = model::Arch::qwen2;
  c.vocab_size = 53;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.max_position_embeddings = 32;
  c.initializer_range = 0.3;
  torch::manual_seed(7);
  model::CausalLM lm(c);
  auto ids = torch::randint(1, 53, {3, 10}, torch::kLong);
  auto mask = torch::ones({3, 10}, torch::kLong);
  mask[1].narrow(0, 0, 2).zero_();  // left padding of the prompt
  mask[2].narrow(0, 8, 2).zero_();  // right padding of the completion
  const auto positions = (mask.cumsum(1) - 1).clamp_min(0);
  auto run = [&](int64_t chunk) {
    lm->zero_grad();
    const auto logps = completion_logprobs(lm, ids, mask, positions, 6, 0.7, chunk);
    (logps * torch::linspace(-1.0, 1.0, 18).view({3, 6})).sum().backward();
    std::vector<torch::Tensor> grads;
    for (const auto& p : lm->parameters()) grads.push_back(p.grad().clone());
    return std::make_pair(logps.detach(), grads);
  };
  const auto whole = run(0);
  EXPECT_EQ(whole.first[2][5].item<double>(), 0.0);  // padding
  for (int64_t chunk : {7, 20, 53, 4096}) {
    const auto chunked = run(chunk);
    expect_near(chunked.first, whole.first.to(torch::kDouble), 2e-6);
    for (size_t i = 0; i < whole.second.size(); ++i) {
      const double scale = whole.second[i].abs().max().item<double>() + 1e-12;
      EXPECT_LE((chunked.second[i] - whole.second[i]).abs().max().item<double>() / scale, 1e-5)
          << "chunk " << chunk << " parameter " << i;
    }
  }
}

}  // namespace
}  // namespace grpo::train
