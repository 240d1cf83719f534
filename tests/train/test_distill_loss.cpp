// Distillation divergences (include/grpo/train/distill_loss.h):
//   - hand-computed values on V = 2 and V = 3 distributions (exact forms in ln 2, ln 3, ln 5), each
//     divergence, temperature != 1, jsd at beta 0 / 0.5 / 1 (TRL's end points: the two KLs), zero
//     between equal distributions, and a hand-computed gradient;
//   - the reference against an independent formula (softmax, then log of probabilities and of the
//     mixture of probabilities) on random tensors, and its gradient against float64 central
//     finite differences;
//   - the chunked path against the reference, values and gradients of student hidden and head,
//     float64 and float32, chunk sizes 1, 3, V, > V, Ds != Dt, a tied head, large logits, a
//     bfloat16 teacher made in inference mode;
//   - bad inputs: the error names the function and says what was expected and what was found;
//   - GkdOracle: the numbers TRL's GKDTrainer.generalized_jsd_loss computed (gkd_oracle.py, run by
//     ctest as gkd_oracle_generate -> gkd_oracle_cpp; GRPO_GKD_ORACLE_DIR, skips when unset).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/io/safetensors.h"
#include "grpo/train/distill_loss.h"

namespace grpo::train {
namespace {

const double kLn2 = std::log(2.0);
const double kLn3 = std::log(3.0);
const double kLn5 = std::log(5.0);

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}
double max_abs(const torch::Tensor& a) { return a.to(torch::kDouble).abs().max().item<double>(); }

torch::Tensor f64(std::vector<double> values, std::vector<int64_t> shape) {
  return torch::tensor(values, torch::kDouble).reshape(shape);
}

DistillLossConfig make_cfg(Divergence d, double beta = 0.5, double temperature = 1.0, int64_t chunk = 4096) {
  DistillLossConfig cfg;
  cfg.divergence = d;
  cfg.beta = beta;
  cfg.temperature = temperature;
  cfg.chunk_size = chunk;
  return cfg;
}

std::string describe(const DistillLossConfig& c) {
  return std::string(config::enum_name(c.divergence)) + " beta=" + std::to_string(c.beta) +
         " T=" + std::to_string(c.temperature) + " chunk=" + std::to_string(c.chunk_size);
}

// The configurations the comparisons sweep: each divergence, jsd inside and at its end points,
// temperatures below and above 1.
std::vector<DistillLossConfig> sweep() {
  return {make_cfg(Divergence::forward_kl),
          make_cfg(Divergence::reverse_kl),
          make_cfg(Divergence::jsd, 0.5),
          make_cfg(Divergence::jsd, 0.0),
          make_cfg(Divergence::jsd, 1.0),
          make_cfg(Divergence::jsd, 0.2, 1.7),
          make_cfg(Divergence::forward_kl, 0.5, 0.6),
          make_cfg(Divergence::reverse_kl, 0.5, 2.5)};
}

// ---------------------------------------------------------------- hand-computed values

// V = 2: student logits (0, 0) -> p_s = (1/2, 1/2); teacher (ln 3, 0) -> p_t = (3/4, 1/4).
//   forward_kl = 3/4 ln(3/2) + 1/4 ln(1/2)                 = 3/4 ln 3 - ln 2      = 0.1308120359...
//   reverse_kl = 1/2 ln(2/3) + 1/2 ln 2                    = 1/2 ln(4/3)          = 0.1438410362...
//   jsd(1/2):  m = (5/8, 3/8); 1/2 [3/4 ln(6/5) + 1/4 ln(2/3)] + 1/2 [1/2 ln(4/5) + 1/2 ln(4/3)]
//              = 3/2 ln 2 - 5/8 ln 5 (the ln 3 terms cancel)                     = 0.0338220755...
TEST(DistillLoss, HandComputedTwoTokenVocabulary) {
  const auto student = f64({0, 0}, {1, 2});
  const auto teacher = f64({kLn3, 0}, {1, 2});
  const double forward = 0.75 * kLn3 - kLn2;
  const double reverse = 0.5 * (2 * kLn2 - kLn3);
  const double jsd_half = 1.5 * kLn2 - 0.625 * kLn5;
  EXPECT_NEAR(forward, 0.130812035941137, 1e-14);
  EXPECT_NEAR(jsd_half, 0.0338220755686052, 1e-14);
  auto value = [&](const DistillLossConfig& cfg) {
    return token_divergence_reference(student, teacher, cfg).item<double>();
  };
  EXPECT_NEAR(value(make_cfg(Divergence::forward_kl)), forward, 1e-14);
  EXPECT_NEAR(value(make_cfg(Divergence::reverse_kl)), reverse, 1e-14);
  EXPECT_NEAR(value(make_cfg(Divergence::jsd, 0.5)), jsd_half, 1e-14);
  // TRL's end points: beta 0 is KL(p_t || p_s), beta 1 is KL(p_s || p_t).
  EXPECT_NEAR(value(make_cfg(Divergence::jsd, 0.0)), forward, 1e-14);
  EXPECT_NEAR(value(make_cfg(Divergence::jsd, 1.0)), reverse, 1e-14);
  // The mixture formula itself goes to 0 near the end points (TRL's switch is a discontinuity).
  EXPECT_LT(value(make_cfg(Divergence::jsd, 1e-6)), 1e-5);
  EXPECT_LT(value(make_cfg(Divergence::jsd, 1 - 1e-6)), 1e-5);

  // The chunked path on the same logits: hidden = logits, head = identity.
  const auto eye = torch::eye(2, torch::kDouble);
  for (int64_t chunk : {1, 2}) {
    EXPECT_NEAR(token_divergence(student, eye, teacher, eye, make_cfg(Divergence::jsd, 0.5, 1.0, chunk)).item<double>(),
                jsd_half, 1e-14);
    EXPECT_NEAR(token_divergence(student, eye, teacher, eye, make_cfg(Divergence::jsd, 1.0, 1.0, chunk)).item<double>(),
                reverse, 1e-14);
  }
}

// V = 3: student (0, 0, 0) -> p_s = (1/3, 1/3, 1/3); teacher (ln 2, 0, 0) -> p_t = (1/2, 1/4, 1/4).
//   forward_kl = 1/2 ln(3/2) + 2 * 1/4 ln(3/4)     = ln 3 - 3/2 ln 2     = 0.0588915178...
//   reverse_kl = 1/3 ln(2/3) + 2 * 1/3 ln(4/3)     = 5/3 ln 2 - ln 3     = 0.0566330122...
// Reverse KL gradient with respect to the student logits: p_s (g - reverse_kl),
//   g = log p_s - log p_t = (ln(2/3), ln(4/3), ln(4/3)).
TEST(DistillLoss, HandComputedThreeTokenVocabularyAndGradient) {
  const auto teacher = f64({kLn2, 0, 0}, {1, 3});
  const double forward = kLn3 - 1.5 * kLn2;
  const double reverse = 5.0 / 3.0 * kLn2 - kLn3;
  EXPECT_NEAR(forward, 0.0588915178281919, 1e-14);
  EXPECT_NEAR(reverse, 0.0566330122651324, 1e-14);
  for (const auto& [cfg, expected] :
       std::vector<std::pair<DistillLossConfig, double>>{{make_cfg(Divergence::forward_kl), forward},
                                                         {make_cfg(Divergence::reverse_kl), reverse},
                                                         {make_cfg(Divergence::jsd, 0.0), forward},
                                                         {make_cfg(Divergence::jsd, 1.0), reverse}}) {
    SCOPED_TRACE(describe(cfg));
    const auto student = f64({0, 0, 0}, {1, 3}).requires_grad_(true);
    const auto value = token_divergence_reference(student, teacher, cfg);
    EXPECT_NEAR(value.item<double>(), expected, 1e-14);
    value.sum().backward();
    const bool is_forward = expected == forward;
    const auto expected_grad = is_forward ? f64({1.0 / 3 - 0.5, 1.0 / 3 - 0.25, 1.0 / 3 - 0.25}, {1, 3})
                                          : f64({std::log(2.0 / 3) - reverse, std::log(4.0 / 3) - reverse,
                                                 std::log(4.0 / 3) - reverse},
                                                {1, 3}) /
                                                3.0;
    EXPECT_LE(max_abs_diff(student.grad(), expected_grad), 1e-14) << student.grad();
  }
}

// Temperature divides both models' logits: with T = 2, teacher logits (2 ln 3, 0) give the same
// p_t = (3/4, 1/4) as above, so forward_kl = 3/4 ln 3 - ln 2 again, and its gradient with respect to
// the logits is (p_s - p_t) / T = (-1/8, 1/8).
TEST(DistillLoss, TemperatureScalesLogitsAndGradient) {
  const auto student = f64({0, 0}, {1, 2}).requires_grad_(true);
  const auto teacher = f64({2 * kLn3, 0}, {1, 2});
  const auto value = token_divergence_reference(student, teacher, make_cfg(Divergence::forward_kl, 0.5, 2.0));
  EXPECT_NEAR(value.item<double>(), 0.75 * kLn3 - kLn2, 1e-14);
  value.sum().backward();
  EXPECT_LE(max_abs_diff(student.grad(), f64({-0.125, 0.125}, {1, 2})), 1e-14) << student.grad();
  // Without the temperature the teacher is (9/10, 1/10): a different number.
  const double t1 = token_divergence_reference(student, teacher, make_cfg(Divergence::forward_kl)).item<double>();
  EXPECT_NEAR(t1, 0.9 * std::log(1.8) + 0.1 * std::log(0.2), 1e-14);
}

// Every divergence is 0 (and has zero gradient) when the two distributions are equal, also when
// the logits differ by a constant per row.
TEST(DistillLoss, ZeroForEqualDistributions) {
  torch::manual_seed(1);
  const auto teacher = torch::randn({4, 11}, torch::kDouble) * 3;
  for (const auto& cfg : sweep()) {
    SCOPED_TRACE(describe(cfg));
    const auto student = (teacher + torch::arange(4, torch::kDouble).unsqueeze(1)).requires_grad_(true);
    const auto value = token_divergence_reference(student, teacher, cfg);
    EXPECT_LE(max_abs(value), 1e-14);
    value.sum().backward();
    EXPECT_LE(max_abs(student.grad()), 1e-14);
    const auto eye = torch::eye(11, torch::kDouble);
    EXPECT_LE(max_abs(token_divergence(student.detach(), eye, teacher, eye, cfg)), 1e-14);
  }
}

// ---------------------------------------------------------------- reference vs an independent formula

// The divergences from probabilities: softmax, then plain logs, the mixture as a sum of probabilities.
torch::Tensor probability_formula(const torch::Tensor& zs, const torch::Tensor& zt, const DistillLossConfig& cfg) {
  const auto ps = torch::softmax(zs.to(torch::kDouble) / cfg.temperature, 1);
  const auto pt = torch::softmax(zt.to(torch::kDouble) / cfg.temperature, 1);
  auto kl = [](const torch::Tensor& p, const torch::Tensor& q) { return (p * (p.log() - q.log())).sum(1); };
  if (cfg.divergence == Divergence::forward_kl || (cfg.divergence == Divergence::jsd && cfg.beta == 0))
    return kl(pt, ps);
  if (cfg.divergence == Divergence::reverse_kl || (cfg.divergence == Divergence::jsd && cfg.beta == 1))
    return kl(ps, pt);
  const auto m = cfg.beta * pt + (1 - cfg.beta) * ps;
  return cfg.beta * kl(pt, m) + (1 - cfg.beta) * kl(ps, m);
}

TEST(DistillLoss, ReferenceMatchesProbabilityFormula) {
  torch::manual_seed(2);
  const auto zs = torch::randn({7, 50}, torch::kDouble) * 2;
  const auto zt = torch::randn({7, 50}, torch::kDouble) * 2;
  for (const auto& cfg : sweep()) {
    SCOPED_TRACE(describe(cfg));
    const auto expected = probability_formula(zs, zt, cfg);
    EXPECT_GT(expected.min().item<double>(), 1e-3);  // a real, non-zero comparison
    const auto r64 = token_divergence_reference(zs, zt, cfg);
    EXPECT_EQ(r64.scalar_type(), torch::kDouble);
    EXPECT_LE(max_abs_diff(r64, expected), 1e-12);
    const auto r32 = token_divergence_reference(zs.to(torch::kFloat), zt.to(torch::kFloat), cfg);
    EXPECT_EQ(r32.scalar_type(), torch::kFloat);
    EXPECT_LE(max_abs_diff(r32, expected), 2e-5 * max_abs(expected));
    // Mixed dtypes: a bfloat16 teacher is computed in float32.
    const auto zt_bf16 = zt.to(torch::kBFloat16);
    const auto rb = token_divergence_reference(zs.to(torch::kFloat), zt_bf16, cfg);
    EXPECT_EQ(rb.scalar_type(), torch::kFloat);
    EXPECT_LE(max_abs_diff(rb, probability_formula(zs, zt_bf16.to(torch::kDouble), cfg)), 2e-5 * max_abs(expected));
  }
}

// d sum_i w_i div_i / d z_s against central differences in float64; the teacher gets no gradient.
TEST(DistillLoss, ReferenceGradientMatchesFiniteDifferences) {
  torch::manual_seed(3);
  const auto zs0 = torch::randn({3, 6}, torch::kDouble) * 1.5;
  const auto zt = (torch::randn({3, 6}, torch::kDouble) * 1.5).requires_grad_(true);
  const auto w = torch::tensor({0.7, -1.3, 2.0}, torch::kDouble);
  const double h = 1e-6;
  for (auto cfg : sweep()) {
    cfg.temperature *= 0.8;
    SCOPED_TRACE(describe(cfg));
    const auto zs = zs0.clone().requires_grad_(true);
    (token_divergence_reference(zs, zt, cfg) * w).sum().backward();
    EXPECT_FALSE(zt.grad().defined());
    auto numeric = torch::zeros_like(zs0);
    auto f = [&](const torch::Tensor& z) { return (token_divergence_reference(z, zt, cfg) * w).sum().item<double>(); };
    for (int64_t i = 0; i < zs0.size(0); ++i) {
      for (int64_t j = 0; j < zs0.size(1); ++j) {
        auto plus = zs0.clone();
        auto minus = zs0.clone();
        plus[i][j] += h;
        minus[i][j] -= h;
        numeric[i][j] = (f(plus) - f(minus)) / (2 * h);
      }
    }
    EXPECT_GT(max_abs(numeric), 1e-2);
    EXPECT_LE(max_abs_diff(zs.grad(), numeric), 1e-8) << zs.grad() << numeric;
  }
}

// ---------------------------------------------------------------- chunked vs reference

struct Inputs {
  torch::Tensor student_hidden, student_head, teacher_hidden, teacher_head;  // [N, Ds] [V, Ds] [N, Dt] [V, Dt]
};

Inputs random_inputs(int64_t n, int64_t v, int64_t ds, int64_t dt, torch::Dtype dtype, double scale = 1.0) {
  Inputs in;
  in.student_hidden = torch::randn({n, ds}, torch::kDouble).mul(scale).to(dtype);
  in.student_head = torch::randn({v, ds}, torch::kDouble).mul(0.7).to(dtype);
  in.teacher_hidden = torch::randn({n, dt}, torch::kDouble).mul(scale).to(dtype);
  in.teacher_head = torch::randn({v, dt}, torch::kDouble).mul(0.7).to(dtype);
  return in;
}

struct Outputs {
  torch::Tensor value, grad_hidden, grad_head;
};

// Value and gradients of sum_i w_i div_i, by the reference (on the materialised logits) or chunked.
Outputs run(const Inputs& in, const DistillLossConfig& cfg, bool chunked, const torch::Tensor& w) {
  const auto hidden = in.student_hidden.detach().clone().requires_grad_(true);
  const auto head = in.student_head.detach().clone().requires_grad_(true);
  torch::Tensor value;
  if (chunked) {
    value = token_divergence(hidden, head, in.teacher_hidden, in.teacher_head, cfg);
  } else {
    const auto compute = in.student_hidden.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
    value = token_divergence_reference(torch::mm(hidden.to(compute), head.to(compute).t()),
                                       torch::mm(in.teacher_hidden.to(compute), in.teacher_head.to(compute).t()), cfg);
  }
  (value * w.to(value.scalar_type())).sum().backward();
  return {value.detach(), hidden.grad(), head.grad()};
}

void expect_chunked_matches(const Inputs& in, const DistillLossConfig& cfg, double rel_tol) {
  SCOPED_TRACE(describe(cfg));
  const auto w = torch::rand({in.student_hidden.size(0)}, torch::kDouble) + 0.5;
  const auto ref = run(in, cfg, /*chunked=*/false, w);
  const auto got = run(in, cfg, /*chunked=*/true, w);
  ASSERT_EQ(got.value.scalar_type(), ref.value.scalar_type());
  ASSERT_EQ(got.grad_hidden.scalar_type(), in.student_hidden.scalar_type());
  ASSERT_EQ(got.grad_head.scalar_type(), in.student_head.scalar_type());
  const double e_value = max_abs_diff(got.value, ref.value);
  const double e_hidden = max_abs_diff(got.grad_hidden, ref.grad_hidden);
  const double e_head = max_abs_diff(got.grad_head, ref.grad_head);
  EXPECT_LE(e_value, rel_tol * std::max(max_abs(ref.value), 1.0)) << "value";
  EXPECT_LE(e_hidden, rel_tol * max_abs(ref.grad_hidden)) << "grad student_hidden";
  EXPECT_LE(e_head, rel_tol * max_abs(ref.grad_head)) << "grad student_head";
  EXPECT_GT(max_abs(ref.grad_head), 1e-4);
}

TEST(DistillLoss, ChunkedMatchesReferenceFloat64) {
  torch::manual_seed(4);
  const int64_t V = 29;
  const auto in = random_inputs(9, V, 6, 10, torch::kDouble);  // Ds = 6 != Dt = 10
  for (int64_t chunk : {int64_t{1}, int64_t{3}, V, V + 7}) {
    for (auto cfg : sweep()) {
      cfg.chunk_size = chunk;
      expect_chunked_matches(in, cfg, 1e-12);
    }
  }
}

TEST(DistillLoss, ChunkedMatchesReferenceFloat32) {
  torch::manual_seed(5);
  const int64_t V = 301;
  const auto in = random_inputs(17, V, 24, 16, torch::kFloat);
  for (int64_t chunk : {int64_t{1}, int64_t{3}, int64_t{64}, V, V + 1}) {
    for (auto cfg : sweep()) {
      cfg.chunk_size = chunk;
      expect_chunked_matches(in, cfg, 2e-5);
    }
  }
}

// Large logits, where exp(logit) overflows (float32 beyond 88, float64 beyond 709).
// (a) A large offset per row (an extra hidden column holding the offset, a head column of ones):
//     the distributions are those of the offset-free logits, so the divergences must be too; and
//     the gradients equal the reference's on the same (offset) logits.
// (b) Widely spread logits (~1e3): values finite and equal to the reference's, gradients finite
//     (they are ~0 there: both distributions are almost one-hot).
Inputs with_row_offset(const Inputs& in, const torch::Tensor& offset_s, const torch::Tensor& offset_t) {
  const auto ones = [](const torch::Tensor& head) { return torch::ones({head.size(0), 1}, head.options()); };
  return {torch::cat({in.student_hidden, offset_s.unsqueeze(1).to(in.student_hidden.scalar_type())}, 1),
          torch::cat({in.student_head, ones(in.student_head)}, 1),
          torch::cat({in.teacher_hidden, offset_t.unsqueeze(1).to(in.teacher_hidden.scalar_type())}, 1),
          torch::cat({in.teacher_head, ones(in.teacher_head)}, 1)};
}

TEST(DistillLoss, ChunkedLargeLogits) {
  torch::manual_seed(6);
  const auto rows = torch::arange(8, torch::kDouble);
  for (auto dtype : {torch::kDouble, torch::kFloat}) {
    const auto base = random_inputs(8, 100, 16, 12, dtype);
    // float64: offsets 1e5 .. 8e5 (ulp ~1e-10); float32: 100 .. 240 (ulp ~1.5e-5).
    const auto offset_s = dtype == torch::kDouble ? (rows + 1) * 1e5 : 100 + 20 * rows;
    const auto offset_t = dtype == torch::kDouble ? (rows + 2) * -7e4 : 230 - 15 * rows;
    const auto in = with_row_offset(base, offset_s, offset_t);
    const double tol = dtype == torch::kDouble ? 1e-9 : 1e-3;
    for (auto cfg : sweep()) {
      cfg.chunk_size = 7;
      SCOPED_TRACE(describe(cfg));
      const auto value = token_divergence(in.student_hidden, in.student_head, in.teacher_hidden, in.teacher_head, cfg);
      const auto expected = token_divergence_reference(
          base.student_hidden.to(torch::kDouble).mm(base.student_head.to(torch::kDouble).t()),
          base.teacher_hidden.to(torch::kDouble).mm(base.teacher_head.to(torch::kDouble).t()), cfg);
      EXPECT_LE(max_abs_diff(value, expected), tol * std::max(max_abs(expected), 1.0));
      expect_chunked_matches(in, cfg, dtype == torch::kDouble ? 1e-9 : 1e-3);
    }
  }
  const auto spread = random_inputs(8, 100, 16, 16, torch::kFloat, /*scale=*/300.0);
  ASSERT_GT(max_abs(torch::mm(spread.student_hidden, spread.student_head.t())), 1000.0);
  for (auto cfg : sweep()) {
    cfg.chunk_size = 7;
    SCOPED_TRACE(describe(cfg));
    const auto w = torch::ones({8}, torch::kDouble);
    const auto got = run(spread, cfg, /*chunked=*/true, w);
    const auto ref = run(spread, cfg, /*chunked=*/false, w);
    EXPECT_GT(ref.value.min().item<double>(), 0.1);  // (jsd is at most ln 2)
    EXPECT_LE(max_abs_diff(got.value, ref.value), 1e-5 * max_abs(ref.value));
    EXPECT_TRUE(torch::isfinite(got.grad_hidden).all().item<bool>());
    EXPECT_TRUE(torch::isfinite(got.grad_head).all().item<bool>());
  }
}

// The head is a tied embedding: the loss's gradient adds to the lookup's; tiny (zero-size) N works.
TEST(DistillLoss, ChunkedTiedHead) {
  torch::manual_seed(7);
  const int64_t V = 23, D = 8, N = 6;
  const auto embedding0 = torch::randn({V, D}, torch::kDouble);
  const auto ids = torch::randint(0, V, {N}, torch::kLong);
  const auto mix = torch::randn({D, D}, torch::kDouble);
  const auto teacher_hidden = torch::randn({N, 5}, torch::kDouble);
  const auto teacher_head = torch::randn({V, 5}, torch::kDouble);
  for (const auto& cfg0 : sweep()) {
    auto cfg = cfg0;
    cfg.chunk_size = 4;
    SCOPED_TRACE(describe(cfg));
    std::vector<torch::Tensor> grads;
    for (bool chunked : {false, true}) {
      const auto embedding = embedding0.clone().requires_grad_(true);
      const auto hidden = torch::tanh(embedding.index_select(0, ids).mm(mix));  // [N, D]
      const auto value = chunked ? token_divergence(hidden, embedding, teacher_hidden, teacher_head, cfg)
                                 : token_divergence_reference(hidden.mm(embedding.t()),
                                                              teacher_hidden.mm(teacher_head.t()), cfg);
      value.sum().backward();
      grads.push_back(embedding.grad());
    }
    EXPECT_LE(max_abs_diff(grads[0], grads[1]), 1e-12 * max_abs(grads[0]));
  }
  // N = 0 rows: an empty result and zero gradients.
  const auto hidden = torch::zeros({0, D}, torch::kDouble).requires_grad_(true);
  const auto value = token_divergence(hidden, embedding0, torch::zeros({0, 5}, torch::kDouble), teacher_head, {});
  EXPECT_EQ(value.numel(), 0);
}

// A bfloat16 teacher made under inference mode (as a frozen teacher runs); teacher parameters that
// require grad get none.
TEST(DistillLoss, ChunkedTeacherInInferenceModeAndOtherDtype) {
  torch::manual_seed(8);
  const auto in = random_inputs(5, 40, 12, 20, torch::kFloat);
  torch::Tensor teacher_hidden, teacher_head;
  {
    c10::InferenceMode guard;
    teacher_hidden = in.teacher_hidden.to(torch::kBFloat16);
    teacher_head = in.teacher_head.to(torch::kBFloat16);
  }
  ASSERT_TRUE(teacher_hidden.is_inference());
  for (auto cfg : sweep()) {
    cfg.chunk_size = 9;
    SCOPED_TRACE(describe(cfg));
    const auto hidden = in.student_hidden.clone().requires_grad_(true);
    const auto value = token_divergence(hidden, in.student_head, teacher_hidden, teacher_head, cfg);
    value.sum().backward();
    const auto ref_hidden = in.student_hidden.clone().requires_grad_(true);
    const auto ref = token_divergence_reference(ref_hidden.mm(in.student_head.t()),
                                                teacher_hidden.to(torch::kFloat).mm(teacher_head.to(torch::kFloat).t()),
                                                cfg);
    ref.sum().backward();
    EXPECT_LE(max_abs_diff(value, ref), 2e-5 * std::max(max_abs(ref), 1.0));
    EXPECT_LE(max_abs_diff(hidden.grad(), ref_hidden.grad()), 2e-5 * max_abs(ref_hidden.grad()));
  }
  const auto teacher_param = in.teacher_head.clone().requires_grad_(true);
  const auto hidden = in.student_hidden.clone().requires_grad_(true);
  token_divergence(hidden, in.student_head, in.teacher_hidden, teacher_param, make_cfg(Divergence::jsd))
      .sum()
      .backward();
  EXPECT_TRUE(hidden.grad().defined());
  EXPECT_FALSE(teacher_param.grad().defined());
}

// ---------------------------------------------------------------- configuration and bad inputs

TEST(DistillLoss, ConfigReadsNamesAndChecksRanges) {
  const auto cfg = config::load<DistillLossConfig>(
      std::nullopt, {"divergence=reverse_kl", "beta=0.25", "temperature=0.7", "chunk_size=128"});
  EXPECT_EQ(cfg.divergence, Divergence::reverse_kl);
  EXPECT_EQ(cfg.beta, 0.25);
  EXPECT_EQ(cfg.temperature, 0.7);
  EXPECT_EQ(cfg.chunk_size, 128);
  EXPECT_EQ(config::load<DistillLossConfig>(std::nullopt, {"divergence=jsd"}).divergence, Divergence::jsd);
  EXPECT_EQ(config::load<DistillLossConfig>(std::nullopt, {"divergence=forward_kl"}).divergence,
            Divergence::forward_kl);
  EXPECT_THROW(config::load<DistillLossConfig>(std::nullopt, {"divergence=kl"}), config::ConfigError);
  EXPECT_THROW(config::load<DistillLossConfig>(std::nullopt, {"beta=1.5"}), config::ConfigError);
  EXPECT_THROW(config::load<DistillLossConfig>(std::nullopt, {"temperature=0"}), config::ConfigError);
  EXPECT_THROW(config::load<DistillLossConfig>(std::nullopt, {"chunk_size=0"}), config::ConfigError);
  EXPECT_EQ(DistillLossConfig{}.validate(), "");
}

// The message of the c10::Error `f` throws ("" when it does not throw).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  EXPECT_THROW(f(), c10::Error);
  const std::string message = error_of(f);
  for (const auto& part : parts)
    EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
}

