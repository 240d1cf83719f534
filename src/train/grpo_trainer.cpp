#include "grpo/train/grpo_trainer.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <stdexcept>
#include <thread>

#include "autocast.h"
#include "grpo/core/format.h"
#include "grpo/core/log.h"
#include "grpo/core/progress.h"
#include "grpo/core/random.h"
#include "grpo/model/checkpoint.h"
#include "grpo/model/invariant_ops.h"
#include "grpo/model/routing_record.h"
#include "grpo/train/disaggregated.h"

namespace grpo::train {

namespace {

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

bool all_equal(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [&](double x) { return x == v.front(); });
}

// Puts the intra-op thread count back as it was (one-step-off splits the cores).
struct ThreadsRestore {
  int saved = at::get_num_threads();
  ~ThreadsRestore() { at::set_num_threads(saved); }
};

// Puts the model's attention form back as it was (consistent mode switches it for the stage).
struct ImplRestore {
  model::CausalLM model;
  model::AttentionImpl saved;
  explicit ImplRestore(model::CausalLM m) : model(std::move(m)), saved(model->config().attention_impl) {}
  ~ImplRestore() { model->set_attention_impl(saved); }
  ImplRestore(const ImplRestore&) = delete;
  ImplRestore& operator=(const ImplRestore&) = delete;
};

}  // namespace

std::string GrpoConfig::validate() const {
  if (generation.num_generations < 2) {
    return "generation.num_generations must be >= 2: group-normalised advantages need a group (found " +
           std::to_string(generation.num_generations) + ")";
  }
  if (generation.speculative_mtp) return "generation.speculative_mtp is greedy only; GRPO samples";
  if (generation.sampling.greedy()) {
    return "generation.sampling.temperature must be > 0: GRPO samples, and its log-probs use that temperature";
  }
  if (auto problem = warmup_problem(schedule, steps * num_iterations, "optimizer steps"); !problem.empty()) {
    return problem;
  }
  if (bf16_cpu && !bf16_autocast) return "bf16_cpu needs bf16_autocast (found bf16_autocast: false)";
  if (async.partial_after_tokens > 0 && async.mode != AsyncMode::disaggregated) {
    return "async.partial_after_tokens needs async.mode: disaggregated";
  }
  return "";
}

