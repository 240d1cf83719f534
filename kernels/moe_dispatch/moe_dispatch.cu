// MoE token permute/unpermute and the grouped expert GEMM, forward and backward. See
// include/grpo/kernels/moe_dispatch.h for the vocabulary (N, K, M = N*K, E, order, offsets).
//
// Invariants: sums are accumulated in at::opmath_type (float32 for half/bfloat16/float) in a fixed
// order and rounded once, so every kernel is deterministic (no atomics). The permute backward and
// the unpermute gather each token's K rows through the inverse permutation (inverse[order[i]] = i),
// so the scatter-add of the reference becomes a gather. The grouped GEMM is a plain 16x16
// shared-memory tiled kernel, one launch over all experts (grid.z = expert; blocks past an expert's
// rows exit at once): correctness first, not tensor-core speed.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "moe_dispatch.cuh"

namespace grpo::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 16;

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535LL * 8));
}

// xs[i, c] = x[order[i] / K, c].  xs [M, D], x [N, D].
template <typename T>
__global__ void permute_kernel(const T* __restrict__ x, const int64_t* __restrict__ order, T* __restrict__ xs,
                               int64_t pairs, int64_t dim, int64_t top_k) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < pairs * dim;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / dim, c = idx % dim;
    xs[idx] = x[(order[i] / top_k) * dim + c];
  }
}

// grad_x[n, c] = sum_k grad_xs[inverse[n*K + k], c].
template <typename T>
__global__ void permute_backward_kernel(const T* __restrict__ grad_xs, const int64_t* __restrict__ inverse,
                                        T* __restrict__ grad_x, int64_t tokens, int64_t dim, int64_t top_k) {
  using Acc = at::opmath_type<T>;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < tokens * dim;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = idx / dim, c = idx % dim;
    Acc sum = 0;
    for (int64_t k = 0; k < top_k; ++k) sum += static_cast<Acc>(grad_xs[inverse[n * top_k + k] * dim + c]);
    grad_x[idx] = static_cast<T>(sum);
  }
}

// y[n, c] = sum_k weight[n*K + k] * ys[inverse[n*K + k], c].  weight in Acc.
template <typename T>
__global__ void unpermute_kernel(const T* __restrict__ ys, const at::opmath_type<T>* __restrict__ weight,
                                 const int64_t* __restrict__ inverse, T* __restrict__ y, int64_t tokens, int64_t dim,
                                 int64_t top_k) {
  using Acc = at::opmath_type<T>;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < tokens * dim;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = idx / dim, c = idx % dim;
    Acc sum = 0;
    for (int64_t k = 0; k < top_k; ++k) {
      const int64_t p = n * top_k + k;
      sum += weight[p] * static_cast<Acc>(ys[inverse[p] * dim + c]);
    }
    y[idx] = static_cast<T>(sum);
  }
}

// grad_ys[i, c] = grad_y[order[i] / K, c] * weight[order[i]].
template <typename T>
__global__ void unpermute_backward_rows_kernel(const T* __restrict__ grad_y,
                                               const at::opmath_type<T>* __restrict__ weight,
                                               const int64_t* __restrict__ order, T* __restrict__ grad_ys,
                                               int64_t pairs, int64_t dim, int64_t top_k) {
  using Acc = at::opmath_type<T>;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < pairs * dim;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / dim, c = idx % dim;
    const int64_t p = order[i];
    grad_ys[idx] = static_cast<T>(static_cast<Acc>(grad_y[(p / top_k) * dim + c]) * weight[p]);
  }
}

// grad_weight[order[i]] = <grad_y[order[i] / K], ys[i]>: one warp per sorted row i.
template <typename T>
__global__ void unpermute_backward_weight_kernel(const T* __restrict__ grad_y, const T* __restrict__ ys,
                                                 const int64_t* __restrict__ order,
                                                 at::opmath_type<T>* __restrict__ grad_weight, int64_t pairs,
                                                 int64_t dim, int64_t top_k) {
  using Acc = at::opmath_type<T>;
  const int64_t warps_per_block = blockDim.x / 32;
  const int lane = threadIdx.x & 31;
  for (int64_t i = blockIdx.x * warps_per_block + threadIdx.x / 32; i < pairs; i += gridDim.x * warps_per_block) {
    const int64_t p = order[i];
    const T* g = grad_y + (p / top_k) * dim;
    const T* v = ys + i * dim;
    Acc sum = 0;
    for (int64_t c = lane; c < dim; c += 32) sum += static_cast<Acc>(g[c]) * static_cast<Acc>(v[c]);
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) grad_weight[p] = sum;
  }
}

