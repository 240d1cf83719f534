// The consistent mode's batch-invariant ops (grpo/model/invariant_ops.h): each agrees with ATen's
// op to float32 rounding and its gradient is ATen's; its output for one row does not change with
// the rest of the batch, with where the padding sits, or with the thread count; and through them
// the engine's recorded log-probs equal the training forward's bitwise, for the tiny DeepSeek-V3
// (MoE, MLA absorbed) and the tiny Qwen2, with ragged prompts and completions that end early.
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "grpo/kernels/rms_norm.h"
#include "grpo/model/causal_lm.h"
#include "grpo/model/invariant_ops.h"
#include "grpo/rollout/engine.h"
#include "grpo/train/grpo_batch.h"
#include "grpo/train/policy_forward.h"
#include "model/model_test_util.h"

namespace grpo::model {
namespace {

namespace inv = invariant;

double max_abs(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

// Value and gradients of `ours` against `reference` on the same inputs (random upstream gradient).
template <typename Ours, typename Reference>
void expect_like_aten(std::vector<torch::Tensor> inputs, const Ours& ours, const Reference& reference, double value_tol,
                      double grad_tol) {
  std::vector<torch::Tensor> a, b;
  for (auto& t : inputs) {
    a.push_back(t.clone().requires_grad_(t.is_floating_point()));
    b.push_back(t.clone().requires_grad_(t.is_floating_point()));
  }
  inv::Scope on;
  const torch::Tensor ya = ours(a);
  const torch::Tensor yb = reference(b);
  ASSERT_EQ(ya.sizes(), yb.sizes());
  EXPECT_LT(max_abs(ya, yb), value_tol * std::max(1.0, yb.abs().max().item<double>()));
  const torch::Tensor g = torch::randn_like(yb);
  (ya * g).sum().backward();
  (yb * g).sum().backward();
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].is_floating_point()) continue;
    ASSERT_TRUE(a[i].grad().defined()) << "input " << i;
    EXPECT_LT(max_abs(a[i].grad(), b[i].grad()), grad_tol * std::max(1.0, b[i].grad().abs().max().item<double>()))
        << "input " << i;
  }
}

TEST(InvariantOps, AgreeWithAtenInValueAndGradient) {
  torch::manual_seed(0);
  using V = std::vector<torch::Tensor>;
  expect_like_aten(
      {torch::randn({3, 5, 37}), torch::randn({19, 37}), torch::randn({19})},
      [](const V& v) { return inv::linear(v[0], v[1], v[2]); }, [](const V& v) { return at::linear(v[0], v[1], v[2]); },
      1e-5, 1e-5);
  expect_like_aten(
      {torch::randn({2, 3, 7, 13}), torch::randn({3, 9, 13})}, [](const V& v) { return inv::matmul_nt(v[0], v[1]); },
      [](const V& v) { return torch::matmul(v[0], v[1].transpose(-2, -1)); }, 1e-5, 1e-5);
  expect_like_aten(
      {torch::randn({2, 3, 7, 11}), torch::randn({2, 1, 11, 6})}, [](const V& v) { return inv::matmul_nn(v[0], v[1]); },
      [](const V& v) { return torch::matmul(v[0], v[1]); }, 1e-5, 1e-5);
  expect_like_aten(
      {torch::randn({4, 6, 17})}, [](const V& v) { return inv::softmax(v[0]); },
      [](const V& v) { return torch::softmax(v[0], -1); }, 1e-6, 1e-5);
  expect_like_aten(
      {torch::randn({4, 6, 24}), torch::rand({24}) + 0.5}, [](const V& v) { return inv::rms_norm(v[0], v[1], 1e-6); },
      [](const V& v) { return kernels::rms_norm_reference(v[0], v[1], 1e-6); }, 1e-5, 1e-5);
  expect_like_aten(
      {torch::randn({5, 33}), torch::randn({5, 33})}, [](const V& v) { return inv::silu_mul(v[0], v[1]); },
      [](const V& v) { return torch::silu(v[0]) * v[1]; }, 1e-6, 1e-5);
  expect_like_aten(
      {torch::randn({5, 33})}, [](const V& v) { return inv::sigmoid(v[0]); },
      [](const V& v) { return torch::sigmoid(v[0]); }, 1e-6, 1e-5);
  expect_like_aten(
      {torch::randn({5, 3})}, [](const V& v) { return inv::sum_last(v[0]); },
      [](const V& v) { return v[0].sum(-1, true); }, 1e-6, 1e-6);
  const auto ids = torch::randint(0, 29, {6}, torch::kLong);
  expect_like_aten(
      {torch::randn({6, 29}) * 3}, [&](const V& v) { return inv::token_logprobs(v[0], ids, 0.7); },
      [&](const V& v) {
        return torch::log_softmax(v[0] / 0.7, -1).gather(1, ids.view({-1, 1})).squeeze(1);
      },
      1e-5, 1e-5);
  const auto x = torch::randn({3, 40}) * 20;
  inv::Scope on;
  EXPECT_LT(max_abs(inv::cos(x), x.cos()), 1e-6);
  EXPECT_LT(max_abs(inv::sin(x), x.sin()), 1e-6);
}

