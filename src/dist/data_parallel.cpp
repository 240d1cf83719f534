#include "grpo/dist/data_parallel.h"

#include "grpo/dist/launch_env.h"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>

namespace grpo::dist {

void broadcast_model(torch::nn::Module& model, World& w) {
  if (!w.distributed()) return;
  torch::NoGradGuard no_grad;
  for (auto& p : model.parameters()) w.broadcast(p, 0);
  for (auto& b : model.buffers()) w.broadcast(b, 0);
}

void check_replicas(torch::nn::Module& model, World& w) {
  if (!w.distributed()) return;
  std::vector<std::string> names;
  std::vector<torch::Tensor> prints;
  torch::NoGradGuard no_grad;
  auto add = [&](const std::string& name, const torch::Tensor& t) {
    const auto d = t.detach().to(torch::kCPU, torch::kDouble);
    names.push_back(name);
    prints.push_back(torch::stack({d.sum(), d.square().sum()}));
  };
  for (const auto& item : model.named_parameters()) add(item.key(), item.value());
  for (const auto& item : model.named_buffers()) add(item.key(), item.value());
  if (prints.empty()) return;
  auto hi = torch::stack(prints), lo = hi.clone();
  w.all_reduce(hi, ReduceOp::max);
  w.all_reduce(lo, ReduceOp::min);
  const auto differs = hi.ne(lo).any(1);
  for (size_t i = 0; i < names.size(); ++i) {
    if (differs[static_cast<int64_t>(i)].item<bool>()) {
      throw std::runtime_error("rank " + std::to_string(w.rank()) + ": the replicas differ: '" + names[i] +
                               "' is not the same on every rank (sum between " +
                               std::to_string(lo[static_cast<int64_t>(i)][0].item<double>()) + " and " +
                               std::to_string(hi[static_cast<int64_t>(i)][0].item<double>()) + ")");
    }
  }
}

DataParallel::DataParallel(model::CausalLM& model, const train::OptimizerConfig& cfg)
    : model_(model), world_(dist::world(model->embed_tokens.device())) {
  broadcast_model(*model_, world_);
  const int64_t ep = config().expert_parallel;
  if (ep > 1 && config().zero1) {
    throw std::invalid_argument("run.dist: zero1 with expert_parallel " + std::to_string(ep) +
                                " is not supported (ZeRO-1 partitions replicated parameters only); set one of them");
  }
  experts_ = std::make_unique<ExpertParallel>(model_.ptr(), world_, ep);
  optimizer_ = std::make_unique<ShardedOptimizer>(*model_, cfg, world_, config().zero1);
  optimizer_->set_expert_parallel(experts_.get());
  std::vector<torch::Tensor> replicated, experts;
  for (const auto& p : optimizer_->params()) (experts_->is_expert(p) ? experts : replicated).push_back(p);
  sync_ = std::make_unique<GradSync>(replicated, world_, config().bucket_mb);
  if (!experts.empty()) expert_sync_ = std::make_unique<GradSync>(experts, experts_->replicas(), config().bucket_mb);
}

DataParallel::~DataParallel() {
  // The hooks go before the experts are gathered back (the tensors change shape).
  expert_sync_.reset();
  sync_.reset();
}

void DataParallel::begin_step(double lr) {
  optimizer_->set_learning_rate(lr);
  optimizer_->zero_grad();
}

void DataParallel::backward(const torch::Tensor& loss, bool last_micro_batch) {
  sync_->arm(last_micro_batch, loss);
  if (expert_sync_) expert_sync_->arm(last_micro_batch, loss);
  loss.backward();
}

double DataParallel::reduce_gradients(double max_grad_norm) {
  sync_->finish();
  if (!experts_->active()) return train::clip_gradients(*model_, max_grad_norm);
  if (expert_sync_) expert_sync_->finish();
  // Expert parallel: a block that no token reached (on any replica) has no gradient, where one
  // process would hold zeros in that part of the whole tensor.
  for (const auto& p : optimizer_->params()) {
    if (experts_->is_expert(p) && !p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
  }
  // The norm of the whole model, as clip_gradients computes it: each tensor's norm (an expert
  // tensor's from its blocks' squared norms summed over the expert group), then their norm.
  std::vector<torch::Tensor> grads, norms;
  std::vector<size_t> expert_index;
  for (const auto& p : optimizer_->params()) {
    if (!p.grad().defined()) continue;
    const auto& g = p.grad();
    const auto dtype = g.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
    auto norm = at::linalg_vector_norm(g, 2, std::nullopt, false, dtype);
    if (experts_->is_expert(p)) expert_index.push_back(norms.size());
    grads.push_back(g);
    norms.push_back(norm);
  }
  if (grads.empty()) return 0.0;
  if (!expert_index.empty()) {
    auto squares = torch::empty({static_cast<int64_t>(expert_index.size())}, torch::kDouble);
    for (size_t k = 0; k < expert_index.size(); ++k) {
      squares[static_cast<int64_t>(k)] = norms[expert_index[k]].to(torch::kDouble).square().item<double>();
    }
    experts_->group().all_reduce(squares);
    for (size_t k = 0; k < expert_index.size(); ++k) {
      auto& n = norms[expert_index[k]];
      n = squares[static_cast<int64_t>(k)].sqrt().to(n.scalar_type());
    }
  }
  const auto device = grads.front().device();
  for (auto& n : norms) n = n.to(device);
  const torch::Tensor total = at::linalg_vector_norm(torch::stack(norms), 2);
  const double norm = total.item<double>();
  if (!std::isfinite(norm) || max_grad_norm <= 0) return norm;
  const torch::Tensor coef = (max_grad_norm / (total + 1e-6)).clamp_max(1.0);
  if (coef.item<double>() < 1.0) {
    torch::NoGradGuard no_grad;
    for (auto& g : grads) g.mul_(coef.to(g.device(), g.scalar_type()));
  }
  return norm;
}

bool DataParallel::step(double grad_norm) {
  if (!std::isfinite(grad_norm)) return false;
  optimizer_->step();
  return true;
}

torch::Tensor DataParallel::graph_anchor(const model::ForwardOutput& out) {
  auto anchor = out.logits.sum().to(torch::kFloat);
  for (const auto& l : out.mtp_logits) anchor = anchor + l.sum().to(torch::kFloat);
  if (out.balance_loss.defined()) anchor = anchor + out.balance_loss.to(torch::kFloat);
  return anchor * 0;
}

std::vector<torch::Tensor> DataParallel::router_loads() const {
  std::vector<torch::Tensor> out;
  for (const auto& m : model_->modules(/*include_self=*/false)) {
    if (const auto* moe = m->as<model::MoeImpl>()) out.push_back(moe->expert_load().clone());
  }
  return out;
}

void DataParallel::restore_router_loads(const std::vector<torch::Tensor>& loads) {
  size_t i = 0;
  for (const auto& m : model_->modules(/*include_self=*/false)) {
    if (auto* moe = m->as<model::MoeImpl>()) moe->expert_load().copy_(loads.at(i++));
  }
}

std::vector<double> DataParallel::update_router_biases(double gamma) {
  if (world_.distributed()) {
    for (auto& moe : model_->moe_layers()) {
      auto load = moe->expert_load();
      world_.all_reduce(load);
    }
  }
  return model_->update_router_biases(gamma);
}

}  // namespace grpo::dist
