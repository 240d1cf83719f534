// ProcessGroupNCCL from the torch wheel (libtorch_cuda), built when CUDA and NCCL's headers are
// present (GRPO_WITH_NCCL); otherwise asking for it is an error that says so.
#include <stdexcept>

#include "backend_factory.h"

#ifdef GRPO_WITH_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace grpo::dist::detail {

bool nccl_built() {
#ifdef GRPO_WITH_NCCL
  return true;
#else
  return false;
#endif
}

c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                            std::chrono::milliseconds timeout, int local_rank) {
#ifdef GRPO_WITH_NCCL
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(local_rank));  // one GPU per local rank
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
#else
  (void)store, (void)rank, (void)size, (void)timeout, (void)local_rank;
  throw std::runtime_error(
      "run.dist.backend nccl: this build of grpo has no NCCL (configure with a CUDA torch and NCCL's headers)");
#endif
}

}  // namespace grpo::dist::detail