// For each expert e (grid.z) and its rows r in [offsets[e], offsets[e+1]):
//   c[r, n] = sum_k a[r, k] * b[e * b_stride_e + n * b_stride_n + k * b_stride_k]
// a [M, k_dim] and c [M, n_dim] contiguous. grid = (ceil(max rows / 16), ceil(n_dim / 16), E):
// row tiles on x, whose limit is 2^31 - 1.
template <typename T>
__global__ void grouped_gemm_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ c,
                                    const int64_t* __restrict__ offsets, int64_t n_dim, int64_t k_dim,
                                    int64_t b_stride_e, int64_t b_stride_n, int64_t b_stride_k) {
  using Acc = at::opmath_type<T>;
  __shared__ Acc a_tile[kTile][kTile + 1];
  __shared__ Acc b_tile[kTile][kTile + 1];
  const int64_t e = blockIdx.z;
  const int64_t begin = offsets[e], end = offsets[e + 1];
  const int64_t row0 = begin + static_cast<int64_t>(blockIdx.x) * kTile;
  if (row0 >= end) return;  // uniform over the block
  const int64_t col0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int ty = threadIdx.y, tx = threadIdx.x;
  const T* be = b + e * b_stride_e;
  Acc acc = 0;
  for (int64_t k0 = 0; k0 < k_dim; k0 += kTile) {
    const int64_t ar = row0 + ty, ak = k0 + tx;
    a_tile[ty][tx] = (ar < end && ak < k_dim) ? static_cast<Acc>(a[ar * k_dim + ak]) : Acc(0);
    const int64_t bn = col0 + ty, bk = k0 + tx;
    b_tile[ty][tx] = (bn < n_dim && bk < k_dim) ? static_cast<Acc>(be[bn * b_stride_n + bk * b_stride_k]) : Acc(0);
    __syncthreads();
    for (int kk = 0; kk < kTile; ++kk) acc += a_tile[ty][kk] * b_tile[tx][kk];
    __syncthreads();
  }
  const int64_t row = row0 + ty, col = col0 + tx;
  if (row < end && col < n_dim) c[row * n_dim + col] = static_cast<T>(acc);
}

// grad_w[e, n, k] = sum over rows r of e of g[r, n] * x[r, k]. g [M, n_dim], x [M, k_dim],
// grad_w [E, n_dim, k_dim]. grid = (ceil(k_dim / 16), ceil(n_dim / 16), E); empty experts get zeros.
template <typename T>
__global__ void grouped_weight_grad_kernel(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ grad_w,
                                           const int64_t* __restrict__ offsets, int64_t n_dim, int64_t k_dim) {
  using Acc = at::opmath_type<T>;
  __shared__ Acc g_tile[kTile][kTile + 1];  // [n][r]
  __shared__ Acc x_tile[kTile][kTile + 1];  // [r][k]
  const int64_t e = blockIdx.z;
  const int64_t begin = offsets[e], end = offsets[e + 1];
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTile, k0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int ty = threadIdx.y, tx = threadIdx.x;
  Acc acc = 0;
  for (int64_t r0 = begin; r0 < end; r0 += kTile) {
    const int64_t gr = r0 + tx, gn = n0 + ty;
    g_tile[ty][tx] = (gr < end && gn < n_dim) ? static_cast<Acc>(g[gr * n_dim + gn]) : Acc(0);
    const int64_t xr = r0 + ty, xk = k0 + tx;
    x_tile[ty][tx] = (xr < end && xk < k_dim) ? static_cast<Acc>(x[xr * k_dim + xk]) : Acc(0);
    __syncthreads();
    for (int rr = 0; rr < kTile; ++rr) acc += g_tile[ty][rr] * x_tile[rr][tx];
    __syncthreads();
  }
  const int64_t n = n0 + ty, k = k0 + tx;
  if (n < n_dim && k < k_dim) grad_w[(e * n_dim + n) * k_dim + k] = static_cast<T>(acc);
}

at::Tensor inverse_order(const at::Tensor& order) {
  return at::empty_like(order).scatter_(0, order, at::arange(order.size(0), order.options()));
}

