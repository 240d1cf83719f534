// The whole model on every rank for as long as a WholeModel lives, whatever splits it (expert
// parallelism's experts, full sharding's chunks): for checkpoints, evaluation and generation
// inside a trainer. Collective: every rank opens and closes it together. Without either, nothing.
#pragma once

#include <optional>

#include "grpo/dist/expert_parallel.h"
#include "grpo/dist/fully_shard.h"
#include "grpo/dist/sharded_optimizer.h"

namespace grpo::dist {

class WholeModel {
 public:
  WholeModel(ExpertParallel* experts, FullyShard* fsdp) {
    if (experts != nullptr) experts_.emplace(experts);
    if (fsdp != nullptr) fsdp_.emplace(fsdp);
  }
  explicit WholeModel(const ShardedOptimizer& optimizer)
      : WholeModel(optimizer.expert_parallel(), optimizer.fully_shard()) {}
  WholeModel(const WholeModel&) = delete;
  WholeModel& operator=(const WholeModel&) = delete;

 private:
  std::optional<ExpertParallel::Gathered> experts_;
  std::optional<FullyShard::Gathered> fsdp_;
};

}  // namespace grpo::dist
