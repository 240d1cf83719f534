// Rejection sampling for distillation (DeepSeek-R1's "rejection sampling + SFT" stage): a teacher
// samples k completions per prompt, the reward functions score them, and the correct, well-formed
// ones are written to a JSONL file that the SFT stage loads as Records with a worked reasoning.
//
//   RejectionSamplingConfig cfg;                 // k, keep rule, accuracy reward, sampling, output
//   cfg.output = "run/traces.jsonl";
//   auto r = generate_traces(teacher, *tokenizer, prompt_cfg, records, rewards, cfg,
//                            {.teacher = "run/checkpoints/grpo/step-400"}, /*resume=*/true);
//   // r.pass_rate, r.kept, r.malformed, ...
//
// Per prompt i (records[i], formatted with format_prompt): the engine samples k = samples_per_prompt
// completions with the request seed prompt_seed(cfg.seed, i) (sample g draws from
// RowRng::derive(that seed, g)), so what a prompt gets depends only on the seed and its index, never
// on the batch it was generated in or on an interruption. Each completion is judged:
//   malformed        not valid UTF-8, or (require_format) parse_trace finds no exact
//                    "<think> reasoning </think> <answer> answer </answer>" shape (see parse_trace);
//   incorrect        well-formed, but the accuracy_reward score is absent or below 1 - 1e-9;
//   below_min_reward correct, but the weighted total is below min_reward (when set);
//   accepted         the rest (correct and well-formed).
// Then the keep rule picks among the accepted ones of the prompt (select_traces):
//   best         the one with the highest total reward (ties: the lowest sample index);
//   all_correct  every accepted one, in sample order;
//   at_most_n    the max_per_prompt highest totals (ties: lower sample index first), distinct texts;
// and with dedupe (the default) a text already kept for this prompt is never kept again.
//
// Output: one kept trace per line, in prompt order, then in the order the rule ranks them:
//   {"prompt":"What is 2 + 3?","reasoning":"2 + 3 = 5","answer":"5","reference_answer":"5",
//    "completion":" <think> 2 + 3 = 5 </think> <answer> 5 </answer>","rewards":{"math_accuracy":1.0,
//    "format":1.0},"reward":1.2,"prompt_index":0,"sample_index":2,"source":"data/train.jsonl:1",
//    "teacher":"run/checkpoints/grpo/step-400","temperature":0.7,"top_p":0.95,"top_k":0,
//    "max_new_tokens":1024,"seed":1234567}
// "reasoning" and "answer" are the teacher's, parsed from "completion", so that
// format_completion(record) == completion (modulo a leading separator that the teacher may or may
// not have written). An absent reward score is written as null. The file loads back through
// data::load_jsonl with fields {prompt: prompt, answer: answer, reasoning: reasoning}: the loader
// ignores the other keys; note that FieldMap's default has no reasoning field, so an SFT data
// section must map `reasoning: reasoning` (the extra keys can be mapped as extra columns too).
// A completion kept with require_format: false that does not parse gets its whole text (without the
// leading separator) as "reasoning" and the reference answer as "answer", and "well_formed": false.
//
// Resume: prompts run in batches of prompts_per_batch (batch b holds prompts [b * B, (b + 1) * B)).
// After each batch its lines are appended to `output` in one write and fsync'ed, then the sidecar
// <output>.state.json is replaced atomically:
//   {"version":1,"prompts_done":128,"bytes":40213,"done":false,"completions":512,"accepted":77,
//    "kept":60,"prompts_with_trace":60,"malformed":201,"incorrect":230,"below_min_reward":4,
//    "duplicates":13,"fingerprint":{"teacher":"...","generation.sampling.temperature":"0.7",...}}
// The fingerprint holds every setting that changes the file: teacher, the generation settings
// (except num_generations, set from k, and seed, unused), k, the keep rule and its parameters,
// accuracy_reward, min_reward, require_format, dedupe, seed, prompts_per_batch, the reward labels
// and weights, the number of prompts and a hash of the formatted prompts with their answers and
// extra columns (so a changed prompt template or dataset is caught). max_prompts is not in it: it
// only says where to stop, so a run limited to N prompts can be resumed with all of them.
//   resume = false: always a fresh start: the state is reset, the output written anew.
//   resume = true, a state: its fingerprint must match (else std::runtime_error naming every
//     differing key with both values); the output is cut back to `bytes` (dropping a half-written
//     batch or anything appended after), and generation continues at prompts_done. Lines already
//     written are never rewritten. When prompts_done already reaches the target (all prompts, or
//     max_prompts), the call returns at once with the counts of the state.
//   resume = true, no state: a fresh start when the output does not exist or is empty; an error
//     when it has content (it was not written by a resumable run: pass resume = false to replace it).
// A file shorter than the state's `bytes` is an error (data was lost outside this function).
// `done` is true once every prompt of the input has been processed.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/data/prompt.h"
#include "grpo/data/record.h"
#include "grpo/data/tokenizer.h"
#include "grpo/model/causal_lm.h"
#include "grpo/rewards/reward_set.h"
#include "grpo/rollout/engine.h"

