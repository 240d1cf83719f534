#include "grpo/train/grpo_trainer.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <stdexcept>

#include "autocast.h"
#include "grpo/core/format.h"
#include "grpo/core/log.h"
#include "grpo/core/progress.h"
#include "grpo/core/random.h"
#include "grpo/data/dataset.h"
#include "grpo/model/checkpoint.h"
#include "grpo/train/evaluate.h"

namespace grpo::train {

namespace {

// One prompt's group: its record, prompt and G completions with their scores.
struct Group {
  int64_t record = 0;
  std::string prompt_text;
  std::vector<int64_t> prompt_ids;
  std::vector<rollout::Completion> completions;       // G
  std::vector<double> totals;                         // G weighted rewards
  std::vector<std::vector<std::optional<double>>> scores;  // [F][G]
};

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

double std_of(const std::vector<double>& v) {
  if (v.size() < 2) return 0.0;
  const double m = mean_of(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size()));
}

}  // namespace

std::string GrpoConfig::validate() const {
  if (generation.num_generations < 2) {
    return "generation.num_generations must be >= 2: group-normalised advantages need a group (found " +
           std::to_string(generation.num_generations) + ")";
  }
  if (generation.speculative_mtp) return "generation.speculative_mtp is greedy only; GRPO samples";
  if (auto problem = warmup_problem(schedule, steps * num_iterations, "optimizer steps"); !problem.empty()) {
    return problem;
  }
  if (std::abs(loss.temperature - generation.sampling.temperature) > 1e-12) {
    return "loss.temperature (" + config::double_to_text(loss.temperature) +
           ") must equal generation.sampling.temperature (" + config::double_to_text(generation.sampling.temperature) +
           "): the ratio compares log-probs of the same distribution";
  }
  return "";
}

model::CausalLM frozen_copy(model::CausalLM& model) {
  const auto opts = torch::TensorOptions().dtype(model->embed_tokens.scalar_type()).device(model->embed_tokens.device());
  model::CausalLM copy(model->config(), opts);
  torch::NoGradGuard no_grad;
  auto src = model->named_parameters(), dst = copy->named_parameters();
  for (const auto& item : src) dst[item.key()].copy_(item.value());
  auto src_b = model->named_buffers(), dst_b = copy->named_buffers();
  for (const auto& item : src_b) dst_b[item.key()].copy_(item.value());
  for (auto& t : copy->parameters()) t.set_requires_grad(false);
  copy->eval();
  return copy;
}

GrpoTrainer::GrpoTrainer(model::CausalLM model, const data::Tokenizer& tokenizer, data::PromptConfig prompt,
                         GrpoConfig cfg, const rewards::RewardSet& rewards, Run& run, std::string stage)
    : model_(std::move(model)), tokenizer_(tokenizer), prompt_(std::move(prompt)), cfg_(std::move(cfg)),
      rewards_(rewards), run_(run), stage_(std::move(stage)) {
  if (const auto problem = cfg_.validate(); !problem.empty()) throw std::invalid_argument("grpo: " + problem);
  if (const auto problem = cfg_.loss.validate(); !problem.empty()) throw std::invalid_argument("grpo.loss: " + problem);
}

std::string GrpoTrainer::checkpoint_dir() const { return run_.path("checkpoints/" + stage_); }

