#include "grpo/dist/world.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "../error_text.h"
#include "backend_factory.h"
#include "grpo/core/log.h"

namespace grpo::dist {

using grpo::detail::one_line;

namespace {

c10d::ReduceOp to_c10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return c10d::ReduceOp::SUM;
    case ReduceOp::max: return c10d::ReduceOp::MAX;
    case ReduceOp::min: return c10d::ReduceOp::MIN;
  }
  return c10d::ReduceOp::SUM;
}

}  // namespace

World::World() = default;

World::World(const LaunchEnv& env, const DistConfig& cfg, const torch::Device& device)
    : env_(env), global_rank_(env.rank), cfg_(cfg) {
  if (!env_.distributed()) return;
  std::string backend = cfg_.backend;
  if (backend == "auto") backend = device.is_cuda() ? "nccl" : "gloo";
  if (backend == "nccl" && !device.is_cuda()) {
    throw std::invalid_argument("run.dist.backend nccl needs a CUDA model (model.device is " + device.str() + ")");
  }
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(cfg_.timeout_s * 1000.0));
  try {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(env_.master_port);
    opts.isServer = env_.rank == 0;
    opts.numWorkers = static_cast<size_t>(env_.world_size);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, opts);
    store_ = tcp;
    auto store = c10::make_intrusive<c10d::PrefixStore>("grpo/default", tcp);
    const int rank = static_cast<int>(env_.rank), size = static_cast<int>(env_.world_size);
    if (backend == "nccl") {
      comm_device_ = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env_.local_rank));
      backend_ = detail::make_nccl(store, rank, size, timeout, static_cast<int>(env_.local_rank));
    } else {
      backend_ = detail::make_gloo(store, rank, size, timeout, env_.master_addr);
    }
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(env_.rank) + ": cannot join the process group of " +
                             std::to_string(env_.world_size) + " at " + env_.master_addr + ":" +
                             std::to_string(env_.master_port) + " (" + backend + "): " + one_line(e));
  }
  backend_name_ = backend;
  log::info("rank {} of {} (local {} of {}): {} process group at {}:{}", env_.rank, env_.world_size, env_.local_rank,
            env_.local_world_size, backend_name_, env_.master_addr, env_.master_port);
}

World::~World() = default;

void World::check(const c10::intrusive_ptr<c10d::Work>& work, const char* what) const {
  try {
    work->wait();
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(global_rank_) + ": " + what + " failed: " + one_line(e));
  }
}

void World::all_reduce(torch::Tensor& t, ReduceOp op) {
  if (!distributed()) return;
  auto on = t.to(comm_device_).contiguous();
  std::vector<torch::Tensor> tensors = {on};
  c10d::AllreduceOptions o;
  o.reduceOp = to_c10d(op);
  check(backend_->allreduce(tensors, o), "all_reduce");
  if (on.data_ptr() != t.data_ptr()) t.copy_(on);
}

void World::broadcast(torch::Tensor& t, int64_t root) {
  if (!distributed()) return;
  auto on = t.to(comm_device_).contiguous();
  std::vector<torch::Tensor> tensors = {on};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  check(backend_->broadcast(tensors, o), "broadcast");
  if (on.data_ptr() != t.data_ptr()) t.copy_(on);
}

void World::barrier() {
  if (!distributed()) return;
  // An all-reduce of one number: the same ordering and error paths as every other collective.
  auto t = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat).device(comm_device_));
  all_reduce(t);
}

std::vector<std::string> World::all_gather_bytes(const std::string& mine) {
  if (!distributed()) return {mine};
  const auto n = size();
  auto lengths = torch::zeros({n}, torch::kLong);
  lengths[rank()] = static_cast<int64_t>(mine.size());
  all_reduce(lengths);
  const auto* len = lengths.data_ptr<int64_t>();
  int64_t total = 0, offset = 0;
  for (int64_t r = 0; r < n; ++r) {
    if (r < rank()) offset += len[r];
    total += len[r];
  }
  auto buffer = torch::zeros({std::max<int64_t>(total, 1)}, torch::kUInt8);
  std::copy(mine.begin(), mine.end(), buffer.data_ptr<uint8_t>() + offset);
  all_reduce(buffer);  // each byte is non-zero on at most one rank
  std::vector<std::string> out;
  const auto* bytes = reinterpret_cast<const char*>(buffer.data_ptr<uint8_t>());
  for (int64_t r = 0, at = 0; r < n; at += len[r], ++r) out.emplace_back(bytes + at, static_cast<size_t>(len[r]));
  return out;
}

