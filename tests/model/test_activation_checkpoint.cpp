// Activation checkpointing: a checkpointed model computes the same loss and the same gradients as
// the plain one (the reference is the same model run without checkpointing), counts MoE loads once,
// and a hand-written function's gradients match autograd's through checkpoint().
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "grpo/model/activation_checkpoint.h"
#include "grpo/model/causal_lm.h"
#include "model_test_util.h"

namespace grpo::model {
namespace {

// CE over all next tokens + MTP loss + balance loss: every path the trainers back-propagate.
torch::Tensor training_loss(CausalLM& model, const test::Batch& b, bool with_mtp) {
  ForwardOptions fo;
  fo.mtp = with_mtp;
  const auto out = model->forward(b.ids, b.positions, b.mask, nullptr, fo);
  const int64_t t = b.ids.size(1);
  const auto logits = out.logits.narrow(1, 0, t - 1).reshape({-1, out.logits.size(-1)});
  const auto target = b.ids.narrow(1, 1, t - 1).reshape({-1});
  const auto keep = b.mask.narrow(1, 1, t - 1).reshape({-1}).to(torch::kBool);
  auto loss = torch::nll_loss(torch::log_softmax(logits.index({keep}), -1), target.index({keep}));
  if (with_mtp) loss = loss + mtp_loss(out, b.ids, b.mask, 0.3);
  if (out.balance_loss.defined()) loss = loss + out.balance_loss;
  return loss;
}

struct Grads {
  double loss;
  std::vector<torch::Tensor> grads;
  std::vector<torch::Tensor> loads;
};

Grads run(const ModelConfig& cfg, bool checkpointing, bool with_mtp) {
  torch::manual_seed(3);
  CausalLM model(cfg);
  model->train();
  model->activation_checkpointing = checkpointing;
  torch::manual_seed(4);
  const auto batch = test::ragged_batch(cfg.vocab_size, 3, 12);
  const auto loss = training_loss(model, batch, with_mtp);
  loss.backward();
  Grads g;
  g.loss = loss.item<double>();
  for (const auto& p : model->parameters()) g.grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
  for (const auto& moe : model->moe_layers()) g.loads.push_back(moe->expert_load().clone());
  return g;
}

void expect_same(const Grads& a, const Grads& b) {
  EXPECT_DOUBLE_EQ(a.loss, b.loss);  // the first forward is the same computation
  ASSERT_EQ(a.grads.size(), b.grads.size());
  int64_t compared = 0;
  for (size_t i = 0; i < a.grads.size(); ++i) {
    ASSERT_EQ(a.grads[i].defined(), b.grads[i].defined()) << "parameter " << i;
    if (!a.grads[i].defined()) continue;
    const double scale = a.grads[i].abs().max().item<double>() + 1e-12;
    EXPECT_LE((a.grads[i] - b.grads[i]).abs().max().item<double>() / scale, 1e-5) << "parameter " << i;
    compared += a.grads[i].ne(0).any().item<bool>() ? 1 : 0;
  }
  EXPECT_GT(compared, 20);  // gradients reached the blocks' parameters, not just the head
  ASSERT_EQ(a.loads.size(), b.loads.size());
  for (size_t i = 0; i < a.loads.size(); ++i) EXPECT_TRUE(torch::equal(a.loads[i], b.loads[i])) << "MoE layer " << i;
}

TEST(ActivationCheckpoint, DeepSeekV3WithMoeBalanceLossAndMtp) {
  auto cfg = test::tiny_dsv3();
  cfg.seq_aux_loss_alpha = 0.01;  // the balance loss must back-propagate through the recomputation
  const auto plain = run(cfg, false, true);
  const auto checkpointed = run(cfg, true, true);
  expect_same(plain, checkpointed);
  // The loads were counted once per forward: 3 rows x 12 positions minus the padding, x K experts.
  const double real_tokens = 36 - (0 + 2 + 4);
  ASSERT_FALSE(checkpointed.loads.empty());
  EXPECT_DOUBLE_EQ(checkpointed.loads[0].sum().item<double>(), real_tokens * 2);
}

TEST(ActivationCheckpoint, DenseQwen2) {
  const auto cfg = test::tiny_qwen2();
  expect_same(run(cfg, false, false), run(cfg, true, false));
}

TEST(ActivationCheckpoint, EvalAndNoGradForwardsAreUnchanged) {
  const auto cfg = test::tiny_dsv3();
  torch::manual_seed(3);
  CausalLM model(cfg);
  torch::manual_seed(4);
  const auto b = test::ragged_batch(cfg.vocab_size, 2, 9);
  torch::NoGradGuard no_grad;
  const auto plain = model->forward(b.ids, b.positions, b.mask).logits;
  model->activation_checkpointing = true;
  EXPECT_TRUE(torch::equal(plain, model->forward(b.ids, b.positions, b.mask).logits));
}

// checkpoint() on a hand-written function: y = tanh(x W) * s, z = sum(y^2); gradients w.r.t. x, W
// (a parameter not among the inputs) and s against autograd without checkpointing, through both
// .backward() and torch::autograd::grad; the function runs twice (forward, recomputation).
TEST(ActivationCheckpoint, FunctionGradientsMatchAutograd) {
  torch::manual_seed(0);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  auto x = torch::randn({4, 3}, opts).requires_grad_();
  auto w = torch::randn({3, 5}, opts).requires_grad_();
  auto s = torch::randn({5}, opts).requires_grad_();
  int calls = 0;
  int recomputed = 0;
  const CheckpointFn fn = [&](const std::vector<torch::Tensor>& in) {
    ++calls;
    if (recomputing()) ++recomputed;
    const auto y = torch::tanh(in[0].matmul(w)) * in[1];
    return std::vector<torch::Tensor>{y, y.pow(2).sum()};
  };
  const auto ref_y = torch::tanh(x.matmul(w)) * s;
  const auto ref_loss = ref_y.sum() * 0.5 + ref_y.pow(2).sum();
  const auto ref = torch::autograd::grad({ref_loss}, {x, w, s});

  auto out = checkpoint(fn, {x, s}, {w});
  ASSERT_EQ(calls, 1);
  EXPECT_EQ(recomputed, 0);
  EXPECT_TRUE(torch::allclose(out[0], ref_y.detach()));
  const auto loss = out[0].sum() * 0.5 + out[1];
  const auto got = torch::autograd::grad({loss}, {x, w, s});
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(recomputed, 1);
  EXPECT_FALSE(recomputing());
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(torch::allclose(got[i], ref[i], 1e-12, 1e-12)) << "input " << i;

  // .backward() accumulates into the leaves' .grad, the parameter's included.
  auto out2 = checkpoint(fn, {x, s}, {w});
  (out2[0].sum() * 0.5 + out2[1]).backward();
  EXPECT_TRUE(torch::allclose(w.grad(), ref[1], 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(x.grad(), ref[0], 1e-12, 1e-12));

  // A frozen input: the parameter still gets its gradient (outputs require grad through it).
  const auto frozen = x.detach();
  w.mutable_grad() = torch::Tensor();
  auto out3 = checkpoint(fn, {frozen, s.detach()}, {w});
  ASSERT_TRUE(out3[1].requires_grad());
  out3[1].backward();
  const auto y3 = torch::tanh(frozen.matmul(w)) * s.detach();
  const auto ref_w = torch::autograd::grad({y3.pow(2).sum()}, {w})[0];
  EXPECT_TRUE(torch::allclose(w.grad(), ref_w, 1e-12, 1e-12));
}

}  // namespace
}  // namespace grpo::model
