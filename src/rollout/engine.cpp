#include "grpo/rollout/engine.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <stdexcept>

namespace grpo::rollout {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

std::string GenerationConfig::validate() const {
  if (speculative_mtp && !sampling.greedy()) {
    return "speculative_mtp needs greedy sampling (sampling.temperature: 0)";
  }
  return "";
}

std::string_view finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::eos: return "eos";
    case FinishReason::stop: return "stop";
    case FinishReason::length: return "length";
  }
  return "?";
}

// One completion being generated.
struct Engine::Row {
  Completion* out = nullptr;
  RowRng rng;
  int64_t prompt_length = 0;
  std::vector<torch::Tensor> routed;  // record_routing: [n, M, K] int16 pieces, in position order
};

// The last forward's experts (x_flat rows b * positions + t), stacked once over the layers.
void Engine::take_routing(std::vector<Row>& rows, const std::vector<size_t>& order, const std::vector<int64_t>& first,
                          const std::vector<int64_t>& count, int64_t positions, int64_t repeat) {
  if (routing_ == nullptr || routing_->layers() == 0) return;
  std::vector<torch::Tensor> per_layer;
  for (int64_t l = 0; l < routing_->layers(); ++l) per_layer.push_back(routing_->last(l));
  const auto all = torch::stack(per_layer, 1).to(torch::kCPU, torch::kShort);  // [B * positions, M, K]
  const auto view = all.view({-1, positions, all.size(1), all.size(2)});
  for (size_t i = 0; i < order.size(); ++i) {
    const auto b = static_cast<int64_t>(i) / repeat;
    rows[order[i]].routed.push_back(view[b].narrow(0, first[i], count[i]).clone());
  }
}

Engine::Engine(model::CausalLM model, const data::Tokenizer* tokenizer, GenerationConfig cfg)
    : model_(std::move(model)), tokenizer_(tokenizer), cfg_(std::move(cfg)) {
  if (const std::string problem = cfg_.validate(); !problem.empty()) throw std::invalid_argument(problem);
  if (!cfg_.stop_strings.empty() && tokenizer_ == nullptr) {
    throw std::invalid_argument("stop_strings need a tokenizer to decode the completions");
  }
  if (cfg_.speculative_mtp && model_->config().num_nextn_predict_layers < 1) {
    throw std::invalid_argument("speculative_mtp needs a model with MTP modules (num_nextn_predict_layers >= 1)");
  }
  eos_ = cfg_.eos_token_ids.empty() ? model_->config().eos_token_ids : cfg_.eos_token_ids;
  for (const auto& s : cfg_.stop_strings) {
    if (s.empty()) throw std::invalid_argument("stop_strings must not contain an empty string");
    max_stop_bytes_ = std::max(max_stop_bytes_, s.size());
  }
  model_->eval();
}

bool Engine::finish_check(Row& row, int64_t token, double now) const {
  Completion& c = *row.out;
  bool done = false;
  if (!cfg_.ignore_eos && std::find(eos_.begin(), eos_.end(), token) != eos_.end()) {
    c.finish_reason = FinishReason::eos;
    done = true;
  } else if (!cfg_.stop_strings.empty()) {
    // A stop string completed by this token ends in its text, so it lies within the last
    // max_stop_bytes + 1 tokens (every token decodes to at least one byte).
    const size_t k = std::min(c.token_ids.size(), max_stop_bytes_ + 1);
    const std::vector<int64_t> window(c.token_ids.end() - static_cast<std::ptrdiff_t>(k), c.token_ids.end());
    const std::string text = tokenizer_->decode(window, /*skip_special_tokens=*/false);
    for (const auto& s : cfg_.stop_strings) {
      if (text.find(s) != std::string::npos) {
        c.finish_reason = FinishReason::stop;
        c.stop_string = s;
        done = true;
        break;
      }
    }
  }
  if (!done && static_cast<int64_t>(c.token_ids.size()) >= cfg_.max_new_tokens) {
    c.finish_reason = FinishReason::length;
    done = true;
  }
  if (done) c.seconds = now;
  return done;
}

