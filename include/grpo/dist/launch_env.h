// Where this process sits in a multi-process job, read from the environment the way torchrun and
// Slurm's srun describe it, and the `run.dist` settings of every program. No torch here: the run
// folder (grpo/core/run.h) uses it to let rank 0 alone write the log and the metrics.
//
//   torchrun / grpo launch:  RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//   srun (fallback):         SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE
//                            (MASTER_ADDR must still be set, e.g. to the first host of the job)
//   neither:                 a world of one (every program runs as a single process)
//
// The process group itself (c10d, NCCL or Gloo) is grpo/dist/world.h.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "grpo/config/config.h"

namespace grpo::dist {

// `run.dist`: how ranks talk to each other and what data parallelism shards.
struct DistConfig {
  std::string backend = "auto";          // auto (nccl on CUDA, gloo on CPU) | nccl | gloo
  double timeout_s = 300;                // a collective that waits longer fails (a dead or stuck rank)
  double bucket_mb = 25;                 // gradient all-reduce bucket size (MiB), launched as buckets fill in backward
  std::string sharding = "none";         // none | optimizer (ZeRO-1) | full (FSDP: parameters, gradients, moments)
  bool reshard_after_forward = true;     // full: free a block's gathered parameters after its forward
  bool prefetch = true;                  // full: start the next block's all-gather ahead
  bool reduce_every_micro_batch = true;  // full: reduce-scatter after every micro-batch (false: at the step's last)
  int64_t expert_parallel = 1;           // ranks sharing each MoE layer's routed experts (1: every rank holds all)
  std::string generation = "gathered";   // sharded or split models: gathered (a whole copy) | sharded (training layout)

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("backend", backend, "auto (nccl on CUDA, gloo on CPU), nccl or gloo", Check().one_of({"auto", "nccl", "gloo"}));
    v("timeout_s", timeout_s, "seconds a collective may wait for the other ranks", Check().gt(0));
    v("bucket_mb", bucket_mb, "gradient all-reduce bucket size in MiB", Check().gt(0));
    v("sharding", sharding,
      "none (replicas), optimizer (ZeRO-1: AdamW's moments 1/N per rank) or full (FSDP: parameters, gradients and "
      "moments 1/N per rank, gathered per block)",
      Check().one_of({"none", "optimizer", "full"}));
    v("reshard_after_forward", reshard_after_forward,
      "sharding full: free each block's gathered parameters after its forward (gathered again for the backward)");
    v("prefetch", prefetch, "sharding full: start the next block's all-gather while this one runs");
    v("reduce_every_micro_batch", reduce_every_micro_batch,
      "sharding full: reduce-scatter each micro-batch's gradients (false: keep whole gradients and reduce-scatter "
      "their sum after the step's last micro-batch, as data parallelism sums them; more memory)");
    v("expert_parallel", expert_parallel,
      "ranks that split each MoE layer's routed experts between them, tokens exchanged all-to-all; must divide the "
      "world size and the number of experts (1 = none)",
      Check().ge(1));
    v("generation", generation,
      "how rollouts and evaluation run under sharding full or expert_parallel > 1: gathered (the whole model on every "
      "rank for the phase, each rank alone) or sharded (the training layout: blocks gathered one at a time, tokens "
      "exchanged all-to-all, the ranks' forwards paired)",
      Check().one_of({"gathered", "sharded"}));
  }
};

struct LaunchEnv {
  int64_t rank = 0, world_size = 1;              // global
  int64_t local_rank = 0, local_world_size = 1;  // on this machine
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  std::string source = "none";  // "torchrun" (RANK/WORLD_SIZE), "slurm" or "none"

  bool distributed() const { return world_size > 1; }
};

// Reads the variables above through `get` (nullptr = unset). A malformed or inconsistent value
// (RANK=x, RANK >= WORLD_SIZE, LOCAL_RANK >= LOCAL_WORLD_SIZE, a port outside 1..65535, a
// multi-process Slurm job without MASTER_ADDR) throws std::invalid_argument naming the variable
// and its value.
LaunchEnv launch_env_from(const std::function<const char*(const char*)>& get);

// This process's launch environment (from ::getenv, read once).
const LaunchEnv& launch_env();

// Rank 0 (also on a world of one): the process that writes the run folder.
bool is_main_process();

// The run's DistConfig: Run's constructor records run.dist here; grpo/dist/world.h reads it when
// it creates the process group.
void set_config(const DistConfig& cfg);
const DistConfig& config();

}  // namespace grpo::dist
