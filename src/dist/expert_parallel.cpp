#include "grpo/dist/expert_parallel.h"

#include <torch/autograd.h>

#include <exception>
#include <functional>
#include <stdexcept>

#include "grpo/core/log.h"
#include "grpo/model/moe.h"

namespace grpo::dist {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// rows [sum(send), ...] -> [sum(recv), ...] over `group`; the backward sends the gradient back
// (send and receive counts swapped). The backward runs on every rank of the group in the same
// order (the layers' order, reversed), so its collectives pair up as the forward's did.
class AllToAll : public torch::autograd::Function<AllToAll> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& rows, World* group,
                               const std::vector<int64_t>& send, const std::vector<int64_t>& recv) {
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);
    ctx->saved_data["send"] = send;
    ctx->saved_data["recv"] = recv;
    ctx->saved_data["row_shape"] = rows.sizes().slice(1).vec();
    return group->all_to_all(rows.detach(), send, recv);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* group = reinterpret_cast<World*>(ctx->saved_data["group"].toInt());
    const auto send = ctx->saved_data["send"].toIntVector();
    const auto recv = ctx->saved_data["recv"].toIntVector();
    torch::Tensor grad = grads[0];
    if (!grad.defined()) {  // this rank's output fed nothing: it still answers its peers
      int64_t rows = 0;
      for (const auto r : recv) rows += r;
      auto shape = ctx->saved_data["row_shape"].toIntVector();
      shape.insert(shape.begin(), rows);
      grad = torch::zeros(shape);
    }
    return {group->all_to_all(grad.contiguous(), recv, send), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

class GroupExchange : public model::ExpertExchange {
 public:
  explicit GroupExchange(World& group) : group_(group) {}
  int64_t ranks() const override { return group_.size(); }
  int64_t rank() const override { return group_.rank(); }

  torch::Tensor exchange_counts(const torch::Tensor& counts) override {
    const int64_t r = group_.size(), held = counts.numel() / r;
    TORCH_CHECK(held * r == counts.numel(), "expert exchange: expected a multiple of ", r, " counts, found ",
                counts.numel());
    const std::vector<int64_t> each(static_cast<size_t>(r), held);
    return group_.all_to_all(counts.to(torch::kCPU, torch::kLong).contiguous(), each, each).view({r, held});
  }

  torch::Tensor exchange(const torch::Tensor& rows, const std::vector<int64_t>& send,
                         const std::vector<int64_t>& recv) override {
    return AllToAll::apply(rows, &group_, send, recv);
  }

 private:
  World& group_;
};

}  // namespace

ExpertParallel::ExpertParallel(std::shared_ptr<torch::nn::Module> model, World& world, int64_t ep)
    : model_(std::move(model)), ep_(ep) {
  if (ep < 1 || world.size() % ep != 0) {
    throw std::invalid_argument("run.dist.expert_parallel: " + std::to_string(ep) + " does not divide the world size " +
                                std::to_string(world.size()));
  }
  if (ep == 1) return;
  for (const auto& m : model_->modules(/*include_self=*/true)) {
    if (auto* moe = m->as<model::MoeImpl>()) {
      if (moe->routed_experts() % ep != 0) {
        throw std::invalid_argument("run.dist.expert_parallel: " + std::to_string(ep) + " ranks cannot split " +
                                    std::to_string(moe->routed_experts()) + " routed experts evenly");
      }
      if (moe->exchange) throw std::invalid_argument("ExpertParallel: the model's experts are split already");
      layers_.push_back(moe);
      for (auto* t : {&moe->experts_gate, &moe->experts_up, &moe->experts_down}) experts_.push_back(*t);
    }
  }
  if (layers_.empty()) {
    throw std::invalid_argument("run.dist.expert_parallel: " + std::to_string(ep) +
                                " set, but the model has no MoE layer (n_routed_experts 0 or first_k_dense_replace)");
  }
  // Every rank names every group in the same order; each builds the ones it is in.
  const int64_t groups = world.size() / ep;
  for (int64_t g = 0; g < groups; ++g) {
    std::vector<int64_t> ranks;
    for (int64_t i = 0; i < ep; ++i) ranks.push_back(g * ep + i);
    if (auto made = world.new_group(ranks, "experts_" + std::to_string(g))) group_ = std::move(made);
  }
  for (int64_t i = 0; i < ep; ++i) {
    std::vector<int64_t> ranks;
    for (int64_t g = 0; g < groups; ++g) ranks.push_back(g * ep + i);
    if (auto made = world.new_group(ranks, "expert_replicas_" + std::to_string(i))) replicas_ = std::move(made);
  }
  exchange_ = std::make_shared<GroupExchange>(*group_);
  cut();
  log::info("expert parallel: {} ranks per expert group, {} groups; {} of {} routed experts per MoE layer here", ep,
            groups, layers_.front()->experts_gate.size(0), layers_.front()->routed_experts());
}