std::vector<std::vector<double>> World::all_gather(const std::vector<double>& mine) {
  if (!distributed()) return {mine};
  std::string bytes(mine.size() * sizeof(double), '\0');
  if (!mine.empty()) std::memcpy(bytes.data(), mine.data(), bytes.size());
  std::vector<std::vector<double>> out;
  for (const auto& part : all_gather_bytes(bytes)) {
    out.emplace_back(part.size() / sizeof(double));
    if (!part.empty()) std::memcpy(out.back().data(), part.data(), part.size());
  }
  return out;
}

std::vector<double> World::all_gather_flat(const std::vector<double>& mine) {
  std::vector<double> all;
  for (const auto& part : all_gather(mine)) all.insert(all.end(), part.begin(), part.end());
  return all;
}

torch::Tensor World::all_gather(const torch::Tensor& mine) {
  if (!distributed()) return mine;
  auto in = mine.to(comm_device_).contiguous();
  auto sizes = in.sizes().vec();
  if (sizes.empty()) sizes.push_back(1);
  sizes[0] *= size();
  auto out = torch::empty(sizes, in.options());
  check(backend_->_allgather_base(out, in), "all_gather");
  return out.to(mine.device());
}

torch::Tensor World::all_to_all(const torch::Tensor& in, const std::vector<int64_t>& send,
                                const std::vector<int64_t>& recv) {
  const auto n = static_cast<size_t>(size());
  TORCH_CHECK(send.size() == n && recv.size() == n, "all_to_all: expected ", n, " send and receive counts, found ",
              send.size(), " and ", recv.size());
  int64_t sent = 0, received = 0;
  for (size_t r = 0; r < n; ++r) {
    sent += send[r];
    received += recv[r];
  }
  TORCH_CHECK(in.dim() >= 1 && in.size(0) == sent, "all_to_all: expected ", sent, " rows to send, found ",
              in.dim() >= 1 ? in.size(0) : 0);
  if (!distributed()) return in;
  auto on = in.to(comm_device_).contiguous();
  auto sizes = on.sizes().vec();
  sizes[0] = received;
  auto out = torch::empty(sizes, on.options());
  auto out_splits = recv, in_splits = send;
  check(backend_->alltoall_base(out, on, out_splits, in_splits), "all_to_all");
  return out.to(in.device());
}

std::unique_ptr<World> World::new_group(const std::vector<int64_t>& ranks, const std::string& name) {
  if (!distributed()) return std::make_unique<World>();
  TORCH_CHECK(!ranks.empty() && std::is_sorted(ranks.begin(), ranks.end()) && ranks.front() >= 0 &&
                  ranks.back() < size() && std::adjacent_find(ranks.begin(), ranks.end()) == ranks.end(),
              "new_group '", name, "': expected distinct ascending ranks below ", size());
  const auto it = std::find(ranks.begin(), ranks.end(), rank());
  if (it == ranks.end()) return nullptr;
  auto group = std::unique_ptr<World>(new World());
  group->env_ = env_;
  group->env_.rank = it - ranks.begin();
  group->env_.world_size = static_cast<int64_t>(ranks.size());
  group->global_rank_ = global_rank_;
  group->cfg_ = cfg_;
  group->store_ = store_;
  group->comm_device_ = comm_device_;
  group->backend_name_ = backend_name_;
  if (!group->distributed()) return group;
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(cfg_.timeout_s * 1000.0));
  const int r = static_cast<int>(group->env_.rank), n = static_cast<int>(ranks.size());
  try {
    auto store = c10::make_intrusive<c10d::PrefixStore>("grpo/group/" + name, store_);
    group->backend_ = backend_name_ == "nccl"
                          ? detail::make_nccl(store, r, n, timeout, static_cast<int>(env_.local_rank))
                          : detail::make_gloo(store, r, n, timeout, env_.master_addr);
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(global_rank_) + ": cannot create the process group '" + name +
                             "' of " + std::to_string(n) + " ranks: " + one_line(e));
  }
  return group;
}

