// A tiny DeepSeek-V3 model (MLA, MoE, one MTP module) trained for a few seconds on "stride"
// sequences: each sequence counts up from a random start by a stride of 1, 2 or 3 (mod 56, ids 3..58),
// so a prompt of two or more tokens fixes the whole continuation. The main model and the MTP module
// both learn it, which gives speculative decoding drafts that are mostly right: used by the engine
// tests (the accepted branch) and by bench/bench_generate.cpp (acceptance rate and speed-up).
#pragma once

#include <torch/torch.h>

#include "grpo/model/causal_lm.h"

namespace grpo::rollout::stride {

// `layers` decoder layers (the first dense, the rest MoE).
inline model::ModelConfig stride_model_config(int64_t layers = 2) {
  model::ModelConfig c;
  c.arch = model::Arch::deepseek_v3;
  c.vocab_size = 61;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.max_position_embeddings = 256;
  c.q_lora_rank = 32;
  c.kv_lora_rank = 32;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 16;
  c.moe_intermediate_size = 32;
  c.n_routed_experts = 4;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.n_group = 1;
  c.topk_group = 1;
  c.first_k_dense_replace = 1;
  c.num_nextn_predict_layers = 1;
  c.initializer_range = 0.05;
  c.eos_token_ids = {1};
  return c;
}

// [n, length] sequences: start + stride * position (mod 56) + 3.
inline torch::Tensor stride_sequences(int64_t n, int64_t length, torch::Generator& gen) {
  const auto start = torch::randint(0, 56, {n, 1}, gen, torch::kLong);
  const auto stride = torch::randint(1, 4, {n, 1}, gen, torch::kLong);
  const auto pos = torch::arange(length, torch::kLong).unsqueeze(0);
  return (start + stride * pos).remainder(56) + 3;
}

// Trains `steps` Adam steps (main next-token loss + 0.3 x MTP loss); returns the last loss.
inline double train_stride_model(model::CausalLM& model, int64_t steps, uint64_t seed = 0) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(3e-3));
  model->train();
  double last = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const auto ids = stride_sequences(32, 24, gen);
    model::ForwardOptions fo;
    fo.mtp = true;
    const auto out = model->forward(ids, torch::Tensor(), torch::Tensor(), nullptr, fo);
    const int64_t t = ids.size(1);
    auto loss = torch::nn::functional::cross_entropy(out.logits.narrow(1, 0, t - 1).reshape({-1, out.logits.size(2)}),
                                                     ids.narrow(1, 1, t - 1).reshape({-1}));
    loss = loss + model::mtp_loss(out, ids, torch::Tensor(), 0.3);
    opt.zero_grad();
    loss.backward();
    opt.step();
    last = loss.template item<double>();
  }
  model->eval();
  return last;
}

}  // namespace grpo::rollout::stride
