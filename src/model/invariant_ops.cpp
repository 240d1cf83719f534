#include "grpo/model/invariant_ops.h"

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "grpo/kernels/rms_norm.h"

// Built with -ffp-contract=off (CMakeLists.txt): a * b + c is a product then a sum everywhere, in
// the vector loops and in the scalar ones alike. The hot loops have an AVX2 clone; one process
// uses one clone for every call, so the sampler and the trainer run the same code.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GRPO_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GRPO_CLONES
#endif

namespace grpo::model::invariant {
namespace {

thread_local bool active = false;
thread_local bool active_bf16 = false;

// bf16 scope: t rounded to the nearest bfloat16 (kept float32; the gradient passes through the
// casts as autocast's does).
torch::Tensor rounded(const torch::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.to(torch::kBFloat16).to(torch::kFloat) : t;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool needs_grad(std::initializer_list<const torch::Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const auto* t : ts) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

// Work per parallel chunk: about 64k multiply-adds.
int64_t grain(int64_t per_row) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, per_row)); }

// ---- matmul_nt: C[r, n] = dot(A[r, :], B[n, :]) over K -------------------------------------
// Eight lanes by index k mod 8, one fixed tree over them, then the tail k >= 8 * (K / 8).

inline float lanes_total(const float* acc, float tail) {
  return (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) + tail;
}

// Four rows of A against rows [n0, n1) of B.
GRPO_CLONES void dots4(const float* a0, const float* a1, const float* a2, const float* a3, const float* b, float* c0,
                       float* c1, float* c2, float* c3, int64_t n0, int64_t n1, int64_t K) {
  const int64_t kv = K - K % 8;
  for (int64_t n = n0; n < n1; ++n) {
    const float* w = b + n * K;
    float s0[8] = {}, s1[8] = {}, s2[8] = {}, s3[8] = {};
    for (int64_t k = 0; k < kv; k += 8) {
      for (int l = 0; l < 8; ++l) {
        const float wl = w[k + l];
        s0[l] += a0[k + l] * wl;
        s1[l] += a1[k + l] * wl;
        s2[l] += a2[k + l] * wl;
        s3[l] += a3[k + l] * wl;
      }
    }
    float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
    for (int64_t k = kv; k < K; ++k) {
      t0 += a0[k] * w[k];
      t1 += a1[k] * w[k];
      t2 += a2[k] * w[k];
      t3 += a3[k] * w[k];
    }
    c0[n] = lanes_total(s0, t0);
    c1[n] = lanes_total(s1, t1);
    c2[n] = lanes_total(s2, t2);
    c3[n] = lanes_total(s3, t3);
  }
}

// One row: the same operations as each row of dots4.
GRPO_CLONES void dots1(const float* a, const float* b, float* c, int64_t n0, int64_t n1, int64_t K) {
  const int64_t kv = K - K % 8;
  for (int64_t n = n0; n < n1; ++n) {
    const float* w = b + n * K;
    float s[8] = {};
    for (int64_t k = 0; k < kv; k += 8) {
      for (int l = 0; l < 8; ++l) s[l] += a[k + l] * w[k + l];
    }
    float t = 0;
    for (int64_t k = kv; k < K; ++k) t += a[k] * w[k];
    c[n] = lanes_total(s, t);
  }
}

// A [Bt, M, K], B [Bt, N, K] contiguous -> C [Bt, M, N].
torch::Tensor nt_forward(const torch::Tensor& A, const torch::Tensor& B) {
  const int64_t bt = A.size(0), M = A.size(1), K = A.size(2), N = B.size(1);
  auto C = torch::empty({bt, M, N}, A.options());
  if (C.numel() == 0) return C;
  if (K == 0) return C.zero_();
  const float* a = A.const_data_ptr<float>();
  const float* b = B.const_data_ptr<float>();
  float* c = C.data_ptr<float>();
  // Rows of B in blocks of about 128 KiB, so that a block stays in cache for every row of A.
  const int64_t nb = std::max<int64_t>(8, (128 * 1024 / 4) / K);
  const int64_t tiles = (M + 3) / 4;  // per batch
  at::parallel_for(0, bt * tiles, grain(4 * N * K), [&](int64_t begin, int64_t end) {
    for (int64_t n0 = 0; n0 < N; n0 += nb) {
      const int64_t n1 = std::min(N, n0 + nb);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t batch = i / tiles, m = (i % tiles) * 4;
        const float* ab = a + (batch * M) * K;
        const float* bb = b + batch * N * K;
        float* cb = c + (batch * M) * N;
        if (m + 4 <= M) {
          dots4(ab + m * K, ab + (m + 1) * K, ab + (m + 2) * K, ab + (m + 3) * K, bb, cb + m * N, cb + (m + 1) * N,
                cb + (m + 2) * N, cb + (m + 3) * N, n0, n1, K);
        } else {
          for (int64_t r = m; r < M; ++r) dots1(ab + r * K, bb, cb + r * N, n0, n1, K);
        }
      }
    }
  });
  return C;
}

