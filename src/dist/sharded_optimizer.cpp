#include "grpo/dist/sharded_optimizer.h"

#include <torch/serialize/archive.h>

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <unordered_map>

#include "../error_text.h"
#include "grpo/dist/expert_parallel.h"
#include "grpo/dist/fully_shard.h"

namespace grpo::dist {

using grpo::detail::one_line;

namespace {

const torch::optim::AdamWParamState* state_of(torch::optim::AdamW& adamw, const torch::Tensor& p) {
  auto it = adamw.state().find(p.unsafeGetTensorImpl());
  if (it == adamw.state().end()) return nullptr;
  return static_cast<const torch::optim::AdamWParamState*>(it->second.get());
}

}  // namespace

std::vector<int64_t> partition(const std::vector<int64_t>& numels, int64_t ranks) {
  std::vector<size_t> order(numels.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return numels[a] > numels[b]; });
  std::vector<int64_t> load(static_cast<size_t>(ranks), 0), owner(numels.size(), 0);
  for (const size_t i : order) {
    const auto r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = static_cast<int64_t>(r);
    load[r] += numels[i];
  }
  return owner;
}

void ShardedOptimizer::take_parameters(const train::ParamGroups& groups) {
  params_ = groups.decay;
  params_.insert(params_.end(), groups.no_decay.begin(), groups.no_decay.end());
  names_ = groups.decay_names;
  names_.insert(names_.end(), groups.no_decay_names.begin(), groups.no_decay_names.end());
  std::vector<int64_t> numels;
  for (const auto& p : params_) numels.push_back(p.numel());
  owner_ = partition(numels, world_.size());
}

ShardedOptimizer::ShardedOptimizer(torch::nn::Module& model, const train::OptimizerConfig& cfg, World& world,
                                   bool zero1)
    : world_(world), cfg_(cfg), zero1_(zero1 && world.distributed()) {
  train::freeze_parameters(model, cfg);
  const auto groups = train::split_parameters(model, cfg);
  take_parameters(groups);
  if (!zero1_) {
    adamw_ = train::make_adamw(groups, cfg);
    return;
  }
  if (static_cast<int64_t>(params_.size()) < world.size()) {
    throw std::invalid_argument("run.dist.sharding optimizer: " + std::to_string(params_.size()) +
                                " trainable parameters cannot be shared among " + std::to_string(world.size()) +
                                " ranks");
  }
  for (const auto& p : params_) {
    if (p.scalar_type() != params_.front().scalar_type()) {
      throw std::invalid_argument("run.dist.sharding optimizer: the parameters have more than one dtype (" +
                                  std::string(c10::toString(params_.front().scalar_type())) + " and " +
                                  std::string(c10::toString(p.scalar_type())) + "); ZeRO-1 expects one");
    }
  }
  train::ParamGroups mine;
  for (size_t i = 0; i < groups.decay.size(); ++i) {
    if (owner_[i] != world.rank()) continue;
    mine.decay.push_back(groups.decay[i]);
    mine.decay_names.push_back(groups.decay_names[i]);
  }
  for (size_t i = 0; i < groups.no_decay.size(); ++i) {
    if (owner_[groups.decay.size() + i] != world.rank()) continue;
    mine.no_decay.push_back(groups.no_decay[i]);
    mine.no_decay_names.push_back(groups.no_decay_names[i]);
  }
  adamw_ = train::make_adamw(mine, cfg);
}

ShardedOptimizer::ShardedOptimizer(const train::ParamGroups& groups, const train::OptimizerConfig& cfg, World& world,
                                   FullyShard& fsdp)
    : world_(world), cfg_(cfg), zero1_(false), fsdp_(&fsdp) {
  take_parameters(groups);  // owner_: who writes each (whole, gathered) state
  adamw_ = train::make_adamw(groups, cfg);
}

void ShardedOptimizer::set_learning_rate(double lr) { train::set_learning_rate(*adamw_, lr); }

void ShardedOptimizer::zero_grad() {
  for (auto& p : params_) p.mutable_grad() = torch::Tensor();
}

void ShardedOptimizer::step() {
  adamw_->step();
  if (!zero1_) return;
  // Every rank's share as one flat buffer, broadcast from that rank (an all-gather of the parameters).
  torch::NoGradGuard no_grad;
  for (int64_t r = 0; r < world_.size(); ++r) {
    std::vector<size_t> idx;
    int64_t numel = 0;
    for (size_t i = 0; i < params_.size(); ++i) {
      if (owner_[i] == r) {
        idx.push_back(i);
        numel += params_[i].numel();
      }
    }
    const auto& first = params_[idx.front()];
    auto flat = torch::empty({numel}, torch::TensorOptions().dtype(first.scalar_type()).device(world_.comm_device()));
    int64_t at = 0;
    if (r == world_.rank()) {
      for (const size_t i : idx) {
        flat.narrow(0, at, params_[i].numel()).copy_(params_[i].reshape({-1}));
        at += params_[i].numel();
      }
    }
    world_.broadcast(flat, r);
    if (r == world_.rank()) continue;
    at = 0;
    for (const size_t i : idx) {
      params_[i].copy_(flat.narrow(0, at, params_[i].numel()).view(params_[i].sizes()));
      at += params_[i].numel();
    }
  }
}

int64_t ShardedOptimizer::state_bytes() const {
  int64_t bytes = 0;
  for (const auto& [key, value] : adamw_->state()) {
    (void)key;
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(*value);
    for (const torch::Tensor* t : {&s.exp_avg(), &s.exp_avg_sq(), &s.max_exp_avg_sq()}) {
      if (t->defined()) bytes += t->numel() * static_cast<int64_t>(t->element_size());
    }
  }
  return bytes;
}

