#include "grpo/train/optimizer.h"

#include <ATen/ATen.h>

#include <cmath>
#include <unordered_set>

namespace grpo::train {

namespace {

// Trainable parameters, each tensor once, with its first name.
std::vector<std::pair<std::string, torch::Tensor>> unique_trainable(torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  std::unordered_set<const void*> seen;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    const torch::Tensor& p = item.value();
    if (!p.requires_grad()) continue;
    if (!seen.insert(p.unsafeGetTensorImpl()).second) continue;
    out.emplace_back(item.key(), p);
  }
  return out;
}

}  // namespace

ParamGroups split_parameters(torch::nn::Module& model, const OptimizerConfig& cfg) {
  ParamGroups groups;
  for (const auto& [name, p] : unique_trainable(model)) {
    bool decay = p.dim() >= 2;
    for (const auto& pattern : cfg.no_decay) {
      if (!pattern.empty() && name.find(pattern) != std::string::npos) decay = false;
    }
    if (decay) {
      groups.decay.push_back(p);
      groups.decay_names.push_back(name);
    } else {
      groups.no_decay.push_back(p);
      groups.no_decay_names.push_back(name);
    }
  }
  return groups;
}

void freeze_parameters(torch::nn::Module& model, const OptimizerConfig& cfg) {
  for (const auto& pattern : cfg.freeze) {
    TORCH_CHECK(!pattern.empty(), "optim.freeze: an empty pattern would freeze every parameter");
    int64_t matched = 0;
    for (auto& item : model.named_parameters(/*recurse=*/true)) {
      if (item.key().find(pattern) == std::string::npos) continue;
      item.value().requires_grad_(false);
      ++matched;
    }
    TORCH_CHECK(matched > 0, "optim.freeze: '", pattern, "' matches no parameter name (names look like ",
                model.named_parameters().size() > 0 ? model.named_parameters()[0].key() : std::string("?"), ")");
  }
}

std::unique_ptr<torch::optim::AdamW> make_adamw(const ParamGroups& groups, const OptimizerConfig& cfg) {
  TORCH_CHECK(!groups.decay.empty() || !groups.no_decay.empty(),
              "make_optimizer: the model has no trainable parameters");
  auto options = [&](double weight_decay) {
    auto o = std::make_unique<torch::optim::AdamWOptions>(cfg.lr);
    o->betas(std::make_tuple(cfg.beta1, cfg.beta2)).eps(cfg.eps).weight_decay(weight_decay).amsgrad(false);
    return o;
  };
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  if (!groups.decay.empty()) param_groups.emplace_back(groups.decay, options(cfg.weight_decay));
  if (!groups.no_decay.empty()) param_groups.emplace_back(groups.no_decay, options(0.0));
  torch::optim::AdamWOptions defaults(cfg.lr);
  defaults.betas(std::make_tuple(cfg.beta1, cfg.beta2)).eps(cfg.eps).weight_decay(cfg.weight_decay);
  return std::make_unique<torch::optim::AdamW>(std::move(param_groups), defaults);
}

std::unique_ptr<torch::optim::AdamW> make_optimizer(torch::nn::Module& model, const OptimizerConfig& cfg) {
  freeze_parameters(model, cfg);
  return make_adamw(split_parameters(model, cfg), cfg);
}

double clip_gradients(torch::nn::Module& model, double max_norm) {
  std::vector<torch::Tensor> grads;
  for (const auto& [name, p] : unique_trainable(model)) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return 0.0;
  // As torch.nn.utils.clip_grad_norm_ (per-tensor norms, then the norm of those norms), but in
  // float64 throughout: a sharded run, which adds up each tensor's norm from its chunks, then gets
  // the same clipping coefficient (torch's float32 norms differ from it in the last bit).
  std::vector<torch::Tensor> norms;
  norms.reserve(grads.size());
  const auto device = grads.front().device();
  for (const auto& g : grads)
    norms.push_back(at::linalg_vector_norm(g, 2, std::nullopt, false, torch::kDouble).to(device));
  return clip_to_norm(grads, at::linalg_vector_norm(torch::stack(norms), 2), max_norm);
}

double clip_to_norm(std::vector<torch::Tensor>& grads, const torch::Tensor& total, double max_norm) {
  const double norm = total.item<double>();
  if (!std::isfinite(norm) || max_norm <= 0) return norm;
  const torch::Tensor coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
  if (coef.item<double>() < 1.0) {
    torch::NoGradGuard no_grad;
    for (auto& g : grads) g.mul_(coef.to(g.device(), g.scalar_type()));
  }
  return norm;
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

}  // namespace grpo::train