ExpertParallel::~ExpertParallel() {
  if (!cut_ || std::uncaught_exceptions() > 0) return;
  try {
    uncut();
  } catch (const std::exception& e) {
    log::error("expert parallel: cannot gather the experts back: {}", e.what());
  }
}

bool ExpertParallel::is_expert(const torch::Tensor& p) const {
  for (const auto& t : experts_) {
    if (t.unsafeGetTensorImpl() == p.unsafeGetTensorImpl()) return true;
  }
  return false;
}

torch::Tensor ExpertParallel::local_block(const torch::Tensor& full) const {
  const int64_t rows = full.size(0) / ep_;
  return full.narrow(0, group_->rank() * rows, rows);
}

torch::Tensor ExpertParallel::gather(const torch::Tensor& block) { return group_->all_gather(block.contiguous()); }

void ExpertParallel::cut() {
  for (auto* moe : layers_) cut_layer(moe);
  cut_ = true;
}

void ExpertParallel::uncut() {
  for (auto* moe : layers_) uncut_layer(moe);
  cut_ = false;
}

void ExpertParallel::cut_layer(model::MoeImpl* moe) {
  torch::NoGradGuard no_grad;
  for (auto* t : {&moe->experts_gate, &moe->experts_up, &moe->experts_down}) {
    t->mutable_grad() = torch::Tensor();
    t->set_data(local_block(t->detach()).clone());
  }
  moe->exchange = exchange_;
}

void ExpertParallel::uncut_layer(model::MoeImpl* moe) {
  torch::NoGradGuard no_grad;
  for (auto* t : {&moe->experts_gate, &moe->experts_up, &moe->experts_down}) {
    t->mutable_grad() = torch::Tensor();
    t->set_data(gather(t->detach()));
  }
  moe->exchange = nullptr;
}

namespace {

class ExpertsBlockByBlock : public model::BlockHooks {
 public:
  ExpertsBlockByBlock(std::vector<model::MoeImpl*> of_block, std::function<void(model::MoeImpl*)> cut,
                      std::function<void(model::MoeImpl*)> uncut)
      : of_block_(std::move(of_block)), cut_(std::move(cut)), uncut_(std::move(uncut)) {}
  void before_block(int64_t index) override {
    if (auto* moe = at(index); moe != nullptr && moe->exchange) uncut_(moe);
  }
  void after_block(int64_t index, const std::vector<torch::Tensor>&) override {
    if (auto* moe = at(index); moe != nullptr && !moe->exchange) cut_(moe);
  }

 private:
  model::MoeImpl* at(int64_t index) const {
    return index >= 0 && index < static_cast<int64_t>(of_block_.size()) ? of_block_[static_cast<size_t>(index)]
                                                                        : nullptr;
  }
  std::vector<model::MoeImpl*> of_block_;  // block index -> its MoE layer, or null
  std::function<void(model::MoeImpl*)> cut_, uncut_;
};

}  // namespace

std::shared_ptr<model::BlockHooks> ExpertParallel::block_by_block(model::CausalLM& model) {
  std::vector<model::MoeImpl*> of_block;
  auto moe_of = [&](model::DecoderLayerImpl& layer) -> model::MoeImpl* {
    if (!layer.moe || !cut_) return nullptr;
    return layer.moe.get();
  };
  for (int64_t l = 0; l < model->config().num_hidden_layers; ++l) {
    of_block.push_back(moe_of(*model->layers[l]->as<model::DecoderLayerImpl>()));
  }
  for (int64_t k = 0; model->mtp && k < static_cast<int64_t>(model->mtp->size()); ++k) {
    of_block.push_back(moe_of(*model->mtp[k]->as<model::MtpModuleImpl>()->block));
  }
  return std::make_shared<ExpertsBlockByBlock>(
      std::move(of_block), [this](model::MoeImpl* m) { cut_layer(m); }, [this](model::MoeImpl* m) { uncut_layer(m); });
}

ExpertParallel::Gathered::Gathered(ExpertParallel* ep) : ep_(ep != nullptr && ep->active() && ep->cut_ ? ep : nullptr) {
  if (ep_ != nullptr) ep_->uncut();
}

ExpertParallel::Gathered::~Gathered() {
  if (ep_ != nullptr) ep_->cut();
}

}  // namespace grpo::dist
