// token_logprobs chunk kernels: the element-wise and per-row work between the two cuBLAS GEMMs of
// each vocabulary chunk, so that every [N, Vc] logits chunk is read once (forward) or read and
// written once (backward) instead of through a chain of ATen ops.
//
// Forward, per row: an online softmax over the chunk. Each thread keeps (max, sum, plogp) over
// the columns it visits, with sum = sum exp(z - max) and plogp = sum exp(z - max) * (z - max);
// states merge exactly (up to rounding) under a change of max m -> m':
//   sum'   = sum * exp(m - m')
//   plogp' = exp(m - m') * (plogp + (m - m') * sum)
// Threads merge by warp shuffles, warps through shared memory, and thread 0 merges the block's
// state into the row's running state from earlier chunks. A state with sum == 0 is empty (covers
// the initial -inf max and threads with no columns). The entropy is log(sum) - plogp / sum at the
// end; the log-probability is target_logit - (max + log(sum)).
//
// Backward, per element: grad * (onehot - exp(z - lse)) / T written over the logits.
//
// Invariants: float32 throughout (the caller upcasts); one block per row, 256 threads striding
// over the columns (coalesced); targets outside the chunk leave target_logit untouched and add
// no one-hot term.
#include <cmath>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "token_logprobs.cuh"

namespace grpo::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct SoftmaxState {
  float max;    // largest z seen (meaningless while sum == 0)
  float sum;    // sum of exp(z - max)
  float plogp;  // sum of exp(z - max) * (z - max)
};

__device__ __forceinline__ SoftmaxState merge_states(SoftmaxState a, SoftmaxState b) {
  if (b.sum == 0.f) return a;
  if (a.sum == 0.f) return b;
  const float m = fmaxf(a.max, b.max);
  const float da = a.max - m;
  const float db = b.max - m;
  const float ea = expf(da);
  const float eb = expf(db);
  return {m, a.sum * ea + b.sum * eb, ea * (a.plogp + da * a.sum) + eb * (b.plogp + db * b.sum)};
}

__device__ __forceinline__ SoftmaxState add_value(SoftmaxState s, float z) {
  if (s.sum == 0.f) return {z, 1.f, 0.f};
  if (z > s.max) {
    const float d = s.max - z;  // < 0
    const float e = expf(d);
    return {z, s.sum * e + 1.f, e * (s.plogp + d * s.sum)};
  }
  const float d = z - s.max;  // <= 0
  const float e = expf(d);
  return {s.max, s.sum + e, s.plogp + e * d};
}

__device__ __forceinline__ SoftmaxState shuffle_down(SoftmaxState s, int offset) {
  return {__shfl_down_sync(0xffffffffu, s.max, offset), __shfl_down_sync(0xffffffffu, s.sum, offset),
          __shfl_down_sync(0xffffffffu, s.plogp, offset)};
}

// grid: one block per row; block: kThreads.
__global__ void chunk_forward_kernel(const float* __restrict__ logits, int64_t chunk_width, float inv_temperature,
                                     const int64_t* __restrict__ targets, int64_t chunk_start,
                                     float* __restrict__ running_max, float* __restrict__ running_sum,
                                     float* __restrict__ running_plogp, float* __restrict__ target_logit) {
  const int64_t row = blockIdx.x;
  const float* row_logits = logits + row * chunk_width;
  SoftmaxState state{-INFINITY, 0.f, 0.f};
  for (int64_t j = threadIdx.x; j < chunk_width; j += blockDim.x) {
    state = add_value(state, row_logits[j] * inv_temperature);
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    state = merge_states(state, shuffle_down(state, offset));
  }
  __shared__ SoftmaxState warp_states[kWarps];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warp_states[warp] = state;
  __syncthreads();
  if (warp != 0) return;
  state = lane < kWarps ? warp_states[lane] : SoftmaxState{-INFINITY, 0.f, 0.f};
  for (int offset = 16; offset > 0; offset /= 2) {
    state = merge_states(state, shuffle_down(state, offset));
  }
  if (lane != 0) return;
  const SoftmaxState previous{running_max[row], running_sum[row], running_plogp != nullptr ? running_plogp[row] : 0.f};
  const SoftmaxState merged = merge_states(previous, state);
  running_max[row] = merged.max;
  running_sum[row] = merged.sum;
  if (running_plogp != nullptr) running_plogp[row] = merged.plogp;
  const int64_t local = targets[row] - chunk_start;
  if (local >= 0 && local < chunk_width) {
    target_logit[row] = row_logits[local] * inv_temperature;
  }
}

