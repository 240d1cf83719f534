#include "grpo/model/causal_lm.h"

#include <ATen/ATen.h>

#include "grpo/model/activation_checkpoint.h"
#include "grpo/model/fp8_linear.h"
#include "grpo/model/invariant_ops.h"

namespace grpo::model {

MtpModuleImpl::MtpModuleImpl(const ModelConfig& cfg, int64_t layer_index, double softmax_scale_factor,
                             const torch::TensorOptions& options) {
  const int64_t d = cfg.hidden_size;
  enorm = register_module("enorm", RMSNorm(d, cfg.rms_norm_eps, options));
  hnorm = register_module("hnorm", RMSNorm(d, cfg.rms_norm_eps, options));
  eh_proj = register_module("eh_proj", Linear(2 * d, d, false, cfg.initializer_range, options));
  block = register_module("block", DecoderLayer(cfg, cfg.is_moe_layer(layer_index), softmax_scale_factor, options));
  shared_head_norm = register_module("shared_head_norm", RMSNorm(d, cfg.rms_norm_eps, options));
}

torch::Tensor MtpModuleImpl::forward(const torch::Tensor& h_prev, const torch::Tensor& emb, const AttentionContext& ctx,
                                     const torch::Tensor& valid) {
  const auto combined = eh_proj(torch::cat({enorm(emb), hnorm(h_prev)}, -1));
  return block(combined, ctx, valid);
}

CausalLMImpl::CausalLMImpl(const ModelConfig& cfg, const torch::TensorOptions& options) : cfg_(cfg), rope_(cfg) {
  const std::string problem = cfg.validate();
  TORCH_CHECK(problem.empty(), "CausalLM: invalid ModelConfig: ", problem);
  embed_tokens = register_parameter("embed_tokens", torch::empty({cfg.vocab_size, cfg.hidden_size}, options));
  if (!embed_tokens.is_meta()) {
    torch::NoGradGuard no_grad;
    embed_tokens.normal_(0.0, cfg.initializer_range);
  }
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    layers->push_back(DecoderLayer(cfg, cfg.is_moe_layer(l), rope_.softmax_scale_factor, options));
  }
  norm = register_module("norm", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, options));
  if (cfg.tie_word_embeddings) {
    lm_head = embed_tokens;
  } else {
    lm_head = register_parameter("lm_head", torch::empty({cfg.vocab_size, cfg.hidden_size}, options));
    if (!lm_head.is_meta()) {
      torch::NoGradGuard no_grad;
      lm_head.normal_(0.0, cfg.initializer_range);
    }
  }
  mtp = register_module("mtp", torch::nn::ModuleList());
  for (int64_t k = 0; k < cfg.num_nextn_predict_layers; ++k) {
    mtp->push_back(MtpModule(cfg, cfg.num_hidden_layers + k, rope_.softmax_scale_factor, options));
  }
  // The hot-path implementation (ModelConfig::kernels) of every norm and MLP; Moe reads it from cfg.
  for (const auto& module : modules(/*include_self=*/false)) {
    if (auto* rms_norm = module->as<RMSNormImpl>()) rms_norm->kernel_backend = cfg.kernels;
    if (auto* mlp = module->as<MlpImpl>()) mlp->kernel_backend = cfg.kernels;
  }
  if (cfg.fp8.enabled) fp8_enable(*this, cfg.fp8);  // selected Linear layers and experts to FP8
}

torch::Tensor CausalLMImpl::head(const torch::Tensor& hidden) {
  if (invariant::applies(hidden)) return invariant::linear(hidden, lm_head, torch::Tensor());
  return at::linear(hidden, lm_head);
}