TEST(DistillLoss, BadInputsNameFunctionExpectedAndFound) {
  const auto z = torch::zeros({3, 5});
  expect_error(
      [&] {
        token_divergence_reference(z, torch::zeros({4, 5}));
      },
      {"token_divergence_reference", "[3, 5]", "[4, 5]"});
  expect_error(
      [&] {
        token_divergence_reference(z, torch::zeros({3, 6}));
      },
      {"token_divergence_reference", "[3, 5]", "[3, 6]"});
  expect_error(
      [&] {
        token_divergence_reference(torch::zeros({2, 3, 5}), torch::zeros({2, 3, 5}));
      },
      {"token_divergence_reference", "expected student_logits [N, V]", "[2, 3, 5]"});
  expect_error(
      [&] {
        token_divergence_reference(z, torch::zeros({3, 5}, torch::kLong));
      },
      {"token_divergence_reference", "floating teacher_logits", "Long"});
  expect_error([&] { token_divergence_reference(z, z, make_cfg(Divergence::jsd, 1.5)); },
               {"token_divergence_reference", "beta in [0, 1]", "1.5"});
  expect_error([&] { token_divergence_reference(z, z, make_cfg(Divergence::jsd, 0.5, 0.0)); },
               {"token_divergence_reference", "temperature > 0", "got 0"});

  const auto hs = torch::zeros({3, 4}), ws = torch::zeros({5, 4}), ht = torch::zeros({3, 6}), wt = torch::zeros({5, 6});
  EXPECT_EQ(token_divergence(hs, ws, ht, wt).sizes(), torch::IntArrayRef({3}));
  expect_error([&] { token_divergence(hs, ws, torch::zeros({2, 6}), wt); }, {"token_divergence", "N = 3", "got 2"});
  expect_error([&] { token_divergence(hs, ws, ht, torch::zeros({7, 6})); }, {"token_divergence", "V = 5", "got 7"});
  expect_error(
      [&] {
        token_divergence(hs, torch::zeros({5, 3}), ht, wt);
      },
      {"token_divergence", "agree on Ds", "[3, 4]", "[5, 3]"});
  expect_error(
      [&] {
        token_divergence(hs, ws, ht, torch::zeros({5, 2}));
      },
      {"token_divergence", "agree on Dt", "[3, 6]", "[5, 2]"});
  expect_error([&] { token_divergence(torch::zeros({3}), ws, ht, wt); },
               {"token_divergence", "expected student_hidden [N, Ds]", "[3]"});
  expect_error(
      [&] {
        token_divergence(hs, ws, ht, torch::zeros({5, 6, 1}));
      },
      {"token_divergence", "expected teacher_head [V, Dt]", "[5, 6, 1]"});
  expect_error([&] { token_divergence(hs, ws, ht, wt, make_cfg(Divergence::forward_kl, 0.5, 1.0, 0)); },
               {"token_divergence", "chunk_size >= 1", "got 0"});
  expect_error([&] { token_divergence(hs, ws, ht.to(torch::kMeta), wt.to(torch::kMeta)); },
               {"token_divergence", "one device", "teacher_hidden on meta", "student_hidden on cpu"});
}