void check_rows(const char* fn, const at::Tensor& rows, const at::Tensor& order, int64_t top_k) {
  TORCH_CHECK(rows.is_cuda() && order.device() == rows.device(), fn, ": expected CUDA tensors on one device, got ",
              rows.device(), " and order on ", order.device());
  TORCH_CHECK(rows.dim() == 2, fn, ": expected a [rows, D] tensor, got ", rows.sizes());
  TORCH_CHECK(order.dim() == 1 && order.scalar_type() == at::kLong, fn, ": order must be 1-D int64, got ",
              order.sizes(), " ", order.scalar_type());
  TORCH_CHECK(top_k >= 1 && order.size(0) % top_k == 0, fn, ": order's length ", order.size(0),
              " must be a multiple of top_k ", top_k);
}

// Offsets on the device and the largest expert's row count.
std::pair<at::Tensor, int64_t> device_offsets(const char* fn, const at::Tensor& offsets, int64_t experts, int64_t rows,
                                              const at::Device& device) {
  TORCH_CHECK(offsets.device().is_cpu() && offsets.scalar_type() == at::kLong && offsets.dim() == 1 &&
                  offsets.size(0) == experts + 1,
              fn, ": offsets must be a CPU int64 [", experts + 1, "] tensor, got ", offsets.sizes(), " ",
              offsets.scalar_type(), " on ", offsets.device());
  const at::Tensor oc = offsets.contiguous();
  const int64_t* o = oc.data_ptr<int64_t>();
  TORCH_CHECK(o[0] == 0 && o[experts] == rows, fn, ": offsets must run from 0 to ", rows, ", got ", o[0], " .. ",
              o[experts]);
  int64_t max_rows = 0;
  for (int64_t e = 0; e < experts; ++e) {
    TORCH_CHECK(o[e + 1] >= o[e], fn, ": offsets must be non-decreasing, got ", o[e], " then ", o[e + 1]);
    max_rows = std::max(max_rows, o[e + 1] - o[e]);
  }
  return {oc.to(device), max_rows};
}

void check_grouped(const char* fn, const at::Tensor& xs, const at::Tensor& weight) {
  TORCH_CHECK(xs.is_cuda() && weight.device() == xs.device(), fn, ": expected xs and weight on one CUDA device, got ",
              xs.device(), " and ", weight.device());
  TORCH_CHECK(xs.dim() == 2 && weight.dim() == 3 && weight.size(2) == xs.size(1), fn,
              ": expected xs [M, Din] and weight [E, Dout, Din], got ", xs.sizes(), " and ", weight.sizes());
  TORCH_CHECK(xs.scalar_type() == weight.scalar_type(), fn, ": xs and weight must share a dtype, got ",
              xs.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(weight.size(0) <= 65535 && weight.size(1) <= 65535 * kTile && weight.size(2) <= 65535 * kTile, fn,
              ": at most 65535 experts and 65535 * 16 features per side, got weight ", weight.sizes());
}

}  // namespace

