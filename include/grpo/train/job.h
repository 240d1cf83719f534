// The pieces every training program shares: where the model, the tokenizer and the records come
// from, as YAML sections, and the plot of a run's metrics. The example programs (train_sft,
// train_grpo, r1_pipeline) are short because of these.
//
//   model:     {init: "", config: {...ModelConfig...}, dtype: float32, device: cpu}
//   tokenizer: {path: "", special_tokens: ["<|endoftext|>", "<think>", ...]}
//   sft_data:  {generator: {...GeneratorConfig...}}      or {jsonl: {...DatasetConfig...}}
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/core/run.h"
#include "grpo/data/dataset.h"
#include "grpo/data/generators.h"
#include "grpo/data/prompt.h"
#include "grpo/data/tokenizer.h"
#include "grpo/model/causal_lm.h"
#include "grpo/model/model_config.h"
#include "grpo/rewards/reward_set.h"
#include "grpo/train/evaluate.h"

namespace grpo::train {

struct TokenizerSection {
  std::string path;  // tokenizer.json (or its folder); "" = a byte-level tokenizer
  std::vector<std::string> special_tokens = {"<|endoftext|>"};  // byte tokenizer only: its added tokens

  template <class V>
  void visit(V& v) {
    v("path", path, "tokenizer.json or its folder; \"\" = the built-in byte-level tokenizer");
    v("special_tokens", special_tokens, "byte tokenizer: special tokens after the 256 bytes");
  }
};

struct ModelSection {
  std::string init;  // HF checkpoint folder to start from; "" = a new model from `config`
  std::optional<model::ModelConfig>
      config;                     // architecture of a new model (vocab_size >= the tokenizer's); unset with init
  std::string dtype = "float32";  // float32 | bfloat16 (parameters)
  std::string device = "cpu";     // cpu | cuda | cuda:N

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("init", init, "HF checkpoint folder to start from; \"\" = a new model from config");
    v("config", config, "architecture of a new model (vocab_size at least the tokenizer's)");
    v("dtype", dtype, "parameter dtype", Check().one_of({"float32", "bfloat16"}));
    v("device", device, "cpu, cuda or cuda:N", Check().nonempty());
  }
  std::string validate() const;  // exactly one of init and config
};

struct DataSection {
  std::optional<data::GeneratorConfig> generator;  // generated problems, or
  std::optional<data::DatasetConfig> jsonl;        // a JSONL file

  template <class V>
  void visit(V& v) {
    v("generator", generator, "generated problems (docs/data.md#generators)");
    v("jsonl", jsonl, "a JSONL dataset (docs/data.md)");
  }
  std::string validate() const;  // exactly one source
};

std::unique_ptr<data::Tokenizer> make_tokenizer(const TokenizerSection& cfg);

// A new model (seeded from torch's RNG; set it first) or the `init` checkpoint, on cfg.device in
// cfg.dtype. vocab_size must be at least the tokenizer's vocabulary; a new model's eos_token_ids,
// when empty, the id of `eos_token` (when the tokenizer has it).
model::CausalLM make_model(const ModelSection& cfg, const data::Tokenizer& tokenizer, const std::string& eos_token);

std::vector<data::Record> load_records(const DataSection& cfg);

// Writes `model` to <run>/<name> in HF format, with tokenizer.json when the tokenizer is the
// built-in byte tokenizer (so `grpo generate` and HF load the folder as it is); returns the path.
std::string save_model(const Run& run, model::CausalLM& model, const TokenizerSection& tokenizer,
                       const std::string& name);

// The evaluation a trainer calls every eval_every steps: generation + reward on `records`, logged,
// returned as the metrics eval_accuracy, eval_reward and eval_length. The references must outlive it.
std::function<std::vector<Metric>(int64_t)> held_out_eval(model::CausalLM model, const data::Tokenizer& tokenizer,
                                                          const data::PromptConfig& prompt,
                                                          const std::vector<data::Record>& records,
                                                          const rewards::RewardSet& rewards, const EvalConfig& cfg);

// <run>/training.png: panels of reward and accuracy per step (and loss) from <run>/metrics.jsonl.
// Returns the path; logs a warning and returns "" when the plot cannot be written.
std::string write_training_plot(const Run& run);

}  // namespace grpo::train
