// The FP8 Linear (DeepSeek-V3 recipe): forward and the three backward results against their
// definitions written out with the quantiser and float32 matmul; the backward against float64
// finite differences of the straight-through function (Q as the identity: the estimator the recipe
// uses, so agreement is up to FP8 rounding of dy, W and x); layer selection by name; a tiny
// deepseek_v3 model with FP8 on against the same model in float32.
#include "grpo/model/fp8_linear.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "grpo/io/safetensors.h"
#include "grpo/kernels/fp8_gemm.h"
#include "grpo/kernels/fp8_quant.h"
#include "grpo/model/causal_lm.h"
#include "grpo/model/checkpoint.h"
#include "grpo/model/layers.h"
#include "model/model_test_util.h"
#include "test_util.h"

namespace grpo::model {
namespace {

using kernels::fp8_dequantize;
using kernels::fp8_quantize_128x128;
using kernels::fp8_quantize_1x128;

Fp8Config reference_config(bool ue8m0 = false) {
  Fp8Config c;
  c.enabled = true;
  c.ue8m0 = ue8m0;
  c.backend = KernelBackend::reference;
  return c;
}

// The tiny deepseek_v3 at hidden 96 (< 128: every tile an edge tile) with a larger init, so FP8's
// rounding is visible in the logits.
ModelConfig tiny96() {
  auto cfg = test::tiny_dsv3();
  cfg.hidden_size = 96;
  cfg.initializer_range = 0.05;
  return cfg;
}

// Q then dequantise, the operand as the GEMM sees it.
torch::Tensor dq_rows(const torch::Tensor& x, bool ue8m0 = false) {
  return fp8_dequantize(fp8_quantize_1x128(x, ue8m0));
}
torch::Tensor dq_blocks(const torch::Tensor& w, bool ue8m0 = false) {
  return fp8_dequantize(fp8_quantize_128x128(w, ue8m0));
}

TEST(Fp8Linear, ForwardEqualsDequantisedOperandMatmul) {
  torch::manual_seed(0);
  for (bool ue8m0 : {false, true}) {
    for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{5, 130, 96}, {17, 64, 200}, {128, 256, 384}}) {
      const auto x = torch::randn({m, k});
      const auto w = torch::randn({n, k}) * 0.1;
      const auto b = torch::randn({n});
      const auto y = fp8_linear(x, w, b, reference_config(ue8m0));
      const auto want = at::matmul(dq_rows(x, ue8m0), dq_blocks(w, ue8m0).t()) + b;
      EXPECT_TRUE(torch::equal(y, want)) << "m " << m << " n " << n << " k " << k << " ue8m0 " << ue8m0;
      // And it is an approximation of the float32 Linear, not something else.
      const double rel = ((y - at::linear(x, w, b)).norm() / at::linear(x, w, b).norm()).item<double>();
      EXPECT_LT(rel, 0.05);
      EXPECT_GT(rel, 0.0);
    }
  }
}

TEST(Fp8Linear, KeepsLeadingDimensionsAndDtype) {
  torch::manual_seed(1);
  const auto x = torch::randn({2, 3, 96});
  const auto w = torch::randn({40, 96});
  const auto y = fp8_linear(x, w, {}, reference_config());
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, 40}));
  EXPECT_TRUE(torch::equal(y, fp8_linear(x.reshape({6, 96}), w, {}, reference_config()).view({2, 3, 40})));
  const auto yb = fp8_linear(x.to(torch::kBFloat16), w, {}, reference_config());
  EXPECT_EQ(yb.scalar_type(), torch::kBFloat16);
  EXPECT_THROW(fp8_linear(torch::randn({2, 95}), w, {}, reference_config()), c10::Error);
}