model::CausalLM frozen_copy(model::CausalLM& model) {
  const auto opts =
      torch::TensorOptions().dtype(model->embed_tokens.scalar_type()).device(model->embed_tokens.device());
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

StepRollouts sample_step(const Generator& generate, const data::Tokenizer& tokenizer, const data::PromptConfig& prompt,
                         const std::vector<data::Record>& records, data::DataOrder& order, const GrpoConfig& cfg,
                         const rewards::RewardSet& rewards, uint64_t seed, int64_t step, dist::World* world) {
  StepRollouts out;
  const int64_t rank = world != nullptr ? world->rank() : 0, ranks = world != nullptr ? world->size() : 1;
  int64_t kept = 0;  // groups kept so far, over all ranks
  for (int64_t round = 0; kept < cfg.prompts_per_step; ++round) {
    std::vector<RolloutRequest> requests(static_cast<size_t>(cfg.prompts_per_step - kept));
    for (auto& r : requests) {
      r.record = order.next_batch().front();
      r.seed = derive_seed(seed, static_cast<uint64_t>(step), static_cast<uint64_t>(round),
                           static_cast<uint64_t>(r.record));
    }
    const auto [begin, end] = dist::share(static_cast<int64_t>(requests.size()), rank, ranks);
    const std::vector<RolloutRequest> mine(requests.begin() + begin, requests.begin() + end);
    // A rank without prompts this round still calls the generator: paired forwards (the sharded
    // generation layout) need every rank's generate() call.
    if (mine.empty()) generate({}, nullptr);
    auto scored = mine.empty() ? ScoredRollouts{} : sample_scored(generate, tokenizer, prompt, records, mine, &rewards);
    out.generated_tokens += scored.generated_tokens;
    out.generation_seconds += scored.generation_seconds;
    out.reward_seconds += scored.reward_seconds;
    const bool last_round = !cfg.dynamic_sampling || round >= cfg.max_refill_rounds;
    // Which of the round's groups were flat, agreed over ranks (each fills its share).
    std::vector<double> flat(requests.size(), 0.0);
    for (size_t g = 0; g < scored.groups.size(); ++g)
      flat[static_cast<size_t>(begin) + g] = all_equal(scored.groups[g].totals);
    if (world != nullptr && world->distributed()) flat = world->sum(std::move(flat));
    for (size_t g = 0; g < requests.size(); ++g) {
      ++out.generated_groups;
      out.zero_std_groups += flat[g] != 0;
      if (flat[g] == 0 || last_round) ++kept;
    }
    for (size_t g = 0; g < scored.groups.size(); ++g) {
      if (flat[static_cast<size_t>(begin) + g] != 0 && !last_round) continue;  // resampled with a new prompt
      out.groups.push_back(std::move(scored.groups[g]));
    }
    if (!mine.empty()) rewards::append_scores(out.scores, std::move(scored.scores));
  }
  return out;
}

torch::Tensor batch_logprobs(model::CausalLM& model, const GrpoBatch& batch, int64_t micro_batch, double temperature,
                             int64_t chunk_size, bool autocast) {
  torch::NoGradGuard no_grad;
  const auto device = model->embed_tokens.device();
  std::vector<torch::Tensor> parts;
  for (int64_t b = 0; b < batch.size(); b += micro_batch) {
    const auto mb = batch.rows(b, std::min(micro_batch, batch.size() - b));
    AutocastScope ac(autocast, device.type());
    parts.push_back(completion_logprobs(model, mb.input_ids.to(device), mb.attention_mask.to(device),
                                        mb.position_ids.to(device), batch.completion_length(), temperature, chunk_size)
                        .to(torch::kCPU));
  }
  return torch::cat(parts);
}

GrpoStepStats::Values GrpoStepStats::read(dist::World* world) const {
  auto all = torch::stack({loss, kl, clip_low, clip_high, clip_region, mtp_loss, balance_loss, sampler_diff_sum,
                           seq_ratio_sum, tokens_over_1e3, tokens_over_1e1, weight_sum, weight_count, routing_diff,
                           routing_count})
                 .to(torch::kCPU, torch::kDouble);
  // Maxima (the minimum as the max of its negation).
  auto most = torch::stack({sampler_diff_max, seq_ratio_max, weight_max, -weight_min}).to(torch::kCPU, torch::kDouble);
  if (world != nullptr && world->distributed()) {
    world->all_reduce(all);
    world->all_reduce(most, dist::ReduceOp::max);
  }
  const auto* x = all.data_ptr<double>();
  const auto* m = most.data_ptr<double>();
  return {x[0], x[1], x[2],  x[3],  x[4],  x[5],  x[6], x[7],  m[0], x[8],
          m[1], x[9], x[10], x[11], x[12], -m[3], m[2], x[13], x[14]};
}

bool GrpoTrainer::autocast_training(const torch::Device& device) const {
  return cfg_.bf16_autocast && (device.is_cuda() || (device.is_cpu() && cfg_.bf16_cpu && !cfg_.consistent_logprobs));
}

GrpoTrainer::GrpoTrainer(model::CausalLM model, const data::Tokenizer& tokenizer, data::PromptConfig prompt,
                         GrpoConfig cfg, const rewards::RewardSet& rewards, Run& run, std::string stage)
    : model_(std::move(model)),
      tokenizer_(tokenizer),
      prompt_(std::move(prompt)),
      cfg_(std::move(cfg)),
      rewards_(rewards),
      run_(run),
      stage_(std::move(stage)) {
  if (const auto problem = cfg_.validate(); !problem.empty()) throw std::invalid_argument(stage_ + ": " + problem);
  if (const auto problem = cfg_.loss.validate(); !problem.empty()) {
    throw std::invalid_argument(stage_ + ".loss: " + problem);
  }
  if (!cfg_.accuracy_reward.empty()) {
    accuracy_index_ = reward_index(rewards_.labels(), cfg_.accuracy_reward, stage_ + ".accuracy_reward");
  }
}

std::string GrpoTrainer::checkpoint_dir() const { return run_.path("checkpoints/" + stage_); }

namespace {

// Advantages of this rank's rows [N] (none: [0]); batch-level scaling takes the std of every rank's
// rewards (the groups themselves never span ranks, so the centring stays local).
torch::Tensor step_advantages(const torch::Tensor& rewards, int64_t group_size, RewardScaling scaling,
                              dist::World& world) {
  if (!world.distributed() || scaling != RewardScaling::batch) {
    return compute_advantages(rewards, group_size, scaling);
  }
  const auto local = rewards.to(torch::kDouble).contiguous();
  const auto parts = world.all_gather(
      std::vector<double>(local.data_ptr<double>(), local.data_ptr<double>() + local.numel()));
  std::vector<double> all;
  int64_t offset = 0;
  for (int64_t r = 0; r < world.size(); ++r) {
    if (r == world.rank()) offset = static_cast<int64_t>(all.size());
    all.insert(all.end(), parts[static_cast<size_t>(r)].begin(), parts[static_cast<size_t>(r)].end());
  }
  const auto global = torch::tensor(all, torch::kDouble).to(rewards.scalar_type());
  return compute_advantages(global, group_size, scaling).narrow(0, offset, rewards.size(0)).clone();
}

}  // namespace

GrpoStepStats GrpoTrainer::optimise(const GrpoBatch& batch, dist::DataParallel& dp, int64_t step) {
  const auto t0 = std::chrono::steady_clock::now();
  auto& world = dp.world();
  const auto device = model_->embed_tokens.device();
  const bool autocast = autocast_training(device);
  const bool has_mtp = model_->config().num_nextn_predict_layers > 0 && cfg_.mtp_weight > 0;
  const bool has_rows = batch.input_ids.defined() && batch.size() > 0;
  const int64_t n = has_rows ? batch.size() : 0;
  const int64_t L = has_rows ? batch.completion_length() : 0, P = has_rows ? batch.input_ids.size(1) - L : 0;
  const double temperature = cfg_.generation.sampling.temperature;
  // The whole step's normalisers: rows and completion tokens over every rank.
  const auto totals = world.sum({static_cast<double>(n), has_rows ? batch.completion_tokens() : 0.0});
  const double rows = totals[0], tokens = totals[1];
  // Every rank takes part in batch-level scaling's gather, also one without rows.
  const auto advantages = step_advantages(has_rows ? batch.rewards : torch::zeros({0}, torch::kFloat),
                                          has_rows ? batch.group_size : cfg_.generation.num_generations,
                                          cfg_.loss.scale_rewards, world);
  model_->train();
  model_->activation_checkpointing = cfg_.activation_checkpointing;

  GrpoStepStats s;
  // The metrics accumulate on the model's device, without a sync; log_step reads them back once.
  const auto zero = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat).device(device));
  s.loss = s.kl = s.clip_low = s.clip_high = s.clip_region = s.mtp_loss = s.balance_loss = zero;
  s.sampler_diff_sum = s.sampler_diff_max = zero;
  s.seq_ratio_sum = s.seq_ratio_max = s.tokens_over_1e3 = s.tokens_over_1e1 = zero;
  s.weight_sum = s.weight_count = s.weight_max = zero;
  s.weight_min = torch::full({}, std::numeric_limits<float>::infinity(), zero.options());
  s.routing_diff = s.routing_count = zero;
  // Router replay / record: a tape on the decoder's MoE layers for the phase.
  const bool routed = has_rows && batch.routing.defined() && cfg_.router_replay != RouterReplay::off;
  std::optional<model::RoutingRecord::Installed> tape;
  if (routed) tape.emplace(model_);
  const bool corrected = cfg_.loss.sampler_correction != SamplerCorrection::none;
  // Sampler correction over several iterations: the old log-probs are the trainer's own before the
  // first update (TRL's old_per_token_logps), one tensor per micro-batch.
  std::vector<torch::Tensor> first_logps;
  const double per_iteration = 1.0 / static_cast<double>(cfg_.num_iterations);
  const double per_token = tokens > 0 ? per_iteration / tokens : 0.0;  // token-weighted means
  for (int64_t it = 0; it < cfg_.num_iterations; ++it) {
    const int64_t opt_step = step * cfg_.num_iterations + it;
    s.lr = lr_at(cfg_.schedule, cfg_.optim.lr, opt_step, cfg_.steps * cfg_.num_iterations);
    dp.begin_step(s.lr);
    // Sharded or split: every rank runs as many micro-batches as the rank with the most, the
    // missing ones (after its own) as a stand-in (one token, loss 0, router loads not counted).
    const int64_t mine = (n + cfg_.micro_batch_size - 1) / cfg_.micro_batch_size;
    int64_t passes = mine;
    if (dp.lockstep()) {
      auto most = torch::tensor({static_cast<double>(mine)}, torch::kDouble);
      world.all_reduce(most, dist::ReduceOp::max);
      passes = static_cast<int64_t>(most.item<double>());
    }
    for (int64_t b = 0; b < n; b += cfg_.micro_batch_size) {
      const int64_t m = std::min(cfg_.micro_batch_size, n - b);
      const auto mb = batch.rows(b, m);
      const auto ids = mb.input_ids.to(device), cmask = mb.completion_mask.to(device);
      AutocastScope ac(autocast, device.type());
      torch::Tensor recorded;  // [m, P + L, M, K]
      if (routed) {
        recorded = mb.routing.to(device);
        if (cfg_.router_replay == RouterReplay::rollout) {
          std::vector<torch::Tensor> per_layer;
          for (int64_t l = 0; l < recorded.size(2); ++l) {
            per_layer.push_back(recorded.select(2, l).reshape({-1, recorded.size(3)}));
          }
          tape->tape->set_replay(std::move(per_layer));
        }
      }
      const auto f = completion_forward(
          model_, ids, mb.attention_mask.to(device), mb.position_ids.to(device), L,
          {.temperature = temperature, .chunk_size = cfg_.logprob_chunk_size, .mtp = has_mtp});
      if (routed) {  // the experts this forward used against the sampler's, as sets (every iteration)
        torch::NoGradGuard no_grad;
        for (int64_t l = 0; l < recorded.size(2); ++l) {
          const auto want = recorded.select(2, l);  // [m, P + L, K]
          const auto used = tape->tape->last(l).view(want.sizes()).to(torch::kLong);
          const auto valid = want.select(2, 0) >= 0;  // [m, P + L]
          const auto differ = std::get<0>(want.sort(-1)).ne(std::get<0>(used.sort(-1))).any(-1) & valid;
          s.routing_diff = s.routing_diff + differ.sum().to(torch::kFloat);
          s.routing_count = s.routing_count + valid.sum().to(torch::kFloat);
        }
      }
      if (tape) tape->tape->clear_replay();
      GrpoLossInputs in{.logps = f.logps,
                        .advantages = advantages.narrow(0, b, m).to(device),
                        .completion_mask = cmask,
                        .rows_in_batch = rows,
                        .tokens_in_batch = tokens};
      const size_t mb_index = static_cast<size_t>(b / cfg_.micro_batch_size);
      if (corrected) {
        in.sampler_logps = mb.sampler_logps.to(device);
        if (it > 0) in.old_logps = first_logps.at(mb_index);
      } else if (cfg_.num_iterations > 1 || batch.staleness > 0) {
        // An older policy sampled (another iteration, or an asynchronous batch): the ratio is
        // against the sampler's log-probs.
        in.old_logps = mb.sampler_logps.to(device);
      }
      if (mb.ref_logps.defined()) in.ref_logps = mb.ref_logps.to(device);
      const auto out = grpo_loss(in, cfg_.loss);
      const double row_share = static_cast<double>(m) / rows;
      const auto balance = f.balance_loss() * row_share;
      auto loss = out.loss + balance;
      torch::Tensor mtp;
      if (has_mtp) {  // the MTP modules predict the completion tokens of the same pass
        auto mtp_mask = torch::zeros_like(ids);
        mtp_mask.narrow(1, P, L).copy_(cmask.to(torch::kLong));
        mtp = model::mtp_loss(f.model, ids, mtp_mask, cfg_.mtp_weight) * row_share;
        loss = loss + mtp;
      }
      if (dp.lockstep()) loss = loss + f.logps.sum() * 0 + dist::DataParallel::graph_anchor(f.model);
      dp.backward(loss, b + cfg_.micro_batch_size >= n && mine == passes);
      torch::NoGradGuard no_grad;
      const auto token_weight = cmask.sum().to(torch::kFloat) * per_token;
      s.loss = s.loss + loss.detach().to(torch::kFloat) * per_iteration;
      s.kl = s.kl + out.kl.to(torch::kFloat) * token_weight;
      s.clip_low = s.clip_low + out.clip_ratio_low_mean.to(torch::kFloat) * token_weight;
      s.clip_high = s.clip_high + out.clip_ratio_high_mean.to(torch::kFloat) * token_weight;
      s.clip_region = s.clip_region + out.clip_ratio_region_mean.to(torch::kFloat) * token_weight;
      s.balance_loss = s.balance_loss + balance.detach().to(torch::kFloat) * per_iteration;
      if (mtp.defined()) s.mtp_loss = s.mtp_loss + mtp.detach().to(torch::kFloat) * per_iteration;
      if (it == 0) {  // the trainer's log-probs against the sampler's, before any update
        const auto signed_diff = (f.logps.detach() - mb.sampler_logps.to(device)) * cmask;
        const auto diff = signed_diff.abs();
        s.sampler_diff_sum = s.sampler_diff_sum + diff.sum().to(torch::kFloat);
        s.sampler_diff_max = torch::maximum(s.sampler_diff_max, diff.max().to(torch::kFloat));
        const auto seq_ratio = signed_diff.to(torch::kDouble).sum(-1).exp().to(torch::kFloat);  // [m]
        s.seq_ratio_sum = s.seq_ratio_sum + seq_ratio.sum();
        s.seq_ratio_max = torch::maximum(s.seq_ratio_max, seq_ratio.max());
        s.tokens_over_1e3 = s.tokens_over_1e3 + (diff > 1e-3).sum().to(torch::kFloat);
        s.tokens_over_1e1 = s.tokens_over_1e1 + (diff > 1e-1).sum().to(torch::kFloat);
        if (corrected) {
          if (cfg_.num_iterations > 1) first_logps.push_back(f.logps.detach());
          const auto count = out.sampler_weight_count.to(torch::kFloat);
          s.weight_sum = s.weight_sum + out.sampler_weight_mean.to(torch::kFloat) * count;
          s.weight_count = s.weight_count + count;
          s.weight_min = torch::minimum(s.weight_min, out.sampler_weight_min.to(torch::kFloat));
          s.weight_max = torch::maximum(s.weight_max, out.sampler_weight_max.to(torch::kFloat));
        }
      }
    }
    for (int64_t k = mine; k < passes; ++k) {
      AutocastScope ac(autocast, device.type());
      const auto ids = torch::zeros({1, 2}, torch::TensorOptions().dtype(torch::kLong).device(device));
      dp.stand_in(
          [&] {
            const auto f = completion_forward(
                model_, ids, torch::ones_like(ids), torch::arange(2, ids.options()).unsqueeze(0), 1,
                {.temperature = temperature, .chunk_size = cfg_.logprob_chunk_size, .mtp = has_mtp});
            return f.logps.sum().to(torch::kFloat) * 0 + dist::DataParallel::graph_anchor(f.model);
          },
          k + 1 == passes);
    }
    s.grad_norm = dp.reduce_gradients(cfg_.optim.max_grad_norm);
    if (!dp.step(s.grad_norm)) {
      log::warn("{}: step {}: non-finite gradient norm, optimizer step skipped", stage_, step + 1);
    }
    if (!model_->moe_layers().empty() && cfg_.router_bias_gamma > 0) dp.update_router_biases(cfg_.router_bias_gamma);
  }
  s.seconds = seconds_since(t0);
  return s;
}

