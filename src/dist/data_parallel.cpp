#include "grpo/dist/data_parallel.h"

#include "grpo/core/log.h"
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

void check_replicas(torch::nn::Module& model, World& w, const std::function<bool(const torch::Tensor&)>& skip) {
  if (!w.distributed()) return;
  std::vector<std::string> names;
  std::vector<torch::Tensor> prints;
  torch::NoGradGuard no_grad;
  auto add = [&](const std::string& name, const torch::Tensor& t) {
    if (skip && skip(t)) return;
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
    : DataParallel(model, cfg, dist::world(model->embed_tokens.device())) {}

DataParallel::DataParallel(model::CausalLM& model, const train::OptimizerConfig& cfg, World& world)
    : model_(model), world_(world) {
  broadcast_model(*model_, world_);
  const int64_t ep = config().expert_parallel;
  const std::string& sharding = config().sharding;
  if (ep > 1 && sharding != "none") {
    throw std::invalid_argument("run.dist: sharding " + sharding + " with expert_parallel " + std::to_string(ep) +
                                " is not supported yet; set sharding: none or expert_parallel: 1");
  }
  if (sharding == "full" && world_.distributed()) {
    train::freeze_parameters(*model_, cfg);
    auto groups = train::split_parameters(*model_, cfg);  // by the whole tensors' shapes and names
    FullyShardConfig fc;
    fc.reshard_after_forward = config().reshard_after_forward;
    fc.prefetch = config().prefetch;
    fsdp_ = std::make_unique<FullyShard>(model_, world_, fc);
    for (auto* list : {&groups.decay, &groups.no_decay}) {
      for (auto& t : *list) t = fsdp_->shard_of(t);
    }
    optimizer_ = std::make_unique<ShardedOptimizer>(groups, cfg, world_, *fsdp_);
    plan_generation();
    log_memory("planned");
    return;
  }
  experts_ = std::make_unique<ExpertParallel>(model_.ptr(), world_, ep);
  optimizer_ = std::make_unique<ShardedOptimizer>(*model_, cfg, world_, sharding == "optimizer");
  optimizer_->set_expert_parallel(experts_.get());
  std::vector<torch::Tensor> replicated, experts;
  for (const auto& p : optimizer_->params()) (experts_->is_expert(p) ? experts : replicated).push_back(p);
  sync_ = std::make_unique<GradSync>(replicated, world_, config().bucket_mb);
  if (!experts.empty()) expert_sync_ = std::make_unique<GradSync>(experts, experts_->replicas(), config().bucket_mb);
  plan_generation();
  log_memory("planned");
}

void DataParallel::plan_generation() {
  layout_ = parse_generation_layout(config().generation);
  if (layout_ == GenerationLayout::sharded && lockstep()) paired_ = std::make_shared<PairedForwards>(world_);
}

void DataParallel::log_memory(const char* when) const {
  // Parameters and gradients this rank holds at rest, and AdamW's moments (planned: 2 per
  // trainable element held, before the first step allocates them).
  int64_t params = 0, trainable = 0, grads = 0;
  if (fsdp_) {
    params = fsdp_->parameter_bytes();
    grads = fsdp_->gradient_bytes();
  } else {
    for (const auto& p : model_->parameters()) params += p.numel() * static_cast<int64_t>(p.element_size());
    for (const auto& p : optimizer_->params()) {
      if (p.grad().defined()) grads += p.grad().numel() * static_cast<int64_t>(p.element_size());
    }
  }
  for (size_t i = 0; i < optimizer_->params().size(); ++i) {
    const auto& p = optimizer_->params()[i];
    if (optimizer_->zero1() && optimizer_->owner(i) != world_.rank()) continue;
    trainable += p.numel() * static_cast<int64_t>(p.element_size());
  }
  const bool planned = std::string(when) == "planned";
  const double mb = 1e6;
  log::info("memory per rank ({}): parameters {:.2f} MB, gradients {:.2f} MB, optimizer {:.2f} MB ({} ranks, {})", when,
            static_cast<double>(params) / mb, static_cast<double>(planned ? trainable : grads) / mb,
            static_cast<double>(planned ? 2 * trainable : optimizer_->state_bytes()) / mb, world_.size(),
            fsdp_                 ? "sharding full"
            : optimizer_->zero1() ? "sharding optimizer"
                                  : "replicas");
}

DataParallel::~DataParallel() {
  // The hooks go before the experts are gathered back (the tensors change shape).
  expert_sync_.reset();
  sync_.reset();
  optimizer_.reset();
  fsdp_.reset();  // the model whole again
}

void DataParallel::begin_step(double lr) {
  optimizer_->set_learning_rate(lr);
  optimizer_->zero_grad();
  if (fsdp_) fsdp_->begin_step();
}

void DataParallel::backward(const torch::Tensor& loss, bool last_micro_batch) {
  if (fsdp_) {
    fsdp_->set_gradient_sync(last_micro_batch || config().reduce_every_micro_batch);
    fsdp_->arm(loss);
    loss.backward();
    fsdp_->finish_backward();
    return;
  }
  sync_->arm(last_micro_batch, loss);
  if (expert_sync_) expert_sync_->arm(last_micro_batch, loss);
  loss.backward();
}

double DataParallel::reduce_gradients(double max_grad_norm) {
  if (fsdp_) {
    fsdp_->end_step();
    return fsdp_->clip(max_grad_norm);
  }
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
    auto norm = at::linalg_vector_norm(g, 2, std::nullopt, false, torch::kDouble);  // as clip_gradients
    if (experts_->is_expert(p)) expert_index.push_back(norms.size());
    grads.push_back(g);
    norms.push_back(norm);
  }
  if (grads.empty()) return 0.0;
  if (!expert_index.empty()) {
    std::vector<torch::Tensor> expert_norms;
    for (const size_t k : expert_index) expert_norms.push_back(norms[k]);
    auto squares = torch::stack(expert_norms).square().cpu();  // one copy to the host
    experts_->group().all_reduce(squares);
    for (size_t k = 0; k < expert_index.size(); ++k) {
      auto& n = norms[expert_index[k]];
      n = squares[static_cast<int64_t>(k)].sqrt();
    }
  }
  const auto device = grads.front().device();
  for (auto& n : norms) n = n.to(device);
  return train::clip_to_norm(grads, at::linalg_vector_norm(torch::stack(norms), 2), max_grad_norm);
}

bool DataParallel::step(double grad_norm) {
  if (!std::isfinite(grad_norm)) return false;
  optimizer_->step();
  if (!logged_memory_) {
    log_memory("after the first step");
    logged_memory_ = true;
  }
  return true;
}

torch::Tensor DataParallel::graph_anchor(const model::ForwardOutput& out) {
  torch::Tensor anchor;  // on the outputs' device: no copy to the host in the step
  const auto add = [&](const torch::Tensor& t) {
    if (!t.defined()) return;
    const auto s = t.sum().to(torch::kFloat);
    anchor = anchor.defined() ? anchor + s : s;
  };
  add(out.logits);
  add(out.hidden);
  for (const auto& l : out.mtp_logits) add(l);
  add(out.balance_loss);
  TORCH_CHECK(anchor.defined(), "graph_anchor: the forward returned no output");
  return anchor * 0;
}

void DataParallel::stand_in(const std::function<torch::Tensor()>& zero_loss, bool last_micro_batch) {
  // The router loads before the pass, put back after it: a stand-in's tokens are not counted.
  std::vector<torch::Tensor> loads;
  for (const auto& m : model_->modules(/*include_self=*/false)) {
    if (const auto* moe = m->as<model::MoeImpl>()) loads.push_back(moe->expert_load().clone());
  }
  const auto loss = zero_loss();
  size_t i = 0;
  for (const auto& m : model_->modules(/*include_self=*/false)) {
    if (auto* moe = m->as<model::MoeImpl>()) moe->expert_load().copy_(loads.at(i++));
  }
  backward(loss, last_micro_batch);
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