// grid: one block per row; block: kThreads. In place on logits.
__global__ void chunk_backward_kernel(float* __restrict__ logits, int64_t chunk_width, float inv_temperature,
                                      const int64_t* __restrict__ targets, int64_t chunk_start,
                                      const float* __restrict__ logsumexp, const float* __restrict__ grad) {
  const int64_t row = blockIdx.x;
  float* row_logits = logits + row * chunk_width;
  const float lse = logsumexp[row];
  const float g = grad[row];
  const int64_t local = targets[row] - chunk_start;
  for (int64_t j = threadIdx.x; j < chunk_width; j += blockDim.x) {
    const float p = expf(row_logits[j] * inv_temperature - lse);
    const float onehot = j == local ? 1.f : 0.f;
    row_logits[j] = g * (onehot - p) * inv_temperature;
  }
}

void check_row_vector(const char* fn, const char* name, const at::Tensor& t, int64_t n, at::ScalarType dtype,
                      const at::Tensor& logits) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, fn, ": expected ", name, " of shape [", n, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, fn, ": expected ", name, " of dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == logits.device(), fn, ": expected ", name, " on ", logits.device(), ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), fn, ": expected ", name, " contiguous");
}

void check_logits(const char* fn, const at::Tensor& logits, const at::Tensor& targets, int64_t chunk_start) {
  TORCH_CHECK(logits.is_cuda(), fn, ": expected CUDA logits, got ", logits.device());
  TORCH_CHECK(logits.dim() == 2, fn, ": expected logits [N, Vc], got ", logits.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat, fn, ": expected float32 logits, got ", logits.scalar_type());
  TORCH_CHECK(logits.is_contiguous(), fn, ": expected contiguous logits, got strides ", logits.strides());
  TORCH_CHECK(logits.size(0) <= 0x7fffffffLL, fn, ": at most 2^31 - 1 rows, got ", logits.size(0));
  TORCH_CHECK(chunk_start >= 0, fn, ": expected chunk_start >= 0, got ", chunk_start);
  check_row_vector(fn, "targets", targets, logits.size(0), at::kLong, logits);
}

}  // namespace

void token_logprobs_chunk_forward_cuda(const at::Tensor& logits, double inv_temperature, const at::Tensor& targets,
                                       int64_t chunk_start, const at::Tensor& running_max,
                                       const at::Tensor& running_sum, const at::Tensor& running_plogp,
                                       const at::Tensor& target_logit) {
  constexpr const char* fn = "token_logprobs_chunk_forward_cuda";
  check_logits(fn, logits, targets, chunk_start);
  const int64_t n = logits.size(0);
  check_row_vector(fn, "running_max", running_max, n, at::kFloat, logits);
  check_row_vector(fn, "running_sum", running_sum, n, at::kFloat, logits);
  if (running_plogp.defined()) check_row_vector(fn, "running_plogp", running_plogp, n, at::kFloat, logits);
  check_row_vector(fn, "target_logit", target_logit, n, at::kFloat, logits);
  if (n == 0 || logits.size(1) == 0) return;
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  chunk_forward_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
      logits.data_ptr<float>(), logits.size(1), static_cast<float>(inv_temperature), targets.data_ptr<int64_t>(),
      chunk_start, running_max.data_ptr<float>(), running_sum.data_ptr<float>(),
      running_plogp.defined() ? running_plogp.data_ptr<float>() : nullptr, target_logit.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void token_logprobs_chunk_backward_cuda(const at::Tensor& logits, double inv_temperature, const at::Tensor& targets,
                                        int64_t chunk_start, const at::Tensor& logsumexp, const at::Tensor& grad) {
  constexpr const char* fn = "token_logprobs_chunk_backward_cuda";
  check_logits(fn, logits, targets, chunk_start);
  const int64_t n = logits.size(0);
  check_row_vector(fn, "logsumexp", logsumexp, n, at::kFloat, logits);
  check_row_vector(fn, "grad", grad, n, at::kFloat, logits);
  if (n == 0 || logits.size(1) == 0) return;
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  chunk_backward_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
      logits.data_ptr<float>(), logits.size(1), static_cast<float>(inv_temperature), targets.data_ptr<int64_t>(),
      chunk_start, logsumexp.data_ptr<float>(), grad.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace grpo::kernels
