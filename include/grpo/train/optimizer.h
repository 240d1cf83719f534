// AdamW for the trainers: the two parameter groups (decayed / not decayed), gradient clipping by
// global norm, and setting the learning rate that a schedule (grpo/train/schedule.h) computes.
//
// Which parameters decay: every trainable parameter except the 1-D ones (RMSNorm weights, biases)
// and those whose name contains one of `no_decay`. This is Megatron-LM's default rule
// (no decay for biases and norms) and, for our models (no LayerNorm, RMSNorm weights are 1-D),
// also what HF Trainer does (it excludes only LayerNorm/RMSNorm weights and biases). Both decay
// the embeddings and the output head, so `no_decay` is empty by default; write
// `no_decay: [embed_tokens, lm_head]` to exempt them. Buffers (the MoE router's
// e_score_correction_bias, updated by the aux-loss-free rule) are never optimised.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>

#include <memory>
#include <string>
#include <vector>

#include "grpo/config/config.h"

namespace grpo::train {

struct OptimizerConfig {
  double lr = 1e-4;                        // peak learning rate (after warmup), e.g. 1e-6 for GRPO, 1e-5 for SFT
  double beta1 = 0.9;                      // AdamW first-moment decay
  double beta2 = 0.95;                     // AdamW second-moment decay (DeepSeek-V3 uses 0.95)
  double eps = 1e-8;                       // AdamW denominator epsilon
  double weight_decay = 0.1;               // decoupled weight decay of the decay group (p -= lr * wd * p)
  std::vector<std::string> no_decay = {};  // name substrings never decayed, besides every 1-D parameter
  std::vector<std::string> freeze = {};    // name substrings of parameters kept fixed (requires_grad off)
  double max_grad_norm = 1.0;              // clip the global gradient norm to this (0 = no clipping)

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("lr", lr, "peak learning rate after warmup", Check().gt(0));
    v("beta1", beta1, "AdamW first-moment decay", Check().ge(0).lt(1));
    v("beta2", beta2, "AdamW second-moment decay", Check().ge(0).lt(1));
    v("eps", eps, "AdamW denominator epsilon", Check().gt(0));
    v("weight_decay", weight_decay, "decoupled weight decay (1-D parameters and no_decay names never decay)",
      Check().ge(0));
    v("no_decay", no_decay, "parameter-name substrings exempt from weight decay, e.g. [embed_tokens, lm_head]");
    v("freeze", freeze, "parameter-name substrings not trained, e.g. [gate_weight] (MoE routers) or [embed_tokens]");
    v("max_grad_norm", max_grad_norm, "clip the global gradient norm to this (0 = off)", Check().ge(0));
  }
};

struct ParamGroups {
  std::vector<torch::Tensor> decay, no_decay;            // each tensor once (tied weights are not repeated)
  std::vector<std::string> decay_names, no_decay_names;  // named_parameters() names, same order
};

// The trainable parameters of `model` (requires_grad; buffers never), split by the rule above. A
// tensor registered under two names (tied embeddings) appears once, under its first name.
ParamGroups split_parameters(torch::nn::Module& model, const OptimizerConfig& cfg);

// AdamW over split_parameters, after turning requires_grad off for the parameters whose names
// contain one of cfg.freeze (a pattern that matches no parameter is an error): group 0 decays with cfg.weight_decay, group 1 has weight decay 0
// (a group is left out when it is empty). Learning rate cfg.lr; set it per step with
// set_learning_rate.
std::unique_ptr<torch::optim::AdamW> make_optimizer(torch::nn::Module& model, const OptimizerConfig& cfg);

// make_optimizer's two steps: turning requires_grad off for cfg.freeze's names (an error naming the
// pattern that matches nothing), and AdamW over given groups (an empty group is left out; both
// empty is an error). ZeRO-1 (grpo/dist/sharded_optimizer.h) builds its AdamW over its share.
void freeze_parameters(torch::nn::Module& model, const OptimizerConfig& cfg);
std::unique_ptr<torch::optim::AdamW> make_adamw(const ParamGroups& groups, const OptimizerConfig& cfg);

// The global L2 norm of the gradients of `model`'s trainable parameters (those with a gradient;
// a tied tensor counted once), as torch.nn.utils.clip_grad_norm_ computes it but in float64 (so
// that sharded runs, adding up each tensor from its chunks, get the same coefficient; torch's
// float32 norm can differ from it in the last bit). When max_norm > 0
// and the norm is finite, gradients are scaled by max_norm / (norm + 1e-6) if that is below 1.
// A non-finite norm (inf/NaN gradients) is returned with the gradients left as they are: the caller
// should skip the optimizer step (and zero the gradients). max_norm = 0 only measures.
double clip_gradients(torch::nn::Module& model, double max_norm);
// clip_gradients' last part, for norms computed elsewhere (sharded gradients): `total` is the
// whole model's gradient norm (a float64 scalar tensor); scales `grads` by
// min(1, max_norm / (total + 1e-6)) when max_norm > 0 and the norm is finite. Returns the norm.
double clip_to_norm(std::vector<torch::Tensor>& grads, const torch::Tensor& total, double max_norm);

// Sets the learning rate of every parameter group of `optimizer`.
void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

}  // namespace grpo::train
