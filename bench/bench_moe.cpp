// MoE dispatch cost follows the tokens routed, not the number of experts: the same 4096 tokens,
// top-6 routing and expert width, with 8 and with 64 routed experts (forward, CPU float32).
// Run: build/bench/grpo_bench --benchmark_filter=Moe
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "grpo/model/moe.h"

namespace {

void BM_MoeForward(benchmark::State& state) {
  grpo::model::ModelConfig cfg;
  cfg.hidden_size = 256;
  cfg.moe_intermediate_size = 128;
  cfg.n_routed_experts = state.range(0);
  cfg.num_experts_per_tok = 6;
  cfg.n_shared_experts = 0;
  cfg.n_group = 1;
  cfg.topk_group = 1;
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  grpo::model::Moe moe(cfg);
  const auto x = torch::randn({1, state.range(1), cfg.hidden_size});
  for (auto _ : state) {
    auto y = moe(x);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * state.range(1));
  state.counters["experts"] = static_cast<double>(state.range(0));
}
BENCHMARK(BM_MoeForward)->Args({8, 4096})->Args({64, 4096})->Unit(benchmark::kMillisecond);

}  // namespace
