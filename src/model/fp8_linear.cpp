#include "grpo/model/fp8_linear.h"

#include "grpo/model/invariant_ops.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "grpo/core/log.h"
#include "grpo/model/layers.h"
#include "grpo/model/moe.h"

namespace grpo::model {
namespace {

using kernels::Fp8Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The autograd Function of fp8_linear (see the header for the three GEMMs). x2d [M, K]; weight
// [N, K] master weight (has_weight), else `frozen` carries an FP8 weight; bias [N] (has_bias). An
// absent weight or bias is passed as an empty placeholder: autograd Functions cannot take
// undefined tensors as inputs.
class Fp8LinearFunction : public torch::autograd::Function<Fp8LinearFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x2d, const torch::Tensor& weight,
                               const torch::Tensor& bias, const Fp8Tensor& frozen, const Fp8Config& cfg,
                               bool has_weight, bool has_bias) {
    const auto backend = fp8_gemm_backend(cfg);
    const Fp8Tensor wq = has_weight ? kernels::fp8_quantize_128x128(weight.detach(), cfg.ue8m0) : frozen;
    // The weight in float32 for a GEMM left in high precision: the master weight, or the FP8 one
    // dequantised when there is no master.
    const auto w_hp = [&]() {
      return has_weight ? weight.detach().to(at::kFloat) : kernels::fp8_dequantize(wq, at::kFloat);
    };
    torch::Tensor y;
    if (cfg.fprop) {
      y = kernels::fp8_gemm(kernels::fp8_quantize_1x128(x2d.detach(), cfg.ue8m0), wq, at::kFloat, backend);
    } else {
      y = at::matmul(x2d.detach().to(at::kFloat), w_hp().t());
    }
    if (has_bias) y = y + bias.detach().to(at::kFloat);
    ctx->save_for_backward({x2d});
    ctx->saved_data["dgrad"] = cfg.dgrad;
    ctx->saved_data["wgrad"] = cfg.wgrad;
    if (!cfg.dgrad) ctx->saved_data["w_hp"] = w_hp();
    ctx->saved_data["w_data"] = wq.data;
    ctx->saved_data["w_scale"] = wq.scale;
    ctx->saved_data["ue8m0"] = cfg.ue8m0;
    ctx->saved_data["backend"] = static_cast<int64_t>(backend);
    ctx->saved_data["x_dtype"] = x2d.scalar_type();
    ctx->saved_data["w_dtype"] = weight.scalar_type();
    ctx->saved_data["b_dtype"] = bias.scalar_type();
    return y.to(x2d.scalar_type());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto x2d = ctx->get_saved_variables()[0];
    Fp8Tensor wq;
    wq.data = ctx->saved_data["w_data"].toTensor();
    wq.scale = ctx->saved_data["w_scale"].toTensor();
    wq.block_rows = kernels::kFp8Block;
    const bool ue8m0 = ctx->saved_data["ue8m0"].toBool();
    const auto backend = static_cast<kernels::Fp8GemmBackend>(ctx->saved_data["backend"].toInt());
    const auto dy = grads[0].contiguous();  // [M, N]
    torch::Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) {
      // Dgrad: contraction over N, so dy is tiled along N and W's 128x128 blocks are read transposed.
      if (ctx->saved_data["dgrad"].toBool()) {
        const auto dyq = kernels::fp8_quantize_1x128(dy, ue8m0);
        dx = kernels::fp8_gemm(dyq, kernels::fp8_transpose(wq), at::kFloat, backend);
      } else {
        dx = at::matmul(dy.to(at::kFloat), ctx->saved_data["w_hp"].toTensor());
      }
      dx = dx.to(ctx->saved_data["x_dtype"].toScalarType());
    }
    if (ctx->needs_input_grad(1)) {
      // Wgrad: contraction over the tokens, so dy^T and x^T are tiled along M.
      if (ctx->saved_data["wgrad"].toBool()) {
        const auto dyq_t = kernels::fp8_quantize_1x128(dy.t(), ue8m0);
        const auto xq_t = kernels::fp8_quantize_1x128(x2d.t(), ue8m0);
        dw = kernels::fp8_gemm(dyq_t, xq_t, at::kFloat, backend);
      } else {
        dw = at::matmul(dy.t().to(at::kFloat), x2d.to(at::kFloat));
      }
      dw = dw.to(ctx->saved_data["w_dtype"].toScalarType());
    }
    if (ctx->needs_input_grad(2)) {
      db = dy.to(at::kFloat).sum(0).to(ctx->saved_data["b_dtype"].toScalarType());
    }
    return {dx, dw, db, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor apply(const torch::Tensor& x, const torch::Tensor& weight, const Fp8Tensor& frozen,
                    const torch::Tensor& bias, const Fp8Config& cfg, int64_t out_features, int64_t in_features) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "fp8_linear: expected x [..., ", in_features, "], got ",
              x.sizes());
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == out_features), "fp8_linear: expected bias [",
              out_features, "], got ", bias.sizes());
  auto out_shape = x.sizes().vec();
  out_shape.back() = out_features;
  const auto placeholder = at::empty({0}, x.options());
  const auto y = Fp8LinearFunction::apply(x.reshape({-1, in_features}), weight.defined() ? weight : placeholder,
                                          bias.defined() ? bias : placeholder, frozen, cfg, weight.defined(),
                                          bias.defined());
  return y.view(out_shape);
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

}  // namespace

