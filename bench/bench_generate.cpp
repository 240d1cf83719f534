// Generation speed of the rollout engine: plain greedy decoding against MTP speculative decoding on
// a tiny DeepSeek-V3 model (MLA, MoE, one MTP module) trained for a few seconds so that its MTP
// drafts are meaningful (tests/rollout/cyclic_model.h), and group sampling. Counters: generated
// tokens per second and, for speculative decoding, the share of drafts accepted.
// Run: build/bench/grpo_bench --benchmark_filter=Generate
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "grpo/rollout/engine.h"
#include "rollout/cyclic_model.h"

namespace {

using namespace grpo;

// Eight decoder layers to one MTP module (DeepSeek-V3 has 61 to 1): the draft costs a fraction of
// a verify step, as in the real model.
model::CausalLM& trained_model() {
  static model::CausalLM model = [] {
    torch::manual_seed(14);
    model::CausalLM m(rollout::stride::stride_model_config(8));
    rollout::stride::train_stride_model(m, 200);
    return m;
  }();
  return model;
}

std::vector<rollout::GenerationRequest> requests(int64_t batch) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const auto prompts = rollout::stride::stride_sequences(batch, 8, gen);
  std::vector<rollout::GenerationRequest> out;
  for (int64_t i = 0; i < batch; ++i) {
    rollout::GenerationRequest r;
    r.prompt_ids.assign(prompts[i].data_ptr<int64_t>(), prompts[i].data_ptr<int64_t>() + 8);
    out.push_back(r);
  }
  return out;
}

// Args: batch, new tokens, speculative (0/1).
void BM_GenerateGreedy(benchmark::State& state) {
  auto& model = trained_model();
  rollout::GenerationConfig gc;
  gc.max_new_tokens = state.range(1);
  gc.sampling.temperature = 0;
  gc.ignore_eos = true;
  gc.speculative_mtp = state.range(2) != 0;
  rollout::Engine engine(model, nullptr, gc);
  const auto reqs = requests(state.range(0));
  rollout::GenerationStats stats;
  int64_t tokens = 0, drafted = 0, accepted = 0;
  for (auto _ : state) {
    engine.generate(reqs, &stats);
    tokens += stats.generated_tokens;
    drafted += stats.drafted;
    accepted += stats.accepted;
  }
  state.counters["tokens_per_s"] = benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
  if (drafted > 0) state.counters["accepted"] = static_cast<double>(accepted) / static_cast<double>(drafted);
}
BENCHMARK(BM_GenerateGreedy)
    ->ArgNames({"batch", "new", "mtp"})
    ->Args({1, 128, 0})
    ->Args({1, 128, 1})
    ->Args({8, 128, 0})
    ->Args({8, 128, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// GRPO's group sampling: P prompts x G samples at temperature 1, sharing each prompt's prefill.
void BM_GenerateGroups(benchmark::State& state) {
  auto& model = trained_model();
  rollout::GenerationConfig gc;
  gc.max_new_tokens = 64;
  gc.sampling.temperature = 1.0;
  gc.ignore_eos = true;
  gc.num_generations = state.range(1);
  rollout::Engine engine(model, nullptr, gc);
  const auto reqs = requests(state.range(0));
  rollout::GenerationStats stats;
  int64_t tokens = 0;
  for (auto _ : state) {
    engine.generate(reqs, &stats);
    tokens += stats.generated_tokens;
  }
  state.counters["tokens_per_s"] = benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GenerateGroups)->ArgNames({"prompts", "G"})->Args({4, 8})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