// ---------------------------------------------------------------- TRL oracle

TEST(GkdOracle, MatchesTrlGeneralizedJsdLoss) {
  namespace fs = std::filesystem;
  const char* env = std::getenv("GRPO_GKD_ORACLE_DIR");
  if (env == nullptr || *env == '\0') GTEST_SKIP() << "GRPO_GKD_ORACLE_DIR is not set (run through ctest)";
  const fs::path dir(env);
  std::ifstream cases_file(dir / "cases.json");
  ASSERT_TRUE(cases_file) << "cannot read " << (dir / "cases.json");
  const auto cases = nlohmann::json::parse(cases_file);
  ASSERT_GE(cases.size(), 5u);

  const io::SafetensorsFile inputs((dir / "inputs.safetensors").string());
  const auto student_hidden = inputs.load("student_hidden");
  const auto student_head = inputs.load("student_head");
  const auto teacher_hidden = inputs.load("teacher_hidden");
  const auto teacher_head = inputs.load("teacher_head");
  const auto student_logits = inputs.load("student_logits");
  const auto teacher_logits = inputs.load("teacher_logits");
  const auto keep = inputs.load("labels").to(torch::kLong).ne(-100);  // [N]
  ASSERT_EQ(student_hidden.scalar_type(), torch::kDouble);
  ASSERT_NE(student_hidden.size(1), teacher_hidden.size(1));  // Ds != Dt
  ASSERT_LE(max_abs_diff(student_logits, student_hidden.mm(student_head.t())), 1e-12);

  // GKDTrainer's reduction: batchmean over the kept tokens.
  auto batchmean = [&](const torch::Tensor& per_token) { return per_token.index({keep}).sum() / keep.sum(); };
  std::printf("%-20s %10s %10s %10s %10s %10s %10s\n", "case", "ref tok", "ref grad", "chunk tok", "chunk gh",
              "chunk gW", "f32 tok");
  for (const auto& c : cases) {
    const auto name = c["name"].get<std::string>();
    SCOPED_TRACE(name);
    DistillLossConfig cfg = make_cfg(Divergence::jsd, c["beta"].get<double>(), c["temperature"].get<double>());
    const io::SafetensorsFile trl((dir / (name + ".safetensors")).string());
    const auto per_token = trl.load("per_token");
    const auto loss = trl.load("loss");
    const auto grad_logits = trl.load("grad_logits");
    const auto grad_hidden = trl.load("grad_student_hidden");
    const auto grad_head = trl.load("grad_student_head");

    // Reference, from the logits.
    const auto logits = student_logits.clone().requires_grad_(true);
    const auto ref = token_divergence_reference(logits, teacher_logits, cfg);
    const auto ref_loss = batchmean(ref);
    ref_loss.backward();
    const double ref_tok = max_abs_diff(ref, per_token);
    const double ref_grad = max_abs_diff(logits.grad(), grad_logits);
    EXPECT_LE(ref_tok, 1e-12);
    EXPECT_NEAR(ref_loss.item<double>(), loss.item<double>(), 1e-12);
    EXPECT_LE(ref_grad, 1e-12);

    // Chunked, from hidden states and heads, two chunkings; the end points also by their KL names.
    std::vector<DistillLossConfig> variants;
    for (int64_t chunk : {int64_t{5}, student_head.size(0)}) {
      cfg.chunk_size = chunk;
      variants.push_back(cfg);
    }
    if (cfg.beta == 0.0) variants.push_back(make_cfg(Divergence::forward_kl, 0.5, cfg.temperature, 4));
    if (cfg.beta == 1.0) variants.push_back(make_cfg(Divergence::reverse_kl, 0.5, cfg.temperature, 4));
    double chunk_tok = 0, chunk_gh = 0, chunk_gw = 0;
    for (const auto& v : variants) {
      SCOPED_TRACE(describe(v));
      const auto hidden = student_hidden.clone().requires_grad_(true);
      const auto head = student_head.clone().requires_grad_(true);
      const auto div = token_divergence(hidden, head, teacher_hidden, teacher_head, v);
      const auto div_loss = batchmean(div);
      div_loss.backward();
      chunk_tok = std::max(chunk_tok, max_abs_diff(div, per_token));
      chunk_gh = std::max(chunk_gh, max_abs_diff(hidden.grad(), grad_hidden));
      chunk_gw = std::max(chunk_gw, max_abs_diff(head.grad(), grad_head));
      EXPECT_NEAR(div_loss.item<double>(), loss.item<double>(), 1e-12);
    }
    EXPECT_LE(chunk_tok, 1e-12);
    EXPECT_LE(chunk_gh, 1e-12);
    EXPECT_LE(chunk_gw, 1e-12);

    // float32 inputs against TRL's float64 numbers.
    cfg.chunk_size = 8;
    const auto div32 = token_divergence(student_hidden.to(torch::kFloat), student_head.to(torch::kFloat),
                                        teacher_hidden.to(torch::kFloat), teacher_head.to(torch::kFloat), cfg);
    const double f32_tok = max_abs_diff(div32, per_token);
    EXPECT_LE(f32_tok, 1e-5 * std::max(max_abs(per_token), 1.0));
    std::printf("%-20s %10.2e %10.2e %10.2e %10.2e %10.2e %10.2e\n", name.c_str(), ref_tok, ref_grad, chunk_tok,
                chunk_gh, chunk_gw, f32_tok);
  }
}

}  // namespace
}  // namespace grpo::train
