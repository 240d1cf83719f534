#include "grpo/train/sft_trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <optional>
#include <stdexcept>

#include "autocast.h"
#include "grpo/core/format.h"
#include "grpo/core/log.h"
#include "grpo/core/progress.h"
#include "grpo/data/dataset.h"
#include "grpo/dist/data_parallel.h"

namespace grpo::train {

std::string SftConfig::validate() const { return warmup_problem(schedule, steps); }

namespace {

// A batch of b rows of t zeros in every tensor (padding everywhere), counts 0.
SftBatch zero_batch(int64_t b, int64_t t) {
  SftBatch out;
  out.input_ids = torch::zeros({b, t}, torch::kLong);
  out.attention_mask = torch::zeros({b, t}, torch::kLong);
  out.position_ids = torch::zeros({b, t}, torch::kLong);
  out.loss_mask = torch::zeros({b, t}, torch::kLong);
  return out;
}

// Rows [begin, end) of `b`, cut after the last real token of those rows (padded batches), with
// their counts.
SftBatch rows_of(const SftBatch& b, int64_t begin, int64_t end) {
  SftBatch out;
  const int64_t n = end - begin;
  if (n <= 0) return out;
  const auto mask = b.attention_mask.narrow(0, begin, n);
  const auto real = mask.ne(0).any(0);
  const auto nz = real.nonzero();
  const int64_t t = nz.numel() > 0 ? nz.max().item<int64_t>() + 1 : 1;
  out.input_ids = b.input_ids.narrow(0, begin, n).narrow(1, 0, t);
  out.attention_mask = mask.narrow(1, 0, t);
  out.position_ids = b.position_ids.narrow(0, begin, n).narrow(1, 0, t);
  out.loss_mask = b.loss_mask.narrow(0, begin, n).narrow(1, 0, t);
  out.tokens = out.attention_mask.ne(0).sum().item<int64_t>();
  out.completion_tokens = out.loss_mask.sum().item<int64_t>();
  return out;
}

// Targets of the first MTP module (token i + 2 from position i, both trained on): what
// model::mtp_loss averages over.
int64_t mtp_targets(const SftBatch& b) {
  const int64_t t = b.loss_mask.size(1);
  if (t < 3) return 0;
  const auto m = b.loss_mask.to(torch::kBool);
  return m.narrow(1, 0, t - 2).logical_and(m.narrow(1, 2, t - 2)).sum().item<int64_t>();
}

}  // namespace

SftBatch pad_batch(const std::vector<const data::TokenizedExample*>& examples) {
  int64_t t = 1;
  for (const auto* e : examples) t = std::max<int64_t>(t, static_cast<int64_t>(e->input_ids.size()));
  const int64_t b = static_cast<int64_t>(examples.size());
  SftBatch out = zero_batch(b, t);
  auto ids = out.input_ids.accessor<int64_t, 2>();
  auto mask = out.attention_mask.accessor<int64_t, 2>();
  auto pos = out.position_ids.accessor<int64_t, 2>();
  auto loss = out.loss_mask.accessor<int64_t, 2>();
  for (int64_t r = 0; r < b; ++r) {
    const auto& e = *examples[static_cast<size_t>(r)];
    for (size_t j = 0; j < e.input_ids.size(); ++j) {
      ids[r][static_cast<int64_t>(j)] = e.input_ids[j];
      mask[r][static_cast<int64_t>(j)] = 1;
      pos[r][static_cast<int64_t>(j)] = static_cast<int64_t>(j);
      loss[r][static_cast<int64_t>(j)] = e.completion_mask[j];
      out.completion_tokens += e.completion_mask[j];
    }
    out.tokens += static_cast<int64_t>(e.input_ids.size());
  }
  return out;
}

SftBatch pack_batch(const std::vector<const data::TokenizedExample*>& examples, int64_t max_length) {
  // First fit, in order.
  std::vector<std::vector<const data::TokenizedExample*>> rows;
  std::vector<int64_t> used;
  for (const auto* e : examples) {
    const int64_t n = static_cast<int64_t>(e->input_ids.size());
    if (n > max_length) {
      throw std::invalid_argument("pack_batch: an example of " + std::to_string(n) + " tokens exceeds max_length " +
                                  std::to_string(max_length));
    }
    size_t r = 0;
    while (r < rows.size() && used[r] + n > max_length) ++r;
    if (r == rows.size()) {
      rows.emplace_back();
      used.push_back(0);
    }
    rows[r].push_back(e);
    used[r] += n;
  }
  const int64_t b = static_cast<int64_t>(rows.size());
  SftBatch out = zero_batch(b, max_length);
  auto ids = out.input_ids.accessor<int64_t, 2>();
  auto mask = out.attention_mask.accessor<int64_t, 2>();
  auto pos = out.position_ids.accessor<int64_t, 2>();
  auto loss = out.loss_mask.accessor<int64_t, 2>();
  for (int64_t r = 0; r < b; ++r) {
    int64_t at = 0, doc = 0;
    for (const auto* e : rows[static_cast<size_t>(r)]) {
      ++doc;
      for (size_t j = 0; j < e->input_ids.size(); ++j, ++at) {
        ids[r][at] = e->input_ids[j];
        mask[r][at] = doc;
        pos[r][at] = static_cast<int64_t>(j);
        loss[r][at] = e->completion_mask[j];
        out.completion_tokens += e->completion_mask[j];
      }
      out.tokens += static_cast<int64_t>(e->input_ids.size());
    }
  }
  return out;
}

torch::Tensor sft_token_loss_sum(const torch::Tensor& logits, const SftBatch& batch) {
  const int64_t t = logits.size(1);
  const auto device = logits.device();
  const auto mask = batch.attention_mask.to(device);
  // Position i predicts token i + 1 when that token is trained on and in the same document.
  const auto target_ok = batch.loss_mask.to(device)
                             .narrow(1, 1, t - 1)
                             .to(torch::kBool)
                             .logical_and(mask.narrow(1, 1, t - 1).eq(mask.narrow(1, 0, t - 1)))
                             .logical_and(mask.narrow(1, 0, t - 1).ne(0));
  const auto idx = target_ok.reshape({-1}).nonzero().squeeze(1);
  if (idx.numel() == 0) return logits.sum() * 0.0;
  const auto flat = logits.narrow(1, 0, t - 1).reshape({-1, logits.size(2)}).index_select(0, idx);
  const auto targets = batch.input_ids.to(device).narrow(1, 1, t - 1).reshape({-1}).index_select(0, idx);
  return torch::nn::functional::cross_entropy(flat.to(torch::kFloat), targets,
                                              torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
}

SftTrainer::SftTrainer(model::CausalLM model, const data::Tokenizer& tokenizer, data::PromptConfig prompt,
                       SftConfig cfg, Run& run, std::string stage)
    : model_(std::move(model)),
      tokenizer_(tokenizer),
      prompt_(std::move(prompt)),
      cfg_(std::move(cfg)),
      run_(run),
      stage_(std::move(stage)) {}

std::string SftTrainer::checkpoint_dir() const { return run_.path("checkpoints/" + stage_); }

SftResult SftTrainer::train(const std::vector<data::Record>& records, const EvalFn& eval, bool resume) {
  const auto t_start = std::chrono::steady_clock::now();
  const auto report = data::tokenize_examples(tokenizer_, prompt_, records, cfg_.max_length);
  const auto& examples = report.examples;
  if (examples.empty()) throw std::runtime_error(stage_ + ": no training examples left after tokenization");
  int64_t completion_total = 0, token_total = 0;
  for (const auto& e : examples) {
    completion_total += e.completion_tokens;
    token_total += static_cast<int64_t>(e.input_ids.size());
  }
  log::info("{}: {} examples ({} truncated, {} dropped), {:.1f} tokens each, {:.1f} trained", stage_, report.kept,
            report.truncated, report.dropped, static_cast<double>(token_total) / static_cast<double>(examples.size()),
            static_cast<double>(completion_total) / static_cast<double>(examples.size()));

  const auto device = model_->embed_tokens.device();
  const bool autocast = cfg_.bf16_autocast && device.is_cuda();
  const bool has_mtp = model_->config().num_nextn_predict_layers > 0 && cfg_.mtp_weight > 0;
  const bool has_moe = !model_->moe_layers().empty();
  dist::DataParallel dp(model_, cfg_.optim);  // a world of one: plain AdamW, as always
  auto& world = dp.world();
  auto& optimizer = dp.optimizer();

  data::DataOrderConfig order_cfg;
  order_cfg.batch_size = cfg_.packing ? 1 : std::min<int64_t>(cfg_.batch_size, static_cast<int64_t>(examples.size()));
  data::DataOrder order(static_cast<int64_t>(examples.size()), order_cfg,
                        static_cast<uint64_t>(run_.config().seed + cfg_.seed_offset));
  std::optional<int64_t> pending;  // packing: an example that did not fit the last batch

  int64_t step = 0;
  if (const auto st = resume ? resume_latest(checkpoint_dir(), model_, optimizer, cfg_.optim, stage_) : std::nullopt) {
    step = st->step;
    order.restore(data::DataOrderState::from_json(st->values.at("data_order")));
    if (const auto it = st->values.find("pending"); it != st->values.end() && !it->second.empty()) {
      pending = std::stoll(it->second);
    }
  }
  auto save = [&](int64_t at) {
    TrainState st;
    st.values["data_order"] = order.state().to_json();
    st.values["pending"] = pending ? std::to_string(*pending) : "";
    save_stage_checkpoint(checkpoint_dir(), at, model_, optimizer, st, cfg_.checkpoint, stage_);
  };

  // The examples of the next micro-batch.
  auto next_examples = [&]() {
    std::vector<const data::TokenizedExample*> out;
    if (!cfg_.packing) {
      for (const int64_t i : order.next_batch()) out.push_back(&examples[static_cast<size_t>(i)]);
      return out;
    }
    // Packing: whole examples until batch_size rows of max_length are full.
    std::vector<int64_t> room(static_cast<size_t>(cfg_.batch_size), cfg_.max_length);
    for (;;) {
      const int64_t i = pending ? *pending : order.next_batch().front();
      pending.reset();
      const int64_t n = static_cast<int64_t>(examples[static_cast<size_t>(i)].input_ids.size());
      auto it = std::find_if(room.begin(), room.end(), [&](int64_t r) { return r >= n; });
      if (it == room.end()) {
        pending = i;
        break;
      }
      *it -= n;
      out.push_back(&examples[static_cast<size_t>(i)]);
    }
    return out;
  };

  model_->train();
  model_->activation_checkpointing = cfg_.activation_checkpointing;
  Progress progress(stage_, cfg_.steps, run_.config().progress_interval_s);
  SftResult result;
  while (step < cfg_.steps) {
    const auto t0 = std::chrono::steady_clock::now();
    const double lr = lr_at(cfg_.schedule, cfg_.optim.lr, step, cfg_.steps);
    dp.begin_step(lr);
    // Every rank builds the step's global micro-batches (the same on every rank) and trains on its
    // share of each one's rows; every normaliser is the global batch's.
    std::vector<SftBatch> micro;
    int64_t step_completion = 0, step_tokens = 0;
    for (int64_t m = 0; m < cfg_.grad_accum; ++m) {
      const auto ex = next_examples();
      micro.push_back(cfg_.packing ? pack_batch(ex, cfg_.max_length) : pad_batch(ex));
      step_completion += micro.back().completion_tokens;
      step_tokens += micro.back().tokens;
    }
    const double step_norm = static_cast<double>(std::max<int64_t>(step_completion, 1));
    // Expert parallel: every rank runs every micro-batch (the all-to-alls pair up), one without
    // rows a stand-in row whose loss is 0 and whose tokens the router statistics do not count.
    const bool lockstep = dp.lockstep();
    int64_t last_mine = -1;  // this rank's last micro-batch with rows: its backward starts the all-reduce
    for (int64_t m = 0; m < cfg_.grad_accum; ++m) {
      const auto [begin, end] = dist::share(micro[static_cast<size_t>(m)].input_ids.size(0), world.rank(),
                                            world.size());
      if (end > begin || lockstep) last_mine = m;
    }
    double ce_sum = 0, mtp_sum = 0, balance_sum = 0;
    for (int64_t m = 0; m <= last_mine; ++m) {
      const auto& global = micro[static_cast<size_t>(m)];
      const int64_t rows = global.input_ids.size(0);
      const auto [begin, end] = dist::share(rows, world.rank(), world.size());
      const bool stand_in = end == begin;
      if (stand_in && !lockstep) continue;
      if (stand_in) {
        AutocastScope ac(autocast);
        const SftBatch b = rows_of(global, 0, 1);
        model::ForwardOptions fo;
        fo.mtp = has_mtp;
        dp.stand_in(
            [&] {
              return dist::DataParallel::graph_anchor(model_->forward(b.input_ids.to(device), b.position_ids.to(device),
                                                                      b.attention_mask.to(device), nullptr, fo));
            },
            m == last_mine);
        continue;
      }
      const SftBatch b = world.distributed() ? rows_of(global, begin, end) : global;
      // The micro-batch's MTP and balance terms are means over its targets / rows, weighted by its
      // share of the step's completion tokens; a rank's part of it is weighted by its share of those.
      const double share = static_cast<double>(global.completion_tokens) / step_norm;
      double mtp_share = share, balance_share = share;
      if (world.distributed()) {
        const int64_t all_targets = has_mtp ? mtp_targets(global) : 0;
        mtp_share = all_targets > 0 ? share * static_cast<double>(mtp_targets(b)) / static_cast<double>(all_targets)
                                    : 0.0;
        balance_share = share * static_cast<double>(end - begin) / static_cast<double>(rows);
      }
      AutocastScope ac(autocast);
      model::ForwardOptions fo;
      fo.mtp = has_mtp;
      const auto out = model_->forward(b.input_ids.to(device), b.position_ids.to(device), b.attention_mask.to(device),
                                       nullptr, fo);
      const auto ce = sft_token_loss_sum(out.logits, b);
      auto loss = ce / step_norm;
      ce_sum += ce.item<double>();
      if (has_mtp && mtp_share > 0) {
        const auto mtp = model::mtp_loss(out, b.input_ids.to(device), b.loss_mask.to(device), cfg_.mtp_weight);
        loss = loss + mtp * mtp_share;
        mtp_sum += mtp.item<double>() * mtp_share;
      }
      if (out.balance_loss.defined()) {
        loss = loss + out.balance_loss * balance_share;
        balance_sum += out.balance_loss.item<double>() * balance_share;
      }
      if (lockstep) loss = loss + dist::DataParallel::graph_anchor(out);  // the same backward on every rank
      dp.backward(loss, m == last_mine);
    }
    const double grad_norm = dp.reduce_gradients(cfg_.optim.max_grad_norm);
    if (!dp.step(grad_norm)) log::warn("{}: step {}: non-finite gradient norm, step skipped", stage_, step + 1);
    std::vector<double> imbalance;
    if (has_moe && cfg_.router_bias_gamma > 0) imbalance = dp.update_router_biases(cfg_.router_bias_gamma);
    if (world.distributed()) {
      const auto sums = world.sum({ce_sum, mtp_sum, balance_sum});
      ce_sum = sums[0], mtp_sum = sums[1], balance_sum = sums[2];
    }
    ++step;
    const double ce_mean = ce_sum / static_cast<double>(std::max<int64_t>(step_completion, 1));
    const double dt = seconds_since(t0);
    std::vector<Metric> metrics = {{"stage", stage_},
                                   {"loss", ce_mean + mtp_sum + balance_sum},
                                   {"ce", ce_mean},
                                   {"lr", lr},
                                   {"grad_norm", grad_norm},
                                   {"tokens", step_tokens},
                                   {"completion_tokens", step_completion},
                                   {"tokens_per_s", static_cast<double>(step_tokens) / dt},
                                   {"step_seconds", dt}};
    if (has_mtp) metrics.emplace_back("mtp_loss", mtp_sum);
    if (balance_sum != 0) metrics.emplace_back("balance_loss", balance_sum);
    if (!imbalance.empty()) {
      metrics.emplace_back("router_imbalance_max", *std::max_element(imbalance.begin(), imbalance.end()));
    }
    result.last_loss = ce_mean;
    const bool last = step == cfg_.steps;
    if (eval && (last || (cfg_.eval_every > 0 && step % cfg_.eval_every == 0))) {
      {
        const auto gen = dp.generation();  // sharded or split: a gathered copy, or paired forwards
        for (auto& m : eval(step)) metrics.push_back(std::move(m));
      }
      model_->train();
    }
    run_.metrics().write(step, metrics);
    progress.update(step, grpo::format("loss {:.4f} lr {:.2e}", ce_mean, lr));
    if (last || (cfg_.checkpoint.every_steps > 0 && step % cfg_.checkpoint.every_steps == 0)) save(step);
  }
  model_->eval();
  result.steps = step;
  result.seconds = seconds_since(t_start);
  return result;
}

}  // namespace grpo::train