std::vector<double> World::sum(std::vector<double> values) {
  if (!distributed() || values.empty()) return values;
  auto t = torch::tensor(values, torch::kDouble);
  all_reduce(t);
  std::copy(t.data_ptr<double>(), t.data_ptr<double>() + t.numel(), values.begin());
  return values;
}

World::Pending::Pending(c10::intrusive_ptr<c10d::Work> work, const World* world, const char* what)
    : work_(std::move(work)), world_(world), what_(what) {}
World::Pending::~Pending() = default;
World::Pending::Pending(Pending&&) noexcept = default;
World::Pending& World::Pending::operator=(Pending&&) noexcept = default;

void World::Pending::wait() {
  if (!work_) return;
  auto work = std::move(work_);
  world_->check(work, what_);
}

World::Pending World::all_reduce_async(torch::Tensor& t) {
  if (!distributed()) return {};
  TORCH_CHECK(t.device() == comm_device_ && t.is_contiguous(), "all_reduce_async: expected a contiguous tensor on ",
              comm_device_.str(), ", found ", t.device().str());
  std::vector<torch::Tensor> tensors = {t};
  try {
    return Pending(backend_->allreduce(tensors), this);
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(global_rank_) + ": gradient all_reduce failed: " + one_line(e));
  }
}

World::Pending World::broadcast_async(torch::Tensor& t, int64_t root) {
  if (!distributed()) return {};
  TORCH_CHECK(t.device() == comm_device_ && t.is_contiguous(), "broadcast_async: expected a contiguous tensor on ",
              comm_device_.str(), ", found ", t.device().str());
  std::vector<torch::Tensor> tensors = {t};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  try {
    return Pending(backend_->broadcast(tensors, o), this, "broadcast");
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(global_rank_) + ": broadcast failed: " + one_line(e));
  }
}

World::Pending World::all_gather_async(torch::Tensor& out, torch::Tensor& in) {
  if (!distributed()) {
    out.copy_(in);
    return {};
  }
  TORCH_CHECK(out.numel() == in.numel() * size() && out.is_contiguous() && in.is_contiguous(),
              "all_gather_async: expected contiguous buffers of ", in.numel(), " x ", size(), " and ", in.numel(),
              " elements");
  try {
    return Pending(backend_->_allgather_base(out, in), this, "all_gather");
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(global_rank_) + ": all_gather failed: " + one_line(e));
  }
}

void World::reduce_scatter(torch::Tensor& out, torch::Tensor& in) {
  if (!distributed()) {
    out.copy_(in);
    return;
  }
  TORCH_CHECK(in.numel() == out.numel() * size() && out.is_contiguous() && in.is_contiguous(),
              "reduce_scatter: expected contiguous buffers of ", out.numel(), " x ", size(), " and ", out.numel(),
              " elements");
  check(backend_->_reduce_scatter_base(out, in), "reduce_scatter");
}

World& world(const torch::Device& device) {
  static std::once_flag once;
  static std::unique_ptr<World> the_world;
  std::call_once(once, [&] {
    const auto& env = launch_env();
    if (!env.distributed()) {
      the_world = std::make_unique<World>();
      return;
    }
    // Ranks sharing a machine share its cores.
    if (const char* omp = std::getenv("OMP_NUM_THREADS"); omp == nullptr || *omp == '\0') {
      const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
      torch::set_num_threads(static_cast<int>(std::max<int64_t>(1, cores / env.local_world_size)));
    }
    the_world = std::make_unique<World>(env, config(), device);
  });
  return *the_world;
}

torch::Device device_for(const std::string& configured) {
  torch::Device d(configured);
  if (d.is_cuda() && !d.has_index() && launch_env().distributed()) {
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(launch_env().local_rank));
  }
  return d;
}

std::pair<int64_t, int64_t> share(int64_t n, int64_t rank, int64_t size) {
  const int64_t base = n / size, extra = n % size;
  const int64_t begin = rank * base + std::min(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

}  // namespace grpo::dist
