#include "grpo/dist/fully_shard.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "graph_reach.h"
#include "grpo/core/log.h"
#include "grpo/model/activation_checkpoint.h"
#include "grpo/train/optimizer.h"

namespace grpo::dist {

namespace {

// Chunk of one parameter: ceil(numel / n).
int64_t chunk_of(int64_t numel, int64_t n) { return (numel + n - 1) / n; }

}  // namespace

struct FullyShard::State : model::BlockHooks {
  struct Param {
    torch::Tensor p;      // the model's parameter (its data: the whole tensor, or empty when resharded)
    torch::Tensor shard;  // [chunk] this rank's chunk, what AdamW steps
    std::vector<int64_t> shape;
    int64_t numel = 0, chunk = 0, offset = 0;  // offset: in its unit's per-rank chunk row
    int64_t unit = 0;
  };
  struct Unit {
    std::vector<size_t> params;
    int64_t row = 0;  // sum of the params' chunks: one rank's part of the unit
    bool gathered = false;
    torch::Tensor send, recv;  // a gather in flight
    World::Pending pending;
    bool in_flight = false;
    int64_t waiting = 0;  // parameters whose gradient this backward has yet to accumulate
    bool ready = false, reduced = false;
  };

  model::CausalLM model{nullptr};
  World* world = nullptr;
  // Gathers and reduce-scatters on communicators of their own: each kind is issued in a fixed order
  // (gathers by unit as the passes reach them, reduce-scatters in reduce_order), whichever
  // interleaving of the two the backward makes on a rank.
  std::unique_ptr<World> gathers, reduces;
  FullyShardConfig cfg;
  int64_t n = 1, rank = 0;
  std::vector<Param> params;
  std::vector<Unit> units;  // blocks 0..B-1, then the root (index B)
  int64_t root = 0;
  std::vector<int64_t> reduce_order;  // MTP modules, blocks last to first, the root
  size_t next_reduce = 0;
  std::unordered_map<const c10::TensorImpl*, size_t> param_of_impl, shard_of_impl;
  std::unordered_map<const torch::autograd::Node*, size_t> param_of_node;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
  int64_t block_gathers = 0;
  bool sync = true;    // reduce-scatter the gradients as each unit's backward ends
  bool whole = false;  // Gathered: everything gathered, hooks idle
  bool alive = true;
  bool in_backward = false;

  // ---- gathers -----------------------------------------------------------------------------
  void start_gather(int64_t u) {
    auto& unit = units[static_cast<size_t>(u)];
    if (unit.gathered || unit.in_flight) return;
    c10::InferenceMode normal(false);  // parameters' data stay normal tensors under generation's mode
    torch::NoGradGuard no_grad;
    if (u != root) ++block_gathers;
    std::vector<torch::Tensor> parts;
    for (const size_t i : unit.params) parts.push_back(params[i].shard.detach());
    unit.send = torch::cat(parts).to(world->comm_device()).contiguous();
    unit.recv = torch::empty({unit.row * n}, unit.send.options());
    unit.pending = gathers->all_gather_async(unit.recv, unit.send);
    unit.in_flight = true;
  }

  void gather(int64_t u) {
    auto& unit = units[static_cast<size_t>(u)];
    if (unit.gathered) return;
    start_gather(u);
    unit.pending.wait();
    unit.in_flight = false;
    c10::InferenceMode normal(false);
    torch::NoGradGuard no_grad;
    const auto rows = unit.recv.view({n, unit.row});
    for (const size_t i : unit.params) {
      auto& q = params[i];
      const auto full =
          rows.narrow(1, q.offset, q.chunk).reshape({-1}).narrow(0, 0, q.numel).view(q.shape).to(q.p.device());
      q.p.set_data(full.clone());
    }
    unit.send = torch::Tensor();
    unit.recv = torch::Tensor();
    unit.gathered = true;
  }

