// FP8 block-scaled GEMM (grpo/kernels/fp8_gemm.h) against bf16 at::matmul at DeepSeek-V3's Linear
// shapes, M = 4096 tokens, as TFLOP/s (2 M N K flops per GEMM). The FP8 numbers time the GEMM alone
// on pre-quantised operands (1x128 activations, 128x128 weights) and, separately, with the
// activation quantisation included. CUDA only: skipped without a GPU.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "grpo/kernels/fp8_gemm.h"
#include "grpo/kernels/fp8_quant.h"

namespace {

using grpo::kernels::Fp8GemmBackend;

// (N, K) of DeepSeek-V3 projections: q/kv up and down, expert/dense MLP shapes.
const std::vector<std::pair<int64_t, int64_t>> kShapes = {{7168, 2048}, {2048, 7168}, {24576, 1536}, {4096, 7168}};
constexpr int64_t kTokens = 4096;

void set_flops(benchmark::State& state, int64_t m, int64_t n, int64_t k) {
  state.counters["TFLOP/s"] = benchmark::Counter(static_cast<double>(2 * m * n * k) * 1e-12,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void run(benchmark::State& state, int mode) {  // 0: bf16 matmul, 1: fp8 GEMM, 2: quantise x + fp8 GEMM
  if (!torch::cuda::is_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const auto [n, k] = kShapes[static_cast<size_t>(state.range(0))];
  const int64_t m = kTokens;
  const auto opts = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  const auto x = torch::randn({m, k}, opts);
  const auto w = torch::randn({n, k}, opts) * 0.02;
  const auto xq = grpo::kernels::fp8_quantize_1x128(x);
  const auto wq = grpo::kernels::fp8_quantize_128x128(w);
  const auto reason = grpo::kernels::fp8_gemm_cuda_unsupported_reason(xq, wq);
  if (mode != 0 && !reason.empty()) {
    state.SkipWithError(reason.c_str());
    return;
  }
  auto step = [&] {
    if (mode == 0) return at::matmul(x, w.t());
    const auto a = mode == 2 ? grpo::kernels::fp8_quantize_1x128(x) : xq;
    return grpo::kernels::fp8_gemm(a, wq, torch::kBFloat16, Fp8GemmBackend::cuda);
  };
  step();
  torch::cuda::synchronize();
  for (auto _ : state) {
    auto out = step();
    torch::cuda::synchronize();
    benchmark::DoNotOptimize(out.data_ptr());
  }
  set_flops(state, m, n, k);
  state.SetLabel("M=" + std::to_string(m) + " N=" + std::to_string(n) + " K=" + std::to_string(k));
}

void BM_GemmBf16Cuda(benchmark::State& s) { run(s, 0); }
void BM_GemmFp8Cuda(benchmark::State& s) { run(s, 1); }
void BM_GemmFp8WithQuantCuda(benchmark::State& s) { run(s, 2); }

BENCHMARK(BM_GemmBf16Cuda)->DenseRange(0, 3)->UseRealTime();
BENCHMARK(BM_GemmFp8Cuda)->DenseRange(0, 3)->UseRealTime();
BENCHMARK(BM_GemmFp8WithQuantCuda)->DenseRange(0, 3)->UseRealTime();

}  // namespace
