// The seam through which generation pairs its forwards over ranks when the model's blocks talk to
// the other ranks in every forward (expert parallelism's all-to-all, full sharding's per-block
// all-gathers), installed from outside (grpo/dist/generation_scope.h). Ranks decode different
// numbers of steps (their completions end at different lengths), and one may have no prompts at
// all; each forward is therefore a round that every rank joins: the ranks with a forward of their
// own run it, the others run a stand-in (one token), so that the collectives inside pair one to
// one. The model code knows nothing of what a round does.
#pragma once

namespace grpo::model {

class ForwardRounds {
 public:
  virtual ~ForwardRounds() = default;
  // One round, every rank together: `mine` = this rank has a forward to run. Returns whether any
  // rank has one; then every rank runs one forward (its own, or a stand-in when !mine).
  virtual bool round(bool mine) = 0;
};

}  // namespace grpo::model
