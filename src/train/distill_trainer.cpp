#include "grpo/train/distill_trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <stdexcept>

#include "autocast.h"
#include "grpo/core/format.h"
#include "grpo/core/log.h"
#include "grpo/core/progress.h"
#include "grpo/core/random.h"
#include "grpo/data/dataset.h"
#include "grpo/dist/data_parallel.h"
#include "grpo/kernels/token_logprobs.h"
#include "grpo/train/scored_rollouts.h"
#include "grpo/train/sft_trainer.h"

namespace grpo::train {

std::string DistillConfig::validate() const {
  if (auto problem = warmup_problem(schedule, steps); !problem.empty()) return problem;
  if (generation.num_generations != 1) {
    return "generation.num_generations must be 1 (one student sample per prompt), found " +
           std::to_string(generation.num_generations);
  }
  if (generation.speculative_mtp) return "generation.speculative_mtp is greedy only; on-policy distillation samples";
  return "";
}

bool on_policy_step(uint64_t seed, int64_t step, double fraction) {
  if (fraction <= 0) return false;
  if (fraction >= 1) return true;
  return unit_interval(derive_seed(seed, static_cast<uint64_t>(step))) < fraction;
}

DistillTrainer::DistillTrainer(model::CausalLM student, model::CausalLM teacher, const data::Tokenizer& tokenizer,
                               data::PromptConfig prompt, DistillConfig cfg, Run& run, std::string stage)
    : student_(std::move(student)),
      teacher_(std::move(teacher)),
      tokenizer_(tokenizer),
      prompt_(std::move(prompt)),
      cfg_(std::move(cfg)),
      run_(run),
      stage_(std::move(stage)) {
  if (const auto problem = cfg_.validate(); !problem.empty()) throw std::invalid_argument(stage_ + ": " + problem);
  const int64_t vs = student_->lm_head.size(0), vt = teacher_->lm_head.size(0);
  if (vs != vt) {
    throw std::invalid_argument(stage_ +
                                ": teacher and student must share the vocabulary: the student's output head has " +
                                std::to_string(vs) + " rows, the teacher's " + std::to_string(vt));
  }
  for (auto& p : teacher_->parameters()) p.set_requires_grad(false);
  teacher_->eval();
}

std::string DistillTrainer::checkpoint_dir() const { return run_.path("checkpoints/" + stage_); }

DistillResult DistillTrainer::train(const std::vector<data::Record>& records, const EvalFn& eval, bool resume) {
  const auto t_start = std::chrono::steady_clock::now();
  if (records.empty()) throw std::runtime_error(stage_ + ": no records");
  const auto device = student_->embed_tokens.device();
  const auto teacher_device = teacher_->embed_tokens.device();
  const bool autocast = cfg_.bf16_autocast && device.is_cuda();
  const uint64_t seed = static_cast<uint64_t>(run_.config().seed + cfg_.seed_offset);

  // Off-policy examples: the records with reasoning, tokenized as the SFT trainer does. Record i's
  // example is examples[example_of[i]] (-1: no reasoning, or dropped).
  std::vector<data::Record> with_reasoning;
  std::vector<int64_t> source_of;  // with_reasoning[k] is records[source_of[k]]
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i].reasoning) {
      with_reasoning.push_back(records[i]);
      source_of.push_back(static_cast<int64_t>(i));
    }
  }
  std::vector<data::TokenizedExample> examples;
  std::vector<int64_t> example_of(records.size(), -1);
  if (cfg_.on_policy_fraction < 1.0) {
    if (with_reasoning.empty()) {
      throw std::runtime_error(stage_ +
                               ": off-policy steps need records with reasoning (teacher traces); none of the " +
                               std::to_string(records.size()) +
                               " records has one (set on_policy_fraction: 1 to "
                               "distill on the student's own samples only)");
    }
    for (size_t k = 0; k < with_reasoning.size(); ++k) {
      auto e = data::tokenize_example(tokenizer_, prompt_, with_reasoning[k], cfg_.max_length);
      if (e.dropped) continue;
      example_of[static_cast<size_t>(source_of[k])] = static_cast<int64_t>(examples.size());
      examples.push_back(std::move(e));
    }
    if (examples.empty()) throw std::runtime_error(stage_ + ": every example is longer than max_length");
    log::info("{}: {} off-policy examples of {} records, on-policy share {:.2f}, divergence {}", stage_,
              examples.size(), records.size(), cfg_.on_policy_fraction, config::enum_name(cfg_.loss.divergence));
  }
  // The records a step draws from: with off-policy steps, those with an example (an on-policy step
  // then uses their prompts); on-policy only, all.
  std::vector<int64_t> pool;
  for (size_t i = 0; i < records.size(); ++i) {
    if (cfg_.on_policy_fraction >= 1.0 || example_of[i] >= 0) pool.push_back(static_cast<int64_t>(i));
  }

  dist::DataParallel dp(student_, cfg_.optim);  // a world of one: plain AdamW, as always
  auto& world = dp.world();
  data::DataOrderConfig order_cfg;
  order_cfg.batch_size = std::min<int64_t>(cfg_.batch_size, static_cast<int64_t>(pool.size()));
  data::DataOrder order(static_cast<int64_t>(pool.size()), order_cfg, seed);
  int64_t step = 0;
  if (const auto st = resume ? resume_latest(checkpoint_dir(), student_, dp.optimizer(), cfg_.optim, stage_)
                             : std::nullopt) {
    step = st->step;
    order.restore(data::DataOrderState::from_json(st->values.at("data_order")));
  }
  auto save = [&](int64_t at) {
    TrainState st;
    st.values["data_order"] = order.state().to_json();
    save_stage_checkpoint(checkpoint_dir(), at, student_, dp.optimizer(), st, cfg_.checkpoint, stage_);
  };

  // The teacher's output head on the student's device, once (the teacher is frozen).
  const torch::Tensor teacher_head = teacher_->lm_head.detach().to(device);
  model::ForwardOptions hidden_only;
  hidden_only.logits = false;
  hidden_only.return_hidden = true;

  Progress progress(stage_, cfg_.steps, run_.config().progress_interval_s);
  DistillResult result;
  while (step < cfg_.steps) {
    const auto t0 = std::chrono::steady_clock::now();
    const double lr = lr_at(cfg_.schedule, cfg_.optim.lr, step, cfg_.steps);
    dp.begin_step(lr);
    const bool on_policy = on_policy_step(seed, step, cfg_.on_policy_fraction);
    // Every rank draws the step's records; data parallel, each samples / trains on its share.
    const auto all_idx = order.next_batch();
    const auto [share_begin, share_end] = dist::share(static_cast<int64_t>(all_idx.size()), world.rank(), world.size());
    const std::vector<int64_t> batch_idx(all_idx.begin() + share_begin, all_idx.begin() + share_end);
    const auto global_rows = static_cast<double>(all_idx.size());

    // ---- The step's sequences ---------------------------------------------------------------
    std::vector<data::TokenizedExample> sampled;  // on-policy: prompt + the student's completion
    std::vector<const data::TokenizedExample*> rows;
    double gen_seconds = 0;
    int64_t batch_tokens = 0;
    // Sharded or split: the student samples on a gathered copy, or in the training layout with the
    // ranks' forwards paired (run.dist.generation).
    std::optional<dist::GenerationScope> gen_scope;
    if (on_policy) gen_scope.emplace(dp);
    if (batch_idx.empty()) {
      // no rows on this rank this step: it still takes part in the gradient sum (and generation's rounds)
      if (on_policy) rollout::Engine(student_, &tokenizer_, cfg_.generation).generate({});
    } else if (on_policy) {
      const auto tg = std::chrono::steady_clock::now();
      student_->eval();
      std::vector<RolloutRequest> requests;
      for (const int64_t k : batch_idx) {
        const int64_t record = pool[static_cast<size_t>(k)];
        requests.push_back({.record = record, .seed = derive_seed(seed, static_cast<uint64_t>(step), 0, record)});
      }
      rollout::Engine engine(student_, &tokenizer_, cfg_.generation);
      const auto rollouts = sample_scored(engine_generator(engine), tokenizer_, prompt_, records, requests, nullptr);
      for (const auto& g : rollouts.groups) {
        data::TokenizedExample e;
        e.input_ids = g.prompt_ids;
        e.completion_mask.assign(e.input_ids.size(), 0);
        e.prompt_tokens = static_cast<int64_t>(e.input_ids.size());
        for (const int64_t t : g.completions.front().token_ids) {
          e.input_ids.push_back(t);
          e.completion_mask.push_back(1);
        }
        e.completion_tokens = static_cast<int64_t>(g.completions.front().token_ids.size());
        e.full_length = static_cast<int64_t>(e.input_ids.size());
        sampled.push_back(std::move(e));
      }
      for (const auto& e : sampled) rows.push_back(&e);
      gen_seconds = seconds_since(tg);
    } else {
      for (const int64_t k : batch_idx) {
        rows.push_back(&examples[static_cast<size_t>(example_of[static_cast<size_t>(pool[static_cast<size_t>(k)])])]);
      }
    }
    gen_scope.reset();
    const SftBatch batch = rows.empty() ? SftBatch{} : pad_batch(rows);
    const int64_t t = rows.empty() ? 0 : batch.input_ids.size(1);
    // Position i predicts token i + 1 when that token is a completion token.
    const auto idx = rows.empty()
                         ? torch::zeros({0}, torch::kLong)
                         : batch.loss_mask.narrow(1, 1, t - 1).to(torch::kBool).reshape({-1}).nonzero().squeeze(1);
    const int64_t local_tokens = idx.numel();
    // The step's normaliser: completion tokens over every rank.
    const auto n_tokens = static_cast<int64_t>(world.sum(static_cast<double>(local_tokens)));

    // ---- Loss and update --------------------------------------------------------------------
    student_->train();
    double div_sum = 0, ce_sum = 0, balance = 0, grad_norm = 0;
    if (n_tokens > 0) {
      if (local_tokens > 0) {
        torch::Tensor teacher_hidden;
        {
          c10::InferenceMode inference;  // the teacher's forward keeps no autograd state at all
          AutocastScope ac(autocast && teacher_device.is_cuda());
          const auto out = teacher_->forward(batch.input_ids.to(teacher_device), batch.position_ids.to(teacher_device),
                                             batch.attention_mask.to(teacher_device), nullptr, hidden_only);
          teacher_hidden = out.hidden.narrow(1, 0, t - 1)
                               .reshape({-1, out.hidden.size(2)})
                               .index_select(0, idx.to(teacher_device))
                               .to(device);
        }
        AutocastScope ac(autocast);
        const auto out = student_->forward(batch.input_ids.to(device), batch.position_ids.to(device),
                                           batch.attention_mask.to(device), nullptr, hidden_only);
        const auto hidden =
            out.hidden.narrow(1, 0, t - 1).reshape({-1, out.hidden.size(2)}).index_select(0, idx.to(device));
        const auto div = token_divergence(hidden, student_->lm_head, teacher_hidden, teacher_head, cfg_.loss);
        // Means over the step's tokens (all ranks'): this rank's sum over the global count.
        auto loss = div.sum() / static_cast<double>(n_tokens);
        div_sum = div.sum().item<double>();
        if (cfg_.ce_weight > 0 && !on_policy) {
          const auto targets = batch.input_ids.narrow(1, 1, t - 1).reshape({-1}).index_select(0, idx).to(device);
          kernels::TokenLogprobsOptions o;
          o.chunk_size = cfg_.loss.chunk_size;
          const auto ce = -kernels::token_logprobs(hidden, student_->lm_head, targets, o).logprobs.sum();
          ce_sum = ce.item<double>();
          loss = loss + ce * (cfg_.ce_weight / static_cast<double>(n_tokens));
        }
        if (out.balance_loss.defined()) {  // a mean over rows: this rank's rows' share of the step's
          const double row_share = static_cast<double>(rows.size()) / global_rows;
          balance = out.balance_loss.item<double>() * row_share;
          loss = loss + out.balance_loss * row_share;
        }
        if (dp.lockstep()) loss = loss + dist::DataParallel::graph_anchor(out);
        dp.backward(loss, true);
      } else if (dp.lockstep()) {
        // Sharded or split: a rank without tokens still runs the pass, on a stand-in (loss 0, its
        // router loads not counted).
        AutocastScope ac(autocast);
        const auto ids = torch::zeros({1, 2}, torch::TensorOptions().dtype(torch::kLong).device(device));
        dp.stand_in(
            [&] {
              return dist::DataParallel::graph_anchor(student_->forward(
                  ids, torch::arange(2, ids.options()).unsqueeze(0), torch::ones_like(ids), nullptr, hidden_only));
            },
            true);
      }
      grad_norm = dp.reduce_gradients(cfg_.optim.max_grad_norm);
      if (!dp.step(grad_norm)) log::warn("{}: step {}: non-finite gradient norm, step skipped", stage_, step + 1);
    } else {
      log::warn("{}: step {}: no completion tokens in the batch, step skipped", stage_, step + 1);
    }
    if (world.distributed()) {
      const auto sums = world.sum({div_sum, ce_sum, balance, static_cast<double>(batch.tokens), gen_seconds});
      div_sum = sums[0], ce_sum = sums[1], balance = sums[2];
      gen_seconds = sums[4] / static_cast<double>(world.size());
      batch_tokens = static_cast<int64_t>(sums[3]);
    } else {
      batch_tokens = batch.tokens;
    }
    const double div_mean = n_tokens > 0 ? div_sum / static_cast<double>(n_tokens) : 0.0;
    const double ce_mean = n_tokens > 0 ? ce_sum / static_cast<double>(n_tokens) : 0.0;
    ++step;
    const double dt = seconds_since(t0);
    const double loss_value = div_mean + cfg_.ce_weight * ce_mean + balance;
    std::vector<Metric> metrics = {{"stage", stage_},
                                   {"loss", loss_value},
                                   {"divergence", div_mean},
                                   {"on_policy", on_policy ? 1 : 0},
                                   {"lr", lr},
                                   {"grad_norm", grad_norm},
                                   {"tokens", batch_tokens},
                                   {"completion_tokens", n_tokens},
                                   {"tokens_per_s", static_cast<double>(batch_tokens) / dt},
                                   {"step_seconds", dt}};
    if (cfg_.ce_weight > 0 && !on_policy) metrics.emplace_back("ce", ce_mean);
    if (on_policy) metrics.emplace_back("gen_seconds", gen_seconds);
    if (balance != 0) metrics.emplace_back("balance_loss", balance);
    result.last_loss = loss_value;
    const bool last = step == cfg_.steps;
    if (eval && (last || (cfg_.eval_every > 0 && step % cfg_.eval_every == 0))) {
      const auto gen_for_eval = dp.generation();  // sharded: a gathered student, or paired forwards
      for (auto& m : eval(step)) metrics.push_back(std::move(m));
    }
    run_.metrics().write(step, metrics);
    progress.update(step, grpo::format("{} {:.4f} lr {:.2e}", on_policy ? "on " : "off", div_mean, lr));
    if (last || (cfg_.checkpoint.every_steps > 0 && step % cfg_.checkpoint.every_steps == 0)) save(step);
  }
  student_->eval();
  result.steps = step;
  result.seconds = seconds_since(t_start);
  return result;
}

}  // namespace grpo::train
