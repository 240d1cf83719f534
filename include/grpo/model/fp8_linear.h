// FP8 Linear layers, DeepSeek-V3's recipe (docs/fp8.md): y = x W^T + b with both GEMM operands in
// E4M3 and float32 accumulation, in the forward and in both backward GEMMs.
//
//   Fprop  y  [M, N] = Q1x128(x) [M, K] . Q128x128(W) [N, K]^T         tiles along K
//   Dgrad  dx [M, K] = Q1x128(dy) [M, N] . Q128x128(W)^T [K, N]^T       tiles along N (W's blocks reused)
//   Wgrad  dW [N, K] = Q1x128(dy^T) [N, M] . Q1x128(x^T) [K, M]^T       tiles along the tokens M
//   db [N] = sum over tokens of dy (float32)
//
// The gradient is the straight-through estimator of the quantised forward: the quantiser is treated
// as the identity, and each backward GEMM quantises its own operands (the DeepSeek-V3 choice), so dx
// is exactly Q(dy) . Q(W) dequantised, not dy . Q(W). Master weights keep their dtype (float32 in
// training) and receive the float32 Wgrad cast to it. The GEMMs run through grpo/kernels/fp8_gemm.h
// (the reference: dequantise + float32 matmul; on sm90 cuBLASLt's blockwise FP8 GEMM).
//
// Which Linear layers run in FP8 is decided from outside the model code: fp8_enable walks a model's
// modules by name at construction (grpo/model/causal_lm.cpp) and switches the selected ones; calling it
// again with another config switches the model over (bench/fp8_parity.cpp evaluates both ways).
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>

#include <optional>
#include <string>

#include "grpo/kernels/fp8_gemm.h"
#include "grpo/kernels/fp8_quant.h"
#include "grpo/model/model_config.h"

namespace grpo::model {

// The GEMM backend an Fp8Config asks for.
kernels::Fp8GemmBackend fp8_gemm_backend(const Fp8Config& cfg);

// x [..., K] (float32, bfloat16 or half), weight [N, K] (the master weight, differentiable), bias
// [N] or undefined -> [..., N] in x's dtype. cfg.enabled is not consulted (the caller chose FP8).
torch::Tensor fp8_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                         const Fp8Config& cfg);

// The same with a weight already in FP8 (e.g. loaded from an FP8 checkpoint; 128x128 blocks): the
// weight is frozen, gradients flow to x and bias only.
torch::Tensor fp8_linear(const torch::Tensor& x, const kernels::Fp8Tensor& weight, const torch::Tensor& bias,
                         const Fp8Config& cfg);

// Which Linear of a model runs in FP8, from its module name (named_modules of CausalLM):
// `*.self_attn.*` -> cfg.attention; `*.mlp.shared_experts.*` -> cfg.shared_experts; other `*.mlp.*`
// -> cfg.dense_mlp; anything else (MTP eh_proj) stays high precision. False when !cfg.enabled.
bool fp8_selects_linear(const std::string& module_name, const Fp8Config& cfg);

// Sets the FP8 mode of every Linear and MoE module of `model` from cfg: the selected Linear modules
// (LinearImpl::fp8, by name, as above) and, with cfg.experts, the routed experts of its MoE modules
// (MoeImpl::fp8) run in FP8, all
// others in their own dtype (so cfg.enabled = false switches a model back to high precision, e.g.
// to evaluate FP8-trained weights in float32; an FP8 checkpoint weight is then replaced by its
// dequantised master copy). Returns the number of Linear modules switched on plus MoE modules
// marked. Safe to call from a constructor (the model itself need not be owned yet).
int64_t fp8_enable(torch::nn::Module& model, const Fp8Config& cfg);

// One routed expert's projection inside MoeImpl::forward: x [n, in] . w [out, in]^T, through
// fp8_linear with `fp8` (the MoE module's MoeImpl::fp8) when set, else at::linear.
torch::Tensor expert_linear(const torch::Tensor& x, const torch::Tensor& w, const std::optional<Fp8Config>& fp8);

}  // namespace grpo::model
