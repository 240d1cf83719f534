// AdamW parameter groups, one step against hand-computed and torch.optim.AdamW values, and
// gradient clipping.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <set>

#include "grpo/model/causal_lm.h"
#include "grpo/train/optimizer.h"
#include "model/model_test_util.h"

namespace grpo::train {
namespace {

using model::CausalLM;

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

TEST(Optimizer, SplitOnDeepSeekV3) {
  torch::manual_seed(0);
  CausalLM lm(model::test::tiny_dsv3());
  OptimizerConfig cfg;
  const ParamGroups groups = split_parameters(*lm, cfg);
  ASSERT_EQ(groups.decay.size(), groups.decay_names.size());
  ASSERT_EQ(groups.no_decay.size(), groups.no_decay_names.size());
  std::size_t trainable = 0;
  for (const auto& item : lm->named_parameters()) {
    const std::string& name = item.key();
    if (!item.value().requires_grad()) continue;
    ++trainable;
    if (item.value().dim() == 1) {
      EXPECT_TRUE(contains(groups.no_decay_names, name)) << name;
    } else {
      EXPECT_TRUE(contains(groups.decay_names, name)) << name;
    }
  }
  EXPECT_EQ(groups.decay.size() + groups.no_decay.size(), trainable);
  EXPECT_TRUE(contains(groups.decay_names, "embed_tokens"));
  EXPECT_TRUE(contains(groups.no_decay_names, "norm.weight"));
  // The router's bias is a buffer (aux-loss-free balancing), never optimised.
  for (const auto& item : lm->named_buffers()) {
    EXPECT_FALSE(contains(groups.decay_names, item.key())) << item.key();
    EXPECT_FALSE(contains(groups.no_decay_names, item.key())) << item.key();
  }
  bool saw_router_bias = false;
  for (const auto& item : lm->named_buffers())
    saw_router_bias |= item.key().find("e_score_correction_bias") != std::string::npos;
  EXPECT_TRUE(saw_router_bias) << "the tiny DeepSeek-V3 should have MoE layers";
  for (const auto& tensors : {groups.decay, groups.no_decay}) {
    for (const auto& t : tensors) EXPECT_TRUE(t.requires_grad());
  }

  cfg.no_decay = {"embed_tokens", "gate_weight"};
  const ParamGroups custom = split_parameters(*lm, cfg);
  EXPECT_TRUE(contains(custom.no_decay_names, "embed_tokens"));
  EXPECT_FALSE(contains(custom.decay_names, "embed_tokens"));
  for (const auto& name : custom.decay_names) EXPECT_EQ(name.find("gate_weight"), std::string::npos) << name;
  EXPECT_TRUE(contains(custom.decay_names, "lm_head"));
}

TEST(Optimizer, SplitSkipsFrozenAndRepeatsNoTiedTensor) {
  auto c = model::test::tiny_qwen2();
  c.tie_word_embeddings = true;
  CausalLM lm(c);
  lm->norm->weight.set_requires_grad(false);
  const ParamGroups groups = split_parameters(*lm, OptimizerConfig{});
  EXPECT_FALSE(contains(groups.no_decay_names, "norm.weight"));
  std::set<const void*> seen;
  for (const auto& tensors : {groups.decay, groups.no_decay}) {
    for (const auto& t : tensors) EXPECT_TRUE(seen.insert(t.unsafeGetTensorImpl()).second);
  }
  // The Qwen2 q/k/v biases are 1-D: not decayed.
  EXPECT_TRUE(contains(groups.no_decay_names, "layers.0.self_attn.q_proj.bias"));
  auto optimizer = make_optimizer(*lm, OptimizerConfig{});
  ASSERT_EQ(optimizer->param_groups().size(), 2u);
  EXPECT_EQ(optimizer->param_groups()[0].params().size(), groups.decay.size());
  EXPECT_EQ(optimizer->param_groups()[1].params().size(), groups.no_decay.size());
}

// optim.freeze: the MoE routers of a DeepSeek-V3 model leave the optimizer (requires_grad off) and
// keep their values through a step that moves everything else; a pattern naming nothing is an error.
TEST(Optimizer, FreezeKeepsMatchingParametersFixed) {
  CausalLM lm(model::test::tiny_dsv3());
  OptimizerConfig cfg;
  cfg.lr = 1e-2;
  cfg.freeze = {"gate_weight"};
  int64_t routers = 0;
  std::vector<torch::Tensor> before;
  for (const auto& item : lm->named_parameters()) {
    if (item.key().find("gate_weight") != std::string::npos) {
      ++routers;
      before.push_back(item.value().detach().clone());
    }
  }
  ASSERT_EQ(routers, 3);  // two MoE layers and the MTP block's
  auto optimizer = make_optimizer(*lm, cfg);
  const auto ids = torch::randint(0, 61, {2, 8}, torch::kLong);
  lm->forward(ids, {}, {}).logits.pow(2).mean().backward();
  optimizer->step();
  size_t k = 0;
  int64_t moved = 0;
  for (const auto& item : lm->named_parameters()) {
    if (item.key().find("gate_weight") != std::string::npos) {
      EXPECT_FALSE(item.value().requires_grad()) << item.key();
      EXPECT_TRUE(torch::equal(item.value(), before[k++])) << item.key();
    }
  }
  for (const auto& g : optimizer->param_groups()) {
    for (const auto& p : g.params()) moved += p.grad().defined() ? 1 : 0;
  }
  EXPECT_GT(moved, 10);
  const auto groups = split_parameters(*lm, cfg);
  for (const auto& name : groups.decay_names) EXPECT_EQ(name.find("gate_weight"), std::string::npos) << name;

  CausalLM other(model::test::tiny_dsv3());
  cfg.freeze = {"no_such_parameter"};
  try {
    make_optimizer(*other, cfg);
    ADD_FAILURE() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("optim.freeze: 'no_such_parameter' matches no parameter"), std::string::npos)
        << e.what();
  }
}

// A 2x2 weight (decayed) and a bias (not decayed), in float64.
struct TwoParamsImpl : torch::nn::Module {
  TwoParamsImpl() {
    w = register_parameter("w", torch::tensor({0.5, -1.0, 2.0, 0.25}, torch::kDouble).reshape({2, 2}));
    b = register_parameter("b", torch::tensor({0.1, -0.2}, torch::kDouble));
  }
  torch::Tensor w, b;
};
TORCH_MODULE(TwoParams);

TEST(Optimizer, AdamWStepMatchesHandAndTorch) {
  TwoParams m;
  OptimizerConfig cfg;
  cfg.lr = 0.01;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.95;
  cfg.eps = 1e-8;
  cfg.weight_decay = 0.1;
  auto optimizer = make_optimizer(*m, cfg);
  ASSERT_EQ(optimizer->param_groups().size(), 2u);
  const std::vector<std::vector<double>> grads_w = {{0.3, -0.6, 1.2, 0.05}, {-0.1, 0.2, 0.9, -0.3}};
  const std::vector<std::vector<double>> grads_b = {{-0.4, 0.7}, {0.25, 0.5}};

  // By hand: decoupled decay p *= 1 - lr * wd, then the bias-corrected Adam update.
  std::vector<double> w = {0.5, -1.0, 2.0, 0.25}, b = {0.1, -0.2};
  std::vector<double> mw(4, 0), vw(4, 0), mb(2, 0), vb(2, 0);
  auto hand_step = [&](std::vector<double>& p, std::vector<double>& mom, std::vector<double>& var,
                       const std::vector<double>& g, double wd, int t) {
    for (std::size_t i = 0; i < p.size(); ++i) {
      p[i] *= 1 - cfg.lr * wd;
      mom[i] = cfg.beta1 * mom[i] + (1 - cfg.beta1) * g[i];
      var[i] = cfg.beta2 * var[i] + (1 - cfg.beta2) * g[i] * g[i];
      const double m_hat = mom[i] / (1 - std::pow(cfg.beta1, t));
      const double v_hat = var[i] / (1 - std::pow(cfg.beta2, t));
      p[i] -= cfg.lr * m_hat / (std::sqrt(v_hat) + cfg.eps);
    }
  };
  // torch.optim.AdamW (torch 2.11.0, CPU, float64), printed by:
  //   w = torch.nn.Parameter(torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64))
  //   b = torch.nn.Parameter(torch.tensor([0.1, -0.2], dtype=torch.float64))
  //   opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
  //                           lr=0.01, betas=(0.9, 0.95), eps=1e-8)
  //   for gw, gb in [(tensor([[0.3, -0.6], [1.2, 0.05]]), tensor([-0.4, 0.7])),
  //                  (tensor([[-0.1, 0.2], [0.9, -0.3]]), tensor([0.25, 0.5]))]:  # float64
  //       w.grad, b.grad = gw, gb; opt.step(); print(w.flatten().tolist(), b.tolist())
  //   print(opt.state[w]["exp_avg_sq"].flatten().tolist())
  const std::vector<std::vector<double>> torch_w = {
      {0.4895000003333333, -0.9890000001666667, 1.9880000000833333, 0.2397500019999996},
      {0.4849674334972932, -0.9839679332394458, 1.9761514770211854, 0.24567658024593725}};
  const std::vector<std::vector<double>> torch_b = {{0.10999999975000001, -0.20999999985714288},
                                                    {0.11174559169229233, -0.21981832300899076}};
  for (int t = 1; t <= 2; ++t) {
    m->w.mutable_grad() = torch::tensor(grads_w[t - 1], torch::kDouble).reshape({2, 2});
    m->b.mutable_grad() = torch::tensor(grads_b[t - 1], torch::kDouble);
    optimizer->step();
    hand_step(w, mw, vw, grads_w[t - 1], cfg.weight_decay, t);
    hand_step(b, mb, vb, grads_b[t - 1], 0.0, t);
    const auto ow = m->w.flatten();
    for (int i = 0; i < 4; ++i) {
      EXPECT_NEAR(ow[i].item<double>(), w[i], 1e-14) << "hand, step " << t << " w[" << i << "]";
      EXPECT_NEAR(ow[i].item<double>(), torch_w[t - 1][i], 1e-15) << "torch, step " << t << " w[" << i << "]";
    }
    for (int i = 0; i < 2; ++i) {
      EXPECT_NEAR(m->b[i].item<double>(), b[i], 1e-14) << "hand, step " << t << " b[" << i << "]";
      EXPECT_NEAR(m->b[i].item<double>(), torch_b[t - 1][i], 1e-15) << "torch, step " << t << " b[" << i << "]";
    }
  }
  const auto& state = static_cast<const torch::optim::AdamWParamState&>(
      *optimizer->state().at(m->w.unsafeGetTensorImpl()));
  const std::vector<double> torch_v = {0.004775000000000004, 0.019100000000000016, 0.1089000000000001,
                                       0.004618750000000004};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(state.exp_avg_sq().flatten()[i].item<double>(), torch_v[i], 1e-17);
  EXPECT_EQ(state.step(), 2);
}

TEST(Optimizer, SetLearningRateReachesEveryGroup) {
  TwoParams m;
  auto optimizer = make_optimizer(*m, OptimizerConfig{});
  set_learning_rate(*optimizer, 3e-5);
  for (auto& group : optimizer->param_groups()) EXPECT_DOUBLE_EQ(group.options().get_lr(), 3e-5);
  EXPECT_DOUBLE_EQ(static_cast<torch::optim::AdamWOptions&>(optimizer->param_groups()[0].options()).weight_decay(),
                   0.1);
  EXPECT_DOUBLE_EQ(static_cast<torch::optim::AdamWOptions&>(optimizer->param_groups()[1].options()).weight_decay(),
                   0.0);
}

// Gradients w = [[3, 4], [0, 0]] (norm 5) and b = [12, 0] (norm 12): global norm 13.
void set_grads(TwoParams& m) {
  m->w.mutable_grad() = torch::tensor({3.0, 4.0, 0.0, 0.0}, torch::kDouble).reshape({2, 2});
  m->b.mutable_grad() = torch::tensor({12.0, 0.0}, torch::kDouble);
}

TEST(Optimizer, ClipGradientsScalesToMaxNorm) {
  TwoParams m;
  set_grads(m);
  EXPECT_DOUBLE_EQ(clip_gradients(*m, 1.3), 13.0);
  const double coef = 1.3 / (13.0 + 1e-6);
  EXPECT_NEAR(m->w.grad()[0][0].item<double>(), 3.0 * coef, 1e-15);
  EXPECT_NEAR(m->w.grad()[0][1].item<double>(), 4.0 * coef, 1e-15);
  EXPECT_NEAR(m->b.grad()[0].item<double>(), 12.0 * coef, 1e-15);
  EXPECT_NEAR(clip_gradients(*m, 0.0), 1.3, 1e-6);

  // Below the limit, and with clipping off: measured, not changed.
  set_grads(m);
  EXPECT_DOUBLE_EQ(clip_gradients(*m, 100.0), 13.0);
  EXPECT_DOUBLE_EQ(m->b.grad()[0].item<double>(), 12.0);
  EXPECT_DOUBLE_EQ(clip_gradients(*m, 0.0), 13.0);
  EXPECT_DOUBLE_EQ(m->w.grad()[0][1].item<double>(), 4.0);

  // No gradients at all: norm 0.
  TwoParams fresh;
  EXPECT_DOUBLE_EQ(clip_gradients(*fresh, 1.0), 0.0);
}

TEST(Optimizer, NonFiniteNormLeavesGradientsAlone) {
  TwoParams m;
  set_grads(m);
  m->b.mutable_grad()[1] = std::numeric_limits<double>::infinity();
  EXPECT_TRUE(std::isinf(clip_gradients(*m, 1.0)));
  EXPECT_DOUBLE_EQ(m->w.grad()[0][0].item<double>(), 3.0);
  EXPECT_DOUBLE_EQ(m->b.grad()[0].item<double>(), 12.0);

  set_grads(m);
  m->w.mutable_grad()[1][1] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(std::isnan(clip_gradients(*m, 1.0)));
  EXPECT_DOUBLE_EQ(m->b.grad()[0].item<double>(), 12.0);
}

}  // namespace
}  // namespace grpo::train