GrpoResult GrpoTrainer::train(const std::vector<data::Record>& records, const EvalFn& eval, bool resume) {
  const auto t_start = std::chrono::steady_clock::now();
  if (records.empty()) throw std::runtime_error(stage_ + ": no prompts");
  const auto device = model_->embed_tokens.device();
  const bool autocast = cfg_.bf16_autocast && device.is_cuda();
  const bool has_moe = !model_->moe_layers().empty();
  const bool has_mtp = model_->config().num_nextn_predict_layers > 0 && cfg_.mtp_weight > 0;
  const int64_t G = cfg_.generation.num_generations;
  const int64_t total_opt_steps = cfg_.steps * cfg_.num_iterations;
  const uint64_t seed = static_cast<uint64_t>(run_.config().seed + cfg_.seed_offset);
  const auto& labels = rewards_.labels();
  const auto acc_it = std::find(labels.begin(), labels.end(), cfg_.accuracy_reward);
  // The accuracy reward's index; labels.size() when it is not one of the functions.
  const size_t acc_index = static_cast<size_t>(acc_it - labels.begin());

  auto optimizer = make_optimizer(*model_, cfg_.optim);
  // The reference policy (beta > 0): the policy at the start of the stage or at the last refresh,
  // also saved under checkpoints/<stage>/reference so that a resumed run gets it back.
  std::optional<model::CausalLM> ref;
  const std::string ref_dir = checkpoint_dir() + "/reference";
  auto set_reference = [&]() {
    ref = frozen_copy(model_);
    model::save_hf_checkpoint(*ref, ref_dir);
  };

  data::DataOrderConfig order_cfg;
  order_cfg.batch_size = 1;
  data::DataOrder order(static_cast<int64_t>(records.size()), order_cfg, seed);
  int64_t step = 0;
  if (const auto st = resume ? resume_latest(checkpoint_dir(), model_, optimizer.get(), stage_) : std::nullopt) {
    step = st->step;
    order.restore(data::DataOrderState::from_json(st->values.at("data_order")));
    if (cfg_.loss.beta > 0) {
      model::LoadOptions lo;
      lo.dtype = model_->embed_tokens.scalar_type();
      lo.device = device;
      auto saved = model::load_hf_checkpoint(ref_dir, lo);
      ref = frozen_copy(saved);
    }
  }
  if (cfg_.loss.beta > 0 && !ref) set_reference();
  auto save = [&](int64_t at) {
    TrainState st;
    st.values["data_order"] = order.state().to_json();
    save_stage_checkpoint(checkpoint_dir(), at, model_, optimizer.get(), st, cfg_.checkpoint, stage_);
  };

  std::ofstream completions_log(run_.path("completions.jsonl"), std::ios::app);
  Progress progress(stage_, cfg_.steps, run_.config().progress_interval_s);
  GrpoResult result;

  while (step < cfg_.steps) {
    const auto t_step = std::chrono::steady_clock::now();
    // ---- Rollouts (+ dynamic sampling) ------------------------------------------------------
    model_->eval();
    std::vector<Group> groups;
    int64_t generated_groups = 0, zero_std_groups = 0, gen_tokens = 0;
    double gen_seconds = 0, reward_seconds = 0;
    for (int64_t round = 0; static_cast<int64_t>(groups.size()) < cfg_.prompts_per_step; ++round) {
      const int64_t need = cfg_.prompts_per_step - static_cast<int64_t>(groups.size());
      std::vector<Group> fresh(static_cast<size_t>(need));
      std::vector<rollout::GenerationRequest> reqs;
      for (auto& g : fresh) {
        g.record = order.next_batch().front();
        const auto& rec = records[static_cast<size_t>(g.record)];
        g.prompt_text = data::format_prompt(prompt_, rec);
        g.prompt_ids = tokenizer_.encode(g.prompt_text, prompt_.add_special_tokens);
        rollout::GenerationRequest r;
        r.prompt_ids = g.prompt_ids;
        r.seed = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(step) * 1000003ULL + static_cast<uint64_t>(round)) ^
                            static_cast<uint64_t>(g.record));
        reqs.push_back(std::move(r));
      }
      const auto tg = std::chrono::steady_clock::now();
      rollout::Engine engine(model_, &tokenizer_, cfg_.generation);
      rollout::GenerationStats gstats;
      auto completions = engine.generate(reqs, &gstats);
      gen_seconds += seconds_since(tg);
      gen_tokens += gstats.generated_tokens;

      std::vector<rewards::Sample> samples;
      for (size_t p = 0; p < fresh.size(); ++p) {
        for (int64_t g = 0; g < G; ++g) {
          const auto& c = completions[p * static_cast<size_t>(G) + static_cast<size_t>(g)];
          samples.push_back(reward_sample(fresh[p].prompt_text, c, records[static_cast<size_t>(fresh[p].record)]));
        }
      }
      const auto tr = std::chrono::steady_clock::now();
      const auto scored = rewards_.score(samples);
      reward_seconds += seconds_since(tr);
      const bool last_round = round >= cfg_.max_refill_rounds;
      for (size_t p = 0; p < fresh.size(); ++p) {
        auto& grp = fresh[p];
        grp.scores.assign(labels.size(), {});
        for (int64_t g = 0; g < G; ++g) {
          const size_t i = p * static_cast<size_t>(G) + static_cast<size_t>(g);
          grp.completions.push_back(std::move(completions[i]));
          grp.totals.push_back(scored.total[i]);
          for (size_t f = 0; f < labels.size(); ++f) grp.scores[f].push_back(scored.scores[f][i]);
        }
        ++generated_groups;
        const bool flat = std::all_of(grp.totals.begin(), grp.totals.end(),
                                      [&](double x) { return x == grp.totals.front(); });
        zero_std_groups += flat;
        if (flat && cfg_.dynamic_sampling && !last_round) continue;  // resampled with a new prompt
        if (static_cast<int64_t>(groups.size()) < cfg_.prompts_per_step) groups.push_back(std::move(grp));
      }
      if (!cfg_.dynamic_sampling) break;
    }

    // ---- The training batch --------------------------------------------------------------
    const int64_t n = static_cast<int64_t>(groups.size()) * G;
    int64_t plen = 1, clen = 1;
    for (const auto& g : groups) {
      plen = std::max<int64_t>(plen, static_cast<int64_t>(g.prompt_ids.size()));
      for (const auto& c : g.completions) clen = std::max<int64_t>(clen, static_cast<int64_t>(c.token_ids.size()));
    }
    auto ids = torch::zeros({n, plen + clen}, torch::kLong);
    auto mask = torch::zeros({n, plen + clen}, torch::kLong);
    auto cmask = torch::zeros({n, clen}, torch::kFloat);
    auto old = torch::zeros({n, clen}, torch::kFloat);
    std::vector<double> totals, lengths;
    int64_t truncated = 0;
    {
      auto a_ids = ids.accessor<int64_t, 2>();
      auto a_mask = mask.accessor<int64_t, 2>();
      auto a_cm = cmask.accessor<float, 2>();
      auto a_old = old.accessor<float, 2>();
      int64_t row = 0;
      for (const auto& g : groups) {
        const int64_t pl = static_cast<int64_t>(g.prompt_ids.size());
        for (size_t k = 0; k < g.completions.size(); ++k, ++row) {
          const auto& c = g.completions[k];
          for (int64_t j = 0; j < pl; ++j) {
            a_ids[row][plen - pl + j] = g.prompt_ids[static_cast<size_t>(j)];
            a_mask[row][plen - pl + j] = 1;
          }
          const bool cut = c.finish_reason == rollout::FinishReason::length;
          truncated += cut;
          const float w = (cut && cfg_.mask_truncated_completions) ? 0.0f : 1.0f;
          for (size_t j = 0; j < c.token_ids.size(); ++j) {
            a_ids[row][plen + static_cast<int64_t>(j)] = c.token_ids[j];
            a_mask[row][plen + static_cast<int64_t>(j)] = 1;
            a_cm[row][static_cast<int64_t>(j)] = w;
            a_old[row][static_cast<int64_t>(j)] = c.logprobs[j];
          }
          totals.push_back(g.totals[k]);
          lengths.push_back(static_cast<double>(c.token_ids.size()));
        }
      }
    }
    const auto positions = (mask.cumsum(1) - 1).clamp_min(0);
    const auto rewards_t = torch::tensor(totals, torch::kFloat);
    const auto advantages = compute_advantages(rewards_t, G, cfg_.loss.scale_rewards);
    const double tokens_total = cmask.sum().item<double>();
    torch::Tensor ref_logps;
    if (ref) {
      torch::NoGradGuard no_grad;
      std::vector<torch::Tensor> parts;
      for (int64_t b = 0; b < n; b += cfg_.micro_batch_size) {
        const int64_t m = std::min(cfg_.micro_batch_size, n - b);
        AutocastScope ac(autocast);
        parts.push_back(completion_logprobs(*ref, ids.narrow(0, b, m).to(device), mask.narrow(0, b, m).to(device),
                                            positions.narrow(0, b, m).to(device), clen, cfg_.loss.temperature,
                                            cfg_.logprob_chunk_size)
                            .to(torch::kCPU));
      }
      ref_logps = torch::cat(parts);
    }

    // ---- Optimizer steps -----------------------------------------------------------------
    model_->train();
    model_->activation_checkpointing = cfg_.activation_checkpointing;
    const auto tt = std::chrono::steady_clock::now();
    double loss_sum = 0, kl_sum = 0, clip_low = 0, clip_high = 0, clip_region = 0, grad_norm = 0, lr = 0;
    double sampler_diff_sum = 0, sampler_diff_max = 0;
    int64_t loss_terms = 0;
    for (int64_t it = 0; it < cfg_.num_iterations; ++it) {
      const int64_t opt_step = step * cfg_.num_iterations + it;
      lr = lr_at(cfg_.schedule, cfg_.optim.lr, opt_step, total_opt_steps);
      set_learning_rate(*optimizer, lr);
      optimizer->zero_grad();
      for (int64_t b = 0; b < n; b += cfg_.micro_batch_size) {
        const int64_t m = std::min(cfg_.micro_batch_size, n - b);
        AutocastScope ac(autocast);
        GrpoLossInputs in;
        const auto mb_ids = ids.narrow(0, b, m).to(device);
        const auto mb_mask = mask.narrow(0, b, m).to(device);
        in.logps = completion_logprobs(model_, mb_ids, mb_mask, positions.narrow(0, b, m).to(device), clen,
                                       cfg_.loss.temperature, cfg_.logprob_chunk_size);
        if (cfg_.num_iterations > 1) in.old_logps = old.narrow(0, b, m).to(device);
        if (it == 0) {  // the trainer's log-probs against the sampler's, before any update
          torch::NoGradGuard no_grad;
          const auto diff = (in.logps.detach().to(torch::kCPU) - old.narrow(0, b, m)).abs() * cmask.narrow(0, b, m);
          sampler_diff_sum += diff.sum().item<double>();
          sampler_diff_max = std::max(sampler_diff_max, diff.max().item<double>());
        }
        if (ref) in.ref_logps = ref_logps.narrow(0, b, m).to(device);
        in.advantages = advantages.narrow(0, b, m).to(device);
        in.completion_mask = cmask.narrow(0, b, m).to(device);
        in.num_items_in_batch = tokens_total;
        const auto out = grpo_loss(in, cfg_.loss);
        // Normalise over the whole step batch (see the header).
        const double rows_share = static_cast<double>(m) / static_cast<double>(n);
        const double token_share = cmask.narrow(0, b, m).sum().item<double>() / std::max(tokens_total, 1.0);
        double scale = 1.0;
        switch (cfg_.loss.loss_type) {
          case LossType::grpo:
          case LossType::dr_grpo: scale = rows_share; break;
          case LossType::bnpo: scale = token_share; break;
          case LossType::dapo: scale = 1.0; break;
        }
        auto loss = out.loss * scale;
        if (has_mtp) {
          model::ForwardOptions fo;
          fo.mtp = true;
          const auto full = model_->forward(mb_ids, positions.narrow(0, b, m).to(device), mb_mask, nullptr, fo);
          auto lm = torch::zeros_like(mb_mask);
          lm.narrow(1, plen, clen).copy_(cmask.narrow(0, b, m).to(device).to(torch::kLong));
          loss = loss + model::mtp_loss(full, mb_ids, lm, cfg_.mtp_weight) * rows_share;
        }
        loss.backward();
        loss_sum += loss.item<double>();
        kl_sum += out.kl * rows_share;
        clip_low += out.clip_ratio_low_mean * rows_share;
        clip_high += out.clip_ratio_high_mean * rows_share;
        clip_region += out.clip_ratio_region_mean * rows_share;
        ++loss_terms;
      }
      grad_norm = clip_gradients(*model_, cfg_.optim.max_grad_norm);
      if (std::isfinite(grad_norm)) {
        optimizer->step();
      } else {
        log::warn("{}: step {}: non-finite gradient norm, optimizer step skipped", stage_, step + 1);
      }
      if (has_moe && cfg_.router_bias_gamma > 0) model_->update_router_biases(cfg_.router_bias_gamma);
    }
    const double train_seconds = seconds_since(tt);
    ++step;
    if (ref && cfg_.ref_refresh_steps > 0 && step % cfg_.ref_refresh_steps == 0) {
      set_reference();
      log::info("{}: step {}: reference policy refreshed", stage_, step);
    }

    // ---- Metrics and samples -------------------------------------------------------------
    std::vector<Metric> metrics = {{"stage", stage_},
                                   {"loss", loss_sum / static_cast<double>(cfg_.num_iterations)},
                                   {"reward", mean_of(totals)},
                                   {"reward_std", std_of(totals)},
                                   {"kl", kl_sum / static_cast<double>(cfg_.num_iterations)},
                                   {"clip_ratio_low", clip_low / static_cast<double>(cfg_.num_iterations)},
                                   {"clip_ratio_high", clip_high / static_cast<double>(cfg_.num_iterations)},
                                   {"clip_ratio_region", clip_region / static_cast<double>(cfg_.num_iterations)},
                                   {"entropy", tokens_total > 0 ? -(old * cmask).sum().item<double>() / tokens_total : 0.0},
                                   {"logprob_diff_mean", sampler_diff_sum / std::max(tokens_total, 1.0)},
                                   {"logprob_diff_max", sampler_diff_max},
                                   {"completion_length", mean_of(lengths)},
                                   {"completion_length_max", *std::max_element(lengths.begin(), lengths.end())},
                                   {"truncated_fraction", static_cast<double>(truncated) / static_cast<double>(n)},
                                   {"zero_std_fraction",
                                    static_cast<double>(zero_std_groups) / static_cast<double>(generated_groups)},
                                   {"generated_groups", generated_groups},
                                   {"lr", lr},
                                   {"grad_norm", grad_norm},
                                   {"gen_tokens_per_s", static_cast<double>(gen_tokens) / std::max(gen_seconds, 1e-9)},
                                   {"train_tokens_per_s",
                                    static_cast<double>(cfg_.num_iterations) * mask.sum().item<double>() /
                                        std::max(train_seconds, 1e-9)},
                                   {"gen_seconds", gen_seconds},
                                   {"reward_seconds", reward_seconds},
                                   {"train_seconds", train_seconds}};
    for (size_t f = 0; f < labels.size(); ++f) {
      std::vector<double> present;
      for (const auto& g : groups) {
        for (const auto& s : g.scores[f]) {
          if (s) present.push_back(*s);
        }
      }
      if (!present.empty()) {
        metrics.emplace_back("rewards/" + labels[f] + "/mean", mean_of(present));
        metrics.emplace_back("rewards/" + labels[f] + "/std", std_of(present));
      }
      if (acc_index == f && !present.empty()) metrics.emplace_back("accuracy", mean_of(present));
    }
    for (int64_t k = 0; k < std::min<int64_t>(cfg_.log_completions, n); ++k) {
      const auto& g = groups[static_cast<size_t>(k % static_cast<int64_t>(groups.size()))];
      const auto& c = g.completions[static_cast<size_t>(k / static_cast<int64_t>(groups.size())) % g.completions.size()];
      const double r = g.totals[static_cast<size_t>(k / static_cast<int64_t>(groups.size())) % g.totals.size()];
      log::debug("{} step {}: reward {:.3f}: {}", stage_, step, r, c.text);
      nlohmann::json j = {{"step", step},
                          {"prompt", records[static_cast<size_t>(g.record)].prompt},
                          {"answer", records[static_cast<size_t>(g.record)].answer},
                          {"completion", c.text},
                          {"reward", r},
                          {"finish_reason", std::string(rollout::finish_reason_name(c.finish_reason))}};
      completions_log << j.dump() << "\n";
    }
    completions_log.flush();
    result.last_reward = mean_of(totals);
    const bool last = step == cfg_.steps;
    if (eval && (last || (cfg_.eval_every > 0 && step % cfg_.eval_every == 0))) {
      for (auto& m : eval(step)) metrics.push_back(std::move(m));
    }
    metrics.emplace_back("step_seconds", seconds_since(t_step));
    run_.metrics().write(step, metrics);
    progress.update(step, grpo::format("reward {:.3f} len {:.0f} kl {:.4f}", mean_of(totals), mean_of(lengths),
                                       kl_sum / static_cast<double>(cfg_.num_iterations)));
    if (last || (cfg_.checkpoint.every_steps > 0 && step % cfg_.checkpoint.every_steps == 0)) save(step);
  }
  model_->eval();
  result.steps = step;
  result.seconds = seconds_since(t_start);
  return result;
}

}  // namespace grpo::train
