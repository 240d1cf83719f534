// Fused rotary position embedding, rotate-half and interleaved layouts, forward and inverse
// (backward). See include/grpo/kernels/rope.h.
//
// Invariants: one thread per rotated pair (j < R/2) of one [b, h, t] row, computed in
// at::opmath_type and rounded once. Pair j reads inputs ia, ib and writes outputs oa, ob:
//   rotate-half: ia = oa = j, ib = ob = j + R/2, tables at ta = j, tb = j + R/2
//   interleaved: ia = 2j, ib = 2j + 1, oa = j, ob = j + R/2, tables at ta = tb = j
// Forward: y[oa] = x[ia] c[ta] - x[ib] s[ta], y[ob] = x[ib] c[tb] + x[ia] s[tb].
// Inverse (the transpose, reading the gradient at oa/ob and writing at ia/ib):
//   gx[ia] = g[oa] c[ta] + g[ob] s[tb], gx[ib] = g[ob] c[tb] - g[oa] s[ta].
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "rope.cuh"

namespace grpo::kernels {
namespace {

constexpr int kThreads = 256;

// in, out [B, H, T, R]; cos, sin [Bc, T, R] with Bc = B or 1 (table_batch_stride = 0 for 1).
template <typename T, bool kInterleaved, bool kInverse>
__global__ void rope_kernel(const T* __restrict__ in, const T* __restrict__ cos, const T* __restrict__ sin,
                            T* __restrict__ out, int64_t heads, int64_t seq, int64_t width, int64_t table_batch_stride,
                            int64_t pairs_total) {
  using Acc = at::opmath_type<T>;
  const int64_t half = width / 2;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < pairs_total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx % half;
    const int64_t row = idx / half;  // (b * H + h) * T + t
    const int64_t t = row % seq;
    const int64_t b = row / (seq * heads);
    const T* c = cos + b * table_batch_stride + t * width;
    const T* s = sin + b * table_batch_stride + t * width;
    const int64_t ia = kInterleaved ? 2 * j : j;
    const int64_t ib = kInterleaved ? 2 * j + 1 : j + half;
    const int64_t oa = j, ob = j + half;
    const int64_t ta = j, tb = kInterleaved ? j : j + half;
    const Acc ca = static_cast<Acc>(c[ta]), sa = static_cast<Acc>(s[ta]);
    const Acc cb = static_cast<Acc>(c[tb]), sb = static_cast<Acc>(s[tb]);
    const T* src = in + row * width;
    T* dst = out + row * width;
    if (!kInverse) {
      const Acc xa = static_cast<Acc>(src[ia]), xb = static_cast<Acc>(src[ib]);
      dst[oa] = static_cast<T>(xa * ca - xb * sa);
      dst[ob] = static_cast<T>(xb * cb + xa * sb);
    } else {
      const Acc ga = static_cast<Acc>(src[oa]), gb = static_cast<Acc>(src[ob]);
      dst[ia] = static_cast<T>(ga * ca + gb * sb);
      dst[ib] = static_cast<T>(gb * cb - ga * sa);
    }
  }
}

}  // namespace

at::Tensor rope_cuda(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool interleaved,
                     bool inverse) {
  TORCH_CHECK(x.is_cuda() && cos.device() == x.device() && sin.device() == x.device(),
              "rope_cuda: expected x, cos and sin on one CUDA device, got ", x.device(), ", ", cos.device(), " and ",
              sin.device());
  TORCH_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, "rope_cuda: x must be [B, H, T, R] with R even, got ", x.sizes());
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.dim() == 3 && (cos.size(0) == x.size(0) || cos.size(0) == 1) &&
                  cos.size(1) == x.size(2) && cos.size(2) == x.size(3),
              "rope_cuda: cos/sin must be [", x.size(0), " or 1, ", x.size(2), ", ", x.size(3), "], got ", cos.sizes(),
              " and ", sin.sizes());
  TORCH_CHECK(cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(),
              "rope_cuda: cos/sin must have x's dtype ", x.scalar_type(), ", got ", cos.scalar_type(), " and ",
              sin.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor cc = cos.contiguous();
  const at::Tensor sc = sin.contiguous();
  at::Tensor out = at::empty_like(xc);
  const int64_t pairs = xc.numel() / 2;
  if (pairs == 0) return out;
  const int64_t heads = xc.size(1), seq = xc.size(2), width = xc.size(3);
  const int64_t table_batch_stride = cc.size(0) == 1 ? 0 : seq * width;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((pairs + kThreads - 1) / kThreads, 65535LL * 8));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "rope_cuda", [&] {
    const scalar_t* in = xc.data_ptr<scalar_t>();
    const scalar_t* c = cc.data_ptr<scalar_t>();
    const scalar_t* s = sc.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    auto launch = [&](auto kernel) {
      kernel<<<blocks, kThreads, 0, stream>>>(in, c, s, o, heads, seq, width, table_batch_stride, pairs);
    };
    if (interleaved) {
      inverse ? launch(rope_kernel<scalar_t, true, true>) : launch(rope_kernel<scalar_t, true, false>);
    } else {
      inverse ? launch(rope_kernel<scalar_t, false, true>) : launch(rope_kernel<scalar_t, false, false>);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace grpo::kernels