TEST(Fp8Linear, BackwardEqualsTheRecipeGemms) {
  // dx = Q(dy) Q(W) with dy tiled along N; dW = Q(dy^T) Q(x^T)^T with both tiled along the tokens;
  // db = sum of dy. Written out with the quantiser and float32 matmul.
  torch::manual_seed(2);
  for (bool ue8m0 : {false, true}) {
    const int64_t m = 150, n = 130, k = 96;
    const auto x = torch::randn({m, k}).requires_grad_(true);
    const auto w = (torch::randn({n, k}) * 0.1).requires_grad_(true);
    const auto b = torch::randn({n}).requires_grad_(true);
    const auto dy = torch::randn({m, n});
    fp8_linear(x, w, b, reference_config(ue8m0)).backward(dy);
    const auto want_dx = at::matmul(dq_rows(dy, ue8m0), dq_blocks(w.detach(), ue8m0));
    const auto want_dw = at::matmul(dq_rows(dy.t(), ue8m0), dq_rows(x.detach().t(), ue8m0).t());
    EXPECT_TRUE(torch::equal(x.grad(), want_dx)) << "ue8m0 " << ue8m0;
    EXPECT_TRUE(torch::equal(w.grad(), want_dw)) << "ue8m0 " << ue8m0;
    EXPECT_TRUE(torch::allclose(b.grad(), dy.sum(0), 1e-6, 1e-5));
    EXPECT_EQ(w.grad().scalar_type(), torch::kFloat);
  }
}

TEST(Fp8Linear, EachGemmCanBeLeftInHighPrecision) {
  // The ablation switches: a GEMM switched off is the float32 product of the unquantised operands;
  // the others stay the recipe's.
  torch::manual_seed(6);
  const int64_t m = 150, n = 130, k = 96;
  const auto x0 = torch::randn({m, k});
  const auto w0 = torch::randn({n, k}) * 0.1;
  const auto dy = torch::randn({m, n});
  const auto fp8_dx = at::matmul(dq_rows(dy), dq_blocks(w0));
  const auto fp8_dw = at::matmul(dq_rows(dy.t()), dq_rows(x0.t()).t());
  for (int mask = 0; mask < 8; ++mask) {
    auto cfg = reference_config();
    cfg.fprop = mask & 1;
    cfg.dgrad = mask & 2;
    cfg.wgrad = mask & 4;
    const auto x = x0.clone().requires_grad_(true);
    const auto w = w0.clone().requires_grad_(true);
    const auto y = fp8_linear(x, w, {}, cfg);
    y.backward(dy);
    const auto want_y = cfg.fprop ? at::matmul(dq_rows(x0), dq_blocks(w0).t()) : at::matmul(x0, w0.t());
    const auto want_dx = cfg.dgrad ? fp8_dx : at::matmul(dy, w0);
    const auto want_dw = cfg.wgrad ? fp8_dw : at::matmul(dy.t(), x0);
    EXPECT_TRUE(torch::allclose(y, want_y, 1e-6, 1e-5)) << "mask " << mask;
    EXPECT_TRUE(torch::allclose(x.grad(), want_dx, 1e-6, 1e-5)) << "mask " << mask;
    EXPECT_TRUE(torch::allclose(w.grad(), want_dw, 1e-6, 1e-5)) << "mask " << mask;
  }
  // The FP8 and float32 products differ by far more than that tolerance: the switches matter.
  EXPECT_FALSE(torch::allclose(fp8_dx, at::matmul(dy, w0), 1e-3, 1e-2));
  EXPECT_FALSE(torch::allclose(fp8_dw, at::matmul(dy.t(), x0), 1e-3, 1e-2));
}

