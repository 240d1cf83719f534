// Training checkpoints: written atomically, and a resume that continues bit for bit.
//
//   DIR/step_<N>/model/        the weights in HF format (grpo/model/checkpoint.h), float32
//   DIR/step_<N>/optimizer.pt  torch::save of the optimizer (AdamW moments, step counts, options)
//   DIR/step_<N>/rng.pt        torch's CPU generator state, and each CUDA device's when present
//   DIR/step_<N>/state.json    {"format": 1, "step": N, "values": {...}, "grpo_version": "0.1.0",
//                               "torch_version": "2.11.0", "time": "2025-01-31T12:00:00Z",
//                               "optimizer": true}
//   DIR/latest                 "step_<N>": the newest checkpoint's folder name
//
// A checkpoint is written into DIR/step_<N>.tmp, every file and folder is flushed to disk, and the
// folder is renamed to DIR/step_<N>; only then is DIR/latest replaced (atomically) and the oldest
// checkpoints beyond keep_last removed. So a folder under a final name is always complete; a crash
// leaves at most a step_<N>.tmp, which latest_checkpoint ignores and the next save removes.
//
// What a trainer must put in TrainState::values to resume bit for bit: everything else that
// evolves with the steps (data order state, std::mt19937_64 states via mt_state, stage, best
// metric...), as text.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>

#include <torch/optim/optimizer.h>

#include "grpo/config/config.h"
#include "grpo/model/causal_lm.h"

namespace grpo::dist {
class ShardedOptimizer;
}

namespace grpo::train {

struct OptimizerConfig;

struct TrainState {
  int64_t step = 0;                           // optimizer steps done
  std::map<std::string, std::string> values;  // the trainer's extras, all as text
};

struct CheckpointConfig {
  int64_t every_steps = 0;     // save every this many optimizer steps (0 = only at the end), e.g. 500
  int64_t keep_last = 2;       // complete checkpoints kept; older ones are removed (0 = keep all)
  bool save_optimizer = true;  // write optimizer.pt (needed to resume; off for export-only saves)

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("every_steps", every_steps, "save every this many optimizer steps (0 = only at the end)", Check().ge(0));
    v("keep_last", keep_last, "checkpoints kept, older ones removed (0 = keep all)", Check().ge(0));
    v("save_optimizer", save_optimizer, "write the optimizer state (needed to resume training)");
  }
};

// Writes DIR/step_<step> as above and returns its path. `optimizer` may be null (no optimizer.pt,
// as with save_optimizer = false). An existing DIR/step_<step> is replaced. Throws
// std::runtime_error naming the path that failed; nothing under a final name is then changed.
std::string save_checkpoint(const std::string& dir, int64_t step, model::CausalLM& model,
                            torch::optim::Optimizer* optimizer, const TrainState& state, const CheckpointConfig& cfg);

// The checkpoint to resume from: the folder DIR/latest names, or else the complete step_<N> folder
// with the largest N; nullopt when there is none (or DIR does not exist).
std::optional<std::string> latest_checkpoint(const std::string& dir);

// Restores the weights, the optimizer state (when `optimizer` is not null) and torch's RNG state
// from checkpoint folder `path`, and returns its step and values. Every file is read and checked
// before anything is changed: a missing, truncated or mismatched file gives one-line
// std::runtime_error naming the file, with the model, optimizer and RNG untouched. An optimizer
// must be an AdamW with the same parameter groups as the saved one.
TrainState load_checkpoint(const std::string& path, model::CausalLM& model, torch::optim::Optimizer* optimizer);

// What the trainers do with these at a stage's start and at its checkpoints:
//   resume_latest: restores the latest checkpoint of `dir` (load_checkpoint) and returns its state,
//     logging "<stage>: resumed from PATH at step N"; nullopt (logged too) when there is none.
//   save_stage_checkpoint: save_checkpoint with values["stage"] = stage, logged; returns the path.
std::optional<TrainState> resume_latest(const std::string& dir, model::CausalLM& model,
                                        torch::optim::Optimizer* optimizer, const std::string& stage);
std::string save_stage_checkpoint(const std::string& dir, int64_t step, model::CausalLM& model,
                                  torch::optim::Optimizer* optimizer, TrainState state, const CheckpointConfig& cfg,
                                  const std::string& stage);

// The same under data parallelism, with the trainers' optimizer (grpo/dist/sharded_optimizer.h).
// On a world of one these are the functions above with its AdamW. With more ranks, rank 0 writes
// model/, rng.pt and state.json ("optimizer_shards": N) and every rank r writes
// optimizer/rank_<r>.pt (the AdamW states of its share, by parameter name) into the same
// temporary folder; rank 0 publishes it only when every rank's part was written, else every rank
// throws and nothing under a final name changed. The run folder must be shared by the ranks (one
// machine, or a shared filesystem). Loading takes optimizer/ shards written by any number of ranks,
// or a single-process optimizer.pt (matched by name through make_optimizer(model, cfg)'s order),
// so a run resumes on another world size; every rank reads the weights.
std::string save_checkpoint(const std::string& dir, int64_t step, model::CausalLM& model,
                            dist::ShardedOptimizer& optimizer, const TrainState& state, const CheckpointConfig& cfg);
TrainState load_checkpoint(const std::string& path, model::CausalLM& model, dist::ShardedOptimizer& optimizer,
                           const OptimizerConfig& cfg);
std::optional<TrainState> resume_latest(const std::string& dir, model::CausalLM& model,
                                        dist::ShardedOptimizer& optimizer, const OptimizerConfig& cfg,
                                        const std::string& stage);
std::string save_stage_checkpoint(const std::string& dir, int64_t step, model::CausalLM& model,
                                  dist::ShardedOptimizer& optimizer, TrainState state, const CheckpointConfig& cfg,
                                  const std::string& stage);

// torch's RNG state (the CPU default generator, and every CUDA device's default generator when
// CUDA is available) as bytes (a torch archive), and back. restore_rng_state restores the CUDA
// generators the state has and this process has (by index); it throws std::runtime_error when
// `bytes` is not such a state.
std::string capture_rng_state();
void restore_rng_state(const std::string& bytes);

// A std::mt19937_64's full state as text (the standard's operator<< form), and back. set_mt_state
// throws std::runtime_error when `text` is not such a state, leaving `rng` unchanged.
std::string mt_state(const std::mt19937_64& rng);
void set_mt_state(std::mt19937_64& rng, const std::string& text);

}  // namespace grpo::train
