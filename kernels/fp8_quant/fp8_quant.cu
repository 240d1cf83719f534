// FP8 E4M3 tile quantisation: per (block_rows x block_cols) tile, scale = amax / 448 (1 for a zero
// tile, rounded up to a power of two with ue8m0) and code = e4m3(clamp(x / scale, -448, 448)).
//
// Invariants: one CUDA block per tile; the block reduces the tile's max-abs in float32 (max is
// exact, so the order does not matter), thread 0 turns it into the scale, then every thread writes
// its codes. The division is __fdiv_rn (IEEE round to nearest) and the cast is c10's
// Float8_e4m3fn conversion, the same function the CPU reference uses, so bytes and scales match
// fp8_quantize_reference exactly. Edge tiles only visit their real elements. The input is made
// contiguous by the launcher.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Float8_e4m3fn.h>

#include "fp8_quant.cuh"

namespace grpo::kernels {
namespace {

constexpr float kMax = 448.0f;

__device__ float block_max(float v, float* shared) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = shared[0];
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) m = fmaxf(m, shared[w]);
    shared[0] = m;
  }
  __syncthreads();
  return shared[0];
}

__device__ float scale_from_amax(float amax, bool ue8m0) {
  float s = amax > 0.0f ? __fdiv_rn(amax, kMax) : 1.0f;
  if (ue8m0 && amax > 0.0f) {
    int e = 0;
    const float m = frexpf(s, &e);  // s = m * 2^e, m in [0.5, 1)
    s = ldexpf(1.0f, m == 0.5f ? e - 1 : e);
  }
  return s;
}

// grid: one block per tile (tile index = row_block * col_blocks + col_block); blockDim a multiple of 32.
template <typename T>
__global__ void fp8_quantize_kernel(const T* __restrict__ x, c10::Float8_e4m3fn* __restrict__ q,
                                    float* __restrict__ scale, int64_t rows, int64_t cols, int64_t block_rows,
                                    int64_t block_cols, int64_t col_blocks, bool ue8m0) {
  __shared__ float shared[32];
  const int64_t tile = blockIdx.x;
  const int64_t r0 = (tile / col_blocks) * block_rows, c0 = (tile % col_blocks) * block_cols;
  const int64_t tr = min(block_rows, rows - r0), tc = min(block_cols, cols - c0);
  const int64_t n = tr * tc;
  float amax = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t r = r0 + i / tc, c = c0 + i % tc;
    amax = fmaxf(amax, fabsf(static_cast<float>(x[r * cols + c])));
  }
  // fmaxf drops NaN; a NaN input still gives NaN codes below (NaN / s), only its scale stays finite.
  amax = block_max(amax, shared);
  const float s = scale_from_amax(amax, ue8m0);
  if (threadIdx.x == 0) scale[tile] = s;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t r = r0 + i / tc, c = c0 + i % tc;
    const float v = fminf(fmaxf(__fdiv_rn(static_cast<float>(x[r * cols + c]), s), -kMax), kMax);
    q[r * cols + c] = c10::Float8_e4m3fn(v);
  }
}

}  // namespace

std::pair<at::Tensor, at::Tensor> fp8_quantize_cuda(const at::Tensor& x, int64_t block_rows, int64_t block_cols,
                                                    bool ue8m0) {
  TORCH_CHECK(x.is_cuda(), "fp8_quantize_cuda: expected a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 2, "fp8_quantize_cuda: expected [R, C], got ", x.sizes());
  TORCH_CHECK(block_rows >= 1 && block_cols >= 1, "fp8_quantize_cuda: block sizes must be >= 1, got ", block_rows, "x",
              block_cols);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const int64_t rows = xc.size(0), cols = xc.size(1);
  const int64_t rb = (rows + block_rows - 1) / block_rows, cb = (cols + block_cols - 1) / block_cols;
  at::Tensor q = at::empty({rows, cols}, xc.options().dtype(at::kFloat8_e4m3fn));
  at::Tensor scale = at::empty({rb, cb}, xc.options().dtype(at::kFloat));
  const int64_t tiles = rb * cb;
  if (tiles == 0) return {q, scale};
  TORCH_CHECK(tiles <= 0x7fffffffLL, "fp8_quantize_cuda: too many tiles (", tiles, ")");
  // 128 threads cover a 1x128 tile in one pass; bigger tiles get 256 threads looping.
  const int threads = block_rows * block_cols <= 128 ? 128 : 256;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "fp8_quantize_cuda", [&] {
    fp8_quantize_kernel<scalar_t><<<static_cast<unsigned>(tiles), threads, 0, stream>>>(
        xc.data_ptr<scalar_t>(), reinterpret_cast<c10::Float8_e4m3fn*>(q.data_ptr()), scale.data_ptr<float>(), rows,
        cols, block_rows, block_cols, cb, ue8m0);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {q, scale};
}

int cuda_device_major(int index) { return at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(index))->major; }

}  // namespace grpo::kernels