// x [..., K] W^T (+ b) through nt_forward; b undefined = no bias.
torch::Tensor linear_forward(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  auto shape = x.sizes().vec();
  shape.back() = w.size(0);
  auto y = nt_forward(x.reshape({1, -1, x.size(-1)}).contiguous(), w.contiguous().unsqueeze(0)).view(shape);
  return b.defined() ? y + b : y;
}

// ---- matmul_nn: C[r, :] = sum over k in order of A[r, k] * B[k, :] --------------------------
// A zero A[r, k] (a masked key's probability) is skipped: adding its exact zero product would not
// change the sum (and would turn an infinite B row into NaN).

GRPO_CLONES void axpy_row(const float* a, const float* b, float* c, int64_t K, int64_t N) {
  constexpr int64_t chunk = 512;
  float acc[chunk];
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t nc = std::min(chunk, N - n0);
    for (int64_t j = 0; j < nc; ++j) acc[j] = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      const float s = a[k];
      if (s == 0.0f) continue;
      const float* row = b + k * N + n0;
      for (int64_t j = 0; j < nc; ++j) acc[j] += s * row[j];
    }
    for (int64_t j = 0; j < nc; ++j) c[n0 + j] = acc[j];
  }
}

// A [Bt, M, K], B [Bt, K, N] contiguous -> C [Bt, M, N].
torch::Tensor nn_forward(const torch::Tensor& A, const torch::Tensor& B) {
  const int64_t bt = A.size(0), M = A.size(1), K = A.size(2), N = B.size(2);
  auto C = torch::empty({bt, M, N}, A.options());
  if (C.numel() == 0) return C;
  const float* a = A.const_data_ptr<float>();
  const float* b = B.const_data_ptr<float>();
  float* c = C.data_ptr<float>();
  at::parallel_for(0, bt * M, grain(N * K), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) axpy_row(a + r * K, b + (r / M) * K * N, c + r * N, K, N);
  });
  return C;
}

// ---- row-wise ops over the last dim --------------------------------------------------------

template <typename RowFn>
void over_rows(int64_t rows, int64_t width, const RowFn& fn) {
  at::parallel_for(0, rows, grain(8 * width), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r);
  });
}

torch::Tensor softmax_forward(const torch::Tensor& x) {
  const auto xc = x.contiguous();
  auto y = torch::empty_like(xc);
  const int64_t S = xc.size(-1), R = S == 0 ? 0 : xc.numel() / S;
  const float* in = xc.const_data_ptr<float>();
  float* out = y.data_ptr<float>();
  over_rows(R, S, [&](int64_t r) {
    const float* v = in + r * S;
    float* o = out + r * S;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < S; ++i) m = std::max(m, v[i]);
    float s = 0.0f;
    for (int64_t i = 0; i < S; ++i) {
      o[i] = std::exp(v[i] - m);
      s += o[i];
    }
    for (int64_t i = 0; i < S; ++i) o[i] = o[i] / s;
  });
  return y;
}

