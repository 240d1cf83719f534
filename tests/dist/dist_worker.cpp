// dist_worker: the rank side of the multi-process tests in test_data_parallel.cpp, started by
// `grpo launch`. Each mode checks what it can on its own and exits non-zero with a message, or
// writes what the test compares against a single-process reference.
//
//   dist_worker collectives          all_reduce / broadcast / all_gather(_bytes) / sum, checked here
//   dist_worker grad_sync OUT        each rank's share of a fixed batch through GradSync: OUT/grads.pt
//   dist_worker replicas             check_replicas passes on equal replicas, names a perturbed one
//   dist_worker moe_ep EP            a MoE layer with its experts over EP ranks (all-to-all) against
//                                    the whole layer on every rank's tokens, forward and gradients
//   dist_worker traces OUT           rejection sampling of a scripted teacher: when generate_traces
//                                    returns, every rank finds all of rank 0's traces in OUT
//   dist_worker generate ep|full     generation in the sharded layout (run.dist.generation: sharded)
//                                    of the tiny DeepSeek-V3 against the whole model's, per rank:
//                                    experts over every rank (all-to-all per step) or full sharding
//                                    (blocks gathered per forward); the last rank has no prompts
#include <torch/serialize.h>
#include <torch/torch.h>

#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>

#include "grpo/dist/data_parallel.h"
#include "grpo/dist/expert_parallel.h"
#include "grpo/dist/grad_sync.h"
#include "grpo/dist/world.h"
#include "grpo/rollout/engine.h"
#include "grpo/train/rejection_sampling.h"
#include "model/model_test_util.h"
#include "train/train_test_util.h"

using namespace grpo;