TEST(Fp8Linear, BackwardMatchesFiniteDifferencesOfStraightThroughFunction) {
  // With Q as the identity the function is L(x, W, b) = <G, x W^T + b>; its float64 central
  // differences are the gradients the FP8 backward estimates. Agreement is up to the FP8 rounding
  // of the operands (3 mantissa bits, errors averaging over the contraction): 5% in norm.
  torch::manual_seed(3);
  const int64_t m = 40, n = 24, k = 200;
  const auto x = torch::randn({m, k}, torch::kDouble);
  const auto w = torch::randn({n, k}, torch::kDouble) * 0.1;
  const auto b = torch::randn({n}, torch::kDouble);
  const auto g = torch::randn({m, n}, torch::kDouble);
  auto loss = [&](const torch::Tensor& xx, const torch::Tensor& ww, const torch::Tensor& bb) {
    return (g * (at::matmul(xx, ww.t()) + bb)).sum().item<double>();
  };
  const double h = 1e-4;
  auto fd = [&](const torch::Tensor& base, int which) {
    auto out = torch::zeros_like(base);
    auto flat = out.view({-1});
    for (int64_t i = 0; i < base.numel(); ++i) {
      auto plus = base.clone(), minus = base.clone();
      plus.view({-1})[i] += h;
      minus.view({-1})[i] -= h;
      const double lp = which == 0 ? loss(plus, w, b) : which == 1 ? loss(x, plus, b) : loss(x, w, plus);
      const double lm = which == 0 ? loss(minus, w, b) : which == 1 ? loss(x, minus, b) : loss(x, w, minus);
      flat[i] = (lp - lm) / (2 * h);
    }
    return out;
  };
  const auto xf = x.to(torch::kFloat).requires_grad_(true);
  const auto wf = w.to(torch::kFloat).requires_grad_(true);
  const auto bf = b.to(torch::kFloat).requires_grad_(true);
  fp8_linear(xf, wf, bf, reference_config()).backward(g.to(torch::kFloat));
  auto rel = [](const torch::Tensor& got, const torch::Tensor& want) {
    return ((got.to(torch::kDouble) - want).norm() / want.norm()).item<double>();
  };
  const auto fd_x = fd(x, 0), fd_w = fd(w, 1), fd_b = fd(b, 2);
  EXPECT_LT(rel(xf.grad(), fd_x), 0.05);
  EXPECT_LT(rel(wf.grad(), fd_w), 0.05);
  EXPECT_LT(rel(bf.grad(), fd_b), 1e-6);
  // The estimate is not the exact float gradient: FP8 rounding is visible.
  EXPECT_GT(rel(xf.grad(), fd_x), 1e-4);
}

TEST(Fp8Linear, FrozenFp8WeightMatchesQuantisedMaster) {
  torch::manual_seed(4);
  const auto x = torch::randn({9, 300}).requires_grad_(true);
  const auto w = torch::randn({70, 300});
  const auto y = fp8_linear(x, fp8_quantize_128x128(w), {}, reference_config());
  EXPECT_TRUE(torch::equal(y, fp8_linear(x, w, {}, reference_config())));
  y.sum().backward();
  EXPECT_TRUE(x.grad().defined());
  // The Linear module uses its FP8 weight when it holds one.
  Linear lin(300, 70, false, 0.02, torch::TensorOptions());
  lin->fp8 = reference_config();
  lin->fp8_weight = fp8_quantize_128x128(w);
  EXPECT_TRUE(torch::equal(lin(x), y));
  lin(x).sum().backward();
  EXPECT_FALSE(lin->weight.grad().defined());
}

TEST(Fp8Linear, SelectsLayersByName) {
  Fp8Config c = reference_config();
  EXPECT_TRUE(fp8_selects_linear("layers.0.self_attn.q_a_proj", c));
  EXPECT_TRUE(fp8_selects_linear("layers.0.mlp.gate_proj", c));
  EXPECT_TRUE(fp8_selects_linear("layers.2.mlp.shared_experts.down_proj", c));
  EXPECT_TRUE(fp8_selects_linear("mtp.0.block.self_attn.o_proj", c));
  EXPECT_FALSE(fp8_selects_linear("mtp.0.eh_proj", c));
  c.attention = false;
  c.shared_experts = false;
  EXPECT_FALSE(fp8_selects_linear("layers.0.self_attn.q_a_proj", c));
  EXPECT_FALSE(fp8_selects_linear("layers.2.mlp.shared_experts.down_proj", c));
  EXPECT_TRUE(fp8_selects_linear("layers.0.mlp.gate_proj", c));
  c.enabled = false;
  EXPECT_FALSE(fp8_selects_linear("layers.0.mlp.gate_proj", c));
}

