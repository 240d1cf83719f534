#include "grpo/dist/grad_sync.h"

#include "graph_reach.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

namespace grpo::dist {

struct GradSync::State {
  struct Bucket {
    std::vector<int64_t> params;  // indices into `params`
    std::vector<int64_t> offsets;
    int64_t numel = 0;
    torch::ScalarType dtype = torch::kFloat;
    int64_t pending = 0;  // parameters not yet ready in this step
    bool started = false;
    torch::Tensor flat;
    World::Pending work;
  };

  World* world = nullptr;
  std::vector<torch::Tensor> params;
  std::vector<int64_t> bucket_of;  // param -> bucket
  std::vector<Bucket> buckets;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;    // kept alive: they hold the hooks
  std::unordered_map<const torch::autograd::Node*, int64_t> param_of;  // accumulator -> param
  std::vector<char> ready;
  int64_t next = 0;  // the next bucket to start (buckets start in order)
  int64_t overlapped = 0;
  bool armed = false;
  bool alive = true;

  void reset() {
    std::fill(ready.begin(), ready.end(), 0);
    for (auto& b : buckets) {
      b.pending = static_cast<int64_t>(b.params.size());
      b.started = false;
    }
    next = 0;
  }

  void start(Bucket& b) {
    torch::NoGradGuard no_grad;
    const auto device = world->comm_device();
    b.flat = torch::zeros({b.numel}, torch::TensorOptions().dtype(b.dtype).device(device));
    for (size_t k = 0; k < b.params.size(); ++k) {
      const auto& g = params[static_cast<size_t>(b.params[k])].grad();
      if (g.defined()) b.flat.narrow(0, b.offsets[k], g.numel()).copy_(g.reshape({-1}));
    }
    b.work = world->all_reduce_async(b.flat);
    b.started = true;
  }

  // Starts the buckets that are complete, in order, from `next`.
  void start_ready() {
    while (next < static_cast<int64_t>(buckets.size()) && buckets[static_cast<size_t>(next)].pending == 0) {
      start(buckets[static_cast<size_t>(next)]);
      ++next;
      ++overlapped;
    }
  }

  void on_ready(int64_t i) {
    if (!alive || !armed || ready[static_cast<size_t>(i)]) return;
    ready[static_cast<size_t>(i)] = 1;
    --buckets[static_cast<size_t>(bucket_of[static_cast<size_t>(i)])].pending;
    start_ready();
  }
};

GradSync::GradSync(std::vector<torch::Tensor> params, World& world, double bucket_mb)
    : state_(std::make_shared<State>()) {
  auto& s = *state_;
  s.world = &world;
  s.params = std::move(params);
  if (!world.distributed()) return;
  const auto bucket_bytes = static_cast<int64_t>(bucket_mb * 1024.0 * 1024.0);
  s.bucket_of.assign(s.params.size(), -1);
  s.ready.assign(s.params.size(), 0);
  for (int64_t i = static_cast<int64_t>(s.params.size()) - 1; i >= 0; --i) {
    const auto& p = s.params[static_cast<size_t>(i)];
    TORCH_CHECK(p.requires_grad(), "GradSync: parameter ", i, " does not require a gradient");
    const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    if (s.buckets.empty() || s.buckets.back().dtype != p.scalar_type() ||
        (s.buckets.back().numel > 0 &&
         (s.buckets.back().numel * static_cast<int64_t>(p.element_size()) + bytes) > bucket_bytes)) {
      s.buckets.emplace_back();
      s.buckets.back().dtype = p.scalar_type();
    }
    auto& b = s.buckets.back();
    b.params.push_back(i);
    b.offsets.push_back(b.numel);
    b.numel += p.numel();
    s.bucket_of[static_cast<size_t>(i)] = static_cast<int64_t>(s.buckets.size()) - 1;
  }
  // Hooks after the gradient is accumulated into p.grad() (as DDP's on the AccumulateGrad node).
  std::weak_ptr<State> weak = state_;
  for (size_t i = 0; i < s.params.size(); ++i) {
    auto acc = torch::autograd::impl::grad_accumulator(s.params[i]);
    TORCH_CHECK(acc, "GradSync: parameter ", i, " is not a leaf");
    acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [weak, i](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          if (auto st = weak.lock()) st->on_ready(static_cast<int64_t>(i));
          return outputs;
        }));
    s.param_of[acc.get()] = static_cast<int64_t>(i);
    s.accumulators.push_back(std::move(acc));
  }
  s.reset();
}

GradSync::~GradSync() { state_->alive = false; }

void GradSync::arm(bool last, const torch::Tensor& loss) {
  auto& s = *state_;
  if (!s.world->distributed()) return;
  if (last && !s.armed) {
    s.reset();
    s.overlapped = 0;
  }
  s.armed = last;
  if (!last || !loss.defined() || !loss.grad_fn()) return;
  // The accumulators the loss's graph reaches; every other parameter is ready now.
  const auto reached = detail::reached_accumulators(loss, s.param_of, s.params.size());
  for (size_t i = 0; i < s.params.size(); ++i) {
    if (!reached[i]) s.on_ready(static_cast<int64_t>(i));
  }
}

void GradSync::finish() {
  auto& s = *state_;
  if (!s.world->distributed()) return;
  if (!s.armed) {  // no armed backward on this rank this step (e.g. it had no rows)
    s.reset();
    s.overlapped = 0;
  }
  s.armed = false;
  // Which parameters have a gradient here, summed over ranks: a parameter with none anywhere keeps
  // none. Issued after the buckets, in the same order on every rank.
  for (auto& b : s.buckets) {
    if (!b.started) s.start(b);
  }
  auto used = torch::zeros({static_cast<int64_t>(s.params.size())}, torch::kFloat);
  for (size_t i = 0; i < s.params.size(); ++i) used[static_cast<int64_t>(i)] = s.params[i].grad().defined() ? 1 : 0;
  for (auto& b : s.buckets) b.work.wait();
  s.world->all_reduce(used);
  const auto* u = used.data_ptr<float>();
  torch::NoGradGuard no_grad;
  for (auto& b : s.buckets) {
    for (size_t k = 0; k < b.params.size(); ++k) {
      const auto i = static_cast<size_t>(b.params[k]);
      auto& p = s.params[i];
      if (u[i] == 0) continue;
      const auto sum = b.flat.narrow(0, b.offsets[k], p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(sum);
      } else {
        p.mutable_grad() = sum.to(p.device(), p.scalar_type()).clone();
      }
    }
    b.flat = torch::Tensor();
  }
  s.reset();
}

int64_t GradSync::buckets() const { return static_cast<int64_t>(state_->buckets.size()); }
int64_t GradSync::overlapped() const { return state_->overlapped; }

}  // namespace grpo::dist
