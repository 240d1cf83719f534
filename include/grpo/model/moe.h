// Mixture of experts (DeepSeek-V3): sigmoid router with aux-loss-free bias, group-limited top-k,
// routed experts dispatched by sorting tokens by expert, plus shared experts.
//
// Router (all float32): scores = sigmoid(x W^T) [N, E]; choice = scores + e_score_correction_bias;
// with n_group > 1 each group scores as the sum of its top-2 choices and only the best topk_group
// groups stay (others -inf); the top-K choices pick the experts; their weights are the un-biased
// scores, normalised to sum 1 when norm_topk_prob (+1e-20), times routed_scaling_factor.
//
// Dispatch: the N*K (token, expert) pairs are sorted by expert (stable), the tokens gathered into
// one contiguous buffer, each expert with at least one token runs its SwiGLU on its slice, and the
// weighted results are added back per token in expert order. Work follows the tokens routed, not
// the number of experts.
//
// Expert parallelism (an ExpertExchange installed from outside, grpo/model/expert_exchange.h): the
// layer holds its block of E / R experts; the sorted rows go to the ranks owning their experts, the
// local experts run on the rows received (sorted by local expert), and the results come back to be
// weighted and added per token in the same order as in one process.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <optional>

#include "grpo/model/expert_exchange.h"
#include "grpo/model/layers.h"
#include "grpo/model/model_config.h"
#include "grpo/model/routing_tape.h"

namespace grpo::model {

struct RouterOutput {
  torch::Tensor scores;        // [N, E] float32 sigmoid scores
  torch::Tensor expert_index;  // [N, K] int64
  torch::Tensor weight;        // [N, K] float32 combine weights
};

class MoeImpl : public torch::nn::Module {
 public:
  MoeImpl(const ModelConfig& cfg, const torch::TensorOptions& options = {});

  // x [B, T, D] -> [B, T, D]. `valid` [B, T] (bool; undefined = all) marks real tokens for the
  // load statistics and the sequence-wise balance loss.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& valid = {});

  // x_flat [N, D]. `given` [N, K] int64 (undefined = none): the experts of each row whose entries
  // are >= 0 (router replay), the gate weights computed from the current scores at them; rows of
  // -1 choose for themselves.
  RouterOutput route(const torch::Tensor& x_flat, const torch::Tensor& given = {}) const;

  // Aux-loss-free balancing: bias += gamma * sign(mean load - load) over the tokens counted since
  // the last call, then the counts restart. Returns the load imbalance (max / mean) that was used.
  double update_bias(double gamma);

  // Routed real tokens per expert over the training-mode forwards since the last update_bias
  // [E] (float64, CPU); eval-mode forwards (generation, evaluation) are not counted.
  torch::Tensor expert_load() const { return load_; }
  // Sequence-wise balance loss of the last training forward (scalar), undefined when alpha is 0.
  torch::Tensor balance_loss() const { return balance_loss_; }

  torch::Tensor gate_weight;              // [E, D] router ("mlp.gate.weight")
  torch::Tensor e_score_correction_bias;  // [E] float32 buffer
  torch::Tensor experts_gate;             // [E, F, D]
  torch::Tensor experts_up;               // [E, F, D]
  torch::Tensor experts_down;             // [E, D, F]
  Mlp shared_experts{nullptr};            // [n_shared * F]; null when there are none
  // FP8 mode of the routed experts (grpo/model/fp8_linear.h; set by fp8_enable, the one owner of the
  // choice, like LinearImpl::fp8): both expert paths, the per-expert loop and the fused dispatch,
  // run their GEMMs through fp8_linear with this config; unset = the experts' own dtype.
  std::optional<Fp8Config> fp8;
  // Expert parallelism: set (with the expert tensors cut to this rank's block) by
  // grpo/dist/expert_parallel.h; null = every expert here.
  std::shared_ptr<ExpertExchange> exchange;
  // Router replay and capture (grpo/model/routing_tape.h); null = neither.
  std::shared_ptr<RoutingTape> routing;

  int64_t routed_experts() const { return experts_; }  // E, whatever this rank holds

 private:
  int64_t experts_, top_k_, groups_, topk_groups_;
  bool norm_topk_;
  double scaling_, alpha_;
  // Routed experts through the fused ops of grpo/kernels/ (permute, grouped GEMMs, SwiGLU,
  // unpermute): x_flat [N, D], weight [N, K], order [N*K], counts [E] (CPU) -> [N, D].
  torch::Tensor routed_fused(const torch::Tensor& x_flat, const torch::Tensor& weight, const torch::Tensor& order,
                             const torch::Tensor& counts);
  // The experts held here on rows sorted by (local) expert: xs [M, D], counts [held] (CPU) -> [M, D].
  torch::Tensor held_experts(const torch::Tensor& xs, const torch::Tensor& counts);
  // Routed experts over the exchange: the same arguments as routed_fused -> [N, D].
  torch::Tensor routed_exchanged(const torch::Tensor& x_flat, const torch::Tensor& weight, const torch::Tensor& order,
                                 const torch::Tensor& counts);
  // The weighted results of the N*K (token, expert) pairs, expert_out [N*K, D] in `order`, summed
  // per token (token [N*K] = order / K) -> [N, D]; in consistent mode in slot order.
  torch::Tensor combine(const torch::Tensor& expert_out, const torch::Tensor& token, const torch::Tensor& order,
                        int64_t n) const;

  torch::Tensor load_;
  torch::Tensor balance_loss_;
  KernelBackend kernel_backend_;  // ModelConfig::kernels: fused dispatch or the reference loop
};
TORCH_MODULE(Moe);

}  // namespace grpo::model
