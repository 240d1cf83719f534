// Internal: the c10d backends, each in its own translation unit (ProcessGroupNCCL's headers need
// CUDA's and NCCL's; a build without them gets a backend that refuses with a clear message).
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <string>

namespace grpo::dist::detail {

c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                            std::chrono::milliseconds timeout, const std::string& master_addr);
c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                            std::chrono::milliseconds timeout, int local_rank);
bool nccl_built();

}  // namespace grpo::dist::detail