  void reshard(int64_t u) {
    auto& unit = units[static_cast<size_t>(u)];
    if (!unit.gathered) return;
    c10::InferenceMode normal(false);
    torch::NoGradGuard no_grad;
    for (const size_t i : unit.params) params[i].p.set_data(torch::empty({0}, params[i].p.options()));
    unit.gathered = false;
  }

  // ---- block hooks ---------------------------------------------------------------------------
  void before_block(int64_t index) override {
    if (whole || !alive) return;
    gather(index);
    if (!cfg.prefetch) return;
    // Forward: the next block (a decoder layer's is a decoder layer: the MTP modules run only when
    // asked for, and a gather left in flight would hold stale values); recomputation in the
    // backward: the one before.
    const int64_t layers = model->config().num_hidden_layers;
    const int64_t next = model::recomputing() ? index - 1 : index + 1;
    const int64_t end = index < layers ? layers : root;
    if (next >= 0 && next < end) start_gather(next);
  }

  void after_block(int64_t index, const std::vector<torch::Tensor>& outputs) override {
    if (whole || !alive) return;
    if (torch::GradMode::is_enabled()) {
      std::weak_ptr<bool> token = life;
      for (const auto& out : outputs) {
        if (!out.defined() || !out.requires_grad()) continue;
        auto copy = out;
        copy.register_hook([this, token, index](const torch::Tensor&) {
          if (token.expired()) return;
          pre_backward(index);
        });
      }
    }
    // An eval-mode forward without gradients (generation) never comes back for the block: free it
    // whatever the config says. (A checkpointed block's first, gradient-free forward in training
    // keeps it, as asked, for the recomputation.)
    const bool keep = !cfg.reshard_after_forward && (torch::GradMode::is_enabled() || model->is_training());
    if (!keep && !model::recomputing()) reshard(index);
  }

  void pre_backward(int64_t index) {
    if (whole) return;
    gather(index);
    if (cfg.prefetch && index - 1 >= 0) start_gather(index - 1);
  }

  // ---- gradients -----------------------------------------------------------------------------
  void on_grad(size_t i) {
    if (!alive || whole || !in_backward) return;
    auto& unit = units[static_cast<size_t>(params[i].unit)];
    if (unit.ready || unit.waiting <= 0) return;
    if (--unit.waiting == 0) {
      unit.ready = true;
      reduce_ready();
    }
  }

  void reduce_ready() {
    while (next_reduce < reduce_order.size() && units[static_cast<size_t>(reduce_order[next_reduce])].ready) {
      reduce(reduce_order[next_reduce]);
      ++next_reduce;
    }
  }

  // The unit's whole gradients -> each rank's chunk of their sum over ranks, added to the chunks'.
  void reduce(int64_t u) {
    auto& unit = units[static_cast<size_t>(u)];
    if (!sync) {  // accumulating: the whole gradients stay, the parameters go
      unit.reduced = true;
      if (u != root) reshard(u);
      return;
    }
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> columns;
    for (const size_t i : unit.params) {
      auto& q = params[i];
      auto flat = torch::zeros({q.chunk * n}, q.shard.options().device(world->comm_device()));
      if (q.p.grad().defined()) {
        flat.narrow(0, 0, q.numel).copy_(q.p.grad().reshape({-1}));
      }
      columns.push_back(flat.view({n, q.chunk}));
    }
    auto in = torch::cat(columns, 1).contiguous().view({-1});  // [n, row] flat
    auto out = torch::empty({unit.row}, in.options());
    // Every rank takes part, also one whose unit got no gradient (zeros).
    reduces->reduce_scatter(out, in);
    for (const size_t i : unit.params) {
      auto& q = params[i];
      q.p.mutable_grad() = torch::Tensor();
      if (!q.shard.requires_grad()) continue;
      const auto part = out.narrow(0, q.offset, q.chunk).to(q.shard.device());
      if (q.shard.grad().defined()) {
        q.shard.mutable_grad().add_(part);
      } else {
        q.shard.mutable_grad() = part.clone();
      }
    }
    unit.reduced = true;
    if (u != root) reshard(u);
  }

