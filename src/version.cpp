#include "grpo/version.h"

namespace grpo {

const char* build_info() {
  return "grpo " GRPO_VERSION_STRING " (torch " GRPO_TORCH_VERSION ", CUDA kernels: " GRPO_WITH_CUDA_KERNELS_TEXT ")";
}

}  // namespace grpo
