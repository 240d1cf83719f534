// How a trainer's generation (rollouts, on-policy samples, evaluation) sees a model that expert
// parallelism or full sharding splits over ranks, by run.dist.generation:
//
//   gathered  every rank gathers the whole model for the phase (WholeModel) and generates alone:
//             the fastest while a whole copy fits on one device.
//   sharded   generation runs in the training layout: full sharding gathers each block's
//             parameters just before its forward and frees them after (the root, embeddings and
//             head, stays gathered for the phase); expert parallelism exchanges every prefill's
//             and decode step's tokens all-to-all. The ranks' forwards are paired (PairedForwards,
//             grpo/model/forward_rounds.h): a rank whose completions are done, or that has no
//             prompts, runs one-token stand-ins while another still decodes.
//
//   {
//     const auto gen = dp.generation();   // collective: every rank opens and closes it together
//     engine.generate(mine);              // every rank as often (no requests when it has none)
//   }
//
// Without expert parallelism or full sharding it does nothing.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "grpo/dist/expert_parallel.h"
#include "grpo/dist/fully_shard.h"
#include "grpo/dist/whole_model.h"
#include "grpo/dist/world.h"
#include "grpo/model/causal_lm.h"
#include "grpo/model/forward_rounds.h"

namespace grpo::dist {

// One round is one all-reduce of "I have a forward" over a communicator of its own.
class PairedForwards : public model::ForwardRounds {
 public:
  explicit PairedForwards(World& world);  // collective: makes the communicator
  bool round(bool mine) override;
  int64_t rounds() const { return rounds_; }
  int64_t stand_ins() const { return stand_ins_; }

 private:
  std::unique_ptr<World> comm_;
  int64_t rounds_ = 0, stand_ins_ = 0;
};

enum class GenerationLayout { gathered, sharded };
GenerationLayout parse_generation_layout(const std::string& name);  // "gathered" | "sharded"

class DataParallel;

class GenerationScope {
 public:
  explicit GenerationScope(DataParallel& dp);  // the trainer's: what dp.generation() opens
  // `paired`: installed as model->forward_rounds while the scope lives (sharded layout only).
  GenerationScope(model::CausalLM model, ExpertParallel* experts, FullyShard* fsdp, GenerationLayout layout,
                  std::shared_ptr<PairedForwards> paired);
  ~GenerationScope();
  GenerationScope(const GenerationScope&) = delete;
  GenerationScope& operator=(const GenerationScope&) = delete;

 private:
  model::CausalLM model_;
  std::optional<WholeModel> whole_;
  std::optional<FullyShard::RootGathered> root_;
  bool installed_ = false;
};

}  // namespace grpo::dist