  std::shared_ptr<bool> life = std::make_shared<bool>(true);
};

FullyShard::FullyShard(model::CausalLM model, World& world, const FullyShardConfig& cfg)
    : state_(std::make_shared<State>()) {
  auto& s = *state_;
  s.model = model;
  s.world = &world;
  s.cfg = cfg;
  s.n = world.size();
  s.rank = world.rank();
  std::vector<int64_t> everyone;
  for (int64_t r = 0; r < s.n; ++r) everyone.push_back(r);
  s.gathers = world.new_group(everyone, "fsdp_gathers");
  s.reduces = world.new_group(everyone, "fsdp_reduces");
  const int64_t blocks = model->config().num_hidden_layers + static_cast<int64_t>(model->mtp ? model->mtp->size() : 0);
  s.root = blocks;
  s.units.resize(static_cast<size_t>(blocks + 1));
  // Each parameter once (tied weights), in the unit of the block that owns it.
  std::unordered_set<const c10::TensorImpl*> seen;
  auto add = [&](torch::nn::Module& m, int64_t unit) {
    for (auto& p : m.parameters(/*recurse=*/true)) {
      if (!seen.insert(p.unsafeGetTensorImpl()).second) continue;
      State::Param q;
      q.p = p;
      q.shape = p.sizes().vec();
      q.numel = p.numel();
      q.chunk = chunk_of(q.numel, s.n);
      q.unit = unit;
      auto& u = s.units[static_cast<size_t>(unit)];
      q.offset = u.row;
      u.row += q.chunk;
      u.params.push_back(s.params.size());
      s.param_of_impl[p.unsafeGetTensorImpl()] = s.params.size();
      s.params.push_back(std::move(q));
    }
  };
  for (int64_t l = 0; l < model->config().num_hidden_layers; ++l) add(*model->layers[l], l);
  for (int64_t k = 0; model->mtp && k < static_cast<int64_t>(model->mtp->size()); ++k) {
    add(*model->mtp[k], model->config().num_hidden_layers + k);
  }
  add(*model, s.root);
  for (int64_t u = blocks - 1; u >= 0; --u) s.reduce_order.push_back(u);
  s.reduce_order.push_back(s.root);
  // Gradient hooks: after each parameter's gradient is accumulated. Made while the parameters are
  // whole: the accumulator records the shape the gradients must have.
  std::weak_ptr<State> weak = state_;
  for (size_t i = 0; i < s.params.size(); ++i) {
    if (!s.params[i].p.requires_grad()) continue;
    auto acc = torch::autograd::impl::grad_accumulator(s.params[i].p);
    TORCH_CHECK(acc, "FullyShard: parameter ", i, " is not a leaf");
    acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [weak, i](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          if (auto st = weak.lock()) st->on_grad(i);
          return outputs;
        }));
    s.param_of_node[acc.get()] = i;
    s.accumulators.push_back(std::move(acc));
  }
  // The chunks (of rank 0's values), then every unit resharded.
  {
    torch::NoGradGuard no_grad;
    for (auto& q : s.params) {
      auto full = q.p.detach();
      world.broadcast(full, 0);
      auto flat = torch::zeros({q.chunk * s.n}, full.options());
      flat.narrow(0, 0, q.numel).copy_(full.reshape({-1}));
      q.shard = flat.narrow(0, s.rank * q.chunk, q.chunk).clone().requires_grad_(q.p.requires_grad());
      s.shard_of_impl[q.shard.unsafeGetTensorImpl()] = static_cast<size_t>(&q - s.params.data());
    }
    for (auto& u : s.units) u.gathered = true;
    for (int64_t u = 0; u <= s.root; ++u) s.reshard(u);
  }
  model->block_hooks = state_;
  int64_t whole = 0, mine = 0;
  for (const auto& q : s.params) {
    whole += q.numel * static_cast<int64_t>(q.p.element_size());
    mine += q.chunk * static_cast<int64_t>(q.p.element_size());
  }
  log::info("fully sharded over {} ranks: {} units, parameters {:.2f} of {:.2f} MB here", s.n, s.units.size(),
            static_cast<double>(mine) / 1e6, static_cast<double>(whole) / 1e6);
}