namespace grpo::train {

// Which accepted completions of a prompt are kept.
enum class KeepRule {
  best,         // the highest total reward
  all_correct,  // every accepted completion
  at_most_n,    // the max_per_prompt highest totals, distinct texts
};
constexpr auto config_enum_names(KeepRule) {
  return std::array{std::pair{KeepRule::best, "best"}, std::pair{KeepRule::all_correct, "all_correct"},
                    std::pair{KeepRule::at_most_n, "at_most_n"}};
}

struct RejectionSamplingConfig {
  int64_t samples_per_prompt = 4;                 // k completions sampled per prompt
  KeepRule keep = KeepRule::best;                 // best | all_correct | at_most_n
  int64_t max_per_prompt = 1;                     // at_most_n: traces kept per prompt at most
  std::string accuracy_reward = "math_accuracy";  // reward label that must be present and >= 1 - 1e-9
  std::optional<double> min_reward;               // also require a weighted total >= this; null = none
  bool require_format = true;                     // reject completions that parse_trace cannot parse
  bool dedupe = true;                             // identical texts of one prompt are kept once
  rollout::GenerationConfig generation;           // max_new_tokens, sampling, stops; num_generations = k
  int64_t prompts_per_batch = 64;                 // prompts generated together (and written per batch)
  int64_t max_prompts = 0;                        // stop after this many prompts; 0 = all
  std::string output;                             // the JSONL file; the state goes to <output>.state.json
  uint64_t seed = 0;                              // per-prompt seeds derive from it and the prompt index

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("samples_per_prompt", samples_per_prompt, "completions sampled per prompt (k)", Check().ge(1));
    v("keep", keep, "best (highest reward) | all_correct | at_most_n (max_per_prompt highest, distinct)");
    v("max_per_prompt", max_per_prompt, "at_most_n: traces kept per prompt at most", Check().ge(1));
    v("accuracy_reward", accuracy_reward, "reward label that must score >= 1 for a completion to count as correct",
      Check().nonempty());
    v("min_reward", min_reward, "also require a weighted total reward >= this; null = none");
    v("require_format", require_format,
      "reject completions that are not exactly <think> reasoning </think> + the answer in the prompt's style");
    v("dedupe", dedupe, "keep identical completions of one prompt once");
    v("generation", generation,
      "sampling, max_new_tokens, stop strings (num_generations comes from samples_per_prompt)");
    v("prompts_per_batch", prompts_per_batch, "prompts generated together and written per batch", Check().ge(1));
    v("max_prompts", max_prompts, "stop after this many prompts; 0 = all", Check().ge(0));
    v("output", output, "JSONL file of the kept traces (state: <output>.state.json)");
    v("seed", seed, "seed of the per-prompt sampling seeds");
  }
  // generation.num_generations must be 1 (its default: then it is set from samples_per_prompt) or
  // equal samples_per_prompt; then generation.validate().
  std::string validate() const;
};

// Where the traces came from, written on every line.
struct TraceProvenance {
  std::string teacher;  // checkpoint path or a description of the teacher model
};

