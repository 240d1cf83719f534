// The generation engine: batched prefill then KV-cached decoding over a CausalLM (DeepSeek-V3 with
// its compressed MLA cache, or a dense Llama/Qwen2 student), recording the log-probability of
// every sampled token.
//
//   grpo::rollout::GenerationConfig cfg;              // max_new_tokens, sampling, stops, G, seed
//   cfg.num_generations = 8;
//   grpo::rollout::Engine engine(model, tokenizer.get(), cfg);
//   auto completions = engine.generate({{.prompt_ids = ids_a, .seed = 7}, {.prompt_ids = ids_b, .seed = 8}});
//   // completions[p * G + g]: token_ids, logprobs, text, finish_reason, seconds
//
// How a batch runs:
//   - prompts of different lengths are left-padded into one [P, Lmax] batch with an attention mask;
//     position ids count real tokens only (HF's cumsum(mask) - 1), so a row's numbers do not depend
//     on its padding;
//   - one KV cache of P rows x (Lmax + max_new_tokens) positions is allocated before the prefill
//     (MLA layers store only the latent and the roped key); decoding never reallocates it per token;
//   - group sampling: each prompt is prefilled once and its cache rows are copied G times
//     (KVCache::select_rows), as are its last logits;
//   - each step decodes one token for every unfinished row; a row that finishes (EOS id, a stop
//     string, max_new_tokens) leaves the batch at once: its cache row, mask row and position are
//     dropped, so no compute is spent on it;
//   - everything runs under c10::InferenceMode;
//   - when the model's forwards are collective (model->forward_rounds set: expert parallelism or
//     full sharding generating in the training layout), every forward is a round with the other
//     ranks, and generate() returns only when no rank has forwards left (stand-in forwards of one
//     token meanwhile); every rank must then call generate() as often as the others, with no
//     requests when it has none.
// Determinism: sample g of a request with seed s draws from its own stream RowRng(derive(s, g)),
// one uniform per token, so its tokens do not depend on what else is in the batch. A request
// without a seed uses cfg.seed + its index in the call.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/data/tokenizer.h"
#include "grpo/model/causal_lm.h"
#include "grpo/model/routing_record.h"
#include "grpo/rollout/sampling.h"

namespace grpo::rollout {

struct GenerationConfig {
  int64_t max_new_tokens = 256;           // tokens generated per completion at most
  SamplingConfig sampling;                // temperature, top_k, top_p, min_p
  std::vector<int64_t> eos_token_ids;     // stop ids; empty = the model config's eos_token_ids
  bool ignore_eos = false;                // never stop on EOS (benchmarks, parity tests)
  std::vector<std::string> stop_strings;  // stop when the decoded completion contains one (needs a tokenizer)
  int64_t num_generations = 1;            // completions per prompt (GRPO's G), sharing the prompt's prefill
  uint64_t seed = 0;                      // seed of requests that carry none (plus their index)
  bool use_cache = true;                  // false: recompute the whole sequence every step (for checks)
  int64_t max_batch_rows = 0;             // decode at most this many rows at once; 0 = all
  bool speculative_mtp = false;           // DeepSeek-V3 MTP drafts one token, the model verifies (greedy only)
  bool mla_absorbed = true;               // MLA models decode in the absorbed form (restored after)
  bool skip_special_tokens = false;       // drop special tokens from Completion::text (the final EOS always is)
  bool record_routing = false;            // Completion::routing: the experts every MoE layer chose (router replay)

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("max_new_tokens", max_new_tokens, "tokens generated per completion at most", Check().ge(1));
    v("sampling", sampling, "temperature, top_k, top_p, min_p");
    v("eos_token_ids", eos_token_ids, "ids that end a completion; empty: the model config's");
    v("ignore_eos", ignore_eos, "never stop on EOS ids");
    v("stop_strings", stop_strings, "strings that end a completion (kept in its text)");
    v("num_generations", num_generations, "completions per prompt, sharing its prefill", Check().ge(1));
    v("seed", seed, "seed of requests without their own (plus the request index)");
    v("use_cache", use_cache, "KV-cached decoding (false recomputes the sequence every step)");
    v("max_batch_rows", max_batch_rows, "rows decoded at once; 0 = all prompts x num_generations", Check().ge(0));
    v("speculative_mtp", speculative_mtp, "MTP speculative decoding (DeepSeek-V3 with MTP, greedy only)");
    v("skip_special_tokens", skip_special_tokens, "drop special tokens from the text (the final EOS always is)");
    v("mla_absorbed", mla_absorbed, "MLA: decode in the absorbed form over the latent cache (false: the model's form)");
    v("record_routing", record_routing,
      "record the experts every MoE layer chose for every token (router replay; set by grpo.router_replay)");
  }
  std::string validate() const;
};