torch::Tensor rms_norm_forward(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  const auto xc = x.contiguous();
  const auto wc = weight.contiguous();
  auto y = torch::empty_like(xc);
  const int64_t D = xc.size(-1), R = D == 0 ? 0 : xc.numel() / D;
  const float* in = xc.const_data_ptr<float>();
  const float* w = wc.const_data_ptr<float>();
  float* out = y.data_ptr<float>();
  const float e = static_cast<float>(eps), d = static_cast<float>(D);
  over_rows(R, D, [&](int64_t r) {
    const float* v = in + r * D;
    float* o = out + r * D;
    float ss = 0.0f;
    for (int64_t i = 0; i < D; ++i) ss += v[i] * v[i];
    const float scale = 1.0f / std::sqrt(ss / d + e);
    for (int64_t i = 0; i < D; ++i) o[i] = w[i] * (v[i] * scale);
  });
  return y;
}

template <typename Fn>
torch::Tensor map(const torch::Tensor& x, const Fn& fn) {
  const auto xc = x.contiguous();
  auto y = torch::empty_like(xc);
  const float* in = xc.const_data_ptr<float>();
  float* out = y.data_ptr<float>();
  at::parallel_for(0, xc.numel(), 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = fn(in[i]);
  });
  return y;
}

float sigmoid_of(float v) { return 1.0f / (1.0f + std::exp(-v)); }

torch::Tensor silu_mul_forward(const torch::Tensor& g, const torch::Tensor& u) {
  const auto gc = g.contiguous(), uc = u.contiguous();
  auto y = torch::empty_like(gc);
  const float* a = gc.const_data_ptr<float>();
  const float* b = uc.const_data_ptr<float>();
  float* out = y.data_ptr<float>();
  at::parallel_for(0, gc.numel(), 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = a[i] / (1.0f + std::exp(-a[i])) * b[i];
  });
  return y;
}

torch::Tensor sum_last_forward(const torch::Tensor& x) {
  const auto xc = x.contiguous();
  auto shape = xc.sizes().vec();
  const int64_t K = shape.back();
  shape.back() = 1;
  auto y = torch::empty(shape, xc.options());
  const int64_t R = y.numel();
  const float* in = xc.const_data_ptr<float>();
  float* out = y.data_ptr<float>();
  over_rows(R, K, [&](int64_t r) {
    float s = 0.0f;
    for (int64_t i = 0; i < K; ++i) s += in[r * K + i];
    out[r] = s;
  });
  return y;
}

torch::Tensor token_logprobs_forward(const torch::Tensor& logits, const torch::Tensor& ids, double temperature) {
  const auto lc = logits.to(torch::kFloat).contiguous();
  const auto idc = ids.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t R = lc.size(0), V = lc.size(1);
  auto y = torch::empty({R}, lc.options());
  const float* in = lc.const_data_ptr<float>();
  const int64_t* tok = idc.const_data_ptr<int64_t>();
  float* out = y.data_ptr<float>();
  const float t = static_cast<float>(temperature);
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK(tok[r] >= 0 && tok[r] < V, "invariant::token_logprobs: token ", tok[r], " outside the vocabulary [0, ",
                V, ")");
  }
  over_rows(R, V, [&](int64_t r) {
    const float* v = in + r * V;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < V; ++i) m = std::max(m, v[i] / t);
    float s = 0.0f;
    for (int64_t i = 0; i < V; ++i) s += std::exp(v[i] / t - m);
    out[r] = (v[tok[r]] / t - m) - std::log(s);
  });
  return y;
}

// ---- autograd: invariant forwards, the usual ATen backwards ---------------------------------

struct LinearFn : torch::autograd::Function<LinearFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& b) {
    ctx->save_for_backward({x, w});
    const bool has_bias = b.numel() > 0;  // autograd functions take no undefined input: no bias is empty
    ctx->saved_data["bias"] = has_bias;
    return linear_forward(x, w, has_bias ? b : torch::Tensor());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1];
    const auto g = grads[0].reshape({-1, w.size(0)});
    const auto gx = g.mm(w).view(x.sizes());
    const auto gw = g.t().mm(x.reshape({-1, x.size(-1)}));
    const auto gb = ctx->saved_data["bias"].toBool() ? g.sum(0) : torch::Tensor();
    return {gx, gw, gb};
  }
};