TEST(Fp8Linear, TinyDeepseekModelLossCloseToFloat32) {
  // Same seed, same weights: FP8 on every selected layer and the experts changes the loss by well
  // under 1% and still trains every parameter. hidden 96 < 128: every tile is an edge tile.
  auto cfg = tiny96();
  torch::manual_seed(5);
  CausalLM ref(cfg);
  cfg.fp8 = reference_config();
  torch::manual_seed(5);
  CausalLM fp8(cfg);
  int64_t switched = 0;
  for (const auto& item : fp8->named_modules()) {
    if (auto* lin = dynamic_cast<LinearImpl*>(item.value().get())) switched += lin->fp8.has_value();
  }
  // 3 layers + 1 MTP block: 5 MLA projections each, 3 dense-MLP / shared-expert projections each.
  EXPECT_EQ(switched, 4 * 5 + 4 * 3);
  ASSERT_TRUE(torch::equal(ref->embed_tokens, fp8->embed_tokens));
  const auto ids = torch::randint(1, cfg.vocab_size, {3, 20});
  auto ce = [&](CausalLM& model) {
    const auto logits = model->forward(ids).logits;
    return torch::nn::functional::cross_entropy(logits.narrow(1, 0, 19).reshape({-1, cfg.vocab_size}),
                                                ids.narrow(1, 1, 19).reshape({-1}));
  };
  const auto l_ref = ce(ref), l_fp8 = ce(fp8);
  const double rel = std::abs(l_fp8.item<double>() / l_ref.item<double>() - 1);
  EXPECT_LT(rel, 1e-2) << "fp32 " << l_ref.item<double>() << " fp8 " << l_fp8.item<double>();
  EXPECT_GT(rel, 0.0) << "FP8 changed nothing: the layers were not switched";
  l_fp8.backward();
  auto* moe = fp8->layers[1]->as<DecoderLayerImpl>()->moe.get();
  ASSERT_NE(moe, nullptr);
  EXPECT_TRUE(moe->experts_gate.grad().defined());
  EXPECT_GT(moe->experts_gate.grad().abs().sum().item<double>(), 0.0);
  // The experts really run in FP8: with the same input the expert projection differs from at::linear.
  const auto xs = torch::randn({4, 96});
  ASSERT_TRUE(moe->fp8.has_value());
  EXPECT_FALSE(torch::equal(expert_linear(xs, moe->experts_up[0], moe->fp8), at::linear(xs, moe->experts_up[0])));
  EXPECT_FALSE(ref->layers[1]->as<DecoderLayerImpl>()->moe->fp8.has_value());
}

