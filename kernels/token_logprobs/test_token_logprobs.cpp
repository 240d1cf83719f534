// token_logprobs: the chunked autograd path against hand-computed values, against the plain
// log_softmax().gather() reference (forward and both gradients) over a table of shapes, chunk
// sizes, temperatures and dtypes, against float64 finite differences, and its input checks. The
// fused-kernel path against the reference and against the ATen chunked path on a GPU are the
// token_logprobs rows of tests/kernels/test_kernel_ops.cpp.
#include "grpo/kernels/token_logprobs.h"

#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kernels/kernel_test_util.h"

namespace grpo::kernels {
namespace {

// Tolerances in (rtol, atol) order here.
void expect_close(const torch::Tensor& got, const torch::Tensor& want, double rtol, double atol,
                  const std::string& what) {
  test::expect_close(got, want, atol, rtol, what);
}

struct Case {
  int64_t rows;   // N
  int64_t width;  // D
  int64_t vocab;  // V
  int64_t chunk;  // Vc
  double temperature;
};

std::string describe(const Case& c, torch::ScalarType dtype) {
  return "N=" + std::to_string(c.rows) + " D=" + std::to_string(c.width) + " V=" + std::to_string(c.vocab) +
         " chunk=" + std::to_string(c.chunk) + " T=" + std::to_string(c.temperature) +
         " dtype=" + std::string(c10::toString(dtype));
}

struct Grads {
  torch::Tensor logprobs, entropy, hidden, weight;
};

// logprobs, entropy and the gradients of sum(row_weights * logprobs) for one path.
template <typename Fn>
Grads run_path(Fn fn, const torch::Tensor& hidden0, const torch::Tensor& weight0, const torch::Tensor& targets,
               const torch::Tensor& row_weights, const TokenLogprobsOptions& options) {
  auto hidden = hidden0.detach().clone().requires_grad_(true);
  auto weight = weight0.detach().clone().requires_grad_(true);
  const auto result = fn(hidden, weight, targets, options);
  (result.logprobs * row_weights.to(result.logprobs.scalar_type())).sum().backward();
  return {result.logprobs.detach(), result.entropy, hidden.grad(), weight.grad()};
}

TEST(TokenLogprobs, MatchesHandComputedValues) {
  // D = 1, V = 3: weight rows 0, 1, 2, so row 0 (h = 1) has logits [0, 1, 2] and row 1 (h = -1)
  // has logits [0, -1, -2]. Both targets sit on their row's largest logit (tokens 2 and 0):
  //   lse(0, 1, 2) = log(1 + e + e^2) = 2.40760596444438, so logprob = 2 - lse = -0.40760596444438
  //   for row 0 and 0 - log(1 + e^-1 + e^-2) = -0.40760596444438 for row 1.
  //   p = [1, e, e^2] / (1 + e + e^2) = [0.0900306, 0.2447285, 0.6652410]; entropy
  //   -sum p log p = 0.83239558183994 for both rows.
  //   d logprob / d h = w_target - sum_v p_v w_v: row 0: 2 - (0.2447285 + 2 * 0.6652410) =
  //   0.42478961739556; row 1 (p reversed): 0 - (0.2447285 + 2 * 0.0900306) = -0.42478961739556.
  //   d (lp0 + lp1) / d W[v] = (onehot - p_v) * 1 + (onehot' - p'_v) * (-1)
  //   = [-0.0900306, -0.2447285, 0.3347590] + [-0.3347590, 0.2447285, 0.0900306]
  //   = [-0.42478961739556, 0, 0.42478961739556].
  // With T = 2, row 0 has logits [0, 0.5, 1]: 1 - log(1 + e^0.5 + e) = -0.68026967064173.
  const auto hidden0 = torch::tensor({{1.0f}, {-1.0f}});
  const auto weight0 = torch::tensor({{0.0f}, {1.0f}, {2.0f}});
  const auto targets = torch::tensor({2, 0}, torch::kLong);
  for (int64_t chunk : {1, 2, 3, 8}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    const auto g = run_path(token_logprobs, hidden0, weight0, targets, torch::ones({2}),
                            {.chunk_size = chunk, .with_entropy = true});
    expect_close(g.logprobs, torch::tensor({-0.40760596444438, -0.40760596444438}), 1e-6, 1e-6, "logprobs");
    expect_close(g.entropy, torch::tensor({0.83239558183994, 0.83239558183994}), 1e-6, 1e-6, "entropy");
    expect_close(g.hidden, torch::tensor({{0.42478961739556}, {-0.42478961739556}}), 1e-6, 1e-6, "grad hidden");
    expect_close(g.weight, torch::tensor({{-0.42478961739556}, {0.0}, {0.42478961739556}}), 1e-6, 1e-6, "grad weight");
    const auto hot = token_logprobs(hidden0, weight0, targets, {.temperature = 2.0, .chunk_size = chunk});
    EXPECT_NEAR(hot.logprobs[0].item<double>(), -0.68026967064173, 1e-6);
  }
}

TEST(TokenLogprobs, ChunkedMatchesReferenceForwardAndBackward) {
  torch::manual_seed(0);
  const std::vector<Case> cases = {
      {5, 8, 37, 10, 1.0},                            // V not a multiple of the chunk
      {5, 8, 37, 10, 0.7},    {6, 4, 13, 1, 1.0},     // one vocabulary row per chunk
      {6, 4, 13, 1, 0.7},     {4, 16, 29, 100, 1.0},  // chunk > V: one chunk
      {4, 16, 29, 29, 0.7},                           // chunk == V
      {1, 8, 50, 16, 1.0},                            // one row
      {1, 8, 50, 16, 0.7},    {7, 8, 1, 4, 1.0},      // one-token vocabulary: logprob 0, zero gradients
      {33, 24, 300, 64, 0.7},
  };
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (const auto& c : cases) {
      SCOPED_TRACE(describe(c, dtype));
      // Scaled so logits spread over tens of units and the running max moves between chunks.
      const auto hidden = (torch::randn({c.rows, c.width}) * 2.0).to(dtype);
      const auto weight = (torch::randn({c.vocab, c.width}) * 1.5).to(dtype);
      auto targets = torch::randint(c.vocab, {c.rows}, torch::kLong);
      targets[0] = c.vocab - 1;  // the last (possibly partial) chunk holds a target
      const auto row_weights = torch::randn({c.rows});
      const TokenLogprobsOptions options{.temperature = c.temperature, .chunk_size = c.chunk, .with_entropy = true};
      const auto got = run_path(token_logprobs, hidden, weight, targets, row_weights, options);
      const auto want = run_path(token_logprobs_reference, hidden, weight, targets, row_weights, options);
      EXPECT_EQ(got.logprobs.scalar_type(), torch::kFloat);
      EXPECT_EQ(got.hidden.scalar_type(), dtype);
      EXPECT_EQ(got.weight.scalar_type(), dtype);
      EXPECT_FALSE(got.entropy.requires_grad());
      expect_close(got.logprobs, want.logprobs, 1e-5, 1e-5, "logprobs");
      expect_close(got.entropy, want.entropy, 1e-5, 1e-5, "entropy");
      // float32: summation order differs only. bfloat16: both round the same float32 gradient
      // once, so they differ by at most one bfloat16 ulp (2^-8 relative).
      const double rtol = dtype == torch::kFloat ? 1e-5 : 1e-2;
      const double atol = dtype == torch::kFloat ? 1e-5 : 1e-3;
      expect_close(got.hidden, want.hidden, rtol, atol, "grad hidden");
      expect_close(got.weight, want.weight, rtol, atol, "grad weight");
    }
  }
}

TEST(TokenLogprobs, EntropyMatchesDefinition) {
  torch::manual_seed(1);
  const auto hidden = torch::randn({9, 6}, torch::kDouble) * 3.0;
  const auto weight = torch::randn({23, 6}, torch::kDouble);
  const auto targets = torch::randint(23, {9}, torch::kLong);
  for (double temperature : {1.0, 0.7, 2.5}) {
    // -sum_v p_v log p_v with p written out as exp / sum of exp, in float64.
    const auto logits = hidden.matmul(weight.t()) / temperature;
    const auto exps = (logits - std::get<0>(logits.max(1, true))).exp();
    const auto p = exps / exps.sum(1, true);
    const auto want = -(p * p.log()).sum(1);
    for (int64_t chunk : {1, 5, 23, 64}) {
      const auto got = token_logprobs(hidden.to(torch::kFloat), weight.to(torch::kFloat), targets,
                                      {.temperature = temperature, .chunk_size = chunk, .with_entropy = true});
      expect_close(got.entropy, want, 1e-5, 1e-5,
                   "entropy T=" + std::to_string(temperature) + " chunk=" + std::to_string(chunk));
      EXPECT_FALSE(token_logprobs(hidden, weight, targets, {.chunk_size = chunk}).entropy.defined());
    }
  }
}

TEST(TokenLogprobs, BackwardMatchesFiniteDifferencesInFloat64) {
  torch::manual_seed(2);
  const int64_t rows = 3, width = 4, vocab = 7;
  const auto hidden = torch::randn({rows, width}, torch::kDouble);
  const auto weight = torch::randn({vocab, width}, torch::kDouble);
  const auto targets = torch::tensor({6, 0, 3}, torch::kLong);
  const auto row_weights = torch::tensor({0.5, -1.25, 2.0}, torch::kDouble);
  const TokenLogprobsOptions options{.temperature = 0.7, .chunk_size = 3};
  const auto loss = [&](const torch::Tensor& h, const torch::Tensor& w) {
    return (token_logprobs(h, w, targets, options).logprobs * row_weights).sum().item<double>();
  };
  const auto analytic = run_path(token_logprobs, hidden, weight, targets, row_weights, options);
  EXPECT_EQ(analytic.logprobs.scalar_type(), torch::kDouble);
  // Central differences of the loss in each element of hidden (or weight).
  const auto numeric_grad = [&](bool of_hidden) {
    const auto& param = of_hidden ? hidden : weight;
    auto numeric = torch::zeros_like(param);
    constexpr double eps = 1e-6;
    for (int64_t i = 0; i < param.numel(); ++i) {
      auto plus = param.clone();
      auto minus = param.clone();
      plus.view(-1)[i] += eps;
      minus.view(-1)[i] -= eps;
      const double up = of_hidden ? loss(plus, weight) : loss(hidden, plus);
      const double down = of_hidden ? loss(minus, weight) : loss(hidden, minus);
      numeric.view(-1)[i] = (up - down) / (2 * eps);
    }
    return numeric;
  };
  expect_close(analytic.hidden, numeric_grad(true), 1e-6, 1e-8, "grad hidden");
  expect_close(analytic.weight, numeric_grad(false), 1e-6, 1e-8, "grad weight");
}

TEST(TokenLogprobs, TiedWeightGradientsAccumulate) {
  // The output head is the embedding table: gradients from the embedding lookup and from the
  // log-probabilities add up on the one tensor.
  torch::manual_seed(3);
  const auto table0 = torch::randn({19, 8});
  const auto ids = torch::tensor({3, 3, 11, 0}, torch::kLong);
  const auto targets = torch::tensor({4, 18, 0, 11}, torch::kLong);
  const auto mix = torch::randn({8, 8});
  std::vector<torch::Tensor> grads;
  for (bool chunked : {true, false}) {
    auto table = table0.clone().requires_grad_(true);
    const auto hidden = torch::tanh(table.index_select(0, ids).matmul(mix));  // [4, 8]
    const TokenLogprobsOptions options{.chunk_size = 5};
    const auto r = chunked ? token_logprobs(hidden, table, targets, options)
                           : token_logprobs_reference(hidden, table, targets, options);
    r.logprobs.sum().backward();
    grads.push_back(table.grad());
  }
  expect_close(grads[0], grads[1], 1e-5, 1e-5, "tied grad");
}

TEST(TokenLogprobs, HandlesNoRowsAndFrozenWeight) {
  const auto weight = torch::randn({11, 4}).requires_grad_(true);
  const auto hidden = torch::zeros({0, 4}).requires_grad_(true);
  const auto r = token_logprobs(hidden, weight, torch::zeros({0}, torch::kLong), {.chunk_size = 3});
  EXPECT_EQ(r.logprobs.sizes(), torch::IntArrayRef({0}));
  r.logprobs.sum().backward();
  EXPECT_EQ(hidden.grad().sizes(), hidden.sizes());
  EXPECT_TRUE(torch::equal(weight.grad(), torch::zeros({11, 4})));

  // Weight frozen: only hidden gets a gradient, and it matches the reference.
  torch::manual_seed(4);
  const auto frozen = torch::randn({11, 4});
  const auto h0 = torch::randn({3, 4});
  const auto targets = torch::tensor({10, 1, 5}, torch::kLong);
  std::vector<torch::Tensor> grads;
  for (bool chunked : {true, false}) {
    auto h = h0.clone().requires_grad_(true);
    const auto out = chunked ? token_logprobs(h, frozen, targets, {.chunk_size = 4})
                             : token_logprobs_reference(h, frozen, targets, {});
    out.logprobs.sum().backward();
    grads.push_back(h.grad());
  }
  expect_close(grads[0], grads[1], 1e-5, 1e-5, "grad hidden, frozen weight");
}

// Runs fn and expects a c10::Error whose message contains both parts.
template <typename Fn>
void expect_error(Fn fn, const std::string& function, const std::string& detail) {
  try {
    fn();
    ADD_FAILURE() << "expected an error mentioning '" << detail << "'";
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    EXPECT_NE(message.find(function + ":"), std::string::npos) << message;
    EXPECT_NE(message.find(detail), std::string::npos) << message;
  }
}

TEST(TokenLogprobs, RejectsBadInputsNamingTheFunction) {
  const auto hidden = torch::randn({3, 4});
  const auto weight = torch::randn({5, 4});
  const auto targets = torch::tensor({0, 4, 2}, torch::kLong);
  for (bool chunked : {true, false}) {
    const std::string fn = chunked ? "token_logprobs" : "token_logprobs_reference";
    const auto call = [chunked](const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& t,
                                TokenLogprobsOptions o = {}) {
      return chunked ? token_logprobs(h, w, t, o) : token_logprobs_reference(h, w, t, o);
    };
    expect_error(
        [&] {
          call(hidden, weight, torch::tensor({0, 5, 2}, torch::kLong));
        },
        fn, "targets must lie in [0, V = 5), found values from 0 to 5");
    expect_error(
        [&] {
          call(hidden, weight, torch::tensor({0, -1, 2}, torch::kLong));
        },
        fn, "found values from -1 to 2");
    expect_error([&] { call(hidden, torch::randn({5, 3}), targets); }, fn, "must agree on D");
    expect_error(
        [&] {
          call(hidden, weight, torch::tensor({0, 1}, torch::kLong));
        },
        fn, "expected targets of length N = 3");
    expect_error([&] { call(hidden, weight, targets.to(torch::kInt)); }, fn, "expected int64 targets");
    expect_error([&] { call(hidden.unsqueeze(0), weight, targets); }, fn, "expected hidden [N, D]");
    expect_error([&] { call(hidden, weight, targets, {.temperature = 0.0}); }, fn, "expected temperature > 0");
  }
  expect_error([&] { token_logprobs(hidden, weight, targets, {.chunk_size = 0}); }, "token_logprobs",
               "expected chunk_size >= 1");
  // The reference has no chunks and ignores chunk_size.
  EXPECT_NO_THROW(token_logprobs_reference(hidden, weight, targets, {.chunk_size = 0}));
}

// Out-of-range targets are caught on the GPU too.
TEST(TokenLogprobsCuda, RejectsOutOfRangeTargets) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto h = torch::randn({2, 4}, torch::kCUDA);
  const auto w = torch::randn({3, 4}, torch::kCUDA);
  EXPECT_THROW(token_logprobs(h, w, torch::tensor({0, 3}, torch::kLong).cuda()), c10::Error);
}

}  // namespace
}  // namespace grpo::kernels
