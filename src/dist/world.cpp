#include "grpo/dist/world.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "backend_factory.h"
#include "grpo/core/log.h"

namespace grpo::dist {

namespace {

std::string one_line(const std::exception& e) {
  std::string text;
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) {
    text = c10_error->what_without_backtrace();
  } else {
    text = e.what();
  }
  for (auto& c : text) {
    if (c == '\n') c = ' ';
  }
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

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

World::World(const LaunchEnv& env, const DistConfig& cfg, const torch::Device& device) : env_(env), cfg_(cfg) {
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
    throw std::runtime_error("rank " + std::to_string(env_.rank) + ": " + what + " failed: " + one_line(e));
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
  auto buffer = torch::zeros({std::max<int64_t>(total, 1)}, torch::kDouble);
  std::copy(mine.begin(), mine.end(), buffer.data_ptr<double>() + offset);
  all_reduce(buffer);  // zeros elsewhere: the sum is each rank's values in its place
  std::vector<std::vector<double>> out;
  const auto* x = buffer.data_ptr<double>();
  for (int64_t r = 0, at = 0; r < n; at += len[r], ++r) out.emplace_back(x + at, x + at + len[r]);
  return out;
}

std::vector<double> World::sum(std::vector<double> values) {
  if (!distributed() || values.empty()) return values;
  auto t = torch::tensor(values, torch::kDouble);
  all_reduce(t);
  std::copy(t.data_ptr<double>(), t.data_ptr<double>() + t.numel(), values.begin());
  return values;
}

World::Pending::Pending(c10::intrusive_ptr<c10d::Work> work, const World* world)
    : work_(std::move(work)), world_(world) {}
World::Pending::~Pending() = default;
World::Pending::Pending(Pending&&) noexcept = default;
World::Pending& World::Pending::operator=(Pending&&) noexcept = default;

void World::Pending::wait() {
  if (!work_) return;
  auto work = std::move(work_);
  world_->check(work, "gradient all_reduce");
}

World::Pending World::all_reduce_async(torch::Tensor& t) {
  if (!distributed()) return {};
  TORCH_CHECK(t.device() == comm_device_ && t.is_contiguous(), "all_reduce_async: expected a contiguous tensor on ",
              comm_device_.str(), ", found ", t.device().str());
  std::vector<torch::Tensor> tensors = {t};
  try {
    return Pending(backend_->allreduce(tensors), this);
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(env_.rank) + ": gradient all_reduce failed: " + one_line(e));
  }
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