GrpoTrainer::StepSummary GrpoTrainer::log_step(int64_t step, const StepRollouts& rollouts, const GrpoBatch& batch,
                                               const GrpoStepStats& stats, std::vector<Metric> eval_metrics,
                                               double step_seconds, const std::vector<data::Record>& records,
                                               std::ostream& completions_log, dist::World& world) {
  // Everything this rank sampled, then (data parallel) every rank's, in rank order.
  const bool has_rows = batch.input_ids.defined() && batch.size() > 0;
  std::vector<double> totals, lengths = has_rows ? batch.lengths : std::vector<double>{};
  for (const auto& g : rollouts.groups) totals.insert(totals.end(), g.totals.begin(), g.totals.end());
  rewards::RewardScores scores = rollouts.scores;
  const double neg_logp = has_rows ? -(batch.sampler_logps * batch.completion_mask).sum().item<double>() : 0.0;
  const double real_tokens = has_rows ? batch.attention_mask.sum().item<double>() : 0.0;
  auto sums = std::vector<double>{has_rows ? batch.completion_tokens() : 0.0, neg_logp,
                                  static_cast<double>(has_rows ? batch.truncated : 0),
                                  static_cast<double>(rollouts.generated_tokens), real_tokens};
  auto seconds = torch::tensor({rollouts.generation_seconds, rollouts.reward_seconds, stats.seconds}, torch::kDouble);
  if (world.distributed()) {
    sums = world.sum(std::move(sums));
    world.all_reduce(seconds, dist::ReduceOp::max);
    totals = world.all_gather_flat(totals);
    lengths = world.all_gather_flat(lengths);
    const auto texts = world.all_gather_bytes(rollouts.scores.total.empty() ? std::string() : scores_to_text(scores));
    scores = rewards::RewardScores{};
    for (const auto& t : texts) {
      if (!t.empty()) rewards::append_scores(scores, scores_from_text(t));
    }
  }
  const double tokens = sums[0];
  const auto n = static_cast<double>(totals.size());
  const double gen_seconds = seconds[0].item<double>(), reward_seconds = seconds[1].item<double>(),
               train_seconds = seconds[2].item<double>();
  const auto v = stats.read(&world);  // the step's one read-back of its metrics
  std::vector<Metric> metrics = {
      {"stage", stage_},
      {"loss", v.loss},
      {"reward", mean_of(totals)},
      {"reward_std", std_of(totals)},
      {"kl", v.kl},
      {"clip_ratio_low", v.clip_low},
      {"clip_ratio_high", v.clip_high},
      {"clip_ratio_region", v.clip_region},
      {"entropy", tokens > 0 ? sums[1] / tokens : 0.0},
      {"logprob_diff_mean", v.sampler_diff_sum / std::max(tokens, 1.0)},
      {"logprob_diff_max", v.sampler_diff_max},
      // Per sequence: exp(sum over its tokens of trainer - sampler), over every rank's sequences.
      {"seq_ratio_mean", n > 0 ? v.seq_ratio_sum / n : 0.0},
      {"seq_ratio_max", v.seq_ratio_max},
      {"logprob_diff_over_1e-3", v.tokens_over_1e3 / std::max(tokens, 1.0)},
      {"logprob_diff_over_1e-1", v.tokens_over_1e1 / std::max(tokens, 1.0)},
      {"completion_length", mean_of(lengths)},
      {"completion_length_max", lengths.empty() ? 0.0 : *std::max_element(lengths.begin(), lengths.end())},
      {"truncated_fraction", n > 0 ? sums[2] / n : 0.0},
      {"zero_std_fraction",
       static_cast<double>(rollouts.zero_std_groups) / static_cast<double>(rollouts.generated_groups)},
      {"generated_groups", rollouts.generated_groups},
      {"lr", stats.lr},
      {"grad_norm", stats.grad_norm},
      {"gen_tokens_per_s", sums[3] / std::max(gen_seconds, 1e-9)},
      {"train_tokens_per_s", static_cast<double>(cfg_.num_iterations) * sums[4] / std::max(train_seconds, 1e-9)},
      {"gen_seconds", gen_seconds},
      {"reward_seconds", reward_seconds},
      {"train_seconds", train_seconds}};
  if (world.distributed()) metrics.emplace_back("world_size", world.size());
  if (cfg_.mtp_weight > 0 && model_->config().num_nextn_predict_layers > 0) {
    metrics.emplace_back("mtp_loss", v.mtp_loss);
  }
  if (const double balance = v.balance_loss; balance != 0) metrics.emplace_back("balance_loss", balance);
  if (v.routing_count > 0) metrics.emplace_back("routing_diff_fraction", v.routing_diff / v.routing_count);
  if (v.weight_count > 0) {  // the sampler correction's weights (TRL's sampling/importance_sampling_ratio/*)
    metrics.emplace_back("sampler_weight_mean", v.weight_sum / v.weight_count);
    metrics.emplace_back("sampler_weight_min", v.weight_min);
    metrics.emplace_back("sampler_weight_max", v.weight_max);
  }
  // Every reward function's metrics, as the RewardSet reports them over all the step's samples.
  for (const auto& [key, value] : scores.metrics) metrics.emplace_back(key, value);
  if (accuracy_index_) {
    const auto it = scores.metrics.find("rewards/" + rewards_.labels()[*accuracy_index_] + "/mean");
    if (it != scores.metrics.end()) metrics.emplace_back("accuracy", it->second);
  }
  for (auto& m : eval_metrics) metrics.push_back(std::move(m));
  metrics.emplace_back("step_seconds", step_seconds);
  run_.metrics().write(step, metrics);

  // Sample completions: rank 0's groups (the first share of the step's).
  const auto& groups = rollouts.groups;
  const int64_t logged = world.is_main() && has_rows ? std::min<int64_t>(cfg_.log_completions, batch.size()) : 0;
  for (int64_t k = 0; k < logged; ++k) {
    const auto& g = groups[static_cast<size_t>(k % static_cast<int64_t>(groups.size()))];
    const auto i = static_cast<size_t>(k / static_cast<int64_t>(groups.size())) % g.completions.size();
    const auto& c = g.completions[i];
    const auto& record = records[static_cast<size_t>(g.record)];
    log::debug("{} step {}: reward {:.3f}: {}", stage_, step, g.totals[i], c.text);
    const nlohmann::json j = {{"step", step},
                              {"prompt", record.prompt},
                              {"answer", record.answer},
                              {"completion", c.text},
                              {"reward", g.totals[i]},
                              {"finish_reason", std::string(rollout::finish_reason_name(c.finish_reason))}};
    completions_log << j.dump() << "\n";
  }
  completions_log.flush();
  return {mean_of(totals), v.kl, mean_of(lengths)};
}

