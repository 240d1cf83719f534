// Internal to kernels/: whether a fused op runs its CUDA kernel. Shared by the fused ops' dispatch
// (kernels/<op>/<op>.cpp of rms_norm, rope, swiglu, moe_dispatch), found through the library's
// private include directory kernels/.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "grpo/version.h"

namespace grpo::kernels::detail {

// True for CUDA tensors (the kernel must run); false on the CPU (the explicit reference runs).
// A CUDA tensor in a build without kernels fails loudly, naming `fn`, rather than silently running
// the reference.
inline bool use_kernel(const char* fn, const at::Tensor& x) {
  if (!x.is_cuda()) return false;
#if GRPO_WITH_CUDA_KERNELS
  (void)fn;
  return true;
#else
  TORCH_CHECK(false, fn, ": grpo was built without CUDA kernels (GRPO_WITH_CUDA=OFF); rebuild with nvcc ",
              "available or use the reference (model config kernels: reference)");
#endif
}

}  // namespace grpo::kernels::detail
