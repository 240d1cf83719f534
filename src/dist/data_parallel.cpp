#include "grpo/dist/data_parallel.h"

#include "grpo/dist/launch_env.h"

namespace grpo::dist {

void broadcast_model(torch::nn::Module& model, World& w) {
  if (!w.distributed()) return;
  torch::NoGradGuard no_grad;
  for (auto& p : model.parameters()) w.broadcast(p, 0);
  for (auto& b : model.buffers()) w.broadcast(b, 0);
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

void DataParallel::before_backward(bool last_micro_batch) { sync_->arm(last_micro_batch); }

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
