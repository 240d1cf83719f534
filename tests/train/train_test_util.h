// The tiny setting the trainer tests share: the byte tokenizer with the R1 tags as special tokens,
// a short prompt template, the tiny DeepSeek-V3 config sized to that vocabulary, and generated
// 2-digit additions.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "grpo/core/run.h"
#include "grpo/data/generators.h"
#include "grpo/data/prompt.h"
#include "grpo/train/job.h"
#include "model/model_test_util.h"
#include "test_util.h"

namespace grpo::train::test {

inline std::unique_ptr<data::Tokenizer> byte_tokenizer() {
  TokenizerSection t;
  t.special_tokens = {"<|endoftext|>", "<think>", "</think>", "<answer>", "</answer>"};
  return make_tokenizer(t);
}

inline data::PromptConfig prompt_config() {
  data::PromptConfig p;
  p.system = "";
  p.eos_token = "<|endoftext|>";
  p.add_special_tokens = false;
  return p;
}

inline model::ModelConfig tiny_config(int64_t vocab) {
  auto c = model::test::tiny_dsv3();
  c.vocab_size = vocab;
  c.max_position_embeddings = 128;
  c.eos_token_ids = {256};
  return c;
}

// A run folder in a temporary directory (seed 3, warnings only) and the byte tokenizer.
struct Fixture {
  grpo::test::TempDir dir;
  std::unique_ptr<data::Tokenizer> tok = byte_tokenizer();
  std::unique_ptr<Run> run;
  explicit Fixture(const std::string& name) {
    RunConfig rc;
    rc.output_dir = dir.path(name);
    rc.seed = 3;
    rc.log_level = "warn";
    run = std::make_unique<Run>(rc, "test: true\n");
  }
};

// Copies of a model's parameters, to compare later.
inline std::vector<torch::Tensor> params_of(model::CausalLM& m) {
  std::vector<torch::Tensor> out;
  for (const auto& p : m->parameters()) out.push_back(p.detach().clone());
  return out;
}

inline std::vector<data::Record> addition(int64_t count, int64_t seed, bool reasoning) {
  data::GeneratorConfig g;
  g.count = count;
  g.seed = seed;
  g.with_reasoning = reasoning;
  g.arithmetic.max_digits = 2;
  g.arithmetic.ops = {"+"};
  g.arithmetic.reasoning = "compact";
  return data::generate(g);
}

}  // namespace grpo::train::test