GrpoResult GrpoTrainer::train(const std::vector<data::Record>& records, const EvalFn& eval, bool resume) {
  const auto t_start = std::chrono::steady_clock::now();
  if (records.empty()) throw std::runtime_error(stage_ + ": no prompts");
  const auto device = model_->embed_tokens.device();
  const uint64_t seed = static_cast<uint64_t>(run_.config().seed + cfg_.seed_offset);
  // Disaggregated: the ranks split into trainers and generators first (every rank, collectively);
  // the trainers train data parallel among themselves, a generator never trains.
  std::unique_ptr<DisaggregatedLink> link;
  if (cfg_.async.mode == AsyncMode::disaggregated) {
    link = std::make_unique<DisaggregatedLink>(dist::world(device), cfg_.async.generator_ranks,
                                               cfg_.async.max_staleness, cfg_.async.bucket_mb);
  }
  const bool generator = link && link->generator();
  dist::World solo;
  dist::DataParallel dp(model_, cfg_.optim, !link ? dist::world(device) : generator ? solo : link->trainer_group());
  auto& world = dp.world();
  data::DataOrder order(static_cast<int64_t>(records.size()), {.batch_size = 1}, seed);
  // The reference policy (beta > 0): the policy at the start of the stage or at the last refresh,
  // also saved under checkpoints/<stage>/reference so that a resumed run gets it back.
  std::optional<model::CausalLM> ref;
  const std::string ref_dir = checkpoint_dir() + "/reference";
  const auto set_reference = [&](model::CausalLM& from) {
    const auto whole = dp.whole_model();  // sharded or split: the copy is of the whole policy
    ref = frozen_copy(from);
    if (&from == &model_ && world.is_main()) model::save_hf_checkpoint(*ref, ref_dir);
  };
  int64_t step = 0;
  // (A generator gets the step, the order and the weights from rank 0 below.)
  if (const auto st = resume && !generator ? resume_latest(checkpoint_dir(), model_, dp.optimizer(), cfg_.optim, stage_)
                                           : std::nullopt) {
    step = st->step;
    order.restore(data::DataOrderState::from_json(st->values.at("data_order")));
    if (cfg_.loss.beta > 0) {
      auto saved = model::load_hf_checkpoint(ref_dir, {.dtype = model_->embed_tokens.scalar_type(), .device = device});
      set_reference(saved);
    }
  }
  if (cfg_.loss.beta > 0 && !ref && !generator) set_reference(model_);
  // bf16 on the CPU: ATen's autocast around each generation, evaluation, reference pass and
  // training micro-batch (a scope per phase: autocast caches its bf16 weight copies until the
  // outermost scope closes), or, in consistent mode, the invariant ops with bf16 matmuls.
  const bool cpu_bf16 = cfg_.bf16_cpu && device.is_cpu();
  if (cpu_bf16 && model_->embed_tokens.scalar_type() != torch::kFloat) {
    throw std::invalid_argument(grpo::format("{}.bf16_cpu: autocast keeps float32 master weights; the model is {}",
                                             stage_, std::string(c10::toString(model_->embed_tokens.scalar_type()))));
  }
  const bool aten_bf16 = cpu_bf16 && !cfg_.consistent_logprobs;  // generation and evaluation scopes
  if (cpu_bf16) {
    log::info("{}: bf16 on the CPU ({})", stage_,
              cfg_.consistent_logprobs ? "invariant ops with bf16 matmuls" : "ATen autocast");
  }
  // Consistent mode: one op set and one MLA form for sampler and trainer, for the whole stage.
  std::optional<model::invariant::Scope> consistent;
  std::optional<ImplRestore> impl_restore;
  if (cfg_.consistent_logprobs) {
    const auto dtype = model_->embed_tokens.scalar_type();
    if (!device.is_cpu() || dtype != torch::kFloat || model_->config().fp8.enabled) {
      throw std::invalid_argument(grpo::format(
          "{}.consistent_logprobs: needs the model on the CPU in float32 without FP8 layers (found {} {}{}); the "
          "batch-invariant ops have no CUDA or low-precision form",
          stage_, device.str(), std::string(c10::toString(dtype)), model_->config().fp8.enabled ? " with fp8" : ""));
    }
    consistent.emplace(true, cpu_bf16);
    if (model_->config().is_mla()) {
      impl_restore.emplace(model_);
      model_->set_attention_impl(cfg_.generation.mla_absorbed ? model::AttentionImpl::absorbed
                                                              : model_->config().attention_impl);
    }
  }
  auto generation = cfg_.generation;
  if (cfg_.router_replay != RouterReplay::off) {
    if (model_->moe_layers().empty()) {
      throw std::invalid_argument(stage_ + ".router_replay: the model has no MoE layer to replay");
    }
    generation.record_routing = true;
  }
  rollout::Engine engine(model_, &tokenizer_, generation);
  const int64_t lag = cfg_.async.max_staleness;
  if (link) {  // rank 0's start (a resumed run's step, order and weights) on every generator
    std::string order_text = order.state().to_json();
    link->share_start(step, order_text, model_);
    order.restore(data::DataOrderState::from_json(order_text));
    if (generator) return serve_rollouts(*link, engine, records, order, seed, step, eval, aten_bf16);
    log::info("{}: disaggregated rollouts: {} trainer(s), {} generator(s), staleness {}", stage_, link->trainers(),
              link->generators(), lag);
  }
  // One-step-off: a rollout thread with its own copy of the policy samples batch k + s on the
  // weights before step k while the trainer optimises batch k (grpo/train/async_rollouts.h).
  const bool async = cfg_.async.mode == AsyncMode::one_step_off;
  std::unique_ptr<RolloutWorker> worker;
  std::optional<ThreadsRestore> threads_restore;
  if (async) {
    if (world.distributed()) {
      throw std::invalid_argument(stage_ +
                                  ".async.mode: one_step_off runs its rollout thread in one process; this run has " +
                                  std::to_string(world.size()) + " ranks");
    }
    const auto [rollout_threads, trainer_threads] = async_thread_split(
        cfg_.async, static_cast<int64_t>(std::thread::hardware_concurrency()));
    threads_restore.emplace();
    at::set_num_threads(static_cast<int>(trainer_threads));
    auto copy = frozen_copy(model_);  // its config carries the attention form (consistent mode's too)
    const bool invariant = cfg_.consistent_logprobs;
    auto sample = [this, &records, &order, seed, generation, invariant, cpu_bf16, aten_bf16](model::CausalLM& m,
                                                                                             int64_t index) {
      model::invariant::Scope scope(invariant, cpu_bf16);
      AutocastScope autocast(aten_bf16, at::kCPU);  // the thread's own autocast state
      rollout::Engine rollouts(m, &tokenizer_, generation);
      auto r = sample_step(engine_generator(rollouts), tokenizer_, prompt_, records, order, cfg_, rewards_, seed, index,
                           nullptr);
      return std::make_pair(std::move(r), order.state());
    };
    worker = std::make_unique<RolloutWorker>(copy, sample, rollout_threads);
    log::info("{}: one-step-off rollouts: staleness {}, {} rollout / {} trainer threads", stage_, lag, rollout_threads,
              trainer_threads);
    // The first batches, on the weights the run starts with.
    const auto first = take_snapshot(model_, step, cfg_.async.hash_weights);
    for (int64_t j = step; j < std::min(cfg_.steps, step + lag); ++j) worker->submit(j, first);
  }
  std::ofstream completions_log;  // rank 0 writes the sample completions
  if (world.is_main()) completions_log.open(run_.path("completions.jsonl"), std::ios::app);
  Progress progress(stage_, cfg_.steps, run_.config().progress_interval_s);
  GrpoResult result;
  while (step < cfg_.steps) {
    const auto t_step = std::chrono::steady_clock::now();
    model_->eval();
    // Sharded or split: generation on a gathered copy, or in the training layout with the ranks'
    // forwards paired (run.dist.generation).
    StepRollouts rollouts;
    std::vector<Metric> async_metrics;
    std::optional<data::DataOrderState> order_after;  // async: the order after this batch's prompts
    int64_t staleness = 0;
    if (link) {
      const auto t_wait = std::chrono::steady_clock::now();
      const auto parts = link->receive_batch();
      const double waited = seconds_since(t_wait);
      BatchMeta meta;
      rollouts = take_share(parts, *link, world, meta);
      if (meta.index != step) {
        throw std::runtime_error(grpo::format(
            "{}: disaggregated rollouts: expected batch {}, a generator sent batch {}", stage_, step, meta.index));
      }
      order_after = data::DataOrderState::from_json(meta.order);
      staleness = step - meta.version;
      async_metrics = {{"staleness", staleness},
                       {"trainer_wait_seconds", waited},
                       {"rollout_idle_seconds", meta.weight_wait_seconds},
                       {"weight_sync_bytes", meta.weight_bytes}};
      if (meta.switched_version >= 0) async_metrics.emplace_back("partial_staleness", step - meta.switched_version);
      if (cfg_.async.hash_weights) {
        async_metrics.emplace_back("sampler_weights_hash", meta.hash);
        async_metrics.emplace_back("policy_weights_hash", weights_hash(model_));
        if (meta.switched_version >= 0) async_metrics.emplace_back("partial_weights_hash", meta.switched_hash);
      }
    } else if (async) {
      auto got = worker->take(step);
      rollouts = std::move(*got.rollouts);
      order_after = got.order;
      staleness = step - got.version;
      // The weights before this step's update sample batch step + s.
      auto weights = take_snapshot(model_, step, cfg_.async.hash_weights);
      const std::string policy_hash = weights.hash;
      if (step + lag < cfg_.steps) worker->submit(step + lag, std::move(weights));
      async_metrics = {{"staleness", staleness},
                       {"trainer_wait_seconds", got.wait_seconds},
                       {"rollout_idle_seconds", got.idle_seconds},
                       {"weight_sync_seconds", got.sync_seconds},
                       {"weight_sync_bytes", got.sync_bytes}};
      if (cfg_.async.hash_weights) {
        async_metrics.emplace_back("sampler_weights_hash", got.hash);
        async_metrics.emplace_back("policy_weights_hash", policy_hash);
      }
    } else {
      std::optional<dist::GenerationScope> gen_scope;
      gen_scope.emplace(dp);
      AutocastScope autocast(aten_bf16, at::kCPU);
      rollouts = sample_step(engine_generator(engine), tokenizer_, prompt_, records, order, cfg_, rewards_, seed, step,
                             &world);
    }
    // This rank's groups (data parallel: possibly none, after dynamic sampling's refills).
    GrpoBatch batch;
    if (!rollouts.groups.empty()) batch = build_grpo_batch(rollouts.groups, cfg_.mask_truncated_completions);
    batch.staleness = staleness;
    if (ref && !rollouts.groups.empty()) {
      batch.ref_logps = batch_logprobs(*ref, batch, cfg_.micro_batch_size, cfg_.generation.sampling.temperature,
                                       cfg_.logprob_chunk_size, autocast_training(device));
    }
    const auto stats = optimise(batch, dp, step);
    ++step;
    // Disaggregated: this version goes to the generators when a batch samples on it (batch step +
    // s) or they evaluate with it.
    if (link) {
      const double posted = sends_version(step, eval) ? link->post_weights(model_) : 0.0;
      async_metrics.emplace_back("weight_sync_seconds", posted);  // rank 0's copy and post of this version
    }
    if (ref && cfg_.ref_refresh_steps > 0 && step % cfg_.ref_refresh_steps == 0) {
      set_reference(model_);
      log::info("{}: step {}: reference policy refreshed", stage_, step);
    }
    const bool last = step == cfg_.steps;
    std::vector<Metric> eval_metrics;
    if (evaluates_at(eval, step)) {
      if (worker) worker->drain();  // the reward set scores on one thread at a time
      const auto gen_for_eval = dp.generation();
      AutocastScope autocast(aten_bf16, at::kCPU);
      eval_metrics = eval(step);
    }
    for (auto& m : async_metrics) eval_metrics.push_back(std::move(m));
    const auto summary = log_step(step, rollouts, batch, stats, std::move(eval_metrics), seconds_since(t_step), records,
                                  completions_log, world);
    result.last_reward = summary.reward;
    progress.update(step,
                    grpo::format("reward {:.3f} len {:.0f} kl {:.4f}", summary.reward, summary.length, summary.kl));
    if (last || (cfg_.checkpoint.every_steps > 0 && step % cfg_.checkpoint.every_steps == 0)) {
      // Async: the order as this step's batch left it (the rollout thread has drawn further); a
      // resumed run samples its first batch on the resumed weights.
      const auto saved_order = order_after ? *order_after : order.state();
      save_stage_checkpoint(checkpoint_dir(), step, model_, dp.optimizer(),
                            {.values = {{"data_order", saved_order.to_json()}}}, cfg_.checkpoint, stage_);
    }
  }
  if (link) link->finish();
  model_->eval();
  result.steps = step;
  result.seconds = seconds_since(t_start);
  return result;
}