at::Tensor moe_permute_cuda(const at::Tensor& x, const at::Tensor& order, int64_t top_k) {
  check_rows("moe_permute_cuda", x, order, top_k);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor oc = order.contiguous();
  const int64_t pairs = oc.size(0), dim = xc.size(1);
  TORCH_CHECK(pairs == xc.size(0) * top_k, "moe_permute_cuda: expected ", xc.size(0), " * ", top_k, " pairs, got ",
              pairs);
  at::Tensor xs = at::empty({pairs, dim}, xc.options());
  if (xs.numel() == 0) return xs;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "moe_permute_cuda", [&] {
    permute_kernel<scalar_t><<<blocks_for(xs.numel()), kThreads, 0, stream>>>(
        xc.data_ptr<scalar_t>(), oc.data_ptr<int64_t>(), xs.data_ptr<scalar_t>(), pairs, dim, top_k);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return xs;
}

at::Tensor moe_permute_backward_cuda(const at::Tensor& grad_xs, const at::Tensor& order, int64_t top_k,
                                     int64_t tokens) {
  check_rows("moe_permute_backward_cuda", grad_xs, order, top_k);
  TORCH_CHECK(order.size(0) == tokens * top_k && grad_xs.size(0) == order.size(0),
              "moe_permute_backward_cuda: expected ", tokens, " * ", top_k, " pairs, got order ", order.sizes(),
              " and grad_xs ", grad_xs.sizes());
  const c10::cuda::CUDAGuard guard(grad_xs.device());
  const at::Tensor gc = grad_xs.contiguous();
  const int64_t dim = gc.size(1);
  at::Tensor grad_x = at::empty({tokens, dim}, gc.options());
  if (grad_x.numel() == 0) return grad_x;
  const at::Tensor inverse = inverse_order(order.contiguous());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(), "moe_permute_backward_cuda", [&] {
    permute_backward_kernel<scalar_t><<<blocks_for(grad_x.numel()), kThreads, 0, stream>>>(
        gc.data_ptr<scalar_t>(), inverse.data_ptr<int64_t>(), grad_x.data_ptr<scalar_t>(), tokens, dim, top_k);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_x;
}

at::Tensor moe_unpermute_cuda(const at::Tensor& ys, const at::Tensor& weight, const at::Tensor& order, int64_t top_k) {
  check_rows("moe_unpermute_cuda", ys, order, top_k);
  TORCH_CHECK(weight.device() == ys.device() && weight.dim() == 2 && weight.size(1) == top_k &&
                  weight.numel() == order.size(0) && ys.size(0) == order.size(0),
              "moe_unpermute_cuda: expected ys [M, D] and weight [N, K] on ", ys.device(),
              " with M = N*K = ", order.size(0), ", got ys ", ys.sizes(), " and weight ", weight.sizes(), " on ",
              weight.device());
  const c10::cuda::CUDAGuard guard(ys.device());
  const at::Tensor yc = ys.contiguous();
  const int64_t tokens = weight.size(0), dim = yc.size(1);
  at::Tensor y = at::empty({tokens, dim}, yc.options());
  if (y.numel() == 0) return y;
  const at::Tensor inverse = inverse_order(order.contiguous());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, yc.scalar_type(), "moe_unpermute_cuda", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const at::Tensor wc = weight.to(c10::CppTypeToScalarType<Acc>::value).contiguous();
    unpermute_kernel<scalar_t><<<blocks_for(y.numel()), kThreads, 0, stream>>>(
        yc.data_ptr<scalar_t>(), wc.data_ptr<Acc>(), inverse.data_ptr<int64_t>(), y.data_ptr<scalar_t>(), tokens, dim,
        top_k);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::pair<at::Tensor, at::Tensor> moe_unpermute_backward_cuda(const at::Tensor& grad_y, const at::Tensor& ys,
                                                              const at::Tensor& weight, const at::Tensor& order,
                                                              int64_t top_k) {
  check_rows("moe_unpermute_backward_cuda", ys, order, top_k);
  TORCH_CHECK(weight.device() == ys.device() && weight.dim() == 2 && weight.size(1) == top_k &&
                  weight.numel() == order.size(0) && ys.size(0) == order.size(0),
              "moe_unpermute_backward_cuda: expected ys [M, D] and weight [N, K] with M = N*K = ", order.size(0),
              ", got ys ", ys.sizes(), " and weight ", weight.sizes());
  TORCH_CHECK(grad_y.device() == ys.device() && grad_y.scalar_type() == ys.scalar_type() && grad_y.dim() == 2 &&
                  grad_y.size(0) == weight.size(0) && grad_y.size(1) == ys.size(1),
              "moe_unpermute_backward_cuda: grad_y must be [", weight.size(0), ", ", ys.size(1), "] ", ys.scalar_type(),
              ", got ", grad_y.sizes(), " ", grad_y.scalar_type());
  const c10::cuda::CUDAGuard guard(ys.device());
  const at::Tensor yc = ys.contiguous();
  const at::Tensor gc = grad_y.contiguous();
  const at::Tensor oc = order.contiguous();
  const int64_t pairs = oc.size(0), dim = yc.size(1);
  at::Tensor grad_ys = at::empty_like(yc);
  at::Tensor grad_weight;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, yc.scalar_type(), "moe_unpermute_backward_cuda", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<Acc>::value;
    const at::Tensor wc = weight.to(acc_type).contiguous();
    grad_weight = at::zeros({pairs}, yc.options().dtype(acc_type));
    if (pairs == 0) return;
    if (dim > 0) {
      unpermute_backward_rows_kernel<scalar_t><<<blocks_for(pairs * dim), kThreads, 0, stream>>>(
          gc.data_ptr<scalar_t>(), wc.data_ptr<Acc>(), oc.data_ptr<int64_t>(), grad_ys.data_ptr<scalar_t>(), pairs, dim,
          top_k);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t warps_per_block = kThreads / 32;
    const auto blocks = static_cast<unsigned>(
        std::min<int64_t>((pairs + warps_per_block - 1) / warps_per_block, 65535LL * 8));
    unpermute_backward_weight_kernel<scalar_t>
        <<<blocks, kThreads, 0, stream>>>(gc.data_ptr<scalar_t>(), yc.data_ptr<scalar_t>(), oc.data_ptr<int64_t>(),
                                          grad_weight.data_ptr<Acc>(), pairs, dim, top_k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_ys, grad_weight.view(weight.sizes()).to(weight.scalar_type())};
}

at::Tensor grouped_linear_cuda(const at::Tensor& xs, const at::Tensor& weight, const at::Tensor& offsets) {
  check_grouped("grouped_linear_cuda", xs, weight);
  const c10::cuda::CUDAGuard guard(xs.device());
  const int64_t experts = weight.size(0), rows = xs.size(0), d_out = weight.size(1), d_in = weight.size(2);
  // No structured bindings: the dispatch lambdas capture these (C++20 only).
  const auto placed = device_offsets("grouped_linear_cuda", offsets, experts, rows, xs.device());
  const at::Tensor dev_offsets = placed.first;
  const int64_t max_rows = placed.second;
  const at::Tensor xc = xs.contiguous();
  const at::Tensor wc = weight.contiguous();
  at::Tensor y = at::zeros({rows, d_out}, xc.options());  // zeros: d_in == 0 gives 0 sums
  if (max_rows == 0 || d_out == 0 || d_in == 0) return y;
  const dim3 block(kTile, kTile);
  const dim3 grid(static_cast<unsigned>((max_rows + kTile - 1) / kTile),
                  static_cast<unsigned>((d_out + kTile - 1) / kTile), static_cast<unsigned>(experts));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "grouped_linear_cuda", [&] {
    grouped_gemm_kernel<scalar_t><<<grid, block, 0, stream>>>(xc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(),
                                                              y.data_ptr<scalar_t>(), dev_offsets.data_ptr<int64_t>(),
                                                              d_out, d_in, d_out * d_in, d_in, 1);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::pair<at::Tensor, at::Tensor> grouped_linear_backward_cuda(const at::Tensor& grad_y, const at::Tensor& xs,
                                                               const at::Tensor& weight, const at::Tensor& offsets) {
  check_grouped("grouped_linear_backward_cuda", xs, weight);
  TORCH_CHECK(grad_y.device() == xs.device() && grad_y.scalar_type() == xs.scalar_type() && grad_y.dim() == 2 &&
                  grad_y.size(0) == xs.size(0) && grad_y.size(1) == weight.size(1),
              "grouped_linear_backward_cuda: grad_y must be [", xs.size(0), ", ", weight.size(1), "] ",
              xs.scalar_type(), ", got ", grad_y.sizes(), " ", grad_y.scalar_type());
  const c10::cuda::CUDAGuard guard(xs.device());
  const int64_t experts = weight.size(0), rows = xs.size(0), d_out = weight.size(1), d_in = weight.size(2);
  // No structured bindings: the dispatch lambdas capture these (C++20 only).
  const auto placed = device_offsets("grouped_linear_backward_cuda", offsets, experts, rows, xs.device());
  const at::Tensor dev_offsets = placed.first;
  const int64_t max_rows = placed.second;
  const at::Tensor xc = xs.contiguous();
  const at::Tensor gc = grad_y.contiguous();
  const at::Tensor wc = weight.contiguous();
  at::Tensor grad_xs = at::zeros({rows, d_in}, xc.options());
  at::Tensor grad_w = at::zeros({experts, d_out, d_in}, wc.options());
  if (max_rows == 0 || d_out == 0 || d_in == 0) return {grad_xs, grad_w};
  const dim3 block(kTile, kTile);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "grouped_linear_backward_cuda", [&] {
    // grad_xs rows of e = grad_y_e W[e]: b[n = din, k = dout] = W[e, dout, din].
    const dim3 grid_x(static_cast<unsigned>((max_rows + kTile - 1) / kTile),
                      static_cast<unsigned>((d_in + kTile - 1) / kTile), static_cast<unsigned>(experts));
    grouped_gemm_kernel<scalar_t>
        <<<grid_x, block, 0, stream>>>(gc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), grad_xs.data_ptr<scalar_t>(),
                                       dev_offsets.data_ptr<int64_t>(), d_in, d_out, d_out * d_in, 1, d_in);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const dim3 grid_w(static_cast<unsigned>((d_in + kTile - 1) / kTile),
                      static_cast<unsigned>((d_out + kTile - 1) / kTile), static_cast<unsigned>(experts));
    grouped_weight_grad_kernel<scalar_t><<<grid_w, block, 0, stream>>>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                                                                       grad_w.data_ptr<scalar_t>(),
                                                                       dev_offsets.data_ptr<int64_t>(), d_out, d_in);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_xs, grad_w};
}

}  // namespace grpo::kernels