FullyShard::~FullyShard() {
  auto& s = *state_;
  s.model->block_hooks = nullptr;
  s.alive = false;
  *s.life = false;
  s.life.reset();
  if (std::uncaught_exceptions() > 0) return;  // the other ranks may be gone; the model stays cut
  try {
    for (auto& u : s.units) {
      if (u.in_flight) {
        u.pending.wait();
        u.in_flight = false;
        u.gathered = false;
      }
    }
    for (int64_t u = 0; u <= s.root; ++u) s.gather(u);  // whole again, with the trained values
    for (auto& q : s.params) q.p.mutable_grad() = torch::Tensor();
  } catch (const std::exception& e) {
    log::error("fully sharded: cannot gather the model back: {}", e.what());
  }
}

torch::Tensor FullyShard::shard_of(const torch::Tensor& param) const {
  const auto it = state_->param_of_impl.find(param.unsafeGetTensorImpl());
  return it == state_->param_of_impl.end() ? torch::Tensor() : state_->params[it->second].shard;
}

bool FullyShard::is_shard(const torch::Tensor& t) const {
  return state_->shard_of_impl.count(t.unsafeGetTensorImpl()) > 0;
}

std::vector<int64_t> FullyShard::full_shape(const torch::Tensor& shard) const {
  return state_->params.at(state_->shard_of_impl.at(shard.unsafeGetTensorImpl())).shape;
}

torch::Tensor FullyShard::gather_full(const torch::Tensor& chunk, const torch::Tensor& shard) {
  const auto& q = state_->params.at(state_->shard_of_impl.at(shard.unsafeGetTensorImpl()));
  auto in = chunk.detach().to(state_->world->comm_device()).contiguous();
  auto out = torch::empty({q.chunk * state_->n}, in.options());
  state_->gathers->all_gather_async(out, in).wait();
  return out.narrow(0, 0, q.numel).view(q.shape).to(chunk.device());
}

torch::Tensor FullyShard::local_chunk(const torch::Tensor& full, const torch::Tensor& shard) const {
  const auto& q = state_->params.at(state_->shard_of_impl.at(shard.unsafeGetTensorImpl()));
  TORCH_CHECK(full.numel() == q.numel, "FullyShard: expected ", q.numel, " elements, found ", full.numel());
  auto flat = torch::zeros({q.chunk * state_->n}, full.options());
  flat.narrow(0, 0, q.numel).copy_(full.reshape({-1}));
  return flat.narrow(0, state_->rank * q.chunk, q.chunk).clone();
}

void FullyShard::begin_step() {
  auto& s = *state_;
  for (auto& q : s.params) q.shard.mutable_grad() = torch::Tensor();
  s.gather(s.root);
}

void FullyShard::set_gradient_sync(bool sync) { state_->sync = sync; }

void FullyShard::arm(const torch::Tensor& loss) {
  auto& s = *state_;
  s.next_reduce = 0;
  s.in_backward = true;
  for (auto& u : s.units) {
    u.waiting = 0;
    u.ready = false;
    u.reduced = false;
  }
  const auto reached = detail::reached_accumulators(loss, s.param_of_node, s.params.size());
  // A checkpointed block's parameters are reached only when it is recomputed: count a unit's
  // parameters as expected when the graph reaches any of them or the block is checkpointed.
  const bool recompute = s.model->activation_checkpointing;
  for (int64_t u = 0; u <= s.root; ++u) {
    auto& unit = s.units[static_cast<size_t>(u)];
    const bool checkpointed = recompute && u < s.model->config().num_hidden_layers;
    for (const size_t i : unit.params) {
      if (s.params[i].p.requires_grad() && (reached[i] || checkpointed)) ++unit.waiting;
    }
    if (unit.waiting == 0) unit.ready = true;
  }
  s.reduce_ready();
}

