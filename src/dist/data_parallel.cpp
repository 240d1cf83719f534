#include "grpo/dist/data_parallel.h"

#include "grpo/dist/launch_env.h"

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
  optimizer_ = std::make_unique<ShardedOptimizer>(*model_, cfg, world_, config().zero1);
  sync_ = std::make_unique<GradSync>(optimizer_->params(), world_, config().bucket_mb);
}

void DataParallel::begin_step(double lr) {
  optimizer_->set_learning_rate(lr);
  optimizer_->zero_grad();
}

void DataParallel::backward(const torch::Tensor& loss, bool last_micro_batch) {
  sync_->arm(last_micro_batch, loss);
  loss.backward();
}

double DataParallel::reduce_gradients(double max_grad_norm) {
  sync_->finish();
  return train::clip_gradients(*model_, max_grad_norm);
}

bool DataParallel::step(double grad_norm) {
  if (!std::isfinite(grad_norm)) return false;
  optimizer_->step();
  return true;
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
