#include "grpo/model/moe.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <limits>

#include "grpo/kernels/moe_dispatch.h"
#include "grpo/kernels/swiglu.h"
#include "grpo/model/activation_checkpoint.h"
#include "grpo/model/fp8_linear.h"
#include "grpo/model/invariant_ops.h"

namespace grpo::model {

MoeImpl::MoeImpl(const ModelConfig& cfg, const torch::TensorOptions& options)
    : experts_(cfg.n_routed_experts),
      top_k_(cfg.num_experts_per_tok),
      groups_(cfg.n_group),
      topk_groups_(cfg.topk_group),
      norm_topk_(cfg.norm_topk_prob),
      scaling_(cfg.routed_scaling_factor),
      alpha_(cfg.seq_aux_loss_alpha),
      kernel_backend_(cfg.kernels) {
  const int64_t d = cfg.hidden_size, f = cfg.moe_intermediate_size;
  const double std = cfg.initializer_range;
  gate_weight = register_parameter("gate_weight", torch::empty({experts_, d}, options));
  e_score_correction_bias = register_buffer("e_score_correction_bias",
                                            torch::zeros({experts_}, options.dtype(torch::kFloat)));
  experts_gate = register_parameter("experts_gate", torch::empty({experts_, f, d}, options));
  experts_up = register_parameter("experts_up", torch::empty({experts_, f, d}, options));
  experts_down = register_parameter("experts_down", torch::empty({experts_, d, f}, options));
  if (!gate_weight.is_meta()) {
    torch::NoGradGuard no_grad;
    for (auto* p : {&gate_weight, &experts_gate, &experts_up, &experts_down}) p->normal_(0.0, std);
  }
  if (cfg.n_shared_experts > 0) {
    shared_experts = register_module("shared_experts", Mlp(d, f * cfg.n_shared_experts, false, std, options));
    shared_experts->kernel_backend = cfg.kernels;
  }
  load_ = torch::zeros({experts_}, torch::kDouble);
}

RouterOutput MoeImpl::route(const torch::Tensor& x_flat, const torch::Tensor& given) const {
  const auto x32 = x_flat.to(torch::kFloat);
  const bool invariant = invariant::applies(x32);
  const auto logits = invariant ? invariant::linear(x32, gate_weight.to(torch::kFloat), torch::Tensor())
                                : at::linear(x32, gate_weight.to(torch::kFloat));
  const auto scores = invariant ? invariant::sigmoid(logits) : logits.sigmoid();  // [N, E]
  auto choice = scores + e_score_correction_bias;
  if (groups_ > 1) {
    const int64_t n = x_flat.size(0);
    const auto grouped = choice.view({n, groups_, experts_ / groups_});
    const auto group_scores = std::get<0>(grouped.topk(2, -1)).sum(-1);  // [N, G]
    const auto keep = std::get<1>(group_scores.topk(topk_groups_, -1, true, false));
    const auto group_mask = torch::zeros_like(group_scores).scatter_(1, keep, 1.0).to(torch::kBool);
    const auto expert_mask = group_mask.unsqueeze(-1).expand({n, groups_, experts_ / groups_}).reshape({n, experts_});
    choice = choice.masked_fill(expert_mask.logical_not(), -std::numeric_limits<float>::infinity());
  }
  auto index = std::get<1>(choice.topk(top_k_, -1, true, false));
  if (given.defined()) {
    TORCH_CHECK(given.dim() == 2 && given.size(0) == index.size(0) && given.size(1) == top_k_,
                "MoE route: expected replayed experts [", index.size(0), ", ", top_k_, "], got ", given.sizes());
    const auto g = given.to(index.device(), torch::kLong);
    TORCH_CHECK(g.max().item<int64_t>() < experts_, "MoE route: a replayed expert is >= the ", experts_, " experts");
    const auto replayed = (g.select(1, 0) >= 0).unsqueeze(1);  // [N, 1]: rows with a record
    index = torch::where(replayed, g, index);
  }
  auto weight = scores.gather(1, index);
  if (norm_topk_) weight = weight / ((invariant ? invariant::sum_last(weight) : weight.sum(-1, true)) + 1e-20);
  return {scores, index, weight * scaling_};
}

torch::Tensor MoeImpl::forward(const torch::Tensor& x, const torch::Tensor& valid) {
  const auto shape = x.sizes().vec();
  const int64_t d = x.size(-1);
  const auto x_flat = x.reshape({-1, d});
  const int64_t n = x_flat.size(0);
  const RouterOutput r = route(x_flat, routing ? routing->replay(*this, n) : torch::Tensor());
  if (routing) routing->record(*this, r.expert_index);

  // Sort the N*K (token, expert) pairs by expert; stable, so each expert's tokens keep their order.
  const auto flat_expert = r.expert_index.reshape({-1});
  const auto order = std::get<1>(flat_expert.sort(/*stable=*/true, 0, false));
  const auto counts = torch::bincount(flat_expert, {}, experts_).to(torch::kCPU);

  torch::Tensor routed;  // [N, D]
  if (exchange && exchange->ranks() > 1) {
    routed = routed_exchanged(x_flat, r.weight, order, counts);
  } else if (use_fused_kernels(kernel_backend_, x)) {
    routed = routed_fused(x_flat, r.weight, order, counts);
  } else {
    const auto token = order.div(top_k_, "floor");                           // [N*K]
    const auto pair_weight = r.weight.reshape({-1}).index_select(0, order);  // [N*K]
    const auto gathered = x_flat.index_select(0, token);                     // [N*K, D]
    const auto expert_out = held_experts(gathered, counts) * pair_weight.unsqueeze(1).to(x.scalar_type());
    routed = combine(expert_out, token, order, n);
  }
  auto out = routed.view(shape);
  if (shared_experts) out = out + shared_experts(x);

  // Statistics (training forwards only, so that generation does not steer the bias) and the
  // balance loss count real tokens only.
  // A checkpointed block's recomputation in the backward pass does not count its tokens again.
  if (is_training() && !recomputing()) {
    torch::NoGradGuard no_grad;
    auto idx = r.expert_index;
    if (valid.defined()) idx = idx.index({valid.reshape({-1}).to(torch::kBool)});
    load_ += torch::bincount(idx.reshape({-1}), {}, experts_).to(torch::kCPU).to(torch::kDouble);
  }
  balance_loss_ = torch::Tensor();
  if (alpha_ > 0 && is_training() && x.dim() == 3) {
    const int64_t b = x.size(0), t = x.size(1);
    const auto mask = valid.defined() ? valid.to(torch::kFloat) : torch::ones({b, t}, x.options().dtype(torch::kFloat));
    const auto tokens = mask.sum(1).clamp_min(1);  // [B]
    const auto chosen =
        torch::zeros({n, experts_}, mask.options()).scatter_(1, r.expert_index, 1.0).view({b, t, experts_});
    const auto f = (chosen * mask.unsqueeze(-1)).sum(1) * (static_cast<double>(experts_) / top_k_) /
                   tokens.unsqueeze(1);
    const auto normed = r.scores / r.scores.sum(-1, true);
    const auto p = (normed.view({b, t, experts_}) * mask.unsqueeze(-1)).sum(1) / tokens.unsqueeze(1);
    balance_loss_ = alpha_ * (f * p).sum(1).mean();
  }
  return out;
}

torch::Tensor MoeImpl::routed_fused(const torch::Tensor& x_flat, const torch::Tensor& weight,
                                    const torch::Tensor& order, const torch::Tensor& counts) {
  const auto offsets = torch::cat({torch::zeros({1}, counts.options()), counts.cumsum(0)});  // [E+1] CPU
  const auto xs = grpo::kernels::moe_permute(x_flat, order, top_k_);                         // [N*K, D] expert-sorted
  torch::Tensor ys;                                                                          // [N*K, D]
  if (!fp8) {
    const auto gate = grpo::kernels::grouped_linear(xs, experts_gate, offsets);  // [N*K, F]
    const auto up = grpo::kernels::grouped_linear(xs, experts_up, offsets);
    ys = grpo::kernels::grouped_linear(grpo::kernels::swiglu(gate, up), experts_down, offsets);
  } else {
    // FP8 experts: the per-expert FP8 GEMMs of the reference, with the fused activation.
    std::vector<torch::Tensor> outputs{xs.new_empty({0, xs.size(1)})};
    const auto* o = offsets.data_ptr<int64_t>();
    for (int64_t e = 0; e < experts_; ++e) {
      if (o[e + 1] == o[e]) continue;
      const auto rows = xs.narrow(0, o[e], o[e + 1] - o[e]);
      const auto h = grpo::kernels::swiglu(expert_linear(rows, experts_gate[e], fp8),
                                           expert_linear(rows, experts_up[e], fp8));
      outputs.push_back(expert_linear(h, experts_down[e], fp8));
    }
    ys = torch::cat(outputs, 0);
  }
  return grpo::kernels::moe_unpermute(ys, weight, order, top_k_);
}

torch::Tensor MoeImpl::held_experts(const torch::Tensor& xs, const torch::Tensor& counts) {
  const int64_t held = experts_gate.size(0);
  TORCH_CHECK(counts.numel() == held, "MoE: expected ", held, " expert counts, found ", counts.numel());
  if (!fp8 && xs.size(0) > 0 && use_fused_kernels(kernel_backend_, xs)) {
    const auto offsets = torch::cat({torch::zeros({1}, counts.options()), counts.cumsum(0)});
    const auto gate = grpo::kernels::grouped_linear(xs, experts_gate, offsets);
    const auto up = grpo::kernels::grouped_linear(xs, experts_up, offsets);
    return grpo::kernels::grouped_linear(grpo::kernels::swiglu(gate, up), experts_down, offsets);
  }
  std::vector<torch::Tensor> outputs{xs.new_empty({0, xs.size(1)})};
  const auto* count = counts.data_ptr<int64_t>();
  int64_t offset = 0;
  for (int64_t e = 0; e < held; ++e) {
    if (count[e] == 0) continue;
    const auto rows = xs.narrow(0, offset, count[e]);
    const auto gate = expert_linear(rows, experts_gate[e], fp8), up = expert_linear(rows, experts_up[e], fp8);
    const auto h = invariant::applies(gate) ? invariant::silu_mul(gate, up) : torch::silu(gate) * up;
    outputs.push_back(expert_linear(h, experts_down[e], fp8));
    offset += count[e];
  }
  return torch::cat(outputs, 0);
}

torch::Tensor MoeImpl::routed_exchanged(const torch::Tensor& x_flat, const torch::Tensor& weight,
                                        const torch::Tensor& order, const torch::Tensor& counts) {
  const int64_t ranks = exchange->ranks(), held = experts_gate.size(0), n = x_flat.size(0);
  TORCH_CHECK(held * ranks == experts_, "MoE: an exchange of ", ranks, " ranks needs ", experts_, " / ", ranks,
              " experts here, found ", held);
  const auto token = order.div(top_k_, "floor");                         // [N*K]
  const auto pair_weight = weight.reshape({-1}).index_select(0, order);  // [N*K]
  const auto xs = x_flat.index_select(0, token);                         // [N*K, D] by expert = by owner
  // Rows per destination, and what every rank sends here per local expert.
  const auto received = exchange->exchange_counts(counts).contiguous();  // [R, held]
  std::vector<int64_t> send(static_cast<size_t>(ranks)), recv(static_cast<size_t>(ranks));
  const auto send_counts = counts.view({ranks, held}).sum(1);
  const auto recv_counts = received.sum(1);
  for (int64_t r = 0; r < ranks; ++r) {
    send[static_cast<size_t>(r)] = send_counts[r].item<int64_t>();
    recv[static_cast<size_t>(r)] = recv_counts[r].item<int64_t>();
  }
  const auto got = exchange->exchange(xs, send, recv);  // [M, D] by source rank, then local expert
  // Sorted by local expert (stable: within an expert, by source rank), through the experts, back.
  const auto local_expert = torch::arange(held, torch::kLong).repeat({ranks}).repeat_interleave(received.reshape({-1}));
  const auto by_expert = std::get<1>(local_expert.sort(/*stable=*/true, 0, false)).to(x_flat.device());
  auto ys_sorted = held_experts(got.index_select(0, by_expert), received.sum(0));
  if (ys_sorted.size(0) == 0 && at::GradMode::is_enabled()) {
    // No rows for any expert here: the (empty) results still hang from the rows received and the
    // experts (gradient 0, as one process's whole tensors get), so that this rank's backward
    // answers both exchanges as its peers' do.
    const auto anchor = got.sum() + experts_gate.sum() + experts_up.sum() + experts_down.sum();
    ys_sorted = ys_sorted + anchor.to(ys_sorted.scalar_type()) * 0;
  }
  const auto ys = torch::empty_like(ys_sorted).index_copy(0, by_expert, ys_sorted);  // by source rank
  const auto back = exchange->exchange(ys, recv, send);                              // [N*K, D] as xs
  const auto expert_out = back * pair_weight.unsqueeze(1).to(x_flat.scalar_type());
  return combine(expert_out, token, order, n);
}

torch::Tensor MoeImpl::combine(const torch::Tensor& expert_out, const torch::Tensor& token, const torch::Tensor& order,
                               int64_t n) const {
  const int64_t d = expert_out.size(1);
  if (!invariant::applies(expert_out))
    return torch::zeros({n, d}, expert_out.options()).index_add_(0, token, expert_out);
  // Consistent mode: each token's K results summed in slot order, whatever the batch.
  const auto by_slot = torch::empty_like(expert_out).index_copy(0, order, expert_out).view({n, top_k_, d});
  auto out = by_slot.select(1, 0);
  for (int64_t k = 1; k < top_k_; ++k) out = out + by_slot.select(1, k);
  return out;
}

double MoeImpl::update_bias(double gamma) {
  torch::NoGradGuard no_grad;
  const double mean = load_.mean().item<double>();
  const double imbalance = mean > 0 ? load_.max().item<double>() / mean : 1.0;
  const auto direction = torch::sign(mean - load_).to(torch::kFloat).to(e_score_correction_bias.device());
  e_score_correction_bias.add_(direction * gamma);
  load_.zero_();
  return imbalance;
}

}  // namespace grpo::model