NamedAdamStates ShardedOptimizer::owned_states() const {
  NamedAdamStates out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const bool expert = experts_ != nullptr && experts_->active() && experts_->is_expert(params_[i]);
    const bool chunk = fsdp_ != nullptr;
    if (owner_[i] != world_.rank() && !expert && !chunk) continue;
    const auto* s = state_of(*adamw_, params_[i]);
    if (chunk) {  // whole, gathered over every rank's chunks (every rank takes part)
      if (s == nullptr) continue;
      AdamState whole{s->step(), fsdp_->gather_full(s->exp_avg(), params_[i]),
                      fsdp_->gather_full(s->exp_avg_sq(), params_[i])};
      if (owner_[i] == world_.rank()) out[names_[i]] = std::move(whole);
      continue;
    }
    if (s == nullptr) continue;  // never stepped (on every rank alike: the experts' gradients are never missing)
    if (expert) {                // whole, gathered over the expert group (every rank takes part)
      AdamState whole{s->step(), experts_->gather(s->exp_avg()), experts_->gather(s->exp_avg_sq())};
      if (owner_[i] == world_.rank()) out[names_[i]] = std::move(whole);
      continue;
    }
    out[names_[i]] = {s->step(), s->exp_avg(), s->exp_avg_sq()};
  }
  return out;
}

void ShardedOptimizer::load_states(const NamedAdamStates& states, const std::string& source) {
  // Check everything first.
  std::vector<std::pair<size_t, const AdamState*>> take;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (zero1_ && owner_[i] != world_.rank()) continue;
    const auto it = states.find(names_[i]);
    if (it == states.end()) {
      if (states.empty()) continue;  // a checkpoint written before the first step
      throw std::runtime_error(source + ": no optimizer state for parameter '" + names_[i] + "'");
    }
    const bool expert = experts_ != nullptr && experts_->active() && experts_->is_expert(params_[i]);
    for (const torch::Tensor* t : {&it->second.exp_avg, &it->second.exp_avg_sq}) {
      auto expected = params_[i].sizes().vec();
      if (expert) expected[0] *= experts_->size();                     // saved whole: this rank takes its block
      if (fsdp_ != nullptr) expected = fsdp_->full_shape(params_[i]);  // saved whole: this rank's chunk
      if (!t->defined() || t->sizes() != expected) {
        throw std::runtime_error(source + ": parameter '" + names_[i] + "' has shape " + c10::str(expected) +
                                 " but its saved moments have shape " +
                                 (t->defined() ? c10::str(t->sizes()) : std::string("(none)")));
      }
    }
    take.emplace_back(i, &it->second);
  }
  adamw_->state().clear();
  for (const auto& [i, st] : take) {
    const auto& p = params_[i];
    auto s = std::make_unique<torch::optim::AdamWParamState>();
    s->step(st->step);
    const bool expert = experts_ != nullptr && experts_->active() && experts_->is_expert(p);
    const auto mine = [&](const torch::Tensor& t) {
      if (fsdp_ != nullptr) return fsdp_->local_chunk(t, p);
      return expert ? experts_->local_block(t) : t;
    };
    s->exp_avg(mine(st->exp_avg).to(p.device(), p.scalar_type()).clone());
    s->exp_avg_sq(mine(st->exp_avg_sq).to(p.device(), p.scalar_type()).clone());
    adamw_->state()[p.unsafeGetTensorImpl()] = std::move(s);
  }
}

void save_adam_states(const NamedAdamStates& states, const std::string& path) {
  torch::serialize::OutputArchive archive;
  archive.write("count", torch::tensor(static_cast<int64_t>(states.size())));
  int64_t i = 0;
  for (const auto& [name, s] : states) {
    const std::string k = std::to_string(i++);
    archive.write(k + ".name", c10::IValue(name));
    archive.write(k + ".step", torch::tensor(s.step));
    archive.write(k + ".exp_avg", s.exp_avg.to(torch::kCPU));
    archive.write(k + ".exp_avg_sq", s.exp_avg_sq.to(torch::kCPU));
  }
  archive.save_to(path);
}

NamedAdamStates load_adam_states(const std::string& path) {
  NamedAdamStates out;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    torch::Tensor count;
    archive.read("count", count);
    for (int64_t i = 0; i < count.item<int64_t>(); ++i) {
      const std::string k = std::to_string(i);
      c10::IValue name;
      archive.read(k + ".name", name);
      AdamState s;
      torch::Tensor step;
      archive.read(k + ".step", step);
      s.step = step.item<int64_t>();
      archive.read(k + ".exp_avg", s.exp_avg);
      archive.read(k + ".exp_avg_sq", s.exp_avg_sq);
      out[name.toStringRef()] = std::move(s);
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": not an optimizer shard: " + one_line(e));
  }
  return out;
}

NamedAdamStates load_legacy_adam_states(const std::string& path, torch::nn::Module& model,
                                        const train::OptimizerConfig& cfg) {
  const auto groups = train::split_parameters(model, cfg);
  auto adamw = train::make_adamw(groups, cfg);
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    adamw->load(archive);
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": cannot read the optimizer state: " + one_line(e));
  }
  NamedAdamStates out;
  auto take = [&](const std::vector<torch::Tensor>& params, const std::vector<std::string>& names) {
    for (size_t i = 0; i < params.size(); ++i) {
      if (const auto* s = state_of(*adamw, params[i])) out[names[i]] = {s->step(), s->exp_avg(), s->exp_avg_sq()};
    }
  };
  take(groups.decay, groups.decay_names);
  take(groups.no_decay, groups.no_decay_names);
  return out;
}

}  // namespace grpo::dist
