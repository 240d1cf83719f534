// token_logprobs: forward + backward time of the plain reference (full [N, V] logits) and the
// chunked path, on CPU at a moderate size and on CUDA at a trainer-like size (skipped without a
// GPU). On CUDA the chunked path is timed with the fused chunk kernels and with plain ATen per
// chunk (use_cuda_kernels = false), to show what the kernels buy. Reported as tokens per second.
#include <cmath>

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "grpo/kernels/token_logprobs.h"

namespace {

using grpo::kernels::TokenLogprobsOptions;

enum class Path { kReference, kChunked, kChunkedAten };

// range(0) = chunk size (ignored by the reference).
void run(benchmark::State& state, Path path, torch::Device device, torch::ScalarType dtype, int64_t rows, int64_t width,
         int64_t vocab) {
  if (device.is_cuda() && !torch::cuda::is_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  torch::manual_seed(0);
  const auto opts = torch::TensorOptions().device(device);
  const auto hidden =
      (torch::randn({rows, width}, opts) / std::sqrt(static_cast<double>(width))).to(dtype).requires_grad_(true);
  const auto weight = torch::randn({vocab, width}, opts).to(dtype).requires_grad_(true);
  const auto targets = torch::randint(vocab, {rows}, opts.dtype(torch::kLong));
  const TokenLogprobsOptions options{
      .temperature = 0.7, .chunk_size = state.range(0), .use_cuda_kernels = path == Path::kChunked};
  for (auto _ : state) {
    const auto r = path == Path::kReference ? grpo::kernels::token_logprobs_reference(hidden, weight, targets, options)
                                            : grpo::kernels::token_logprobs(hidden, weight, targets, options);
    r.logprobs.sum().backward();
    if (device.is_cuda()) torch::cuda::synchronize();
    benchmark::DoNotOptimize(hidden.grad().data_ptr());
    hidden.mutable_grad().reset();
    weight.mutable_grad().reset();
  }
  state.SetItemsProcessed(state.iterations() * rows);
}

// CPU: N = 512 tokens, D = 256, V = 16384, float32.
void BM_TokenLogprobsReferenceCpu(benchmark::State& s) {
  run(s, Path::kReference, torch::kCPU, torch::kFloat, 512, 256, 16384);
}
void BM_TokenLogprobsChunkedCpu(benchmark::State& s) {
  run(s, Path::kChunked, torch::kCPU, torch::kFloat, 512, 256, 16384);
}
// CUDA: N = 4096 tokens, D = 2048, V = 128000, bfloat16 inputs.
void BM_TokenLogprobsReferenceCuda(benchmark::State& s) {
  run(s, Path::kReference, torch::kCUDA, torch::kBFloat16, 4096, 2048, 128000);
}
void BM_TokenLogprobsChunkedCuda(benchmark::State& s) {
  run(s, Path::kChunked, torch::kCUDA, torch::kBFloat16, 4096, 2048, 128000);
}
void BM_TokenLogprobsChunkedAtenCuda(benchmark::State& s) {
  run(s, Path::kChunkedAten, torch::kCUDA, torch::kBFloat16, 4096, 2048, 128000);
}

BENCHMARK(BM_TokenLogprobsReferenceCpu)->Arg(0)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TokenLogprobsChunkedCpu)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TokenLogprobsReferenceCuda)->Arg(0)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TokenLogprobsChunkedCuda)->Arg(4096)->Arg(8192)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TokenLogprobsChunkedAtenCuda)->Arg(8192)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