kernels::Fp8GemmBackend fp8_gemm_backend(const Fp8Config& cfg) {
  switch (cfg.backend) {
    case KernelBackend::reference: return kernels::Fp8GemmBackend::reference;
    case KernelBackend::cuda: return kernels::Fp8GemmBackend::cuda;
    case KernelBackend::automatic: break;
  }
  return kernels::Fp8GemmBackend::automatic;
}

torch::Tensor fp8_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                         const Fp8Config& cfg) {
  TORCH_CHECK(weight.defined() && weight.dim() == 2, "fp8_linear: expected weight [N, K], got ",
              weight.defined() ? weight.sizes() : at::IntArrayRef{});
  return apply(x, weight, Fp8Tensor{}, bias, cfg, weight.size(0), weight.size(1));
}

torch::Tensor fp8_linear(const torch::Tensor& x, const kernels::Fp8Tensor& weight, const torch::Tensor& bias,
                         const Fp8Config& cfg) {
  kernels::fp8_check(weight, "fp8_linear");
  TORCH_CHECK(weight.block_rows == kernels::kFp8Block && weight.block_cols == kernels::kFp8Block,
              "fp8_linear: expected an FP8 weight in 128x128 blocks, got ", weight.block_rows, "x", weight.block_cols);
  return apply(x, torch::Tensor(), weight, bias, cfg, weight.rows(), weight.cols());
}

bool fp8_selects_linear(const std::string& name, const Fp8Config& cfg) {
  if (!cfg.enabled) return false;
  if (contains(name, "self_attn.")) return cfg.attention;
  if (contains(name, "mlp.shared_experts.")) return cfg.shared_experts;
  if (contains(name, "mlp.")) return cfg.dense_mlp;
  return false;
}

int64_t fp8_enable(torch::nn::Module& model, const Fp8Config& cfg) {
  int64_t linears = 0, moes = 0;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (auto* linear = dynamic_cast<LinearImpl*>(item.value().get())) {
      if (fp8_selects_linear(item.key(), cfg)) {
        linear->fp8 = cfg;
        ++linears;
      } else {
        linear->fp8.reset();
      }
    } else if (auto* moe = dynamic_cast<MoeImpl*>(item.value().get())) {
      if (cfg.enabled && cfg.experts) {
        moe->fp8 = cfg;
        ++moes;
      } else {
        moe->fp8.reset();
      }
    }
  }
  log::debug("fp8: {} Linear layers and the experts of {} MoE layers in FP8 (ue8m0 {})", linears, moes, cfg.ue8m0);
  return linears + moes;
}

torch::Tensor expert_linear(const torch::Tensor& x, const torch::Tensor& w, const std::optional<Fp8Config>& fp8) {
  if (fp8) return fp8_linear(x, w, torch::Tensor(), *fp8);
  if (invariant::applies(x)) return invariant::linear(x, w, torch::Tensor());
  return at::linear(x, w);
}

}  // namespace grpo::model