TEST(Fp8Linear, EnableSwitchesAModelBothWays) {
  // fp8_enable sets the mode of every layer: a float32 model switched on computes what a model
  // built with FP8 computes, and switched off again what it computed before, bit for bit.
  auto cfg = tiny96();
  torch::manual_seed(5);
  CausalLM model(cfg);
  auto fp8_cfg = cfg;
  fp8_cfg.fp8 = reference_config();
  torch::manual_seed(5);
  CausalLM built_fp8(fp8_cfg);
  const auto ids = torch::randint(1, cfg.vocab_size, {2, 12});
  torch::NoGradGuard no_grad;
  const auto fp32_logits = model->forward(ids).logits;
  const auto fp8_logits = built_fp8->forward(ids).logits;
  ASSERT_FALSE(torch::equal(fp32_logits, fp8_logits));
  int64_t moes = 0;
  for (const auto& item : model->named_modules()) moes += dynamic_cast<MoeImpl*>(item.value().get()) != nullptr;
  ASSERT_EQ(moes, 3);  // layers 1, 2 and the MTP block
  EXPECT_EQ(fp8_enable(*model, fp8_cfg.fp8), 4 * 5 + 4 * 3 + moes);
  EXPECT_TRUE(torch::equal(model->forward(ids).logits, fp8_logits));
  EXPECT_EQ(fp8_enable(*model, Fp8Config{}), 0);
  EXPECT_TRUE(torch::equal(model->forward(ids).logits, fp32_logits));
  fp8_enable(*built_fp8, Fp8Config{});
  EXPECT_TRUE(torch::equal(built_fp8->forward(ids).logits, fp32_logits));
  auto no_experts = fp8_cfg.fp8;
  no_experts.experts = false;
  EXPECT_EQ(fp8_enable(*model, no_experts), 4 * 5 + 4 * 3);
  const auto xs = torch::randn({4, 96});
  auto* moe = model->layers[1]->as<DecoderLayerImpl>()->moe.get();
  EXPECT_FALSE(moe->fp8.has_value());
  EXPECT_TRUE(torch::equal(expert_linear(xs, moe->experts_up[0], moe->fp8), at::linear(xs, moe->experts_up[0])));
}

// The experts' FP8 mode has one owner, MoeImpl::fp8: fp8_enable on a model built without FP8 puts
// the routed experts in FP8 on both expert paths, the per-expert loop (kernels: reference) and the
// fused dispatch (kernels: cuda; its ops run their references on the CPU), and each path then
// computes exactly what the same model built with FP8 computes; switched off, what it did before.
TEST(Fp8Linear, EnableAfterConstructionSwitchesBothExpertPaths) {
  for (const auto kernels : {KernelBackend::reference, KernelBackend::cuda}) {
    SCOPED_TRACE(std::string(config::enum_name(kernels)));
    auto cfg = tiny96();
    cfg.kernels = kernels;
    Fp8Config experts_only = reference_config();
    experts_only.attention = experts_only.dense_mlp = experts_only.shared_experts = false;  // experts alone
    torch::manual_seed(6);
    CausalLM late(cfg);
    auto fp8_cfg = cfg;
    fp8_cfg.fp8 = experts_only;
    torch::manual_seed(6);
    CausalLM built(fp8_cfg);
    auto* late_moe = late->layers[1]->as<DecoderLayerImpl>()->moe.get();
    auto* built_moe = built->layers[1]->as<DecoderLayerImpl>()->moe.get();
    ASSERT_TRUE(built_moe->fp8.has_value());
    ASSERT_FALSE(late_moe->fp8.has_value());
    torch::NoGradGuard no_grad;
    const auto x = torch::randn({2, 9, 96});
    const auto high = late_moe->forward(x);
    ASSERT_TRUE(torch::equal(high, late_moe->forward(x)));
    EXPECT_EQ(fp8_enable(*late, experts_only), 3);  // the experts of layers 1, 2 and the MTP block
    ASSERT_TRUE(late_moe->fp8.has_value());
    const auto low = late_moe->forward(x);
    EXPECT_FALSE(torch::equal(low, high)) << "fp8_enable did not reach this expert path";
    EXPECT_TRUE(torch::equal(low, built_moe->forward(x)));
    // The error is FP8's: small against the output, not a different computation.
    EXPECT_LT((low - high).abs().max().item<double>(), 0.1 * high.abs().max().item<double>());
    fp8_enable(*late, Fp8Config{});
    EXPECT_TRUE(torch::equal(late_moe->forward(x), high));
  }
}

