// Rotary position embedding: inverse frequencies (default, YaRN, Llama-3, linear scaling) computed
// exactly as HF transformers does in float32, the cos/sin tables, and the two layouts.
#pragma once

#include <torch/types.h>

#include <utility>

#include "grpo/model/model_config.h"

namespace grpo::model {

class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(const ModelConfig& cfg);

  // position_ids [B, T] -> cos, sin [B, T, R] (R = rope dim), scaled by attention_scaling and
  // cast to `dtype`; the first and second halves repeat the R/2 frequencies.
  std::pair<torch::Tensor, torch::Tensor> cos_sin(const torch::Tensor& position_ids, torch::ScalarType dtype) const;

  torch::Tensor inv_freq;             // [R/2] float32, CPU
  double attention_scaling = 1.0;     // multiplies cos and sin (YaRN)
  double softmax_scale_factor = 1.0;  // multiplies the MLA softmax scale (YaRN mscale_all_dim^2)
};

// Rotate-half layout (NeoX, Llama, Qwen2): x [B, H, T, R]; cos, sin [B, T, R]. `kernels` picks the
// fused grpo::kernels::rope or the plain-ATen reference (see KernelBackend; both layouts).
torch::Tensor apply_rope_rotate_half(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                     KernelBackend kernels = KernelBackend::reference);

// Pair-interleaved layout (DeepSeek): rotates pairs (x0, x1), (x2, x3), ... and returns the result
// de-interleaved (rotated evens, then rotated odds), as HF does; applied to both q and k, the dot
// products equal those of the interleaved rotation.
torch::Tensor apply_rope_interleaved(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                     KernelBackend kernels = KernelBackend::reference);

}  // namespace grpo::model