ForwardOutput CausalLMImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& position_ids_in,
                                    const torch::Tensor& attention_mask, KVCache* cache,
                                    const ForwardOptions& options) {
  TORCH_CHECK(input_ids.dim() == 2, "CausalLM::forward: input_ids must be [B, T], got ", input_ids.sizes());
  const int64_t b = input_ids.size(0), t = input_ids.size(1);
  const int64_t past = cache != nullptr ? cache->length() : 0;
  const auto device = embed_tokens.device();
  const auto dtype = embed_tokens.scalar_type();
  auto position_ids = position_ids_in;
  if (!position_ids.defined()) {
    position_ids = torch::arange(past, past + t, torch::TensorOptions().dtype(torch::kLong).device(device))
                       .unsqueeze(0)
                       .expand({b, t});
  }
  TORCH_CHECK(position_ids.sizes() == input_ids.sizes(), "CausalLM::forward: position_ids ", position_ids.sizes(),
              " must match input_ids ", input_ids.sizes());

  AttentionContext ctx;
  std::tie(ctx.cos, ctx.sin) = rope_.cos_sin(position_ids.to(device), dtype);
  ctx.mask = causal_mask(attention_mask, b, t, past, dtype, device);
  ctx.cache = cache;
  ctx.kernels = cfg_.kernels;
  torch::Tensor valid;  // [B, T] real new tokens
  if (attention_mask.defined()) valid = attention_mask.narrow(1, past, t).to(device).to(torch::kBool);

  auto h = torch::embedding(embed_tokens, input_ids.to(device));
  ForwardOutput out;
  const bool recompute = activation_checkpointing && is_training() && cache == nullptr && torch::GradMode::is_enabled();
  std::vector<torch::Tensor> balance(cfg_.num_hidden_layers);  // each MoE block's balance loss
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    ctx.cache_layer = l;
    const auto layer = layers->ptr<DecoderLayerImpl>(l);
    const auto hooks = block_hooks;
    if (!recompute) {
      if (hooks) hooks->before_block(l);
      h = layer->forward(h, ctx, valid);
      if (layer->moe) balance[l] = layer->moe->balance_loss();
      if (hooks) hooks->after_block(l, {h});
      continue;
    }
    // The block's output and its balance loss (when there is one) come out of the checkpoint, so
    // that both back-propagate through the recomputation.
    const auto block = [layer, ctx, valid, hooks, l](const std::vector<torch::Tensor>& in) {
      if (hooks) hooks->before_block(l);
      std::vector<torch::Tensor> result{layer->forward(in[0], ctx, valid)};
      if (layer->moe && layer->moe->balance_loss().defined()) result.push_back(layer->moe->balance_loss());
      if (hooks) hooks->after_block(l, result);
      return result;
    };
    const auto outputs = checkpoint(block, {h}, layer->parameters());
    h = outputs[0];
    if (outputs.size() > 1) balance[l] = outputs[1];
  }
  const auto final_hidden = norm(h);
  if (options.logits) out.logits = head(final_hidden);
  if (options.return_hidden) out.hidden = final_hidden;
  if (options.return_trunk) out.trunk = h;

  if (options.mtp && cfg_.num_nextn_predict_layers > 0) {
    TORCH_CHECK(cache == nullptr, "CausalLM::forward: MTP modules run over full sequences, without a cache");
    auto h_prev = h;
    for (int64_t k = 1; k <= cfg_.num_nextn_predict_layers; ++k) {
      // Embedding of the token k ahead at each position (zeros past the end).
      auto ahead = torch::zeros_like(input_ids);
      if (k < t) ahead.narrow(1, 0, t - k).copy_(input_ids.narrow(1, k, t - k));
      const auto emb = torch::embedding(embed_tokens, ahead.to(device));
      auto* module = mtp[k - 1]->as<MtpModuleImpl>();
      const int64_t index = cfg_.num_hidden_layers + k - 1;
      if (block_hooks) block_hooks->before_block(index);
      h_prev = module->forward(h_prev, emb, ctx, valid);
      const auto normed = module->shared_head_norm(h_prev);
      if (block_hooks) block_hooks->after_block(index, {h_prev, normed});
      out.mtp_logits.push_back(head(normed));
    }
  }
  if (cache != nullptr) cache->advance(t);

  for (const auto& loss : balance) {
    if (loss.defined()) out.balance_loss = out.balance_loss.defined() ? out.balance_loss + loss : loss;
  }
  return out;
}

std::unique_ptr<KVCache> CausalLMImpl::make_cache(int64_t batch, int64_t max_length) const {
  return std::make_unique<KVCache>(
      cfg_, batch, max_length, torch::TensorOptions().dtype(embed_tokens.scalar_type()).device(embed_tokens.device()),
      cfg_.num_hidden_layers);
}

