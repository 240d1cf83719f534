// Disaggregated rollouts for GRPO (docs/training.md "Disaggregated rollouts", grpo.async.mode:
// disaggregated): under grpo launch the last `generator_ranks` ranks only generate and score, the
// others only train (data parallel among themselves).
//
//   trainers    [recv batch n-1] [optimise -> version n] [post version n] [recv batch n] ...
//   generators  ... [sample batch j on version j - s] [post batch j] [recv version j + 1 - s] ...
//
// As one_step_off, batch j is sampled by the weights the trainers had before step j - s (s =
// max_staleness; the first batches of a run by its starting weights), so a run gives the same
// batches and weights as one_step_off in one process with the same seed and staleness.
//
// Three kinds of channel, each its own process group so that their collectives never wait on each
// other's:
//   - setup (rank 0 and the generators, once): the start step and data order, then the weights;
//   - rollouts, one per generator (the trainers and that generator): the generator posts each
//     batch asynchronously (its size, then its bytes), the trainers receive them in order;
//   - weights (rank 0 and the generators): rank 0 posts a version asynchronously, in buckets of
//     bucket_mb copied out of the parameters (the next step may write those at once); a generator
//     receives it before the batch that needs it.
// Partial rollouts (grpo.async.partial_after_tokens N > 0, verl's partial rollout): batch j starts on
// the version before step j - s and, after N decode forwards, continues on the one before step
// j - s + 1 (the KV cache of the tokens before is kept): the generator starts a batch one step
// earlier and its later tokens are one update fresher; the tokens of both versions carry the
// sampler's log-probs, which the ratio is taken against.
//
// A version goes out when a later batch is sampled by it or when an evaluation runs at that step:
// evaluation shares its problems over every rank of the job, and the generators take part on the
// version of that step.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "grpo/dist/world.h"
#include "grpo/model/causal_lm.h"
#include "grpo/rewards/reward_set.h"

namespace grpo::train {

struct StepRollouts;

// What travels with a batch besides its rollouts.
struct BatchMeta {
  int64_t index = 0;               // the batch (generation step, 0-based)
  int64_t version = 0;             // the weights that sampled it (optimizer steps taken)
  std::string hash;                // their FNV-1a hash ("" unless grpo.async.hash_weights)
  std::string order;               // the data order after its prompts (DataOrderState JSON)
  double weight_wait_seconds = 0;  // the generator's wait for (and copy of) new versions for this batch
  int64_t weight_bytes = 0;        // bytes received for them
  int64_t switched_version = -1;   // partial rollouts: the version the batch continued on (-1: none)
  std::string switched_hash;       // its hash
};

// A RewardScores as JSON text and back (exact: scores are finite, RewardSet refuses others, and
// doubles print with 17 digits); the trainers' logs gather every rank's this way too.
std::string scores_to_text(const rewards::RewardScores& scores);
rewards::RewardScores scores_from_text(const std::string& text);

// StepRollouts and BatchMeta as bytes and back (exact: float and double bits, token ids, routing).
std::string encode_batch(const StepRollouts& rollouts, const BatchMeta& meta);
void decode_batch(const std::string& bytes, StepRollouts& rollouts, BatchMeta& meta);

// The groups and roles of a disaggregated run. Every rank of `world` constructs it (collective).
class DisaggregatedLink {
 public:
  DisaggregatedLink(dist::World& world, int64_t generator_ranks, int64_t max_staleness, double bucket_mb);
  ~DisaggregatedLink();  // waits for what this rank posted
  DisaggregatedLink(const DisaggregatedLink&) = delete;
  DisaggregatedLink& operator=(const DisaggregatedLink&) = delete;

  bool generator() const { return generator_; }
  int64_t trainers() const { return trainers_; }
  int64_t generators() const { return generators_; }
  // The trainers' group (on a trainer) and the generators' group (on a generator).
  dist::World& trainer_group() { return *trainer_group_; }
  dist::World& generator_group() { return *generator_group_; }

  // Setup: rank 0's start step and data order reach the generators; then its weights (version
  // `step`). Rank 0 and generators; other trainers return at once.
  void share_start(int64_t& step, std::string& order, model::CausalLM& model);

  // Weights channel. Rank 0: waits for the version it posted last, copies this one out and posts
  // it (returns the seconds spent). Other trainers: nothing.
  double post_weights(model::CausalLM& model);
  // A generator: receives the next version into `model` (blocking); the bytes it moved.
  int64_t receive_weights(model::CausalLM& model);

  // Rollouts channel. A generator: posts this batch (waiting only for batches more than s + 1
  // back, which the trainers have taken by then).
  void post_batch(std::string bytes);
  // A trainer: the next batch's bytes from every generator, in generator order (blocking).
  std::vector<std::string> receive_batch();

  // Waits for everything this rank posted (the trainers before they return, the generators after
  // their last batch).
  void finish();

 private:
  struct Posted;
  int64_t trainers_ = 0, generators_ = 0;
  bool generator_ = false;
  int64_t max_staleness_ = 1;
  int64_t bucket_bytes_ = 0;
  std::unique_ptr<dist::World> trainer_group_, generator_group_, weights_;
  std::vector<std::unique_ptr<dist::World>> rollouts_;  // on a trainer: one per generator; on a generator: its own
  std::unique_ptr<Posted> posted_weights_;
  std::deque<std::unique_ptr<Posted>> posted_batches_;  // a generator's batches not known to be taken
};

}  // namespace grpo::train