struct RejectionSamplingResult {
  int64_t prompts = 0;             // prompts processed (resumed ones included)
  int64_t completions = 0;         // completions sampled (prompts * k)
  int64_t accepted = 0;            // correct and well-formed (and >= min_reward)
  int64_t kept = 0;                // lines in the output
  int64_t prompts_with_trace = 0;  // prompts with at least one kept trace
  int64_t malformed = 0;           // rejected: invalid UTF-8, or unparseable with require_format
  int64_t incorrect = 0;           // rejected: accuracy reward absent or below 1
  int64_t below_min_reward = 0;    // rejected: correct but total < min_reward
  int64_t duplicates = 0;          // accepted but not kept: a text already kept for the prompt
  int64_t resumed_prompts = 0;     // prompts taken from the state of an earlier run
  double seconds = 0;              // this call
  double pass_rate = 0;            // accepted / completions
};

// A completion split into the parts of a Record.
struct ParsedTrace {
  std::string reasoning;  // between the think tags, without the separators around it
  std::string answer;     // inside the answer tags (or \boxed{}), without the separators
};

// Splits a completion into reasoning and answer when, and only when, it is exactly what
// format_completion writes for them: with the default PromptConfig,
//   "[ ]<think> REASONING </think> <answer> ANSWER </answer>"
// (with think_in_prompt the completion starts at " REASONING"; with answer_style boxed it ends in
// " \boxed{ANSWER}"). The leading separator may be missing. Rejected (nullopt): any other spacing,
// text before or after, a blank reasoning, an empty answer or one with space around it (the loader
// trims answers), a reasoning or answer containing a think or answer tag, or unbalanced braces in a
// boxed answer.
std::optional<ParsedTrace> parse_trace(const std::string& completion, const data::PromptConfig& prompt);

// What happened to one completion of a prompt.
enum class TraceVerdict { kept, duplicate, not_selected, malformed, incorrect, below_min_reward };
std::string_view trace_verdict_name(TraceVerdict v);

struct TraceSelection {
  std::vector<int64_t> kept;           // indices into the prompt's completions, in the rule's order
  std::vector<TraceVerdict> verdicts;  // [k] one per completion
  int64_t accepted = 0, malformed = 0, incorrect = 0, below_min_reward = 0, duplicates = 0;
};

// The acceptance and keep rule of one prompt: `completions` [k] are its texts, and their scores
// are rows [offset, offset + k) of `scores`. Well-formed means valid UTF-8 and, with
// cfg.require_format, parse_trace(text, prompt) succeeds. Throws std::invalid_argument when
// cfg.accuracy_reward is not a label of `scores` or the rows are out of range.
TraceSelection select_traces(const std::vector<std::string>& completions, const rewards::RewardScores& scores,
                             const data::PromptConfig& prompt, const RejectionSamplingConfig& cfg, int64_t offset = 0);

// The request seed of prompt `index`: derive_seed(seed, index) (grpo/core/random.h).
uint64_t prompt_seed(uint64_t seed, int64_t index);

// Generates completions for requests (k per request, result[p * k + g]), as rollout::Engine does.
using TraceGenerator = std::function<std::vector<rollout::Completion>(const std::vector<rollout::GenerationRequest>&)>;

// Runs rejection sampling with the teacher (in eval mode, restored after) and writes cfg.output.
// Throws std::invalid_argument for a bad config or an accuracy_reward that is not a reward label,
// std::runtime_error for a fingerprint mismatch on resume (naming the keys), an output that cannot
// be written, or an output without state on resume.
RejectionSamplingResult generate_traces(model::CausalLM teacher, const data::Tokenizer& tokenizer,
                                        const data::PromptConfig& prompt, const std::vector<data::Record>& prompts,
                                        const rewards::RewardSet& rewards, const RejectionSamplingConfig& cfg,
                                        const TraceProvenance& provenance, bool resume);

// The same with any generator in place of the engine (tests, other backends): `generate` receives
// each batch's requests (k = cfg.samples_per_prompt completions each) and must return p * k + g.
RejectionSamplingResult generate_traces_with(const TraceGenerator& generate, const data::Tokenizer& tokenizer,
                                             const data::PromptConfig& prompt, const std::vector<data::Record>& prompts,
                                             const rewards::RewardSet& rewards, const RejectionSamplingConfig& cfg,
                                             const TraceProvenance& provenance, bool resume);

}  // namespace grpo::train