void FullyShard::finish_backward() {
  auto& s = *state_;
  for (auto& u : s.units) u.ready = true;
  s.reduce_ready();
  s.in_backward = false;
}

void FullyShard::end_step() {
  auto& s = *state_;
  for (int64_t u = 0; u <= s.root; ++u) s.reshard(u);
}

double FullyShard::clip(double max_norm) {
  // As clip_gradients: each whole tensor's norm in float64 (here from its chunks' squared norms
  // summed over ranks), then the norm of those norms, so that the coefficient is one process's.
  auto& s = *state_;
  std::vector<torch::Tensor> grads, chunk_norms;
  for (auto& q : s.params) {
    if (!q.shard.grad().defined()) continue;
    grads.push_back(q.shard.grad());
    chunk_norms.push_back(at::linalg_vector_norm(q.shard.grad(), 2, std::nullopt, false, torch::kDouble));
  }
  if (grads.empty()) return 0.0;
  auto squares = torch::stack(chunk_norms).square();  // summed over ranks: each whole tensor's
  s.world->all_reduce(squares);
  return train::clip_to_norm(grads, at::linalg_vector_norm(squares.sqrt(), 2), max_norm);
}

int64_t FullyShard::parameter_bytes() const {
  int64_t bytes = 0;
  for (const auto& q : state_->params) bytes += q.shard.numel() * static_cast<int64_t>(q.shard.element_size());
  return bytes;
}

int64_t FullyShard::gradient_bytes() const {
  int64_t bytes = 0;
  for (const auto& q : state_->params) {
    if (q.shard.grad().defined()) bytes += q.shard.grad().numel() * static_cast<int64_t>(q.shard.element_size());
  }
  return bytes;
}

int64_t FullyShard::whole_bytes() const {
  int64_t bytes = 0;
  for (const auto& q : state_->params) bytes += q.numel * static_cast<int64_t>(q.p.element_size());
  return bytes;
}

FullyShard::Gathered::Gathered(FullyShard* fsdp) : fsdp_(fsdp) {
  if (fsdp_ == nullptr) return;
  auto& s = *fsdp_->state_;
  if (s.whole) {
    fsdp_ = nullptr;  // an outer one holds it
    return;
  }
  for (int64_t u = 0; u <= s.root; ++u) {
    was_gathered_.push_back(s.units[static_cast<size_t>(u)].gathered ? 1 : 0);
    s.gather(u);
  }
  s.whole = true;
}

FullyShard::Gathered::~Gathered() {
  if (fsdp_ == nullptr) return;
  auto& s = *fsdp_->state_;
  // Each rank keeps its chunk of whatever the whole tensors hold now (a checkpoint loaded, say).
  torch::NoGradGuard no_grad;
  for (auto& q : s.params) {
    auto flat = torch::zeros({q.chunk * s.n}, q.p.options());
    flat.narrow(0, 0, q.numel).copy_(q.p.detach().reshape({-1}));
    q.shard.detach().copy_(flat.narrow(0, s.rank * q.chunk, q.chunk));
    q.p.mutable_grad() = torch::Tensor();
  }
  s.whole = false;
  for (int64_t u = 0; u <= s.root; ++u) {
    if (!was_gathered_[static_cast<size_t>(u)]) s.reshard(u);
  }
}

FullyShard::RootGathered::RootGathered(FullyShard* fsdp) : fsdp_(fsdp) {
  if (fsdp_ == nullptr) return;
  auto& s = *fsdp_->state_;
  if (s.whole) {
    fsdp_ = nullptr;  // a Gathered holds everything already
    return;
  }
  was_gathered_ = s.units[static_cast<size_t>(s.root)].gathered;
  s.gather(s.root);
}

FullyShard::RootGathered::~RootGathered() {
  if (fsdp_ == nullptr) return;
  auto& s = *fsdp_->state_;
  if (!was_gathered_) s.reshard(s.root);
}

int64_t FullyShard::block_gathers() const { return state_->block_gathers; }

}  // namespace grpo::dist
