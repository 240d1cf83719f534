// Config loading cost: parse + bind + validate a job config with `range(0)` sections.
#include <benchmark/benchmark.h>

#include "grpo/config/config.h"

namespace {

struct Section {
  double lr = 1e-3;
  int steps = 10;
  std::string name = "x";
  template <class V>
  void visit(V& v) {
    v("lr", lr, "", grpo::config::Check().gt(0));
    v("steps", steps, "", grpo::config::Check().ge(1));
    v("name", name, "");
  }
};

struct Job {
  std::vector<Section> sections;
  template <class V>
  void visit(V& v) {
    v("sections", sections, "");
  }
};

void BM_ConfigParseAndBind(benchmark::State& state) {
  std::string text = "sections:\n";
  for (int64_t i = 0; i < state.range(0); ++i) text += "  - {lr: 0.01, steps: 5, name: s}\n";
  for (auto _ : state) {
    auto job = grpo::config::from_value<Job>(grpo::config::parse_yaml_string(text, "bench.yaml"));
    benchmark::DoNotOptimize(job.sections.data());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_ConfigParseAndBind)->Arg(10)->Arg(1000);

}  // namespace
