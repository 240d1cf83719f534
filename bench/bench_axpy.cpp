// axpy: kernel (or CPU reference) against plain ATen, as bytes moved per second. On a GPU the
// kernel should reach most of the copy bandwidth (3 tensors moved per element).
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "grpo/kernels/axpy.h"

namespace {

void run(benchmark::State& state, bool use_kernel, torch::Device device) {
  if (device.is_cuda() && !torch::cuda::is_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t n = state.range(0);
  const auto x = torch::randn({n}, torch::TensorOptions().device(device));
  const auto y = torch::randn({n}, torch::TensorOptions().device(device));
  for (auto _ : state) {
    auto out = use_kernel ? grpo::kernels::axpy(2.0, x, y) : x * 2.0 + y;
    if (device.is_cuda()) torch::cuda::synchronize();
    benchmark::DoNotOptimize(out.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * n * 3 * static_cast<int64_t>(sizeof(float)));
}

void BM_AxpyGrpoCpu(benchmark::State& s) { run(s, true, torch::kCPU); }
void BM_AxpyAtenCpu(benchmark::State& s) { run(s, false, torch::kCPU); }
void BM_AxpyGrpoCuda(benchmark::State& s) { run(s, true, torch::kCUDA); }
void BM_AxpyAtenCuda(benchmark::State& s) { run(s, false, torch::kCUDA); }

BENCHMARK(BM_AxpyGrpoCpu)->Arg(1 << 20);
BENCHMARK(BM_AxpyAtenCpu)->Arg(1 << 20);
BENCHMARK(BM_AxpyGrpoCuda)->Arg(1 << 26)->UseRealTime();
BENCHMARK(BM_AxpyAtenCuda)->Arg(1 << 26)->UseRealTime();

}  // namespace
