// Fused RMSNorm (HF numerics), forward and backward. See include/grpo/kernels/rms_norm.h.
//
// Invariants: the row statistics are computed in float32 from float32(x) (also for double inputs,
// as the reference does), x * r is rounded to x's dtype before the weight multiplies, and the
// product is rounded once. One block per row (grid-stride over rows); a block reduction gives the
// row sums in a fixed order, so results are deterministic. The weight gradient is summed per block
// into a float32 [G, H] buffer (each block owns one row of it: no atomics), then over G with ATen.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "rms_norm.cuh"

namespace grpo::kernels {
namespace {

constexpr int kMaxThreads = 512;

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024). Every thread gets the total,
// summed in the same order. `shared` holds 32 floats; safe to call repeatedly.
__device__ float block_sum(float v, float* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  __syncthreads();  // earlier readers of `shared` are done
  if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = v;
  __syncthreads();
  float total = 0.0f;
  const int warps = static_cast<int>(blockDim.x >> 5);
  for (int w = 0; w < warps; ++w) total += shared[w];
  return total;
}

// x, y [rows, h]; w [h].
template <typename T>
__global__ void rms_norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                        int64_t rows, int64_t h, float eps) {
  using Acc = at::opmath_type<T>;
  __shared__ float shared[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * h;
    T* yr = y + row * h;
    float sum = 0.0f;
    for (int64_t i = threadIdx.x; i < h; i += blockDim.x) {
      const float v = static_cast<float>(xr[i]);
      sum += v * v;
    }
    const float r = rsqrtf(block_sum(sum, shared) / static_cast<float>(h) + eps);
    for (int64_t i = threadIdx.x; i < h; i += blockDim.x) {
      const T normed = static_cast<T>(static_cast<float>(xr[i]) * r);
      yr[i] = static_cast<T>(static_cast<Acc>(w[i]) * static_cast<Acc>(normed));
    }
  }
}

// grad_x [rows, h]; grad_w_partial [gridDim.x, h] float32, zero-initialised.
template <typename T>
__global__ void rms_norm_backward_kernel(const T* __restrict__ grad_y, const T* __restrict__ x, const T* __restrict__ w,
                                         T* __restrict__ grad_x, float* __restrict__ grad_w_partial, int64_t rows,
                                         int64_t h, float eps) {
  __shared__ float shared[32];
  float* partial = grad_w_partial + blockIdx.x * h;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * h;
    const T* gr = grad_y + row * h;
    float sum_sq = 0.0f, sum_gnx = 0.0f;
    for (int64_t i = threadIdx.x; i < h; i += blockDim.x) {
      const float v = static_cast<float>(xr[i]);
      sum_sq += v * v;
      sum_gnx += static_cast<float>(gr[i]) * static_cast<float>(w[i]) * v;
    }
    const float r = rsqrtf(block_sum(sum_sq, shared) / static_cast<float>(h) + eps);
    // mean(gn * n) = r * mean(gn * x)
    const float mean_gn_n = r * block_sum(sum_gnx, shared) / static_cast<float>(h);
    for (int64_t i = threadIdx.x; i < h; i += blockDim.x) {
      const float v = static_cast<float>(xr[i]);
      const float g = static_cast<float>(gr[i]);
      const float n = v * r;
      const float gn = g * static_cast<float>(w[i]);
      grad_x[row * h + i] = static_cast<T>(r * (gn - n * mean_gn_n));
      partial[i] += g * static_cast<float>(static_cast<T>(n));
    }
  }
}

int threads_for(int64_t h) {
  const int64_t rounded = (h + 31) / 32 * 32;
  return static_cast<int>(std::clamp<int64_t>(rounded, 32, kMaxThreads));
}

void check_tensors(const char* fn, const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.is_cuda() && weight.is_cuda() && x.device() == weight.device(), fn,
              ": expected x and weight on one CUDA device, got ", x.device(), " and ", weight.device());
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1), fn, ": weight must be [", x.size(-1),
              "], got ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), fn, ": x and weight must share a dtype, got ", x.scalar_type(),
              " and ", weight.scalar_type());
}

}  // namespace

at::Tensor rms_norm_cuda(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_tensors("rms_norm_cuda", x, weight);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor wc = weight.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t h = xc.size(-1);
  const int64_t rows = h == 0 ? 0 : xc.numel() / h;
  if (rows == 0) return y;
  const int64_t blocks = std::min<int64_t>(rows, 1 << 20);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "rms_norm_cuda", [&] {
    rms_norm_forward_kernel<scalar_t><<<static_cast<unsigned>(blocks), threads_for(h), 0, stream>>>(
        xc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), rows, h, static_cast<float>(eps));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::pair<at::Tensor, at::Tensor> rms_norm_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                         const at::Tensor& weight, double eps) {
  check_tensors("rms_norm_backward_cuda", x, weight);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type() && grad_y.device() == x.device(),
              "rms_norm_backward_cuda: grad_y must match x (", x.sizes(), " ", x.scalar_type(), "), got ",
              grad_y.sizes(), " ", grad_y.scalar_type(), " on ", grad_y.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = grad_y.contiguous();
  const at::Tensor wc = weight.contiguous();
  at::Tensor grad_x = at::empty_like(xc);
  const int64_t h = xc.size(-1);
  const int64_t rows = h == 0 ? 0 : xc.numel() / h;
  if (rows == 0) return {grad_x, at::zeros_like(weight)};
  const int64_t blocks = std::min<int64_t>(rows, 512);
  at::Tensor partial = at::zeros({blocks, h}, xc.options().dtype(at::kFloat));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "rms_norm_backward_cuda", [&] {
    rms_norm_backward_kernel<scalar_t><<<static_cast<unsigned>(blocks), threads_for(h), 0, stream>>>(
        gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(),
        partial.data_ptr<float>(), rows, h, static_cast<float>(eps));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_x, partial.sum(0).to(weight.scalar_type())};
}

}  // namespace grpo::kernels