bool GrpoTrainer::sends_version(int64_t n, const EvalFn& eval) const {
  const int64_t lag = cfg_.async.max_staleness;
  // Batch n + s starts on version n; with partial rollouts batch n + s - 1 continues on it.
  const bool sampled = n + lag < cfg_.steps || (cfg_.async.partial_after_tokens > 0 && n + lag - 1 < cfg_.steps);
  return sampled || evaluates_at(eval, n);
}

bool GrpoTrainer::evaluates_at(const EvalFn& eval, int64_t step) const {
  return eval && (step == cfg_.steps || (cfg_.eval_every > 0 && step % cfg_.eval_every == 0));
}

StepRollouts GrpoTrainer::take_share(const std::vector<std::string>& parts, DisaggregatedLink& link,
                                     dist::World& trainers, BatchMeta& meta) const {
  // The generators' shares in generator order are the step's groups and scores in request order.
  StepRollouts all;
  for (size_t g = 0; g < parts.size(); ++g) {
    StepRollouts part;
    BatchMeta m;
    decode_batch(parts[g], part, m);
    if (g == 0) {
      meta = m;
      all.generated_groups = part.generated_groups;  // counted over every generator already
      all.zero_std_groups = part.zero_std_groups;
    } else {
      meta.weight_wait_seconds = std::max(meta.weight_wait_seconds, m.weight_wait_seconds);
    }
    for (auto& grp : part.groups) all.groups.push_back(std::move(grp));
    if (!part.scores.total.empty()) rewards::append_scores(all.scores, std::move(part.scores));
    all.generated_tokens += part.generated_tokens;
    all.generation_seconds = std::max(all.generation_seconds, part.generation_seconds);
    all.reward_seconds = std::max(all.reward_seconds, part.reward_seconds);
  }
  if (link.trainers() == 1) return all;
  // Several trainers: each trains its share of the groups; trainer 0 keeps the whole step's
  // scores and token count for the logs (which sum over the trainers).
  const auto [begin, end] = dist::share(static_cast<int64_t>(all.groups.size()), trainers.rank(), trainers.size());
  StepRollouts mine;
  for (int64_t i = begin; i < end; ++i) mine.groups.push_back(std::move(all.groups[static_cast<size_t>(i)]));
  mine.generated_groups = all.generated_groups;
  mine.zero_std_groups = all.zero_std_groups;
  mine.generation_seconds = all.generation_seconds;
  mine.reward_seconds = all.reward_seconds;
  if (trainers.is_main()) {
    mine.scores = std::move(all.scores);
    mine.generated_tokens = all.generated_tokens;
  }
  return mine;
}