namespace {

void expect(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("check failed: " + what);
}

int collectives(dist::World& w) {
  const auto r = static_cast<double>(w.rank()), n = static_cast<double>(w.size());
  auto t = torch::full({5}, r + 1, torch::kFloat);
  w.all_reduce(t);
  expect(t.eq(n * (n + 1) / 2).all().item<bool>(), "all_reduce sum");
  auto m = torch::full({3}, r, torch::kDouble);
  w.all_reduce(m, dist::ReduceOp::max);
  expect(m.eq(n - 1).all().item<bool>(), "all_reduce max");
  auto b = torch::full({4}, r == 1 ? 7.0 : -1.0, torch::kFloat);
  w.broadcast(b, 1);
  expect(b.eq(7).all().item<bool>(), "broadcast from rank 1");
  const auto bytes = w.all_gather_bytes(std::string(static_cast<size_t>(w.rank()), 'a' + static_cast<char>(w.rank())));
  expect(static_cast<double>(bytes.size()) == n, "all_gather_bytes size");
  for (int64_t k = 0; k < w.size(); ++k) {
    expect(bytes[static_cast<size_t>(k)] == std::string(static_cast<size_t>(k), 'a' + static_cast<char>(k)),
           "all_gather_bytes of rank " + std::to_string(k));
  }
  std::vector<double> mine(static_cast<size_t>(w.rank() + 1), r + 0.5);
  const auto parts = w.all_gather(mine);
  for (int64_t k = 0; k < w.size(); ++k) {
    expect(parts[static_cast<size_t>(k)] ==
               std::vector<double>(static_cast<size_t>(k + 1), static_cast<double>(k) + 0.5),
           "all_gather of rank " + std::to_string(k));
  }
  expect(w.sum(r) == n * (n - 1) / 2, "sum");
  w.barrier();
  return 0;
}

// The fixed problem the test also solves in one process (test_data_parallel.cpp: GradSync).
int grad_sync(dist::World& w, const std::string& out) {
  torch::manual_seed(7);
  auto model = model::CausalLM(model::test::tiny_dsv3(), torch::TensorOptions().dtype(torch::kFloat));
  torch::manual_seed(8);
  const auto ids = torch::randint(0, model->config().vocab_size, {7, 12}, torch::kLong);
  std::vector<torch::Tensor> params;
  for (auto& p : model->parameters()) params.push_back(p);
  dist::GradSync sync(params, w, /*bucket_mb=*/0.05);  // small buckets: several, started during backward
  // Two micro-batches per rank (the first only accumulates), each row's loss over the global 7 rows.
  const auto [begin, end] = dist::share(7, w.rank(), w.size());
  const int64_t mid = begin + (end - begin) / 2;
  for (const auto& [b, e] : {std::pair{begin, mid}, std::pair{mid, end}}) {
    if (e == b) continue;
    const auto x = ids.narrow(0, b, e - b);
    const auto o = model->forward(x, torch::arange(12).expand({e - b, 12}), torch::ones_like(x), nullptr, {});
    const auto loss = o.logits.square().mean(-1).sum() / 7.0;
    sync.arm(e == end, loss);
    loss.backward();
  }
  sync.finish();
  if (w.rank() == 0) {
    std::vector<torch::Tensor> grads;
    for (auto& p : params) grads.push_back(p.grad().defined() ? p.grad() : torch::full({0}, 0.0));
    torch::save(grads, out + "/grads.pt");
    std::cout << "buckets " << sync.buckets() << " overlapped " << sync.overlapped() << "\n";
  }
  return 0;
}

int replicas(dist::World& w) {
  torch::manual_seed(w.rank());  // different on purpose, then made equal
  auto model = model::CausalLM(model::test::tiny_dsv3(), torch::TensorOptions().dtype(torch::kFloat));
  dist::broadcast_model(*model, w);
  dist::check_replicas(*model, w);
  const std::string changed = model->named_parameters().back().key();
  if (w.rank() == 1) {
    torch::NoGradGuard no_grad;
    model->named_parameters()[changed].add_(1e-6);
  }
  try {
    dist::check_replicas(*model, w);
  } catch (const std::exception& e) {
    const std::string what = e.what();
    expect(what.find("'" + changed + "'") != std::string::npos, "the message names the tensor: " + what);
    std::cout << "detected: " << what << "\n";
    return 0;
  }
  throw std::runtime_error("check_replicas did not see rank 1's change");
}

// Eight runs of one batch of 16 prompts x 4 distinct, correct, long (8 KB) traces: ~0.5 MB that rank 0 appends
// and fsyncs after the ranks gather their lines. A rank that returned before that write (and read
// the file, as the distill stage does next) would find fewer lines than the result counts.
int traces(dist::World& w, const std::string& out) {
  const auto tok = train::test::byte_tokenizer();
  const auto prompt = train::test::prompt_config();
  const auto records = train::test::addition(16, 5, false);
  const auto root = config::parse_yaml_string("threads: 1\nfunctions: [{name: math_accuracy, weight: 1.0}]\n",
                                              "r.yaml");
  const rewards::RewardSet rewards(config::from_value<rewards::RewardsConfig>(root));
  train::RejectionSamplingConfig cfg;
  cfg.samples_per_prompt = 4;
  cfg.prompts_per_batch = 16;
  cfg.keep = train::KeepRule::all_correct;
  cfg.seed = 3;
  std::map<uint64_t, int64_t> index_of_seed;
  for (int64_t i = 0; i < 16; ++i) index_of_seed[train::prompt_seed(cfg.seed, i)] = i;
  const train::TraceGenerator generate = [&](const std::vector<rollout::GenerationRequest>& reqs) {
    std::vector<rollout::Completion> completions;
    for (size_t p = 0; p < reqs.size(); ++p) {
      const auto& answer = records[static_cast<size_t>(index_of_seed.at(*reqs[p].seed))].answer;
      for (int64_t g = 0; g < cfg.samples_per_prompt; ++g) {
        rollout::Completion c;
        c.prompt_index = static_cast<int64_t>(p);
        c.sample_index = g;
        c.text = " <think> " + std::string(8192, static_cast<char>('a' + g)) + " </think> <answer> " + answer +
                 " </answer>";
        c.token_ids.assign(16, 1);
        completions.push_back(std::move(c));
      }
    }
    return completions;
  };
  for (int round = 0; round < 8; ++round) {  // the race, were there one, shows in some rounds
    cfg.output = out + "/traces_" + std::to_string(round) + ".jsonl";
    const auto r = train::generate_traces_with(generate, *tok, prompt, records, rewards, cfg, {.teacher = "scripted"},
                                               false);
    expect(r.kept == 64, "64 traces kept, found " + std::to_string(r.kept));
    std::ifstream in(cfg.output);
    int64_t lines = 0;
    for (std::string line; std::getline(in, line);) ++lines;
    expect(lines == r.kept, "rank " + std::to_string(w.rank()) + " reads " + std::to_string(lines) + " lines of " +
                                cfg.output + " as generate_traces returns, expected " + std::to_string(r.kept));
  }
  return 0;
}

// max |a - b| / max |b| (0 when both are 0).
double rel(const torch::Tensor& a, const torch::Tensor& b) {
  if (b.numel() == 0) return a.numel() == 0 ? 0.0 : 1.0;
  const double scale = b.abs().max().item<double>();
  const double diff = (a - b).abs().max().item<double>();
  return scale > 0 ? diff / scale : diff;
}

// Rank r's tokens: a different count on every rank (the last of 4 has none); the router's bias
// leans hard towards experts 0 and 5 and away from expert 3, which no token chooses: uneven loads
// and an expert without tokens.
int moe_ep(dist::World& w, int64_t ep) {
  auto cfg = model::test::tiny_dsv3();
  const auto opts = torch::TensorOptions().dtype(torch::kFloat);
  torch::manual_seed(11);
  model::Moe whole(cfg, opts), split(cfg, opts);
  {
    torch::NoGradGuard no_grad;
    auto wp = whole->named_parameters(), sp = split->named_parameters();
    for (const auto& item : wp) sp[item.key()].copy_(item.value());
    auto bias = torch::zeros({cfg.n_routed_experts});
    bias[0] = 0.3;
    bias[5] = 0.2;
    bias[3] = -10;
    whole->e_score_correction_bias.copy_(bias);
    split->e_score_correction_bias.copy_(bias);
  }
  const int64_t d = cfg.hidden_size;
  auto tokens_of = [&](int64_t r) { return w.size() == 4 && r == 3 ? int64_t{0} : 3 + 4 * r; };
  auto input_of = [&](int64_t r) {
    torch::manual_seed(100 + r);
    return torch::randn({1, tokens_of(r), d}).requires_grad_();
  };
  auto cotangent_of = [&](int64_t r) {
    torch::manual_seed(200 + r);
    return torch::randn({1, tokens_of(r), d});
  };
  // The reference: the whole layer on every rank's tokens, the loss summed over ranks.
  std::vector<torch::Tensor> reference_out;
  torch::Tensor reference_input_grad;
  auto loss = torch::zeros({});
  for (int64_t r = 0; r < w.size(); ++r) {
    const auto x = input_of(r);
    if (r == w.rank()) reference_input_grad = x;
    reference_out.push_back(whole(x));
    loss = loss + (reference_out.back() * cotangent_of(r)).sum();
  }
  loss.backward();
  dist::ExpertParallel parallel(split.ptr(), w, ep);
  expect(split->experts_gate.size(0) == cfg.n_routed_experts / ep, "this rank holds E / ep experts");
  const auto x = input_of(w.rank());
  const auto out = split(x);
  (out * cotangent_of(w.rank())).sum().backward();
  const double out_diff = rel(out, reference_out[static_cast<size_t>(w.rank())]);
  expect(out_diff <= 1e-6, "rank " + std::to_string(w.rank()) + ": output differs by " + std::to_string(out_diff));
  const double input_diff = rel(x.grad(), reference_input_grad.grad());
  expect(input_diff <= 1e-6,
         "rank " + std::to_string(w.rank()) + ": the input's gradient differs by " + std::to_string(input_diff));
  auto whole_params = whole->named_parameters();
  for (const auto& item : split->named_parameters()) {
    const auto& name = item.key();
    auto grad = item.value().grad();
    expect(grad.defined(), name + " has a gradient");
    torch::Tensor expected = whole_params[name].grad();
    if (parallel.is_expert(item.value())) {
      // This group's tokens reach it through the all-to-all; the other groups' through its replicas.
      expected = parallel.local_block(expected);
      grad = grad.clone();
      parallel.replicas().all_reduce(grad);
    } else {
      grad = grad.clone();
      w.all_reduce(grad);  // replicated: each rank's part of the sum
    }
    const double diff = rel(grad, expected);
    expect(diff <= 1e-6,
           "rank " + std::to_string(w.rank()) + ": gradient of " + name + " differs by " + std::to_string(diff));
  }
  // Expert 3 got no token: its gradient is exactly 0 where it lives.
  const int64_t held = cfg.n_routed_experts / ep;
  if (parallel.group().rank() == 3 / held) {
    expect(split->experts_gate.grad()[3 % held].abs().max().item<double>() == 0, "expert 3 (no tokens) has grad 0");
  }
  {
    dist::ExpertParallel::Gathered whole_again(&parallel);
    expect(split->experts_gate.size(0) == cfg.n_routed_experts, "Gathered holds every expert");
    expect(rel(split->experts_up, whole->experts_up) == 0, "Gathered gives back the weights");
  }
  expect(split->experts_gate.size(0) == cfg.n_routed_experts / ep, "cut again after Gathered");
  std::cout << "rank " << w.rank() << " ok: output " << out_diff << "\n";
  return 0;
}

// Sharded generation against each rank's own requests on the whole model (the engine alone,
// before any sharding): the same tokens and finish reasons, log-probs within 1e-5.
int generate(dist::World& w, const std::string& layout) {
  expect(layout == "ep" || layout == "full", "layout ep or full, found " + layout);
  const auto cfg = model::test::tiny_dsv3();
  torch::manual_seed(21);
  model::CausalLM model(cfg, torch::TensorOptions().dtype(torch::kFloat));
  {
    torch::NoGradGuard no_grad;  // uneven routing: some experts chosen far more often
    for (auto& moe : model->moe_layers()) {
      moe->e_score_correction_bias[0] = 0.3;
      moe->e_score_correction_bias[5] = 0.2;
    }
  }
  model->eval();
  // Rank r: r + 1 prompts of different lengths, the last rank none.
  std::vector<rollout::GenerationRequest> mine;
  const int64_t prompts = w.rank() + 1 == w.size() ? 0 : w.rank() + 1;
  for (int64_t p = 0; p < prompts; ++p) {
    std::vector<int64_t> ids;
    for (int64_t k = 0; k < 2 + 3 * p + w.rank(); ++k) ids.push_back(4 + (7 * k + 11 * p + 5 * w.rank()) % 50);
    mine.push_back({.prompt_ids = ids, .seed = static_cast<uint64_t>(100 * w.rank() + p)});
  }
  rollout::GenerationConfig gc;
  gc.max_new_tokens = 10;
  gc.num_generations = 2;
  gc.sampling.temperature = 1.0;
  gc.eos_token_ids = {1, 2, 3, 9, 17};  // completions end at different lengths
  rollout::Engine engine(model, nullptr, gc);
  const auto reference = engine.generate(mine);

  dist::DistConfig dc;
  dc.generation = "sharded";
  if (layout == "ep") {
    dc.expert_parallel = w.size();
  } else {
    dc.sharding = "full";
  }
  dist::set_config(dc);
  train::OptimizerConfig oc;
  dist::DataParallel dp(model, oc);
  std::vector<rollout::Completion> got;
  int64_t gathers_before = dp.fully_shard() ? dp.fully_shard()->block_gathers() : 0;
  {
    const auto gen = dp.generation();
    if (layout == "ep") {
      expect(model->moe_layers().front()->experts_gate.size(0) == cfg.n_routed_experts / w.size(),
             "the experts stay split while generating");
    }
    got = engine.generate(mine);
    // A second call, as a trainer's next round: the rounds pair again.
    const auto again = engine.generate(mine);
    expect(again.size() == got.size(), "second call");
    for (size_t i = 0; i < got.size(); ++i) expect(again[i].token_ids == got[i].token_ids, "second call's tokens");
  }
  expect(!model->forward_rounds, "the rounds are removed with the scope");
  expect(got.size() == reference.size(),
         "completions: " + std::to_string(got.size()) + " vs " + std::to_string(reference.size()));
  double worst = 0;
  std::vector<size_t> lengths;
  for (size_t i = 0; i < got.size(); ++i) {
    expect(got[i].token_ids == reference[i].token_ids,
           "rank " + std::to_string(w.rank()) + ": completion " + std::to_string(i) + " has other tokens");
    expect(got[i].finish_reason == reference[i].finish_reason, "finish reason of completion " + std::to_string(i));
    for (size_t t = 0; t < got[i].logprobs.size(); ++t) {
      worst = std::max(worst, static_cast<double>(std::abs(got[i].logprobs[t] - reference[i].logprobs[t])));
    }
    lengths.push_back(got[i].token_ids.size());
  }
  expect(worst <= 1e-5, "rank " + std::to_string(w.rank()) + ": log-probs differ by " + std::to_string(worst));
  const auto* paired = dp.paired_forwards();
  expect(paired != nullptr, "sharded generation pairs the forwards");
  if (prompts == 0) expect(paired->stand_ins() == paired->rounds(), "a rank without prompts only stands in");
  expect(paired->rounds() > 0, "rounds were run");
  if (dp.fully_shard()) {
    const int64_t gathers = dp.fully_shard()->block_gathers() - gathers_before;
    // Every round gathers each decoder block once (the MTP module never runs in generation).
    expect(gathers == paired->rounds() * cfg.num_hidden_layers,
           "block gathers " + std::to_string(gathers) + " for " + std::to_string(paired->rounds()) + " rounds");
  }
  std::string lens;
  for (auto l : lengths) lens += std::to_string(l) + " ";
  std::cout << "rank " << w.rank() << " ok: " << got.size() << " completions (lengths " << lens << "), rounds "
            << paired->rounds() << ", stand-ins " << paired->stand_ins() << ", log-prob diff " << worst << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2)
      throw std::invalid_argument(
          "usage: dist_worker collectives|grad_sync OUT|replicas|moe_ep EP|traces OUT|generate ep|full");
    const std::string mode = argv[1];
    auto& w = dist::world();
    if (!w.distributed()) throw std::runtime_error("run me under grpo launch (no RANK/WORLD_SIZE)");
    if (mode == "collectives") return collectives(w);
    if (mode == "grad_sync" && argc == 3) return grad_sync(w, argv[2]);
    if (mode == "replicas") return replicas(w);
    if (mode == "moe_ep" && argc == 3) return moe_ep(w, std::stoll(argv[2]));
    if (mode == "traces" && argc == 3) return traces(w, argv[2]);
    if (mode == "generate" && argc == 3) return generate(w, argv[2]);
    throw std::invalid_argument("unknown mode " + mode);
  } catch (const std::exception& e) {
    std::cerr << "dist_worker: " << e.what() << "\n";
    return 1;
  }
}