// Both [..., M, K] / [..., N, K] with equal batch dims.
struct MatmulNtFn : torch::autograd::Function<MatmulNtFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& a, const torch::Tensor& b) {
    ctx->save_for_backward({a, b});
    auto shape = a.sizes().vec();
    shape.back() = b.size(-2);
    return nt_forward(a.reshape({-1, a.size(-2), a.size(-1)}).contiguous(),
                      b.reshape({-1, b.size(-2), b.size(-1)}).contiguous())
        .view(shape);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& g = grads[0];
    return {g.matmul(saved[1]), g.transpose(-2, -1).matmul(saved[0])};
  }
};

struct MatmulNnFn : torch::autograd::Function<MatmulNnFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& a, const torch::Tensor& b) {
    ctx->save_for_backward({a, b});
    auto shape = a.sizes().vec();
    shape.back() = b.size(-1);
    return nn_forward(a.reshape({-1, a.size(-2), a.size(-1)}).contiguous(),
                      b.reshape({-1, b.size(-2), b.size(-1)}).contiguous())
        .view(shape);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& g = grads[0];
    return {g.matmul(saved[1].transpose(-2, -1)), saved[0].transpose(-2, -1).matmul(g)};
  }
};

struct SoftmaxFn : torch::autograd::Function<SoftmaxFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x) {
    auto y = softmax_forward(x);
    ctx->save_for_backward({y});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto y = ctx->get_saved_variables()[0];
    const auto& g = grads[0];
    return {y * (g - (g * y).sum(-1, true))};
  }
};

struct RmsNormFn : torch::autograd::Function<RmsNormFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w, double eps) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["eps"] = eps;
    return rms_norm_forward(x, w, eps);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [gx, gw] = kernels::rms_norm_backward_reference(grads[0].contiguous(), saved[0], saved[1],
                                                         ctx->saved_data["eps"].toDouble());
    return {gx, gw, torch::Tensor()};
  }
};

struct SiluMulFn : torch::autograd::Function<SiluMulFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& g, const torch::Tensor& u) {
    ctx->save_for_backward({g, u});
    return silu_mul_forward(g, u);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &g = saved[0], &u = saved[1];
    const auto s = torch::sigmoid(g);
    const auto silu = g * s;
    return {grads[0] * u * (s + silu * (1 - s)), grads[0] * silu};
  }
};

struct SigmoidFn : torch::autograd::Function<SigmoidFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x) {
    auto y = map(x, sigmoid_of);
    ctx->save_for_backward({y});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto y = ctx->get_saved_variables()[0];
    return {grads[0] * y * (1 - y)};
  }
};

struct SumLastFn : torch::autograd::Function<SumLastFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x) {
    ctx->saved_data["shape"] = x.sizes().vec();
    return sum_last_forward(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {grads[0].expand(ctx->saved_data["shape"].toIntVector())};
  }
};

struct TokenLogprobsFn : torch::autograd::Function<TokenLogprobsFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& ids,
                               double temperature) {
    ctx->save_for_backward({logits, ids});
    ctx->saved_data["temperature"] = temperature;
    return token_logprobs_forward(logits, ids, temperature);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &logits = saved[0], &ids = saved[1];
    const double t = ctx->saved_data["temperature"].toDouble();
    const auto g = grads[0].to(torch::kFloat).unsqueeze(1);                        // [N, 1]
    auto grad = -torch::softmax(logits.to(torch::kFloat) / t, -1) * g;             // [N, V]
    grad.scatter_add_(1, ids.to(logits.device(), torch::kLong).view({-1, 1}), g);  // + g at the token
    return {(grad / t).to(logits.scalar_type()), torch::Tensor(), torch::Tensor()};
  }
};

// a [..., M, K], b [..., X, Y] expanded to one batch shape.
std::pair<torch::Tensor, torch::Tensor> broadcast_batch(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.dim() >= 2 && b.dim() >= 2, "invariant matmul: expected matrices, got ", a.sizes(), " and ", b.sizes());
  const auto batch = at::infer_size(a.sizes().slice(0, a.dim() - 2), b.sizes().slice(0, b.dim() - 2));
  auto sa = batch, sb = batch;
  sa.insert(sa.end(), {a.size(-2), a.size(-1)});
  sb.insert(sb.end(), {b.size(-2), b.size(-1)});
  return {a.expand(sa), b.expand(sb)};
}

}  // namespace