GrpoResult GrpoTrainer::serve_rollouts(DisaggregatedLink& link, rollout::Engine& engine,
                                       const std::vector<data::Record>& records, data::DataOrder& order, uint64_t seed,
                                       int64_t start, const EvalFn& eval, bool aten_bf16) {
  const auto t_start = std::chrono::steady_clock::now();
  const int64_t lag = cfg_.async.max_staleness;
  model_->eval();
  for (auto& p : model_->parameters()) p.set_requires_grad(false);
  const auto sent = [&](int64_t n) { return sends_version(n, eval); };
  int64_t version = start;
  double wait = 0;
  int64_t bytes = 0;
  const auto advance_to = [&](int64_t target) {
    for (int64_t n = version + 1; n <= target; ++n) {
      if (!sent(n)) continue;
      const auto t0 = std::chrono::steady_clock::now();
      bytes += link.receive_weights(model_);
      at::autocast::clear_cache();  // no bf16 copy of the old weights survives
      wait += seconds_since(t0);
      version = n;
      if (evaluates_at(eval, n)) {  // with every other rank, on the weights after step n
        AutocastScope autocast(aten_bf16, at::kCPU);
        eval(n);
      }
    }
  };
  dist::World* generators = link.generators() > 1 ? &link.generator_group() : nullptr;
  const int64_t partial_after = cfg_.async.partial_after_tokens;
  for (int64_t j = start; j < cfg_.steps; ++j) {
    wait = 0;
    bytes = 0;
    advance_to(std::max(start, j - lag));
    BatchMeta meta;
    meta.index = j;
    meta.version = version;
    if (cfg_.async.hash_weights) meta.hash = weights_hash(model_);
    // Partial rollouts: after partial_after decode forwards the batch continues on the version
    // before step j - s + 1 (the first generate() call of the batch that gets that far switches; a
    // batch whose completions all end sooner takes the version after it).
    const int64_t next = j - lag + 1;
    const bool switches = partial_after > 0 && next > version;
    if (switches) {
      engine.set_decode_hook([&](int64_t forwards) {
        if (forwards != partial_after || meta.switched_version >= 0) return;
        advance_to(next);
        meta.switched_version = version;
        if (cfg_.async.hash_weights) meta.switched_hash = weights_hash(model_);
      });
    }
    StepRollouts rollouts;
    {
      AutocastScope autocast(aten_bf16, at::kCPU);
      rollouts = sample_step(engine_generator(engine), tokenizer_, prompt_, records, order, cfg_, rewards_, seed, j,
                             generators);
    }
    engine.set_decode_hook({});
    if (switches && meta.switched_version < 0) advance_to(next);  // no token on it: the stream stays in order
    meta.order = order.state().to_json();
    meta.weight_wait_seconds = wait;
    meta.weight_bytes = bytes;
    link.post_batch(encode_batch(rollouts, meta));
  }
  advance_to(cfg_.steps);  // the evaluations after the last batch
  link.finish();
  GrpoResult result;
  result.steps = cfg_.steps;
  result.seconds = seconds_since(t_start);
  return result;
}

}  // namespace grpo::train