// What ATen does not give: the same row, the same bits, whatever the batch around it.
TEST(InvariantOps, ARowsResultDoesNotDependOnTheBatch) {
  torch::manual_seed(1);
  inv::Scope on;
  const auto w = torch::randn({70, 45});
  const auto x = torch::randn({33, 45});
  const auto whole = inv::linear(x, w, torch::Tensor());
  for (int64_t m = 1; m <= 9; ++m) {
    EXPECT_TRUE(torch::equal(inv::linear(x.narrow(0, 3, m), w, torch::Tensor()), whole.narrow(0, 3, m))) << m;
  }
  // ATen's own GEMM does not hold this for every row count (which is why the ops exist); report it.
  int64_t aten_differs = 0;
  for (int64_t m = 1; m <= 9; ++m)
    aten_differs += !torch::equal(at::linear(x.narrow(0, 3, m), w), at::linear(x, w).narrow(0, 3, m));
  std::printf("ATen linear: %lld of 9 row counts round a row differently than the whole batch\n",
              static_cast<long long>(aten_differs));
  // Thread count: the same bits.
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = inv::linear(x, w, torch::Tensor());
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one, whole));

  // Attention over keys with the padding in different places: probs . V in key order, the
  // softmax sum in key order, zeros (masked keys) change nothing.
  const int64_t n = 13, d = 6;
  const auto scores = torch::randn({1, n});
  const auto v = torch::randn({n, d});
  const auto p = inv::softmax(scores);
  const auto out = inv::matmul_nn(p, v);
  const float lowest = std::numeric_limits<float>::lowest();
  for (const int64_t left : {0, 1, 5, 8}) {
    for (const int64_t right : {0, 3, 11}) {
      auto s2 = torch::full({1, left + n + right}, lowest);
      s2.narrow(1, left, n).copy_(scores);
      auto v2 = torch::randn({left + n + right, d});
      v2.narrow(0, left, n).copy_(v);
      const auto p2 = inv::softmax(s2);
      EXPECT_TRUE(torch::equal(p2.narrow(1, left, n), p)) << left << " " << right;
      EXPECT_TRUE(torch::equal(inv::matmul_nn(p2, v2), out)) << left << " " << right;
    }
  }
  // Row-wise reductions in a bigger or smaller batch.
  const auto rows = torch::randn({9, 37});
  const auto nw = torch::rand({37}) + 0.5;
  EXPECT_TRUE(
      torch::equal(inv::rms_norm(rows.narrow(0, 2, 1), nw, 1e-6), inv::rms_norm(rows, nw, 1e-6).narrow(0, 2, 1)));
  const auto ids = torch::randint(0, 37, {9}, torch::kLong);
  EXPECT_TRUE(torch::equal(inv::token_logprobs(rows.narrow(0, 4, 2), ids.narrow(0, 4, 2), 0.9),
                           inv::token_logprobs(rows, ids, 0.9).narrow(0, 4, 2)));
  // Off: the layers use ATen again.
  inv::Scope off(false);
  EXPECT_FALSE(inv::applies(x));
}

// bf16 scope (grpo.bf16_cpu with consistent_logprobs): linear and the two matmuls take their
// operands and give their result rounded to bf16, as ATen's CPU bf16 autocast computes them: the
// results are bf16 numbers, within one bf16 step of autocast's (whose GEMM accumulates in its own
// order), rows stay independent of the batch, and the other ops stay float32.
TEST(InvariantOps, Bf16ScopeRoundsMatmulsAsAutocastDoes) {
  torch::manual_seed(2);
  const auto x = torch::randn({17, 40}), w = torch::randn({23, 40}), b = torch::randn({23});
  const auto a3 = torch::randn({2, 5, 40}), k3 = torch::randn({2, 7, 40}), v3 = torch::randn({2, 40, 6});
  const auto is_bf16 = [](const torch::Tensor& t) { return torch::equal(t, t.to(torch::kBFloat16).to(torch::kFloat)); };
  // Within one bf16 step (2^-7 of the magnitude, the larger of the two) of the reference.
  const auto within_a_step = [](const torch::Tensor& ours, const torch::Tensor& ref) {
    const auto step = torch::maximum(ours.abs(), ref.abs()) * std::ldexp(1.0, -7) + 1e-30;
    return ((ours - ref).abs() <= step).all().item<bool>();
  };
  torch::Tensor lin, nt, nn;
  {
    inv::Scope on(true, true);
    EXPECT_TRUE(inv::bf16());
    lin = inv::linear(x, w, b);
    nt = inv::matmul_nt(a3, k3);
    nn = inv::matmul_nn(a3, v3);
    // Softmax and the norms stay float32: not bf16-valued.
    EXPECT_FALSE(is_bf16(inv::softmax(x)));
    // A row's bits do not depend on the batch, as in float32.
    EXPECT_TRUE(torch::equal(inv::linear(x.narrow(0, 4, 3), w, b), lin.narrow(0, 4, 3)));
  }
  EXPECT_FALSE(inv::bf16());
  for (const auto* t : {&lin, &nt, &nn}) EXPECT_TRUE(is_bf16(*t));
  // ATen's CPU autocast as the reference.
  torch::Tensor ref_lin, ref_nt, ref_nn;
  {
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCPU, true);
    ref_lin = torch::linear(x, w, b);
    ref_nt = torch::matmul(a3, k3.transpose(-2, -1));
    ref_nn = torch::matmul(a3, v3);
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
  }
  ASSERT_EQ(ref_lin.scalar_type(), torch::kBFloat16) << "ATen's CPU autocast computes linear in bf16";
  EXPECT_TRUE(within_a_step(lin, ref_lin.to(torch::kFloat)));
  EXPECT_TRUE(within_a_step(nt, ref_nt.to(torch::kFloat)));
  EXPECT_TRUE(within_a_step(nn, ref_nn.to(torch::kFloat)));
  // And it is not float32's result: the rounding happened.
  inv::Scope fp32(true, false);
  EXPECT_GT(max_abs(inv::linear(x, w, b), lin), 1e-4);
  // Gradients pass through the roundings: the same formulas on the rounded operands.
  auto xg = x.clone().requires_grad_(true), wg = w.clone().requires_grad_(true);
  {
    inv::Scope on(true, true);
    inv::linear(xg, wg, b).sum().backward();
  }
  // d/dx of the sum: ones . W rounded (the cast back to x's float32 rounds the gradient to bf16 too).
  const auto expect_gx = torch::ones({17, 23}).mm(w.to(torch::kBFloat16).to(torch::kFloat));
  EXPECT_TRUE(within_a_step(xg.grad(), expect_gx));
  EXPECT_TRUE(is_bf16(xg.grad()));
  EXPECT_TRUE(wg.grad().defined());
}

