// FP8 weights of a DeepSeek FP8 checkpoint kept in FP8 on the FP8 path.
//
// DeepSeek-V3's released weights are float8_e4m3fn with a `<name>_scale_inv` companion: the dequant
// multiplier per 128x128 block (`quantization_config.weight_block_size = [128, 128]`), edge blocks
// covering the real elements only — the convention of grpo/kernels/fp8_quant.h. load_hf_weights
// always fills the master weights with the dequantised values; when the model has FP8 enabled, this
// additionally hands each FP8 Linear module the checkpoint's codes and scales as its `fp8_weight`,
// so its forward uses the released numbers exactly instead of re-quantising. Such a weight is
// frozen (requires_grad false): to fine-tune it, clear `fp8_weight` and re-enable requires_grad on
// the master copy. Routed experts (stacked tensors, not Linear modules) keep the dequantised path.
#pragma once

#include <cstdint>

#include "grpo/model/causal_lm.h"

namespace grpo::io {
class SafetensorsCheckpoint;
}

namespace grpo::model {

// Returns the number of Linear modules that received an FP8 weight (0 when FP8 is off).
int64_t attach_fp8_checkpoint_weights(CausalLM& model, const io::SafetensorsCheckpoint& ckpt);

}  // namespace grpo::model