std::vector<Completion> Engine::generate(const std::vector<GenerationRequest>& requests, GenerationStats* stats_out) {
  c10::InferenceMode guard;
  decode_forwards_ = 0;
  // MLA decodes in the absorbed form (attention over the cached latent, no per-step expansion of
  // the whole cache into per-head keys and values); the model's own form is restored after.
  struct ImplGuard {
    model::CausalLM& m;
    model::AttentionImpl saved;
    ~ImplGuard() { m->set_attention_impl(saved); }
  } impl_guard{model_, model_->config().attention_impl};
  if (model_->config().is_mla() && cfg_.mla_absorbed) model_->set_attention_impl(model::AttentionImpl::absorbed);
  // Forwards paired over ranks (grpo/model/forward_rounds.h): each forward below is a round.
  rounds_ = model_->forward_rounds.get();
  if (rounds_ != nullptr && cfg_.speculative_mtp) {
    throw std::invalid_argument(
        "generation.speculative_mtp cannot run while the model's forwards are paired over ranks (run.dist.generation: "
        "sharded); use run.dist.generation: gathered");
  }
  // Router replay's record: a tape on every decoder MoE layer for this call.
  std::optional<model::RoutingRecord::Installed> tape;
  if (cfg_.record_routing && !model_->moe_layers().empty()) {
    if (cfg_.speculative_mtp || !cfg_.use_cache) {
      throw std::invalid_argument("generation.record_routing needs use_cache and no speculative_mtp");
    }
    tape.emplace(model_);
    routing_ = tape->tape.get();
  }
  struct RoutingReset {
    model::RoutingRecord*& r;
    ~RoutingReset() { r = nullptr; }
  } routing_reset{routing_};
  const double t0 = now_seconds();
  const int64_t P = static_cast<int64_t>(requests.size()), G = cfg_.num_generations;
  const int64_t vocab = model_->config().vocab_size;
  for (int64_t p = 0; p < P; ++p) {
    const auto& ids = requests[static_cast<size_t>(p)].prompt_ids;
    if (ids.empty()) throw std::invalid_argument("request " + std::to_string(p) + ": the prompt is empty");
    for (const int64_t id : ids) {
      if (id < 0 || id >= vocab) {
        throw std::invalid_argument("request " + std::to_string(p) + ": token id " + std::to_string(id) +
                                    " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
      }
    }
  }
  std::vector<Completion> completions(static_cast<size_t>(P * G));
  GenerationStats stats;
  stats.prompts = P;
  stats.completions = P * G;

  // Chunks of whole prompts (all G samples of a prompt decode together, sharing its prefill).
  const int64_t per_chunk = cfg_.max_batch_rows > 0 ? std::max<int64_t>(1, cfg_.max_batch_rows / G) : P;
  for (int64_t p0 = 0; p0 < P; p0 += per_chunk) {
    const int64_t p1 = std::min(P, p0 + per_chunk);
    std::vector<Row> rows;
    for (int64_t p = p0; p < p1; ++p) {
      const auto& req = requests[static_cast<size_t>(p)];
      const uint64_t seed = req.seed ? *req.seed : cfg_.seed + static_cast<uint64_t>(p);
      for (int64_t g = 0; g < G; ++g) {
        Completion& c = completions[static_cast<size_t>(p * G + g)];
        c.prompt_index = p;
        c.sample_index = g;
        c.token_ids.reserve(static_cast<size_t>(cfg_.max_new_tokens));
        c.logprobs.reserve(static_cast<size_t>(cfg_.max_new_tokens));
        rows.push_back(Row{&c,
                           RowRng(RowRng::derive(seed, static_cast<uint64_t>(g))),
                           static_cast<int64_t>(req.prompt_ids.size()),
                           {}});
      }
    }
    std::vector<GenerationRequest> chunk(requests.begin() + p0, requests.begin() + p1);
    if (cfg_.speculative_mtp) {
      run_rows_speculative(rows, chunk, stats, t0);
    } else {
      run_rows(rows, chunk, stats, t0);
    }
    if (routing_ != nullptr) {
      for (auto& row : rows) row.out->routing = torch::cat(row.routed);  // [T, M, K]
    }
  }

  drain_rounds();

  for (auto& c : completions) {
    stats.generated_tokens += static_cast<int64_t>(c.token_ids.size());
    if (tokenizer_ != nullptr) {
      // Special tokens stay in the text (they may be the structure the rewards check, such as
      // <think> in a tokenizer that made it special); the EOS id that ended it does not.
      auto ids = c.token_ids;
      if (c.finish_reason == FinishReason::eos && !ids.empty()) ids.pop_back();
      c.text = tokenizer_->decode(ids, cfg_.skip_special_tokens);
      if (c.finish_reason == FinishReason::stop) {
        const size_t at = c.text.find(c.stop_string);
        if (at != std::string::npos) c.text.resize(at + c.stop_string.size());
      }
    }
  }
  for (const auto& r : requests) stats.prompt_tokens += static_cast<int64_t>(r.prompt_ids.size());
  stats.total_seconds = now_seconds() - t0;
  stats.tokens_per_second = stats.total_seconds > 0 ? stats.generated_tokens / stats.total_seconds : 0;
  if (stats_out) *stats_out = stats;
  return completions;
}

void Engine::pair_round() {
  if (rounds_ != nullptr) rounds_->round(true);
}

// This rank's forwards are done: stand-ins (one token, a cache of one position) for as long as
// another rank still has forwards to run.
void Engine::drain_rounds() {
  if (rounds_ == nullptr) return;
  const auto device = model_->embed_tokens.device();
  const auto zero = torch::zeros({1, 1}, torch::TensorOptions().dtype(torch::kLong).device(device));
  while (rounds_->round(false)) {
    auto cache = model_->make_cache(1, 1);
    model_->forward(zero, zero, torch::ones_like(zero), cache.get());
  }
  rounds_ = nullptr;
}

// Left-padded prompt batch: ids [P, L], mask [P, L], position ids [P, L].
namespace {
struct PromptBatch {
  torch::Tensor ids, mask, positions;
  int64_t length = 0;
};

PromptBatch pad_prompts(const std::vector<GenerationRequest>& requests, int64_t pad_id, const torch::Device& device) {
  PromptBatch b;
  const int64_t P = static_cast<int64_t>(requests.size());
  for (const auto& r : requests) b.length = std::max<int64_t>(b.length, static_cast<int64_t>(r.prompt_ids.size()));
  auto ids = torch::full({P, b.length}, pad_id, torch::kLong);
  auto mask = torch::zeros({P, b.length}, torch::kLong);
  for (int64_t p = 0; p < P; ++p) {
    const auto& prompt = requests[static_cast<size_t>(p)].prompt_ids;
    const int64_t n = static_cast<int64_t>(prompt.size());
    ids[p].narrow(0, b.length - n, n).copy_(torch::tensor(prompt, torch::kLong));
    mask[p].narrow(0, b.length - n, n).fill_(1);
  }
  b.ids = ids.to(device);
  b.mask = mask.to(device);
  b.positions = (b.mask.cumsum(1) - 1).clamp_min(0);
  return b;
}
}  // namespace

// The position of each row's first new token: its prompt's real length.
torch::Tensor Engine::next_positions(const std::vector<Row>& rows, const torch::Device& device) {
  std::vector<int64_t> lengths;
  for (const auto& r : rows) lengths.push_back(r.prompt_length);
  return torch::tensor(lengths, torch::kLong).to(device);
}

void Engine::run_rows(std::vector<Row>& rows, const std::vector<GenerationRequest>& requests, GenerationStats& stats,
                      double t0) {
  const auto device = model_->embed_tokens.device();
  const int64_t G = cfg_.num_generations;
  const int64_t pad_id = eos_.empty() ? 0 : eos_.front();
  const PromptBatch prompts = pad_prompts(requests, pad_id, device);
  const int64_t P = static_cast<int64_t>(requests.size());
  const auto expand = torch::arange(P, torch::TensorOptions().dtype(torch::kLong).device(device)).repeat_interleave(G);

  // Prefill: each prompt once; logits of its last (always real) position.
  double t = now_seconds();
  std::unique_ptr<model::KVCache> cache;
  torch::Tensor logits, mask, ids_nocache;
  if (cfg_.use_cache) {
    cache = model_->make_cache(P, prompts.length + cfg_.max_new_tokens);
    stats.cache_bytes += cache->bytes_per_token() * P * (prompts.length + cfg_.max_new_tokens);
    model::ForwardOptions opts;
    opts.return_hidden = true;
    opts.logits = false;
    pair_round();
    const auto out = model_->forward(prompts.ids, prompts.positions, prompts.mask, cache.get(), opts);
    logits = model_->head(out.hidden.select(1, prompts.length - 1));  // [P, V]
    if (routing_ != nullptr) {  // each prompt's real positions, for each of its G rows
      std::vector<size_t> order;
      std::vector<int64_t> first, count;
      for (size_t i = 0; i < rows.size(); ++i) {  // row p * G + g
        order.push_back(i);
        first.push_back(prompts.length - rows[i].prompt_length);
        count.push_back(rows[i].prompt_length);
      }
      take_routing(rows, order, first, count, prompts.length, G);
    }
    if (G > 1) {
      cache->select_rows(expand);
      logits = logits.index_select(0, expand);
    }
  } else {
    pair_round();
    const auto out = model_->forward(prompts.ids, prompts.positions, prompts.mask);
    logits = out.logits.select(1, prompts.length - 1).index_select(0, expand);
    ids_nocache = prompts.ids.index_select(0, expand);
  }
  mask = prompts.mask.index_select(0, expand);  // [N, L]
  auto positions = next_positions(rows, device);
  stats.prefill_seconds += now_seconds() - t;

  t = now_seconds();
  std::vector<size_t> active(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) active[i] = i;
  const bool greedy = cfg_.sampling.greedy();
  for (int64_t step = 0; step < cfg_.max_new_tokens && !active.empty(); ++step) {
    const int64_t n = static_cast<int64_t>(active.size());
    torch::Tensor uniforms;
    if (!greedy) {
      uniforms = torch::empty({n}, torch::kDouble);
      auto* u = uniforms.data_ptr<double>();
      for (int64_t i = 0; i < n; ++i) u[i] = rows[active[static_cast<size_t>(i)]].rng.uniform();
    }
    const auto tokens = choose_tokens(logits, cfg_.sampling, uniforms);                     // [n]
    const auto logprobs = token_logprobs(logits, tokens, cfg_.sampling.temperature).cpu();  // [n]
    const auto tokens_cpu = tokens.cpu();
    const auto* tok = tokens_cpu.data_ptr<int64_t>();
    const auto* lp = logprobs.data_ptr<float>();
    const double now = now_seconds() - t0;
    std::vector<int64_t> keep;
    std::vector<size_t> still;
    for (int64_t i = 0; i < n; ++i) {
      Row& row = rows[active[static_cast<size_t>(i)]];
      row.out->token_ids.push_back(tok[i]);
      row.out->logprobs.push_back(lp[i]);
      if (!finish_check(row, tok[i], now)) {
        keep.push_back(i);
        still.push_back(active[static_cast<size_t>(i)]);
      }
    }
    if (still.empty()) break;
    auto next = tokens;
    if (static_cast<int64_t>(still.size()) < n) {
      // Finished rows leave the batch.
      const auto idx = torch::tensor(keep, torch::kLong).to(device);
      if (cache) cache->select_rows(idx);
      if (ids_nocache.defined()) ids_nocache = ids_nocache.index_select(0, idx);
      mask = mask.index_select(0, idx);
      positions = positions.index_select(0, idx);
      next = next.index_select(0, idx);
    }
    active = std::move(still);
    const int64_t m = static_cast<int64_t>(active.size());
    mask = torch::cat({mask, torch::ones({m, 1}, mask.options())}, 1);
    before_decode_forward();
    pair_round();
    if (cache) {
      const auto out = model_->forward(next.view({m, 1}), positions.view({m, 1}), mask, cache.get());
      logits = out.logits.select(1, 0);
      if (routing_ != nullptr)
        take_routing(rows, active, std::vector<int64_t>(active.size(), 0), std::vector<int64_t>(active.size(), 1), 1,
                     1);
    } else {
      ids_nocache = torch::cat({ids_nocache, next.view({m, 1})}, 1);
      const auto pos = (mask.cumsum(1) - 1).clamp_min(0);
      logits = model_->forward(ids_nocache, pos, mask).logits.select(1, ids_nocache.size(1) - 1);
    }
    positions = positions + 1;
    ++stats.steps;
  }
  stats.decode_seconds += now_seconds() - t;
}

// MTP speculative decoding (greedy). Each step feeds two tokens per row to the main model: the
// committed token t at its position and the MTP draft d for the next one. The main model's argmax
// y1 after t is the true next token; when y1 == d the draft is accepted and the argmax y2 after d
// is a second new token, else the slot that held d becomes a hole in the attention mask. The
// cache advances by two slots per step for every row, so rows stay aligned; positions are logical
// (count of real tokens), so holes do not shift RoPE. The first MTP module then drafts the token
// after the last committed one from the trunk states just computed, with its own cache that has
// the same slots and holes. Main-model numbers at valid positions are the plain decoder's.
void Engine::run_rows_speculative(std::vector<Row>& rows, const std::vector<GenerationRequest>& requests,
                                  GenerationStats& stats, double t0) {
  const auto device = model_->embed_tokens.device();
  const auto lopts = torch::TensorOptions().dtype(torch::kLong).device(device);
  const int64_t G = cfg_.num_generations;
  const int64_t pad_id = eos_.empty() ? 0 : eos_.front();
  const PromptBatch prompts = pad_prompts(requests, pad_id, device);
  const int64_t P = static_cast<int64_t>(requests.size());
  const auto expand = torch::arange(P, lopts).repeat_interleave(G);
  const int64_t capacity = prompts.length + 2 * cfg_.max_new_tokens + 2;

  double t = now_seconds();
  auto cache = model_->make_cache(P, capacity);
  auto mtp_cache = model_->make_mtp_cache(P, capacity);
  stats.cache_bytes += (cache->bytes_per_token() + mtp_cache->bytes_per_token()) * P * capacity;
  model::ForwardOptions opts;
  opts.return_hidden = true;
  opts.return_trunk = true;
  opts.logits = false;
  auto out = model_->forward(prompts.ids, prompts.positions, prompts.mask, cache.get(), opts);
  auto last_logits = model_->head(out.hidden.select(1, prompts.length - 1));  // [P, V]
  auto first = last_logits.argmax(-1);                                        // [P]
  auto first_lp = token_logprobs(last_logits, first, 1.0);
  // MTP over the prompt: position i sees the token i + 1 (the last sees the first new token).
  const auto next_ids = torch::cat({prompts.ids.narrow(1, 1, prompts.length - 1), first.view({P, 1})}, 1);
  auto draft_logits = model_->mtp_draft_logits(out.trunk, next_ids, prompts.positions, prompts.mask, *mtp_cache);
  auto draft = draft_logits.select(1, prompts.length - 1).argmax(-1);  // [P]
  if (G > 1) {
    cache->select_rows(expand);
    mtp_cache->select_rows(expand);
    first = first.index_select(0, expand);
    first_lp = first_lp.index_select(0, expand);
    draft = draft.index_select(0, expand);
  }
  auto mask = prompts.mask.index_select(0, expand);
  auto positions = next_positions(rows, device);
  stats.prefill_seconds += now_seconds() - t;

  t = now_seconds();
  // Commit the first token of every row.
  std::vector<size_t> active;
  std::vector<int64_t> keep;
  {
    const auto tok = first.cpu();
    const auto lp = first_lp.cpu();
    const double now = now_seconds() - t0;
    for (size_t i = 0; i < rows.size(); ++i) {
      rows[i].out->token_ids.push_back(tok[static_cast<int64_t>(i)].item<int64_t>());
      rows[i].out->logprobs.push_back(lp[static_cast<int64_t>(i)].item<float>());
      if (!finish_check(rows[i], rows[i].out->token_ids.back(), now)) {
        active.push_back(i);
        keep.push_back(static_cast<int64_t>(i));
      }
    }
  }
  auto current = first;  // [n] the committed token to feed next
  auto select = [&](const std::vector<int64_t>& k) {
    const auto idx = torch::tensor(k, torch::kLong).to(device);
    cache->select_rows(idx);
    mtp_cache->select_rows(idx);
    mask = mask.index_select(0, idx);
    positions = positions.index_select(0, idx);
    current = current.index_select(0, idx);
    draft = draft.index_select(0, idx);
  };
  if (!active.empty() && active.size() < rows.size()) select(keep);

  while (!active.empty()) {
    const int64_t n = static_cast<int64_t>(active.size());
    const auto inputs = torch::stack({current, draft}, 1);          // [n, 2]
    const auto pos2 = torch::stack({positions, positions + 1}, 1);  // [n, 2]
    mask = torch::cat({mask, torch::ones({n, 2}, mask.options())}, 1);
    before_decode_forward();
    out = model_->forward(inputs, pos2, mask, cache.get(), opts);
    const auto logits = model_->head(out.hidden);  // [n, 2, V]
    const auto y1 = logits.select(1, 0).argmax(-1), y2 = logits.select(1, 1).argmax(-1);
    const auto lp1 = token_logprobs(logits.select(1, 0), y1, 1.0), lp2 = token_logprobs(logits.select(1, 1), y2, 1.0);
    const auto accepted = y1.eq(draft);  // [n] bool
    ++stats.steps;
    stats.drafted += n;
    stats.accepted += accepted.sum().item<int64_t>();
    // A rejected draft's slot becomes a hole.
    mask.select(1, mask.size(1) - 1).copy_(accepted.to(mask.scalar_type()));
    // Drafts for the next step: after t (rejected: from y1) or after d (accepted: from y2).
    const auto mtp_next = torch::stack({y1, torch::where(accepted, y2, y1)}, 1);
    const auto dl = model_->mtp_draft_logits(out.trunk, mtp_next, pos2, mask, *mtp_cache);  // [n, 2, V]
    const auto next_draft = torch::where(accepted, dl.select(1, 1).argmax(-1), dl.select(1, 0).argmax(-1));
    current = torch::where(accepted, y2, y1);
    positions = positions + 1 + accepted.to(torch::kLong);
    draft = next_draft;

    const auto y1c = y1.cpu(), y2c = y2.cpu(), lp1c = lp1.cpu(), lp2c = lp2.cpu(), accc = accepted.cpu();
    const double now = now_seconds() - t0;
    keep.clear();
    std::vector<size_t> still;
    for (int64_t i = 0; i < n; ++i) {
      Row& row = rows[active[static_cast<size_t>(i)]];
      row.out->token_ids.push_back(y1c[i].item<int64_t>());
      row.out->logprobs.push_back(lp1c[i].item<float>());
      bool done = finish_check(row, row.out->token_ids.back(), now);
      if (!done && accc[i].item<bool>()) {
        row.out->token_ids.push_back(y2c[i].item<int64_t>());
        row.out->logprobs.push_back(lp2c[i].item<float>());
        done = finish_check(row, row.out->token_ids.back(), now);
      }
      if (!done) {
        keep.push_back(i);
        still.push_back(active[static_cast<size_t>(i)]);
      }
    }
    if (still.empty()) break;
    if (static_cast<int64_t>(still.size()) < n) select(keep);
    active = std::move(still);
  }
  stats.decode_seconds += now_seconds() - t;
}

}  // namespace grpo::rollout