TEST(Fp8Linear, Fp8CheckpointWeightsStayInFp8) {
  // A DeepSeek-style FP8 checkpoint written here: attention projections stored as e4m3 codes plus
  // `weight_scale_inv` [ceil(out/128), ceil(in/128)] built with our quantiser (ue8m0 scales, so the
  // dequantised master copy re-quantises differently from nothing: the kept codes must be these).
  auto cfg = test::tiny_dsv3();
  cfg.hidden_size = 96;
  torch::manual_seed(7);
  CausalLM source(cfg);
  grpo::test::TempDir dir;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::map<std::string, kernels::Fp8Tensor> written;
  for (const auto& t : hf_state_dict(source)) {
    auto value = t.tensor.detach().contiguous().clone();
    if (t.name.find("self_attn.") != std::string::npos && value.dim() == 2) {  // the 5 MLA projections
      auto q = fp8_quantize_128x128(value, /*ue8m0=*/true);
      tensors.emplace_back(t.name, q.data);
      tensors.emplace_back(t.name + "_scale_inv", q.scale);
      written[t.name] = q;
    } else {
      tensors.emplace_back(t.name, value);
    }
  }
  ASSERT_EQ(written.size(), 20u);
  io::save_checkpoint_tensors(dir.path(), tensors);
  // FP8 on: the codes are kept, the master holds their dequantised values and is frozen.
  auto fp8_cfg = cfg;
  fp8_cfg.fp8 = reference_config();
  CausalLM model(fp8_cfg);
  load_hf_weights(model, dir.path());
  auto& mla = *model->layers[0]->as<DecoderLayerImpl>()->mla;
  const auto& want = written.at("model.layers.0.self_attn.q_a_proj.weight");
  ASSERT_TRUE(mla.q_a_proj->fp8_weight.has_value());
  EXPECT_TRUE(torch::equal(mla.q_a_proj->fp8_weight->data.view(torch::kByte), want.data.view(torch::kByte)));
  EXPECT_TRUE(torch::equal(mla.q_a_proj->fp8_weight->scale, want.scale));
  EXPECT_TRUE(torch::equal(mla.q_a_proj->weight, fp8_dequantize(want)));
  EXPECT_FALSE(mla.q_a_proj->weight.requires_grad());
  const auto x = torch::randn({5, 96});
  EXPECT_TRUE(torch::equal(mla.q_a_proj(x), fp8_linear(x, want, {}, reference_config())));
  EXPECT_FALSE(model->layers[0]->as<DecoderLayerImpl>()->mlp->gate_proj->fp8_weight.has_value());
  // FP8 off: the same folder loads through the dequantising path, nothing kept.
  CausalLM plain(cfg);
  load_hf_weights(plain, dir.path());
  auto& plain_mla = *plain->layers[0]->as<DecoderLayerImpl>()->mla;
  EXPECT_FALSE(plain_mla.q_a_proj->fp8_weight.has_value());
  EXPECT_TRUE(torch::equal(plain_mla.q_a_proj->weight, fp8_dequantize(want)));
}

TEST(Fp8LinearCuda, CudaBackendMatchesReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(6);
  Fp8Config cuda = reference_config();
  cuda.backend = KernelBackend::automatic;
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{256, 512, 384}, {100, 256, 640}, {64, 128, 96}}) {
    const auto x = torch::randn({m, k}, torch::kCUDA).requires_grad_(true);
    const auto w = (torch::randn({n, k}, torch::kCUDA) * 0.05).requires_grad_(true);
    const auto dy = torch::randn({m, n}, torch::kCUDA);
    const auto y = fp8_linear(x, w, {}, cuda);
    y.backward(dy);
    const auto gx = x.grad().clone(), gw = w.grad().clone();
    x.mutable_grad().reset();
    w.mutable_grad().reset();
    const auto y_ref = fp8_linear(x, w, {}, reference_config());
    y_ref.backward(dy);
    auto rel = [](const torch::Tensor& a, const torch::Tensor& b) {
      return ((a - b).abs().max() / b.abs().max()).item<double>();
    };
    EXPECT_LT(rel(y, y_ref), 1e-2) << m << " " << n << " " << k;
    EXPECT_LT(rel(gx, x.grad()), 1e-2) << m << " " << n << " " << k;
    EXPECT_LT(rel(gw, w.grad()), 1e-2) << m << " " << n << " " << k;
  }
}

}  // namespace
}  // namespace grpo::model
