#include "grpo/model/fp8_checkpoint.h"

#include <ATen/ATen.h>

#include <unordered_map>

#include "grpo/io/safetensors.h"
#include "grpo/kernels/fp8_quant.h"
#include "grpo/model/checkpoint.h"
#include "grpo/model/layers.h"

namespace grpo::model {

int64_t attach_fp8_checkpoint_weights(CausalLM& model, const io::SafetensorsCheckpoint& ckpt) {
  if (!model->config().fp8.enabled) return 0;
  // FP8 Linear modules by the identity of their weight tensor, to match hf_state_dict's entries.
  std::unordered_map<const c10::TensorImpl*, LinearImpl*> by_weight;
  for (const auto& item : model->named_modules("", /*include_self=*/false)) {
    if (auto* linear = dynamic_cast<LinearImpl*>(item.value().get()); linear != nullptr && linear->fp8) {
      by_weight[linear->weight.unsafeGetTensorImpl()] = linear;
    }
  }
  int64_t attached = 0;
  for (const auto& t : hf_state_dict(model)) {
    const auto it = by_weight.find(t.tensor.unsafeGetTensorImpl());
    if (it == by_weight.end() || !ckpt.contains(t.name) || !ckpt.contains(t.name + "_scale_inv")) continue;
    if (ckpt.info(t.name).dtype != at::kFloat8_e4m3fn) continue;
    LinearImpl& linear = *it->second;
    kernels::Fp8Tensor w;
    w.data = ckpt.load(t.name).contiguous().to(linear.weight.device());
    w.scale = ckpt.load(t.name + "_scale_inv").to(linear.weight.device(), at::kFloat).contiguous();
    w.block_rows = kernels::kFp8Block;
    w.block_cols = kernels::kFp8Block;
    kernels::fp8_check(w, ("attach_fp8_checkpoint_weights: " + t.name).c_str());
    TORCH_CHECK(w.data.sizes() == linear.weight.sizes(), "attach_fp8_checkpoint_weights: ", t.name, " is ",
                w.data.sizes(), " but the model's weight is ", linear.weight.sizes());
    linear.fp8_weight = std::move(w);
    linear.weight.requires_grad_(false);
    ++attached;
  }
  return attached;
}

}  // namespace grpo::model
