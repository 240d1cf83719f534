// The process group of a multi-process run: c10d's ProcessGroupNCCL (CUDA) or ProcessGroupGloo
// (CPU), rendezvous through a c10d::TCPStore at MASTER_ADDR:MASTER_PORT, ranks from the launch
// environment (grpo/dist/launch_env.h), and the few collectives the trainers use. Without a launch
// environment it is a world of one whose collectives do nothing, so every program still runs as a
// single process.
//
//   dist::World& w = dist::world();              // created on first use, from the environment
//   w.all_reduce(counts);                        // in place, summed over ranks
//   auto [begin, end] = dist::share(n, w.rank(), w.size());
//
// Devices: one per local rank. A model configured for "cuda" runs on cuda:LOCAL_RANK
// (device_for). Threads: each rank gets max(1, cores / LOCAL_WORLD_SIZE) intra-op threads unless
// OMP_NUM_THREADS is set, since ranks sharing cores otherwise slow each other down many times over.
// Errors: a collective that fails (a dead peer, a timeout after run.dist.timeout_s) throws
// std::runtime_error "rank R: <what> failed: ...".
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "grpo/dist/launch_env.h"

namespace grpo::dist {

enum class ReduceOp { sum, max, min };

class World {
 public:
  // A world of one.
  World();
  // Rendezvous and build the process group; `device` decides the backend when cfg.backend is auto.
  World(const LaunchEnv& env, const DistConfig& cfg, const torch::Device& device);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int64_t rank() const { return env_.rank; }
  int64_t size() const { return env_.world_size; }
  int64_t local_rank() const { return env_.local_rank; }
  int64_t local_size() const { return env_.local_world_size; }
  bool distributed() const { return env_.world_size > 1; }
  bool is_main() const { return env_.rank == 0; }
  int64_t global_rank() const { return global_rank_; }  // this rank in the whole world (a group's rank() is its index)
  const std::string& backend_name() const { return backend_name_; }
  const DistConfig& config() const { return cfg_; }
  // Where collectives' tensors live: cuda:LOCAL_RANK for nccl, the CPU for gloo.
  torch::Device comm_device() const { return comm_device_; }

  // Collectives, synchronous, in place; identity on a world of one. Every rank must call the same
  // collectives in the same order.
  void all_reduce(torch::Tensor& t, ReduceOp op = ReduceOp::sum);
  void broadcast(torch::Tensor& t, int64_t root);
  void barrier();
  // Each rank's bytes, by rank (variable sizes).
  std::vector<std::string> all_gather_bytes(const std::string& mine);
  // Each rank's doubles, by rank (variable sizes), and the same concatenated in rank order.
  std::vector<std::vector<double>> all_gather(const std::vector<double>& mine);
  std::vector<double> all_gather_flat(const std::vector<double>& mine);
  // Tensors: `mine` of every rank (the same shape everywhere), concatenated along dim 0 in rank
  // order. The result is on mine's device.
  torch::Tensor all_gather(const torch::Tensor& mine);
  // All-to-all along dim 0: rank r sends rows [sum(send[:s]), sum(send[:s+1])) of `in` to rank s and
  // receives recv[s] rows from each rank s, concatenated by source rank; rows keep their other dims.
  // Every rank calls it, also with no rows. On a world of one, `in` (send[0] == recv[0]).
  torch::Tensor all_to_all(const torch::Tensor& in, const std::vector<int64_t>& send, const std::vector<int64_t>& recv);
  // A sum of doubles over ranks (in double precision).
  std::vector<double> sum(std::vector<double> values);
  double sum(double value) { return sum(std::vector<double>{value}).front(); }

  // Asynchronous all-reduce (sum) of one tensor; wait() on the result (rank-stamped errors).
  class Pending {
   public:
    Pending() = default;
    Pending(c10::intrusive_ptr<c10d::Work> work, const World* world, const char* what = "gradient all_reduce");
    ~Pending();
    Pending(Pending&&) noexcept;
    Pending& operator=(Pending&&) noexcept;
    void wait();

   private:
    c10::intrusive_ptr<c10d::Work> work_;
    const World* world_ = nullptr;
    const char* what_ = "";
  };
  Pending all_reduce_async(torch::Tensor& t);
  // Asynchronous broadcast of `t` (contiguous, on comm_device(), kept alive until wait()) from
  // `root`: the root's values land in every rank's `t`.
  Pending broadcast_async(torch::Tensor& t, int64_t root);
  // out [size * n] = every rank's `in` [n], in rank order; both contiguous on comm_device() and kept
  // alive until wait().
  Pending all_gather_async(torch::Tensor& out, torch::Tensor& in);
  // out [n] = the sum over ranks of their in[rank n, (rank + 1) n) (in [size * n]); synchronous.
  void reduce_scatter(torch::Tensor& out, torch::Tensor& in);

  // A process group of some of this group's ranks (`ranks`: their ranks here, ascending), with its
  // own communicator, so that its collectives never interleave with this group's (expert
  // parallelism's all-to-all against the gradient all-reduce). Every member calls it with the same
  // arguments; `name` (unique per group) keeps groups apart in the store. A rank not in `ranks`
  // gets null. On a world of one: a world of one.
  std::unique_ptr<World> new_group(const std::vector<int64_t>& ranks, const std::string& name);

 private:
  void check(const c10::intrusive_ptr<c10d::Work>& work, const char* what) const;

  LaunchEnv env_;
  int64_t global_rank_ = 0;
  DistConfig cfg_;
  c10::intrusive_ptr<c10d::Store> store_;  // the rendezvous store, shared by every group
  std::string backend_name_ = "none";
  torch::Device comm_device_ = torch::kCPU;
  c10::intrusive_ptr<c10d::Backend> backend_;
};

// The process's world: created on the first call from launch_env() and config() (Run records
// run.dist there), with the backend for `device` (auto: nccl for CUDA, gloo otherwise). Later calls
// return the same world whatever their device.
World& world(const torch::Device& device = torch::kCPU);

// The device a rank uses for a configured one: "cuda" becomes cuda:LOCAL_RANK under a launch
// environment; anything else is returned as it is.
torch::Device device_for(const std::string& configured);

// The contiguous share [begin, end) of n items that rank `rank` of `size` takes: the first
// n % size ranks take one more. Shares of every rank, in rank order, concatenate to [0, n).
std::pair<int64_t, int64_t> share(int64_t n, int64_t rank, int64_t size);

}  // namespace grpo::dist
