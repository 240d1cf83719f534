// Router replay end to end on the tiny DeepSeek-V3 (MoE, MLA): the engine records every token's
// experts per MoE layer, build_grpo_batch lays them out like the batch, and the training forward
// replays them. The router bias then moves between sampling and training, as an update would move
// it: without replay a share of the training forward's routing decisions differ from the
// sampler's and its log-probs move away from the sampler's; with replay no decision differs and
// the log-probs are the sampler's again (to the usual sampler/trainer rounding).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "grpo/model/routing_record.h"
#include "grpo/rollout/engine.h"
#include "grpo/train/grpo_batch.h"
#include "grpo/train/policy_forward.h"
#include "model/model_test_util.h"

namespace grpo::train {
namespace {

struct Measured {
  double differ_fraction = 0, logp_diff = 0;
};

// The training forward on the whole batch, replaying or not; the routing decisions (token, layer)
// whose expert set differs from the sampler's, and the largest |trainer - sampler| log-prob.
Measured measure(model::CausalLM& model, const GrpoBatch& batch, bool replay) {
  model::RoutingRecord::Installed tape(model);
  const auto& rec = batch.routing;  // [N, P + L, M, K]
  if (replay) {
    std::vector<torch::Tensor> per_layer;
    for (int64_t l = 0; l < rec.size(2); ++l) per_layer.push_back(rec.select(2, l).reshape({-1, rec.size(3)}));
    tape.tape->set_replay(std::move(per_layer));
  }
  torch::NoGradGuard no_grad;
  const auto logps = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.position_ids,
                                         batch.completion_length(), 1.0);
  double differ = 0, count = 0;
  for (int64_t l = 0; l < rec.size(2); ++l) {
    const auto want = rec.select(2, l);
    const auto used = tape.tape->last(l).view(want.sizes());
    const auto valid = want.select(2, 0) >= 0;
    differ += (std::get<0>(want.sort(-1)).ne(std::get<0>(used.sort(-1))).any(-1) & valid).sum().item<double>();
    count += valid.sum().item<double>();
  }
  Measured m;
  m.differ_fraction = differ / count;
  m.logp_diff = ((logps - batch.sampler_logps) * batch.completion_mask).abs().max().item<double>();
  return m;
}

TEST(RouterReplay, TheTrainingForwardRunsTheSamplersExpertsAfterTheRouterMoved) {
  const auto cfg = model::test::tiny_dsv3();
  torch::manual_seed(5);
  model::CausalLM model(cfg, torch::TensorOptions().dtype(torch::kFloat));
  model->eval();
  rollout::GenerationConfig gc;
  gc.max_new_tokens = 7;
  gc.num_generations = 2;
  gc.sampling.temperature = 1.0;
  gc.eos_token_ids = {1, 2};
  gc.record_routing = true;
  rollout::Engine engine(model, nullptr, gc);
  // Ragged prompts: left padding in the batch, positions that are not the same in every row.
  std::vector<RolloutGroup> groups;
  std::vector<rollout::GenerationRequest> requests;
  for (int64_t p = 0; p < 3; ++p) {
    std::vector<int64_t> ids;
    for (int64_t k = 0; k < 3 + 2 * p; ++k) ids.push_back(5 + (11 * k + 7 * p) % 50);
    requests.push_back({.prompt_ids = ids, .seed = static_cast<uint64_t>(p + 1)});
  }
  const auto completions = engine.generate(requests);
  const int64_t M = static_cast<int64_t>(model->moe_layers().size());
  ASSERT_GT(M, 0);
  for (int64_t p = 0; p < 3; ++p) {
    RolloutGroup g;
    g.prompt_ids = requests[static_cast<size_t>(p)].prompt_ids;
    for (int64_t k = 0; k < 2; ++k) {
      const auto& c = completions[static_cast<size_t>(p * 2 + k)];
      ASSERT_TRUE(c.routing.defined());
      EXPECT_EQ(c.routing.sizes(),
                (std::vector<int64_t>{static_cast<int64_t>(g.prompt_ids.size() + c.token_ids.size()) - 1, M,
                                      cfg.num_experts_per_tok}));
      g.completions.push_back(c);
      g.totals.push_back(0.0);
    }
    groups.push_back(std::move(g));
  }
  const auto batch = build_grpo_batch(groups, false);
  ASSERT_TRUE(batch.routing.defined());

  // The router as it sampled: the training forward chooses what the sampler chose.
  const auto same = measure(model, batch, false);
  EXPECT_EQ(same.differ_fraction, 0);
  EXPECT_LT(same.logp_diff, 1e-5);
  // The bias moves (as the aux-loss-free update moves it).
  {
    torch::NoGradGuard no_grad;
    torch::manual_seed(6);
    for (auto& moe : model->moe_layers()) moe->e_score_correction_bias.add_(torch::randn({cfg.n_routed_experts}) * 0.5);
  }
  const auto moved = measure(model, batch, false);
  const auto replayed = measure(model, batch, true);
  std::printf(
      "routing decisions differing: %.4f before the move, %.4f after, %.4f replayed; "
      "max |trainer - sampler| log-prob: %.3g, %.3g, %.3g\n",
      same.differ_fraction, moved.differ_fraction, replayed.differ_fraction, same.logp_diff, moved.logp_diff,
      replayed.logp_diff);
  EXPECT_GT(moved.differ_fraction, 0.02);
  EXPECT_GT(moved.logp_diff, 1e-3);
  EXPECT_EQ(replayed.differ_fraction, 0);
  EXPECT_LT(replayed.logp_diff, 1e-5);
}

}  // namespace
}  // namespace grpo::train