std::unique_ptr<KVCache> CausalLMImpl::make_mtp_cache(int64_t batch, int64_t max_length) const {
  TORCH_CHECK(cfg_.num_nextn_predict_layers > 0, "CausalLM::make_mtp_cache: the model has no MTP modules");
  return std::make_unique<KVCache>(
      cfg_, batch, max_length, torch::TensorOptions().dtype(embed_tokens.scalar_type()).device(embed_tokens.device()),
      1);
}

torch::Tensor CausalLMImpl::mtp_draft_logits(const torch::Tensor& trunk, const torch::Tensor& next_ids,
                                             const torch::Tensor& position_ids, const torch::Tensor& attention_mask,
                                             KVCache& mtp_cache) {
  TORCH_CHECK(cfg_.num_nextn_predict_layers > 0, "CausalLM::mtp_draft_logits: the model has no MTP modules");
  const int64_t b = next_ids.size(0), t = next_ids.size(1);
  const auto device = embed_tokens.device();
  const auto dtype = embed_tokens.scalar_type();
  AttentionContext ctx;
  std::tie(ctx.cos, ctx.sin) = rope_.cos_sin(position_ids.to(device), dtype);
  ctx.mask = causal_mask(attention_mask, b, t, mtp_cache.length(), dtype, device);
  ctx.cache = &mtp_cache;
  ctx.kernels = cfg_.kernels;
  ctx.cache_layer = 0;
  torch::Tensor valid;
  if (attention_mask.defined()) valid = attention_mask.narrow(1, mtp_cache.length(), t).to(device).to(torch::kBool);
  auto* module = mtp[0]->as<MtpModuleImpl>();
  const auto emb = torch::embedding(embed_tokens, next_ids.to(device));
  if (block_hooks) block_hooks->before_block(cfg_.num_hidden_layers);
  const auto h = module->forward(trunk, emb, ctx, valid);
  mtp_cache.advance(t);
  const auto normed = module->shared_head_norm(h);
  if (block_hooks) block_hooks->after_block(cfg_.num_hidden_layers, {normed});
  return head(normed);
}

void CausalLMImpl::set_attention_impl(AttentionImpl impl) {
  cfg_.attention_impl = impl;
  for (const auto& m : modules(/*include_self=*/false)) {
    if (auto* mla = m->as<MlaAttentionImpl>()) mla->impl = impl;
  }
}

std::vector<Moe> CausalLMImpl::moe_layers() const {
  std::vector<Moe> out;
  for (const auto& layer : *layers) {
    const auto* l = layer->as<DecoderLayerImpl>();
    if (l->moe) out.push_back(l->moe);
  }
  return out;
}

std::vector<double> CausalLMImpl::update_router_biases(double gamma) {
  std::vector<double> imbalance;
  for (auto& moe : moe_layers()) imbalance.push_back(moe->update_bias(gamma));
  return imbalance;
}

torch::Tensor mtp_loss(const ForwardOutput& out, const torch::Tensor& input_ids, const torch::Tensor& loss_mask,
                       double lambda) {
  TORCH_CHECK(!out.mtp_logits.empty(), "mtp_loss: the forward ran without MTP (ForwardOptions::mtp)");
  const int64_t t = input_ids.size(1);
  const auto mask = loss_mask.defined() ? loss_mask.to(torch::kBool) : torch::ones_like(input_ids, torch::kBool);
  torch::Tensor total;
  const int64_t depth = static_cast<int64_t>(out.mtp_logits.size());
  for (int64_t k = 1; k <= depth; ++k) {
    const int64_t n = t - k - 1;  // positions i with a target i + k + 1 < T
    if (n <= 0) continue;
    const auto& logits = out.mtp_logits[k - 1];
    const auto pred = logits.narrow(1, 0, n).reshape({-1, logits.size(-1)});
    auto target = input_ids.narrow(1, k + 1, n).reshape({-1}).to(logits.device());
    const auto ok = mask.narrow(1, 0, n).logical_and(mask.narrow(1, k + 1, n)).reshape({-1}).to(logits.device());
    target = target.masked_fill(ok.logical_not(), -100);
    const auto ce = torch::nn::functional::cross_entropy(
        pred.to(torch::kFloat), target, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
    total = total.defined() ? total + ce : ce;
  }
  TORCH_CHECK(total.defined(), "mtp_loss: sequences of length ", t, " are too short for any MTP target");
  return total * (lambda / static_cast<double>(depth));
}

}  // namespace grpo::model
