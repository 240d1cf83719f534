// Fused SwiGLU, forward and backward. See include/grpo/kernels/swiglu.h.
//
// Invariants: computed in at::opmath_type (float32 for half/bfloat16/float, float64 for double),
// rounded once per output. One thread per element in a grid-stride loop; inputs are made
// contiguous by the launchers.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "swiglu.cuh"

namespace grpo::kernels {
namespace {

constexpr int kThreads = 256;

template <typename Acc>
__device__ Acc sigmoid_of(Acc v) {
  return Acc(1) / (Acc(1) + exp(-v));
}

template <typename T>
__global__ void swiglu_forward_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ y,
                                      int64_t n) {
  using Acc = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Acc g = static_cast<Acc>(gate[i]);
    y[i] = static_cast<T>(g * sigmoid_of(g) * static_cast<Acc>(up[i]));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* __restrict__ grad_y, const T* __restrict__ gate,
                                       const T* __restrict__ up, T* __restrict__ grad_gate, T* __restrict__ grad_up,
                                       int64_t n) {
  using Acc = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Acc g = static_cast<Acc>(gate[i]);
    const Acc dy = static_cast<Acc>(grad_y[i]);
    const Acc s = sigmoid_of(g);
    grad_gate[i] = static_cast<T>(dy * static_cast<Acc>(up[i]) * s * (Acc(1) + g * (Acc(1) - s)));
    grad_up[i] = static_cast<T>(dy * g * s);
  }
}

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535LL * 8));
}

void check_pair(const char* fn, const char* a_name, const at::Tensor& a, const char* b_name, const at::Tensor& b) {
  TORCH_CHECK(a.is_cuda() && a.device() == b.device(), fn, ": expected ", a_name, " and ", b_name,
              " on one CUDA device, got ", a.device(), " and ", b.device());
  TORCH_CHECK(a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type(), fn, ": ", a_name, " and ", b_name,
              " must match in shape and dtype, got ", a.sizes(), " ", a.scalar_type(), " and ", b.sizes(), " ",
              b.scalar_type());
}

}  // namespace

at::Tensor swiglu_cuda(const at::Tensor& gate, const at::Tensor& up) {
  check_pair("swiglu_cuda", "gate", gate, "up", up);
  const c10::cuda::CUDAGuard guard(gate.device());
  const at::Tensor gc = gate.contiguous();
  const at::Tensor uc = up.contiguous();
  at::Tensor y = at::empty_like(gc);
  const int64_t n = gc.numel();
  if (n == 0) return y;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(), "swiglu_cuda", [&] {
    swiglu_forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        gc.data_ptr<scalar_t>(), uc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::pair<at::Tensor, at::Tensor> swiglu_backward_cuda(const at::Tensor& grad_y, const at::Tensor& gate,
                                                       const at::Tensor& up) {
  check_pair("swiglu_backward_cuda", "gate", gate, "up", up);
  check_pair("swiglu_backward_cuda", "gate", gate, "grad_y", grad_y);
  const c10::cuda::CUDAGuard guard(gate.device());
  const at::Tensor dc = grad_y.contiguous();
  const at::Tensor gc = gate.contiguous();
  const at::Tensor uc = up.contiguous();
  at::Tensor grad_gate = at::empty_like(gc);
  at::Tensor grad_up = at::empty_like(uc);
  const int64_t n = gc.numel();
  if (n == 0) return {grad_gate, grad_up};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(), "swiglu_backward_cuda", [&] {
    swiglu_backward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        dc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(), uc.data_ptr<scalar_t>(), grad_gate.data_ptr<scalar_t>(),
        grad_up.data_ptr<scalar_t>(), n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_gate, grad_up};
}

}  // namespace grpo::kernels