struct GenerationRequest {
  std::vector<int64_t> prompt_ids;  // the prompt's token ids (not empty)
  std::optional<uint64_t> seed;     // this request's random seed; unset: GenerationConfig::seed + index
};

enum class FinishReason { eos, stop, length };
std::string_view finish_reason_name(FinishReason r);

struct Completion {
  int64_t prompt_index = 0;        // index of the request
  int64_t sample_index = 0;        // 0..G-1 within the request
  std::vector<int64_t> token_ids;  // generated ids, the EOS id or the token completing a stop string included
  std::vector<float> logprobs;     // log p(token) under log_softmax(logits / T), one per token
  std::string text;                // decoded (without the final EOS); cut after the stop string (stop)
  FinishReason finish_reason = FinishReason::length;
  std::string stop_string;  // the stop string that ended it (stop)
  double seconds = 0;       // from the start of generate() until this completion finished
  // record_routing: [T, M, K] int16, the experts each of the M decoder MoE layers chose for the
  // tokens the model ran, the prompt's then the completion's but its last (never an input):
  // T = prompt length + completion length - 1. Undefined otherwise.
  torch::Tensor routing;
};

struct GenerationStats {
  int64_t prompts = 0, completions = 0;
  int64_t prompt_tokens = 0;     // real prompt tokens prefilled (each prompt once)
  int64_t generated_tokens = 0;  // tokens in all completions
  int64_t steps = 0;             // decode forwards
  double prefill_seconds = 0, decode_seconds = 0, total_seconds = 0;
  double tokens_per_second = 0;       // generated_tokens / total_seconds
  int64_t cache_bytes = 0;            // KV cache allocated for the prefill
  int64_t drafted = 0, accepted = 0;  // speculative decoding: drafts proposed and accepted
};

class Engine {
 public:
  // `tokenizer` may be null: no text and no stop strings then. The model is used in eval mode.
  Engine(model::CausalLM model, const data::Tokenizer* tokenizer, GenerationConfig cfg);

  // Completions in request order, G per request: result[p * G + g].
  std::vector<Completion> generate(const std::vector<GenerationRequest>& requests, GenerationStats* stats = nullptr);

  const GenerationConfig& config() const { return cfg_; }

  // Called before each decode forward of generate() with the number of decode forwards it has run
  // so far (0, 1, ...; counted over the call's chunks): disaggregated partial rollouts load newer
  // weights there (grpo/train/disaggregated.h). The KV cache of the tokens before stays.
  using DecodeHook = std::function<void(int64_t forwards)>;
  void set_decode_hook(DecodeHook hook) { decode_hook_ = std::move(hook); }

 private:
  struct Row;
  void run_rows(std::vector<Row>& rows, const std::vector<GenerationRequest>& requests, GenerationStats& stats,
                double t0);
  void run_rows_speculative(std::vector<Row>& rows, const std::vector<GenerationRequest>& requests,
                            GenerationStats& stats, double t0);
  bool finish_check(Row& row, int64_t token, double now) const;
  static torch::Tensor next_positions(const std::vector<Row>& rows, const torch::Device& device);
  void pair_round();    // before each forward: a round with the other ranks (when paired)
  void drain_rounds();  // after the last: stand-ins while another rank has forwards left

  model::CausalLM model_;
  const data::Tokenizer* tokenizer_;
  GenerationConfig cfg_;
  std::vector<int64_t> eos_;
  size_t max_stop_bytes_ = 0;
  model::ForwardRounds* rounds_ = nullptr;   // the model's, during generate()
  model::RoutingRecord* routing_ = nullptr;  // record_routing: the tape, during generate()
  DecodeHook decode_hook_;
  int64_t decode_forwards_ = 0;  // in the generate() call under way
  void before_decode_forward() {
    if (decode_hook_) decode_hook_(decode_forwards_);
    ++decode_forwards_;
  }
  // After a forward of `positions` per batch row: rows[order[i]] gets positions [first[i],
  // first[i] + count[i]) of batch row i / repeat (the prefill's G rows per prompt) appended.
  void take_routing(std::vector<Row>& rows, const std::vector<size_t>& order, const std::vector<int64_t>& first,
                    const std::vector<int64_t>& count, int64_t positions, int64_t repeat);
};

}  // namespace grpo::rollout
