// Fused hot-path kernels (RMSNorm, RoPE, SwiGLU, MoE permute/unpermute, grouped expert GEMM): on a
// GPU, the achieved bandwidth of the memory-bound kernels as GB/s and as a percentage of a measured
// device copy (at::Tensor::copy_), which is the practical ceiling; the grouped GEMM reports TFLOP/s.
// Bytes count each tensor read or written once (the minimum traffic). Without a GPU the CUDA
// benchmarks are skipped; the CPU ones time the plain-ATen references at small shapes.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <chrono>
#include <functional>

#include "grpo/kernels/moe_dispatch.h"
#include "grpo/kernels/rms_norm.h"
#include "grpo/kernels/rope.h"
#include "grpo/kernels/swiglu.h"
#include "grpo/version.h"

namespace {

namespace gk = grpo::kernels;

bool cuda_ready(benchmark::State& state) {
  if (!torch::cuda::is_available()) {
    state.SkipWithError("no CUDA device");
    return false;
  }
  if (!GRPO_WITH_CUDA_KERNELS) {
    state.SkipWithError("built without CUDA kernels");
    return false;
  }
  return true;
}

// Seconds of one call of f, synchronised on both sides.
double time_once(const std::function<void()>& f) {
  torch::cuda::synchronize();
  const auto start = std::chrono::steady_clock::now();
  f();
  torch::cuda::synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Device copy bandwidth (read + write) in GB/s: 256 MiB float32 copied 20 times, measured once.
double copy_gbps() {
  static const double gbps = [] {
    const int64_t n = int64_t{1} << 26;
    const auto src = torch::randn({n}, torch::kCUDA);
    auto dst = torch::empty_like(src);
    dst.copy_(src);  // warm-up
    double seconds = 0;
    for (int i = 0; i < 20; ++i) seconds += time_once([&] { dst.copy_(src); });
    return 20.0 * 2.0 * static_cast<double>(n) * sizeof(float) / seconds / 1e9;
  }();
  return gbps;
}

// Runs f under manual timing; reports GB/s and % of copy for `bytes` moved per call.
void run_memory_bound(benchmark::State& state, double bytes, const std::function<void()>& f) {
  f();  // warm-up (and first-call allocations)
  double total = 0;
  for (auto _ : state) {
    const double seconds = time_once(f);
    state.SetIterationTime(seconds);
    total += seconds;
  }
  const double gbps = bytes * static_cast<double>(state.iterations()) / total / 1e9;
  state.counters["GB/s"] = gbps;
  state.counters["copy_GB/s"] = copy_gbps();
  state.counters["%copy"] = 100.0 * gbps / copy_gbps();
}

constexpr double kBf16 = 2.0;

void BM_CopyCuda(benchmark::State& state) {
  if (!cuda_ready(state)) return;
  const int64_t n = int64_t{1} << 26;
  const auto src = torch::randn({n}, torch::kCUDA);
  auto dst = torch::empty_like(src);
  run_memory_bound(state, 2.0 * n * sizeof(float), [&] { dst.copy_(src); });
}

// RMSNorm over [tokens, hidden] bf16: forward reads x, writes y; backward reads grad_y and x,
// writes grad_x (the weight and its [blocks, hidden] partial sums are small).
void BM_RmsNormCuda(benchmark::State& state, bool backward) {
  if (!cuda_ready(state)) return;
  const int64_t tokens = state.range(0), hidden = state.range(1);
  const auto opts = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  const auto x = torch::randn({tokens, hidden}, opts), g = torch::randn({tokens, hidden}, opts);
  const auto w = torch::randn({hidden}, opts);
  const double elems = static_cast<double>(tokens * hidden);
  if (backward) {
    run_memory_bound(state, 3 * elems * kBf16, [&] { benchmark::DoNotOptimize(gk::rms_norm_backward(g, x, w, 1e-6)); });
  } else {
    run_memory_bound(state, 2 * elems * kBf16, [&] { benchmark::DoNotOptimize(gk::rms_norm_forward(x, w, 1e-6)); });
  }
}

// RoPE on x [B, H, T, R] bf16 with [B, T, R] tables: reads x and the tables, writes the result.
void BM_RopeCuda(benchmark::State& state, gk::RopeLayout layout) {
  if (!cuda_ready(state)) return;
  const int64_t b = 4, h = state.range(0), t = state.range(1), r = 64;
  const auto opts = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  const auto x = torch::randn({b, h, t, r}, opts);
  const auto cos = torch::randn({b, t, r}, opts), sin = torch::randn({b, t, r}, opts);
  const double bytes = (2.0 * b * h * t * r + 2.0 * b * t * r) * kBf16;
  run_memory_bound(state, bytes, [&] { benchmark::DoNotOptimize(gk::rope_forward(x, cos, sin, layout)); });
}

// SwiGLU over [tokens, F] bf16: forward reads gate and up, writes y; backward reads grad_y, gate
// and up, writes both gradients.
void BM_SwigluCuda(benchmark::State& state, bool backward) {
  if (!cuda_ready(state)) return;
  const int64_t tokens = state.range(0), width = state.range(1);
  const auto opts = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  const auto gate = torch::randn({tokens, width}, opts), up = torch::randn({tokens, width}, opts);
  const auto dy = torch::randn({tokens, width}, opts);
  const double elems = static_cast<double>(tokens * width);
  if (backward) {
    run_memory_bound(state, 5 * elems * kBf16, [&] { benchmark::DoNotOptimize(gk::swiglu_backward(dy, gate, up)); });
  } else {
    run_memory_bound(state, 3 * elems * kBf16, [&] { benchmark::DoNotOptimize(gk::swiglu_forward(gate, up)); });
  }
}

// Random top-k routing of `tokens` tokens over `experts` experts: sorted order and CPU offsets.
std::pair<torch::Tensor, torch::Tensor> routing(int64_t tokens, int64_t top_k, int64_t experts) {
  const auto scores = torch::rand({tokens, experts}, torch::kCUDA);
  const auto index = std::get<1>(scores.topk(top_k, -1)).reshape({-1});
  const auto order = std::get<1>(index.sort(/*stable=*/true, 0, false));
  const auto counts = torch::bincount(index, {}, experts).cpu();
  return {order, torch::cat({torch::zeros({1}, torch::kLong), counts.cumsum(0)})};
}

// Permute reads N*K rows of x (gathered) and writes N*K rows; unpermute reads N*K rows and writes
// N rows (bf16, D = hidden).
void BM_MoePermuteCuda(benchmark::State& state, bool unpermute) {
  if (!cuda_ready(state)) return;
  const int64_t tokens = state.range(0), hidden = state.range(1), top_k = 8, experts = 256;
  const auto opts = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  const auto [order, offsets] = routing(tokens, top_k, experts);
  const double row = static_cast<double>(hidden) * kBf16;
  if (unpermute) {
    const auto ys = torch::randn({tokens * top_k, hidden}, opts);
    const auto weight = torch::rand({tokens, top_k}, opts.dtype(torch::kFloat));
    run_memory_bound(state, (tokens * top_k + tokens) * row,
                     [&] { benchmark::DoNotOptimize(gk::moe_unpermute_forward(ys, weight, order, top_k)); });
  } else {
    const auto x = torch::randn({tokens, hidden}, opts);
    run_memory_bound(state, 2.0 * tokens * top_k * row,
                     [&] { benchmark::DoNotOptimize(gk::moe_permute_forward(x, order, top_k)); });
  }
}

// The grouped expert GEMM (compute-bound; a plain tiled kernel): TFLOP/s, against cuBLAS per
// expert (the reference loop) for scale.
void BM_GroupedLinearCuda(benchmark::State& state, bool reference) {
  if (!cuda_ready(state)) return;
  const int64_t tokens = state.range(0), top_k = 8, experts = 64, d_in = 2048, d_out = 1024;
  const auto opts = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  const auto [order, offsets] = routing(tokens, top_k, experts);
  const auto xs = torch::randn({tokens * top_k, d_in}, opts);
  const auto w = torch::randn({experts, d_out, d_in}, opts);
  auto f = [&] {
    benchmark::DoNotOptimize(reference ? gk::grouped_linear_reference(xs, w, offsets)
                                       : gk::grouped_linear_forward(xs, w, offsets));
  };
  f();
  double total = 0;
  for (auto _ : state) {
    const double seconds = time_once(f);
    state.SetIterationTime(seconds);
    total += seconds;
  }
  const double flops = 2.0 * tokens * top_k * d_in * d_out;
  state.counters["TFLOP/s"] = flops * static_cast<double>(state.iterations()) / total / 1e12;
}

// CPU: the references at small shapes (what the CPU path costs per call).
void BM_RmsNormReferenceCpu(benchmark::State& state) {
  const auto x = torch::randn({256, 1024}), w = torch::randn({1024});
  for (auto _ : state) benchmark::DoNotOptimize(gk::rms_norm_reference(x, w, 1e-6).data_ptr());
  state.SetBytesProcessed(state.iterations() * 2 * x.numel() * static_cast<int64_t>(sizeof(float)));
}

void BM_SwigluReferenceCpu(benchmark::State& state) {
  const auto gate = torch::randn({256, 1024}), up = torch::randn({256, 1024});
  for (auto _ : state) benchmark::DoNotOptimize(gk::swiglu_reference(gate, up).data_ptr());
  state.SetBytesProcessed(state.iterations() * 3 * gate.numel() * static_cast<int64_t>(sizeof(float)));
}

void BM_RopeReferenceCpu(benchmark::State& state) {
  const auto x = torch::randn({1, 16, 128, 64}), cos = torch::randn({1, 128, 64}), sin = torch::randn({1, 128, 64});
  for (auto _ : state)
    benchmark::DoNotOptimize(gk::rope_reference(x, cos, sin, gk::RopeLayout::interleaved).data_ptr());
  state.SetBytesProcessed(state.iterations() * 2 * x.numel() * static_cast<int64_t>(sizeof(float)));
}

BENCHMARK(BM_CopyCuda)->UseManualTime();
BENCHMARK_CAPTURE(BM_RmsNormCuda, forward, false)->Args({16384, 7168})->UseManualTime();
BENCHMARK_CAPTURE(BM_RmsNormCuda, backward, true)->Args({16384, 7168})->UseManualTime();
BENCHMARK_CAPTURE(BM_RopeCuda, rotate_half, gk::RopeLayout::rotate_half)->Args({128, 4096})->UseManualTime();
BENCHMARK_CAPTURE(BM_RopeCuda, interleaved, gk::RopeLayout::interleaved)->Args({128, 4096})->UseManualTime();
BENCHMARK_CAPTURE(BM_SwigluCuda, forward, false)->Args({8192, 18432})->UseManualTime();
BENCHMARK_CAPTURE(BM_SwigluCuda, backward, true)->Args({8192, 18432})->UseManualTime();
BENCHMARK_CAPTURE(BM_MoePermuteCuda, permute, false)->Args({8192, 7168})->UseManualTime();
BENCHMARK_CAPTURE(BM_MoePermuteCuda, unpermute, true)->Args({8192, 7168})->UseManualTime();
BENCHMARK_CAPTURE(BM_GroupedLinearCuda, kernel, false)->Arg(4096)->UseManualTime();
BENCHMARK_CAPTURE(BM_GroupedLinearCuda, reference_loop, true)->Arg(4096)->UseManualTime();
BENCHMARK(BM_RmsNormReferenceCpu);
BENCHMARK(BM_SwigluReferenceCpu);
BENCHMARK(BM_RopeReferenceCpu);

}  // namespace
