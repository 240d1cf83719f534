// dist_worker: the rank side of the multi-process tests in test_data_parallel.cpp, started by
// `grpo launch`. Each mode checks what it can on its own and exits non-zero with a message, or
// writes what the test compares against a single-process reference.
//
//   dist_worker collectives          all_reduce / broadcast / all_gather(_bytes) / sum, checked here
//   dist_worker grad_sync OUT        each rank's share of a fixed batch through GradSync: OUT/grads.pt
//   dist_worker replicas             check_replicas passes on equal replicas, names a perturbed one
#include <torch/serialize.h>
#include <torch/torch.h>

#include <iostream>
#include <stdexcept>
#include <string>

#include "grpo/dist/data_parallel.h"
#include "grpo/dist/grad_sync.h"
#include "grpo/dist/world.h"
#include "model/model_test_util.h"

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

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw std::invalid_argument("usage: dist_worker collectives|grad_sync OUT|replicas");
    const std::string mode = argv[1];
    auto& w = dist::world();
    if (!w.distributed()) throw std::runtime_error("run me under grpo launch (no RANK/WORLD_SIZE)");
    if (mode == "collectives") return collectives(w);
    if (mode == "grad_sync" && argc == 3) return grad_sync(w, argv[2]);
    if (mode == "replicas") return replicas(w);
    throw std::invalid_argument("unknown mode " + mode);
  } catch (const std::exception& e) {
    std::cerr << "dist_worker: " << e.what() << "\n";
    return 1;
  }
}