bool enabled() { return active; }

bool bf16() { return active && active_bf16; }

Scope::Scope(bool on, bool bf16) : saved_(active), saved_bf16_(active_bf16) {
  active = on;
  active_bf16 = on && bf16;
}
Scope::~Scope() {
  active = saved_;
  active_bf16 = saved_bf16_;
}

bool applies(const torch::Tensor& x) {
  return active && x.defined() && x.device().is_cpu() && x.scalar_type() == torch::kFloat;
}

namespace {

// bf16 scope: `op` on the operands rounded to bf16, computed in float32 (the scope's float32 ops),
// its result rounded.
template <class Op, class... T>
torch::Tensor in_bf16(const Op& op, const T&... operands) {
  const auto args = std::make_tuple(rounded(operands)...);
  torch::Tensor y;
  {
    const Scope fp32(true, false);
    y = std::apply(op, args);
  }
  return rounded(y);
}

}  // namespace

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  TORCH_CHECK(w.dim() == 2 && x.size(-1) == w.size(1), "invariant::linear: x ", x.sizes(), " against weight ",
              w.sizes());
  TORCH_CHECK(w.scalar_type() == torch::kFloat && w.device().is_cpu(),
              "invariant::linear: expected a CPU float32 weight, got ", w.dtype(), " on ", w.device());
  if (active_bf16) return in_bf16([](const auto&... t) { return linear(t...); }, x, w, b);
  if (needs_grad({&x, &w, &b})) return LinearFn::apply(x, w, b.defined() ? b : torch::empty({0}, w.options()));
  return linear_forward(x, w, b);
}

torch::Tensor matmul_nt(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.size(-1) == b.size(-1), "invariant::matmul_nt: a ", a.sizes(), " and b ", b.sizes(),
              " differ in the reduced (last) dim");
  if (active_bf16) return in_bf16([](const auto&... t) { return matmul_nt(t...); }, a, b);
  auto [ea, eb] = broadcast_batch(a, b);
  return MatmulNtFn::apply(ea, eb);
}

torch::Tensor matmul_nn(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.size(-1) == b.size(-2), "invariant::matmul_nn: a ", a.sizes(), " against b ", b.sizes());
  if (active_bf16) return in_bf16([](const auto&... t) { return matmul_nn(t...); }, a, b);
  auto [ea, eb] = broadcast_batch(a, b);
  return MatmulNnFn::apply(ea, eb);
}

torch::Tensor softmax(const torch::Tensor& x) { return SoftmaxFn::apply(x); }

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  TORCH_CHECK(weight.scalar_type() == torch::kFloat && weight.size(0) == x.size(-1),
              "invariant::rms_norm: expected a float32 weight [", x.size(-1), "], got ", weight.dtype(), " ",
              weight.sizes());
  return RmsNormFn::apply(x, weight, eps);
}

torch::Tensor silu_mul(const torch::Tensor& gate, const torch::Tensor& up) {
  TORCH_CHECK(gate.sizes() == up.sizes(), "invariant::silu_mul: gate ", gate.sizes(), " and up ", up.sizes());
  return SiluMulFn::apply(gate, up);
}

torch::Tensor sigmoid(const torch::Tensor& x) { return SigmoidFn::apply(x); }

torch::Tensor sum_last(const torch::Tensor& x) { return SumLastFn::apply(x); }

torch::Tensor cos(const torch::Tensor& x) {
  return map(x.detach(), [](float v) { return std::cos(v); });
}

torch::Tensor sin(const torch::Tensor& x) {
  return map(x.detach(), [](float v) { return std::sin(v); });
}

torch::Tensor token_logprobs(const torch::Tensor& logits, const torch::Tensor& ids, double temperature) {
  TORCH_CHECK(logits.dim() == 2 && ids.dim() == 1 && ids.size(0) == logits.size(0),
              "invariant::token_logprobs: expected logits [N, V] and ids [N], got ", logits.sizes(), " and ",
              ids.sizes());
  TORCH_CHECK(temperature > 0, "invariant::token_logprobs: temperature must be > 0, got ", temperature);
  return TokenLogprobsFn::apply(logits, ids, temperature);
}

}  // namespace grpo::model::invariant