// The engine samples with the ops on; the training forward (another batch layout: all rows at
// once, prompts padded to the longest, completions right-padded) gets the same log-probs bitwise.
// Without the ops, the usual rounding difference.
struct Mismatch {
  double on = -1, off = -1;
};

Mismatch sampler_trainer_mismatch(const ModelConfig& cfg) {
  torch::manual_seed(5);
  CausalLM model(cfg, torch::TensorOptions().dtype(torch::kFloat));
  model->eval();
  rollout::GenerationConfig gc;
  gc.max_new_tokens = 9;
  gc.num_generations = 3;
  gc.sampling.temperature = 0.9;
  gc.eos_token_ids = {1, 2};
  gc.max_batch_rows = 6;  // two prompts per chunk: the sampler's batches differ from the trainer's
  std::vector<rollout::GenerationRequest> requests;
  for (int64_t p = 0; p < 4; ++p) {
    std::vector<int64_t> ids;
    for (int64_t k = 0; k < 2 + 3 * p; ++k) ids.push_back(5 + (13 * k + 7 * p) % 50);
    requests.push_back({.prompt_ids = ids, .seed = static_cast<uint64_t>(p + 11)});
  }
  Mismatch m;
  for (const bool on : {true, false}) {
    inv::Scope scope(on);
    rollout::Engine engine(model, nullptr, gc);
    const auto completions = engine.generate(requests);
    std::vector<train::RolloutGroup> groups;
    bool ended_early = false;
    for (int64_t p = 0; p < 4; ++p) {
      train::RolloutGroup g;
      g.prompt_ids = requests[static_cast<size_t>(p)].prompt_ids;
      for (int64_t k = 0; k < 3; ++k) {
        g.completions.push_back(completions[static_cast<size_t>(p * 3 + k)]);
        ended_early |= g.completions.back().token_ids.size() < 9;
        g.totals.push_back(0.0);
      }
      groups.push_back(std::move(g));
    }
    EXPECT_TRUE(ended_early) << "want completions of different lengths";
    const auto batch = train::build_grpo_batch(groups, false);
    // The trainer decodes nothing: the form generation used is set for its forward too.
    if (cfg.is_mla()) model->set_attention_impl(on ? AttentionImpl::absorbed : AttentionImpl::naive);
    torch::NoGradGuard no_grad;
    const auto logps = train::completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.position_ids,
                                                  batch.completion_length(), gc.sampling.temperature);
    model->set_attention_impl(AttentionImpl::naive);
    const double diff = ((logps - batch.sampler_logps) * batch.completion_mask).abs().max().item<double>();
    (on ? m.on : m.off) = diff;
  }
  return m;
}

TEST(ConsistentMode, SamplerAndTrainerLogprobsAreBitwiseEqual) {
  for (const auto& [name, cfg] :
       {std::pair{"deepseek_v3 (MoE, MLA)", test::tiny_dsv3()}, std::pair{"qwen2 (dense, GQA)", test::tiny_qwen2()}}) {
    const auto m = sampler_trainer_mismatch(cfg);
    std::printf("%s: max |trainer - sampler| log-prob: %.3g consistent, %.3g without\n", name, m.on, m.off);
    EXPECT_EQ(m.on, 0.0) << name;
    EXPECT_GT(m.off, 0.0) << name << ": ATen's kernels were expected to round the two layouts differently";
    EXPECT_LT(m.off, 1e-4) << name;
  }
}

}  // namespace
}  // namespace grpo::model
